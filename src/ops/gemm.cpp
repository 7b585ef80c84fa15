#include "ops/gemm.h"

#include <algorithm>
#include <cstring>

#include "core/half.h"

namespace ddpm {
namespace {

// K is summed in blocks of kKc so a B micro-panel (kKc × NR floats) stays in L1 while a whole block of B
// (kKc × NC) stays in L2. Fixed for every level and task split: determinism relies on it.
constexpr int64_t kKc = 256;
constexpr int64_t kNcTarget = 256;
constexpr int kMaxMr = 32, kMaxNr = 64;

int64_t column_block(int nr) { return std::max<int64_t>(nr, kNcTarget / nr * nr); }

inline float load_element(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F16) return f16_to_f32(static_cast<const uint16_t*>(base)[index]);
  return static_cast<const float*>(base)[index];
}

void pack_a(const GemmProblem& p, int64_t batch, int64_t m0, int mr_valid, int mr, int64_t k0, int64_t kc,
            float* dst) {
  const int64_t base = batch * p.a_batch_stride + m0 * p.a_row_stride + k0 * p.a_col_stride;
  for (int m = 0; m < mr; ++m) {
    if (m >= mr_valid) {
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + m] = 0.0f;
      continue;
    }
    const int64_t row = base + m * p.a_row_stride;
    if (p.a_dtype == DType::F32 && p.a_col_stride == 1) {
      const float* src = static_cast<const float*>(p.a) + row;
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + m] = src[k];
    } else {
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + m] = load_element(p.a, p.a_dtype, row + k * p.a_col_stride);
    }
  }
}

void apply_epilogue(const GemmProblem& p, const kernels::KernelTable& kern, int64_t batch, int64_t m0, int64_t mr,
                    int64_t n0, int64_t nc, float* bias_scratch) {
  float* c = p.c + batch * p.c_batch_stride;
  const float* bias_col = nullptr;
  if (p.bias_col) {
    for (int64_t n = 0; n < nc; ++n) bias_scratch[n] = load_element(p.bias_col, p.bias_dtype, n0 + n);
    bias_col = bias_scratch;
  }
  for (int64_t m = m0; m < m0 + mr; ++m) {
    float* row = c + m * p.ldc + n0;
    if (p.bias_row) kern.add_scalar(nc, row, load_element(p.bias_row, p.bias_dtype, m), row);
    if (bias_col) kern.add(nc, row, bias_col, row);
    if (p.residual) kern.add(nc, row, p.residual + batch * p.residual_batch_stride + m * p.residual_ld + n0, row);
  }
}

}  // namespace

size_t gemm_scratch_bytes(const kernels::KernelTable& kernels) {
  const int mr = kernels.gemm.mr, nr = kernels.gemm.nr;
  const int64_t nc_padded = column_block(nr);
  const size_t floats = static_cast<size_t>(kKc * nc_padded + kKc * mr + mr * nr + nc_padded);
  return floats * sizeof(float) + 4 * 64;
}

size_t gemm_scratch_bytes_max() {
  const kernels::KernelTable* tables[8];
  const int count = kernels::available_tables(tables, 8);
  size_t bytes = 0;
  for (int i = 0; i < count; ++i) bytes = std::max(bytes, gemm_scratch_bytes(*tables[i]));
  return bytes;
}

