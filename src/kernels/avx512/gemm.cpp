// AVX-512 GEMM micro-kernels: 8 rows × 32 columns (two zmm per row) = 16 accumulators.
// Zen 4 issues one 512-bit FMA per cycle, so 16 independent accumulators cover the 4-cycle FMA latency with room
// to spare, and 8 rows divide every channel count a U-Net uses (32, 64, 128, 256, …) without padding.
#include <immintrin.h>

#include <cstdint>

#include "kernels/avx512/avx512.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx512 {

void gemm_8x32(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) {
  __m512 acc[kGemmMR][2];
  if (accumulate) {
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      acc[m][0] = _mm512_loadu_ps(c + m * ldc);
      acc[m][1] = _mm512_loadu_ps(c + m * ldc + 16);
    }
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b_panel + k * kGemmNR);
    const __m512 b1 = _mm512_loadu_ps(b_panel + k * kGemmNR + 16);
    const float* a = a_panel + k * kGemmMR;
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      const __m512 am = _mm512_set1_ps(a[m]);
      acc[m][0] = _mm512_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(am, b1, acc[m][1]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
    _mm512_storeu_ps(c + m * ldc, acc[m][0]);
    _mm512_storeu_ps(c + m * ldc + 16, acc[m][1]);
  }
}

namespace {

// The same tile with A read straight from its rows: the 8 broadcasts per k step come from 8 streams instead of
// one packed panel, which the load ports absorb (10 loads per 16 FMAs), and the packing pass disappears.
void gemm_8x32_rows(int64_t kc, const float* const* a_rows, const float* b_panel, float* c, int64_t ldc,
                    bool accumulate, const GemmEpilogue* epilogue) {
  const float* a[kGemmMR];
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) a[m] = a_rows[m];
  __m512 acc[kGemmMR][2];
  if (accumulate) {
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      acc[m][0] = _mm512_loadu_ps(c + m * ldc);
      acc[m][1] = _mm512_loadu_ps(c + m * ldc + 16);
    }
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b_panel + k * kGemmNR);
    const __m512 b1 = _mm512_loadu_ps(b_panel + k * kGemmNR + 16);
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      const __m512 am = _mm512_set1_ps(a[m][k]);
      acc[m][0] = _mm512_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(am, b1, acc[m][1]);
    }
  }
  if (epilogue) {
    if (epilogue->row_bias) {
#pragma GCC unroll 8
      for (int m = 0; m < kGemmMR; ++m) {
        const __m512 bias = _mm512_set1_ps(epilogue->row_bias[m]);
        acc[m][0] = _mm512_add_ps(acc[m][0], bias);
        acc[m][1] = _mm512_add_ps(acc[m][1], bias);
      }
    }
    if (epilogue->col_bias) {
      const __m512 bias0 = _mm512_loadu_ps(epilogue->col_bias);
      const __m512 bias1 = _mm512_loadu_ps(epilogue->col_bias + 16);
#pragma GCC unroll 8
      for (int m = 0; m < kGemmMR; ++m) {
        acc[m][0] = _mm512_add_ps(acc[m][0], bias0);
        acc[m][1] = _mm512_add_ps(acc[m][1], bias1);
      }
    }
    if (epilogue->residual) {
      const float* residual = epilogue->residual;
#pragma GCC unroll 8
      for (int m = 0; m < kGemmMR; ++m) {
        acc[m][0] = _mm512_add_ps(acc[m][0], _mm512_loadu_ps(residual + m * epilogue->residual_ld));
        acc[m][1] = _mm512_add_ps(acc[m][1], _mm512_loadu_ps(residual + m * epilogue->residual_ld + 16));
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
    _mm512_storeu_ps(c + m * ldc, acc[m][0]);
    _mm512_storeu_ps(c + m * ldc + 16, acc[m][1]);
  }
}

inline __mmask16 lane_range(int begin, int end) {  // bits [begin, end) ∩ [0, 16)
  begin = begin < 0 ? 0 : begin;
  end = end > 16 ? 16 : end;
  if (end <= begin) return 0;
  return static_cast<__mmask16>(((1u << end) - 1u) & ~((1u << begin) - 1u));
}

// Address of lane `lane` of a run whose lane `lead` is at `first`; lanes before `lead` may fall before the image,
// so this is integer arithmetic and only masked-in lanes are ever dereferenced.
inline const float* lane_address(const float* first, int64_t lane_offset) {
  return reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(first) +
                                        static_cast<uintptr_t>(lane_offset * static_cast<int64_t>(sizeof(float))));
}

// Gather offsets are 32-bit element indices: 15 * step must fit.
constexpr int64_t kMaxGatherStep = (int64_t{1} << 31) / 16 - 1;

// Valid lane l of a step-2 run reads float 2l of its 32-float span: the lane mask spread onto the even bits of the
// span's two 16-float load masks.
inline uint32_t spread_to_even_bits(__mmask16 lanes) {
  uint32_t spread = lanes;
  spread = (spread | (spread << 8)) & 0x00ff00ffu;
  spread = (spread | (spread << 4)) & 0x0f0f0f0fu;
  spread = (spread | (spread << 2)) & 0x33333333u;
  spread = (spread | (spread << 1)) & 0x55555555u;
  return spread;
}

// One 16-lane piece of a run, for the row-major walk below.
struct GatherChunk {
  int64_t dst_offset, src_offset;  // src_offset is lane 0's, possibly before the row (integer arithmetic only)
  __mmask16 store, valid, high;    // step 2: valid and high are the low and high halves' load masks
};
constexpr int kMaxChunks = 256;

