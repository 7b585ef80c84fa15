// The blocked GEMM driver shared by conv2d and matmul: C[M×N] = A[M×K] · B[K×N] (+ bias) (+ residual).
//
// A is read through strides (any layout, f32 or f16) and packed per micro-panel; B is produced by a packer
// callback, which is how conv2d computes im2col tile by tile instead of materialising it. Work is cut into tasks
// of (batch, block of NC columns, chunk of rows); the k loop runs in fixed KC blocks in every task, so each output
// element sees the same sequence of operations whatever the thread count or the task split.
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

// Per-thread scratch bytes the driver needs with the active micro-kernel.
size_t gemm_scratch_bytes(const kernels::KernelTable& kernels);
size_t gemm_scratch_bytes_max();  // for any compiled level (planning happens before a level may be forced)
void run_gemm(const GemmProblem& problem, ExecContext& ctx);

// A packer for a plain strided B: element (k, n) of batch b at base + b*batch_stride + k*k_stride + n*n_stride.
struct StridedB {
  const void* base;
  DType dtype;  // f32 or f16
  int64_t batch_stride, k_stride, n_stride;
};
void pack_b_strided(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                    float* dst);

}  // namespace ddpm
