// AVX2 GEMM micro-kernels: 4 rows × 24 columns (three ymm per row) = 12 accumulators of the 16 ymm registers,
// leaving three for B and one for the broadcast A value.
#include <immintrin.h>

#include <cstdint>

#include "kernels/avx2/avx2.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx2 {

void gemm_4x24(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) {
  __m256 acc[kGemmMR][3];
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) acc[m][j] = accumulate ? _mm256_loadu_ps(c + m * ldc + 8 * j) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b_panel + k * kGemmNR);
    const __m256 b1 = _mm256_loadu_ps(b_panel + k * kGemmNR + 8);
    const __m256 b2 = _mm256_loadu_ps(b_panel + k * kGemmNR + 16);
    const float* a = a_panel + k * kGemmMR;
#pragma GCC unroll 4
    for (int m = 0; m < kGemmMR; ++m) {
      const __m256 am = _mm256_broadcast_ss(a + m);
      acc[m][0] = _mm256_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(am, b1, acc[m][1]);
      acc[m][2] = _mm256_fmadd_ps(am, b2, acc[m][2]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) _mm256_storeu_ps(c + m * ldc + 8 * j, acc[m][j]);
  }
}

namespace {

// The same tile with A read straight from its rows (no packing pass).
void gemm_4x24_rows(int64_t kc, const float* const* a_rows, const float* b_panel, float* c, int64_t ldc,
                    bool accumulate, const GemmEpilogue* epilogue) {
  const float* a[kGemmMR];
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) a[m] = a_rows[m];
  __m256 acc[kGemmMR][3];
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) acc[m][j] = accumulate ? _mm256_loadu_ps(c + m * ldc + 8 * j) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b_panel + k * kGemmNR);
    const __m256 b1 = _mm256_loadu_ps(b_panel + k * kGemmNR + 8);
    const __m256 b2 = _mm256_loadu_ps(b_panel + k * kGemmNR + 16);
#pragma GCC unroll 4
    for (int m = 0; m < kGemmMR; ++m) {
      const __m256 am = _mm256_broadcast_ss(a[m] + k);
      acc[m][0] = _mm256_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(am, b1, acc[m][1]);
      acc[m][2] = _mm256_fmadd_ps(am, b2, acc[m][2]);
    }
  }
  if (epilogue) {
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      if (epilogue->row_bias) {
        const __m256 bias = _mm256_set1_ps(epilogue->row_bias[m]);
#pragma GCC unroll 8
        for (int j = 0; j < 3; ++j) acc[m][j] = _mm256_add_ps(acc[m][j], bias);
      }
      if (epilogue->col_bias) {
#pragma GCC unroll 8
        for (int j = 0; j < 3; ++j) acc[m][j] = _mm256_add_ps(acc[m][j], _mm256_loadu_ps(epilogue->col_bias + 8 * j));
      }
      if (epilogue->residual) {
        const float* residual = epilogue->residual + m * epilogue->residual_ld;
#pragma GCC unroll 8
        for (int j = 0; j < 3; ++j) acc[m][j] = _mm256_add_ps(acc[m][j], _mm256_loadu_ps(residual + 8 * j));
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) _mm256_storeu_ps(c + m * ldc + 8 * j, acc[m][j]);
  }
}

// Lanes [begin, end) ∩ [0, 8) as a maskload/maskstore mask.
inline __m256i lane_mask(int begin, int end) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i from = _mm256_cmpgt_epi32(_mm256_set1_epi32(begin), lanes);  // lane < begin
  const __m256i to = _mm256_cmpgt_epi32(_mm256_set1_epi32(end), lanes);      // lane < end
  return _mm256_andnot_si256(from, to);
}

// Lanes before `lead` may fall before the image: integer arithmetic, and only masked-in lanes are read.
inline const float* lane_address(const float* first, int64_t lane_offset) {
  return reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(first) +
                                        static_cast<uintptr_t>(lane_offset * static_cast<int64_t>(sizeof(float))));
}

// One 8-lane piece of a run, for the row-major walk below.
struct GatherChunk {
  int64_t dst_offset, src_offset;  // src_offset is lane 0's, possibly before the row (integer arithmetic only)
  __m256i store, valid;
};

// A chunk of 8 lanes all inside the row: plain loads and stores. The masked ones (vmaskmovps) cost several cycles
// each on AMD CPUs (Zen 2 to 4), where a masked store of 8 floats is slower than storing them one by one.
inline bool full_chunk(int width, int valid_begin, int valid_end) {
  return width == 8 && valid_begin <= 0 && valid_end >= 8;
}
constexpr int kMaxChunks = 128;

