// How the executor runs one node: every op family (src/ops/<family>.cpp) provides a compute function and, when it
// needs temporary memory, the per-thread scratch size. The executor (src/graph/graph.cpp) dispatches on OpKind.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ddpm/status.h"
#include "ddpm/tensor.h"
#include "ddpm/threadpool.h"
#include "kernels/registry.h"

namespace ddpm {

class PackedWeights;  // src/ops/qgemm.h

struct ExecContext {
  ThreadPool& pool;
  uint8_t* const* scratch;  // scratch[thread], each scratch_bytes long, 64-byte aligned
  size_t scratch_bytes;
  const kernels::KernelTable& kernels;
  // One buffer for all threads of an op (64-byte aligned; null when no op asked for one): e.g. weights unpacked
  // once per op instead of once per task (run_qgemm). Ops must work, maybe slower, without it.
  uint8_t* shared = nullptr;
  size_t shared_bytes = 0;
  // Weights decoded or transformed once and kept across compute() calls (run_qgemm, run_conv2d_winograd); null:
  // derived again at every use.
  PackedWeights* packed_weights = nullptr;
  // Ops whose output other cores will read write it with KernelTable::stream_copy (then store_fence at the end of
  // each task): see stream_outputs_for.
  bool stream_outputs = false;
};

// Whether a graph run on `pool` streams its ops' outputs: with more than one thread on cores far apart
// (ThreadPool::cores_far_apart), unless DDPM_STREAM_OUTPUTS=0|1 or set_stream_outputs says otherwise. Bits are the
// same either way (a copy changes none).
enum class StreamOutputs { kAuto, kOn, kOff };
void set_stream_outputs(StreamOutputs mode);  // for tests
bool stream_outputs_for(ThreadPool& pool);

using ComputeFn = Status (*)(const Tensor& node, ExecContext& ctx);
using ScratchFn = size_t (*)(const Tensor& node);

struct OpExec {
  ComputeFn compute;
  ScratchFn scratch_bytes;  // may be null: no scratch
  ScratchFn shared_bytes = nullptr;  // may be null: no ExecContext::shared buffer
  // The output may take src[0]'s memory when nothing reads src[0] afterwards (Graph::plan checks that, and the
  // sizes): every task reads each input element it overwrites before writing it, and no other task reads it.
  bool may_overwrite_input = false;
};

const OpExec& op_exec(OpKind op);

// Per-family entry points (defined in src/ops/*.cpp).
Status compute_contiguous(const Tensor& node, ExecContext& ctx);
Status compute_conv2d(const Tensor& node, ExecContext& ctx);
size_t scratch_conv2d(const Tensor& node);
size_t shared_conv2d(const Tensor& node);
Status compute_matmul(const Tensor& node, ExecContext& ctx);
size_t scratch_matmul(const Tensor& node);
size_t shared_matmul(const Tensor& node);
Status compute_group_norm(const Tensor& node, ExecContext& ctx);
size_t scratch_group_norm(const Tensor& node);
Status compute_unary(const Tensor& node, ExecContext& ctx);
Status compute_binary(const Tensor& node, ExecContext& ctx);
Status compute_concat(const Tensor& node, ExecContext& ctx);
Status compute_upsample2x(const Tensor& node, ExecContext& ctx);
Status compute_avg_pool2x(const Tensor& node, ExecContext& ctx);
Status compute_softmax(const Tensor& node, ExecContext& ctx);
Status compute_timestep_embedding(const Tensor& node, ExecContext& ctx);
Status compute_get_rows(const Tensor& node, ExecContext& ctx);
// Training: src/autograd/mse_loss.cpp and src/ops/*_backward.cpp.
Status compute_mse_loss(const Tensor& node, ExecContext& ctx);
Status compute_mse_loss_grad(const Tensor& node, ExecContext& ctx);
Status compute_sum_to(const Tensor& node, ExecContext& ctx);
Status compute_view_grad(const Tensor& node, ExecContext& ctx);
Status compute_conv2d_grad_input(const Tensor& node, ExecContext& ctx);
Status compute_conv2d_grad_weight(const Tensor& node, ExecContext& ctx);
size_t scratch_conv2d_grad(const Tensor& node);
size_t shared_conv2d_grad_input(const Tensor& node);  // the phase split of a strided dx
Status compute_group_norm_grad_input(const Tensor& node, ExecContext& ctx);
Status compute_group_norm_grad_params(const Tensor& node, ExecContext& ctx);
Status compute_silu_grad(const Tensor& node, ExecContext& ctx);
Status compute_softmax_grad(const Tensor& node, ExecContext& ctx);
Status compute_upsample2x_grad(const Tensor& node, ExecContext& ctx);
Status compute_avg_pool2x_grad(const Tensor& node, ExecContext& ctx);
Status compute_get_rows_grad(const Tensor& node, ExecContext& ctx);

// Unary op codes (iparams[0]).
enum class UnaryOp : int64_t { Silu = 0, Scale = 1 };
// Binary op codes (iparams[0]).
enum class BinaryOp : int64_t { Add = 0, Mul = 1 };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits [0, n) into `parts` nearly equal ranges; range `i` is [begin, end).
inline void split_range(int64_t n, int64_t parts, int64_t i, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, extra = n % parts;
  *begin = i * base + (i < extra ? i : extra);
  *end = *begin + base + (i < extra ? 1 : 0);
}

}  // namespace ddpm