// Runs of step 1 or 2 copied row by row. Source rows a multiple of 4 KiB apart (32×32 and 64×64 planes) share their
// low 12 address bits, so walking a run down the rows makes every load look like it may alias the stores in flight
// (4K aliasing) and the copy crawls; along a row the loads move on instead. Returns false when the runs have more
// chunks than fit, leaving the work to the caller.
bool gather_rows_by_row(const GatherRun* runs, int64_t count, int64_t step, const float* src, int64_t src_stride,
                        float* dst, int64_t dst_stride, int64_t rows) {
  GatherChunk chunks[kMaxChunks];
  int n = 0;
  for (int64_t i = 0; i < count; ++i) {
    const GatherRun& run = runs[i];
    for (int lane = 0; lane < run.length; lane += 16) {
      if (n == kMaxChunks) return false;
      const int width = run.length - lane < 16 ? run.length - lane : 16;
      GatherChunk& chunk = chunks[n++];
      chunk.store = lane_range(0, width);
      chunk.valid = lane_range(run.lead - lane, run.length - run.trail - lane) & chunk.store;
      chunk.dst_offset = run.dst_offset + lane;
      chunk.src_offset = run.src_offset + (lane - run.lead) * step;
      if (step == 2) {
        const uint32_t spread = spread_to_even_bits(chunk.valid);
        chunk.valid = static_cast<__mmask16>(spread);
        chunk.high = static_cast<__mmask16>(spread >> 16);
      }
    }
  }
  if (step == 1) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = lane_address(src, r * src_stride);
      float* out = dst + r * dst_stride;
      for (int i = 0; i < n; ++i) {
        const GatherChunk& chunk = chunks[i];
        _mm512_mask_storeu_ps(out + chunk.dst_offset, chunk.store,
                              _mm512_maskz_loadu_ps(chunk.valid, lane_address(in, chunk.src_offset)));
      }
    }
    return true;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = lane_address(src, r * src_stride);
    float* out = dst + r * dst_stride;
    for (int i = 0; i < n; ++i) {
      const GatherChunk& chunk = chunks[i];
      const float* span = lane_address(in, chunk.src_offset);
      const __m512 lo = _mm512_maskz_loadu_ps(chunk.valid, span);
      const __m512 hi = _mm512_maskz_loadu_ps(chunk.high, lane_address(span, 16));
      _mm512_mask_storeu_ps(out + chunk.dst_offset, chunk.store, _mm512_permutex2var_ps(lo, even, hi));
    }
  }
  return true;
}

// Masked loads give each run's zero padding for free: lanes outside [lead, length - trail) are neither read nor
// kept. Step 2 (stride-2 convolutions) loads the 32-float span and keeps the even elements.
void gather_rows(const GatherRun* runs, int64_t count, int64_t step, const float* src, int64_t src_stride, float* dst,
                 int64_t dst_stride, int64_t rows) {
  if ((step == 1 || step == 2) && rows > 1 && src_stride % 1024 == 0 &&
      gather_rows_by_row(runs, count, step, src, src_stride, dst, dst_stride, rows)) {
    return;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int64_t i = 0; i < count; ++i) {
    const GatherRun& run = runs[i];
    const float* first = src + run.src_offset;
    for (int chunk = 0; chunk < run.length; chunk += 16) {
      const int width = run.length - chunk < 16 ? run.length - chunk : 16;
      const __mmask16 store_mask = lane_range(0, width);
      const __mmask16 valid = lane_range(run.lead - chunk, run.length - run.trail - chunk) & store_mask;
      float* out = dst + run.dst_offset + chunk;
      if (valid == 0) {
        for (int64_t r = 0; r < rows; ++r) _mm512_mask_storeu_ps(out + r * dst_stride, store_mask, _mm512_setzero_ps());
        continue;
      }
      const float* in = lane_address(first, (chunk - run.lead) * step);
      if (step == 1) {
        for (int64_t r = 0; r < rows; ++r) {
          _mm512_mask_storeu_ps(out + r * dst_stride, store_mask,
                                _mm512_maskz_loadu_ps(valid, lane_address(in, r * src_stride)));
        }
      } else if (step == 2) {
        const uint32_t spread = spread_to_even_bits(valid);
        const __mmask16 low = static_cast<__mmask16>(spread), high = static_cast<__mmask16>(spread >> 16);
        for (int64_t r = 0; r < rows; ++r) {
          const float* row = lane_address(in, r * src_stride);
          const __m512 lo = _mm512_maskz_loadu_ps(low, row);
          const __m512 hi = _mm512_maskz_loadu_ps(high, lane_address(row, 16));
          _mm512_mask_storeu_ps(out + r * dst_stride, store_mask, _mm512_permutex2var_ps(lo, even, hi));
        }
      } else if (step <= kMaxGatherStep) {
        // Larger steps (a transposed matrix operand): a hardware gather of the 16 lanes.
        const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                   _mm512_set1_epi32(static_cast<int32_t>(step)));
        for (int64_t r = 0; r < rows; ++r) {
          const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, offsets, lane_address(in, r * src_stride), 4);
          _mm512_mask_storeu_ps(out + r * dst_stride, store_mask, v);
        }
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          float* o = out + r * dst_stride;
          for (int lane = 0; lane < width; ++lane) {
            o[lane] = (valid >> lane) & 1 ? *lane_address(in, r * src_stride + lane * step) : 0.0f;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace ddpm::kernels::avx512

namespace ddpm::kernels {

GemmMicroKernel avx512_gemm() {
  GemmMicroKernel k;
  k.mr = avx512::kGemmMR;
  k.nr = avx512::kGemmNR;
  k.run = avx512::gemm_8x32;
  k.run_rows = avx512::gemm_8x32_rows;
  k.gather_rows = avx512::gather_rows;
  return k;
}

}  // namespace ddpm::kernels