void run_gemm(const GemmProblem& p, ExecContext& ctx) {
  const kernels::KernelTable& kern = ctx.kernels;
  const int mr = kern.gemm.mr, nr = kern.gemm.nr;
  DDPM_ASSERT(mr <= kMaxMr && nr <= kMaxNr);
  DDPM_ASSERT(ctx.scratch_bytes >= gemm_scratch_bytes(kern));
  const int64_t nc_block = column_block(nr);
  const int64_t n_blocks = (p.N + nc_block - 1) / nc_block;
  const int64_t m_panels = (p.M + mr - 1) / mr;
  // Enough tasks to balance the threads, but no more: every extra row chunk packs its B block again.
  const int64_t want_tasks = 4 * static_cast<int64_t>(ctx.pool.size());
  const int64_t nm_tasks = p.batch * n_blocks;
  int64_t m_chunks = 1;
  if (ctx.pool.size() > 1 && nm_tasks < want_tasks) {
    m_chunks = std::min<int64_t>(m_panels, (want_tasks + nm_tasks - 1) / nm_tasks);
  }
  const int64_t panels_per_chunk = (m_panels + m_chunks - 1) / m_chunks;
  m_chunks = (m_panels + panels_per_chunk - 1) / panels_per_chunk;

  ctx.pool.run(nm_tasks * m_chunks, [&](int64_t task, int thread) {
    const int64_t m_chunk = task % m_chunks;
    const int64_t n_block = (task / m_chunks) % n_blocks;
    const int64_t batch = task / (m_chunks * n_blocks);
    const int64_t n0 = n_block * nc_block, nc = std::min(nc_block, p.N - n0);
    const int64_t panel_begin = m_chunk * panels_per_chunk;
    const int64_t panel_end = std::min(m_panels, panel_begin + panels_per_chunk);

    float* b_block = reinterpret_cast<float*>(ctx.scratch[thread]);
    float* a_panel = b_block + kKc * nc_block;
    float* tile = a_panel + kKc * mr;
    float* bias_scratch = tile + mr * nr;
    float* c = p.c + batch * p.c_batch_stride;

    for (int64_t k0 = 0; k0 < p.K; k0 += kKc) {
      const int64_t kc = std::min(kKc, p.K - k0);
      const bool accumulate = k0 > 0;
      const bool last_k_block = k0 + kc >= p.K;
      p.pack_b(p.pack_b_context, batch, k0, kc, n0, nc, nr, b_block);
      for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
        const int64_t m0 = panel * mr;
        const int mr_valid = static_cast<int>(std::min<int64_t>(mr, p.M - m0));
        pack_a(p, batch, m0, mr_valid, mr, k0, kc, a_panel);
        for (int64_t j = 0; j * nr < nc; ++j) {
          const int nr_valid = static_cast<int>(std::min<int64_t>(nr, nc - j * nr));
          float* c_tile = c + m0 * p.ldc + n0 + j * nr;
          const float* b_panel = b_block + j * kc * nr;
          if (mr_valid == mr && nr_valid == nr) {
            kern.gemm.run(kc, a_panel, b_panel, c_tile, p.ldc, accumulate);
            continue;
          }
          // Partial tile: compute a full tile in scratch, copy the valid part.
          if (accumulate) {
            for (int m = 0; m < mr_valid; ++m) std::memcpy(tile + m * nr, c_tile + m * p.ldc, nr_valid * sizeof(float));
          }
          kern.gemm.run(kc, a_panel, b_panel, tile, nr, accumulate);
          for (int m = 0; m < mr_valid; ++m) std::memcpy(c_tile + m * p.ldc, tile + m * nr, nr_valid * sizeof(float));
        }
        if (last_k_block && (p.bias_row || p.bias_col || p.residual)) {
          apply_epilogue(p, kern, batch, m0, mr_valid, n0, nc, bias_scratch);
        }
      }
    }
  });
}

void pack_b_strided(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                    float* dst) {
  const StridedB& b = *static_cast<const StridedB*>(context);
  for (int64_t j = 0; j * nr < nc; ++j) {
    const int64_t width = std::min<int64_t>(nr, nc - j * nr);
    float* panel = dst + j * kc * nr;
    for (int64_t k = 0; k < kc; ++k) {
      const int64_t first = batch * b.batch_stride + (k0 + k) * b.k_stride + (n0 + j * nr) * b.n_stride;
      float* out = panel + k * nr;
      if (b.dtype == DType::F32 && b.n_stride == 1) {
        std::memcpy(out, static_cast<const float*>(b.base) + first, static_cast<size_t>(width) * sizeof(float));
      } else {
        for (int64_t n = 0; n < width; ++n) out[n] = load_element(b.base, b.dtype, first + n * b.n_stride);
      }
      for (int64_t n = width; n < nr; ++n) out[n] = 0.0f;
    }
  }
}

}  // namespace ddpm
