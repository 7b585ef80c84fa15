// Softmax along the last dim, with the row max subtracted first so exp never overflows.
#include <algorithm>

#include "ddpm/ops.h"
#include "ops/op_exec.h"

namespace ddpm {

Tensor* softmax(Graph& g, Tensor* x, float input_scale) {
  if (!x) return nullptr;
  if (x->dtype != DType::F32) return g.fail(errorf("softmax: expected f32, got %s", dtype_name(x->dtype)));
  x = contiguous(g, x);
  Tensor* y = g.new_node(OpKind::Softmax, DType::F32, x->rank, x->shape, {x});
  y->fparams[0] = input_scale;
  return y;
}

Status compute_softmax(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const int64_t cols = node.shape[node.rank - 1];
  const int64_t rows = node.numel() / cols;
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / cols);
  const float input_scale = node.fparams[0];
  const kernels::KernelTable& k = ctx.kernels;
  ctx.pool.run((rows + rows_per_task - 1) / rows_per_task, [&](int64_t task, int) {
    const int64_t end = std::min(rows, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < end; ++r) {
      const float* in = x.f32() + r * cols;
      float* out = node.f32() + r * cols;
      if (input_scale != 1.0f) {
        // The scaled logits are rounded to f32 as the Scale op rounds them, in the output row (cache-hot), and
        // exponentiated in place.
        k.mul_scalar(cols, in, input_scale, out);
        in = out;
      }
      const float row_max = k.max(cols, in);
      const float sum = k.exp_shifted_sum(cols, in, row_max, out);
      k.mul_scalar(cols, out, 1.0f / sum, out);
    }
  });
  return Status();
}

}  // namespace ddpm