// Step-1 runs copied row by row. Source rows a multiple of 4 KiB apart (32×32 and 64×64 planes) share their low 12
// address bits, so walking a run down the rows makes every load look like it may alias the stores in flight
// (4K aliasing) and the copy crawls; along a row the loads move on instead. Returns false when the runs have more
// chunks than fit, leaving the work to the caller.
bool gather_rows_by_row(const GatherRun* runs, int64_t count, const float* src, int64_t src_stride, float* dst,
                        int64_t dst_stride, int64_t rows) {
  // Full chunks from the front, masked ones from the back of the same array.
  GatherChunk chunks[kMaxChunks];
  int n = 0, masked = kMaxChunks;
  for (int64_t i = 0; i < count; ++i) {
    const GatherRun& run = runs[i];
    for (int lane = 0; lane < run.length; lane += 8) {
      if (n == masked) return false;
      const int width = run.length - lane < 8 ? run.length - lane : 8;
      const int valid_end = run.length - run.trail - lane;
      GatherChunk& chunk = full_chunk(width, run.lead - lane, valid_end) ? chunks[n++] : chunks[--masked];
      chunk.store = lane_mask(0, width);
      chunk.valid = lane_mask(run.lead - lane, valid_end < width ? valid_end : width);
      chunk.dst_offset = run.dst_offset + lane;
      chunk.src_offset = run.src_offset + lane - run.lead;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = src + r * src_stride;
    float* out = dst + r * dst_stride;
    for (int i = 0; i < n; ++i) {
      _mm256_storeu_ps(out + chunks[i].dst_offset, _mm256_loadu_ps(in + chunks[i].src_offset));
    }
    for (int i = masked; i < kMaxChunks; ++i) {
      const GatherChunk& chunk = chunks[i];
      _mm256_maskstore_ps(out + chunk.dst_offset, chunk.store,
                          _mm256_maskload_ps(lane_address(in, chunk.src_offset), chunk.valid));
    }
  }
  return true;
}

void gather_rows(const GatherRun* runs, int64_t count, int64_t step, const float* src, int64_t src_stride, float* dst,
                 int64_t dst_stride, int64_t rows) {
  if (step == 1 && rows > 1 && src_stride % 1024 == 0 &&
      gather_rows_by_row(runs, count, src, src_stride, dst, dst_stride, rows)) {
    return;
  }
  for (int64_t i = 0; i < count; ++i) {
    const GatherRun& run = runs[i];
    const float* first = src + run.src_offset;
    for (int chunk = 0; chunk < run.length; chunk += 8) {
      const int width = run.length - chunk < 8 ? run.length - chunk : 8;
      const int valid_begin = run.lead - chunk, valid_end = run.length - run.trail - chunk;
      float* out = dst + run.dst_offset + chunk;
      const float* in = lane_address(first, (chunk - run.lead) * step);
      if (step == 1 && full_chunk(width, valid_begin, valid_end)) {
        for (int64_t r = 0; r < rows; ++r) {
          _mm256_storeu_ps(out + r * dst_stride, _mm256_loadu_ps(in + r * src_stride));
        }
      } else if (step == 1) {
        const __m256i store_mask = lane_mask(0, width);
        const __m256i valid = lane_mask(valid_begin, valid_end < width ? valid_end : width);
        for (int64_t r = 0; r < rows; ++r) {
          _mm256_maskstore_ps(out + r * dst_stride, store_mask,
                              _mm256_maskload_ps(lane_address(in, r * src_stride), valid));
        }
      } else if (step == 2) {
        // Valid lane l reads float 2l of the 16-float span. The load masks cover floats [2·begin, 2·end − 1): the
        // odd ones in between are inside the row and dropped by the shuffle, which keeps the even floats of each
        // 128-bit half; the cross-lane permute puts them in order.
        const int end = valid_end < width ? valid_end : width;
        const int first_float = 2 * (valid_begin > 0 ? valid_begin : 0), end_float = end > 0 ? 2 * end - 1 : 0;
        const __m256i store_mask = lane_mask(0, width);
        const __m256i low = lane_mask(first_float, end_float), high = lane_mask(first_float - 8, end_float - 8);
        for (int64_t r = 0; r < rows; ++r) {
          const float* span = lane_address(in, r * src_stride);
          const __m256 lo = _mm256_maskload_ps(span, low);
          const __m256 hi = _mm256_maskload_ps(lane_address(span, 8), high);
          const __m256 evens = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
          _mm256_maskstore_ps(out + r * dst_stride, store_mask,
                              _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(evens), _MM_SHUFFLE(3, 1, 2, 0))));
        }
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          float* o = out + r * dst_stride;
          for (int lane = 0; lane < width; ++lane) {
            o[lane] = lane >= valid_begin && lane < valid_end ? *lane_address(in, r * src_stride + lane * step) : 0.0f;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace ddpm::kernels::avx2

namespace ddpm::kernels {

GemmMicroKernel avx2_gemm() {
  GemmMicroKernel k;
  k.mr = avx2::kGemmMR;
  k.nr = avx2::kGemmNR;
  k.run = avx2::gemm_4x24;
  k.run_rows = avx2::gemm_4x24_rows;
  k.gather_rows = avx2::gather_rows;
  return k;
}

}  // namespace ddpm::kernels
