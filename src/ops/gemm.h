// The blocked GEMM driver shared by conv2d and matmul: C[M×N] = A[M×K] · B[K×N] (+ bias) (+ residual).
//
// A is read through strides (any layout, f32 or f16): in place by the micro-kernel when it is f32 with unit stride
// along K, packed per micro-panel otherwise. B is produced by a packer callback, which is how conv2d computes im2col
// tile by tile instead of materialising it. Work is cut into tasks of (batch, chunk of columns, chunk of rows),
// chosen per problem and thread count (see GemmPlan). Every output element is one chain of micro-kernel FMAs in k
// order followed by the epilogue, so its value depends neither on the blocking nor on the thread count or the split.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ddpm/dtype.h"
#include "ops/op_exec.h"

namespace ddpm {

// Fills dst with B[k0 : k0+kc, n0 : n0+nc] of batch item `batch`, in NR-wide column panels: element (k, n) goes to
// dst[(n / nr) * kc * nr + k * nr + n % nr]; columns past nc up to the next multiple of nr must be zero.
using PackB = void (*)(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                       float* dst);

struct GemmProblem {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  // A element (m, k) of batch item b: a + b*a_batch_stride + m*a_row_stride + k*a_col_stride.
  const void* a = nullptr;
  DType a_dtype = DType::F32;
  int64_t a_batch_stride = 0, a_row_stride = 0, a_col_stride = 1;
  PackB pack_b = nullptr;
  const void* pack_b_context = nullptr;
  // C element (m, n): c + b*c_batch_stride + m*ldc + n.
  float* c = nullptr;
  int64_t c_batch_stride = 0, ldc = 0;
  // Epilogue, applied once all of K is summed: C += bias_row[m] or bias_col[n] (f32|f16), C += residual.
  const void* bias_row = nullptr;
  const void* bias_col = nullptr;
  DType bias_dtype = DType::F32;
  const float* residual = nullptr;  // same layout as C
  int64_t residual_batch_stride = 0, residual_ld = 0;
};

// How run_gemm cuts the work. K runs in k_blocks blocks of kc (the last may be shorter); per batch item the
// n_panels column panels are split into n_chunks nearly equal chunks and the m_panels row panels into m_chunks;
// one task per (batch item, column chunk, row chunk), in that order, row chunk fastest. A task packs its own B
// block per k block, so splitting rows repacks B; splitting columns costs nothing when A is read in place.
struct GemmPlan {
  int64_t kc = 0, k_blocks = 0;
  int64_t m_panels = 0, n_panels = 0;
  int64_t m_chunks = 1, n_chunks = 1;
  int64_t tasks = 0;
  int threads = 1;        // threads worth waking for this problem
  // How the micro-kernel sees A: its rows read in place (f32 with unit stride along K), its rows converted from f16
  // into scratch per panel and k block (f16 with unit stride along K), or else packed panels.
  bool a_in_place = false, a_f16_rows = false;
};
GemmPlan plan_gemm(const GemmProblem& problem, const kernels::GemmMicroKernel& kernel, int threads);

// Per-thread scratch bytes the driver needs with the active micro-kernel.
size_t gemm_scratch_bytes(const kernels::KernelTable& kernels);
size_t gemm_scratch_bytes_max();  // for any compiled level (planning happens before a level may be forced)
void run_gemm(const GemmProblem& problem, ExecContext& ctx);

// A packer for a plain strided B: element (k, n) of batch b at base + b*batch_stride + k*k_stride + n*n_stride.
struct StridedB {
  const void* base;
  DType dtype;  // f32 or f16
  int64_t batch_stride, k_stride, n_stride;
  // The level's gather_rows, which packs f32 panels with vector loads (or gathers, for a transposed B); null: scalar.
  decltype(kernels::GemmMicroKernel::gather_rows) gather_rows = nullptr;
};
void pack_b_strided(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                    float* dst);

}  // namespace ddpm
