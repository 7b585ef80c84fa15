// Softmax backward. With y = softmax(x) along a row: dx_i = y_i·(dy_i − Σ_j dy_j·y_j). The row's dot product is
// accumulated in double (four interleaved partial sums, always combined the same way); each row is one task.
#include <algorithm>

#include "autograd/ops_backward.h"
#include "ops/op_exec.h"

namespace ddpm {

Tensor* softmax_grad(Graph& g, Tensor* dy, Tensor* y) {
  if (!dy || !y) return nullptr;
  dy = contiguous(g, dy);
  return g.new_node(OpKind::SoftmaxGrad, DType::F32, y->rank, y->shape, {dy, y});
}

Status compute_softmax_grad(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const Tensor& y = *node.src[1];
  const int64_t cols = node.shape[node.rank - 1];
  const int64_t rows = node.numel() / cols;
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / cols);
  ctx.pool.run((rows + rows_per_task - 1) / rows_per_task, [&](int64_t task, int) {
    const int64_t end = std::min(rows, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < end; ++r) {
      const float* d = dy.f32() + r * cols;
      const float* p = y.f32() + r * cols;
      float* out = node.f32() + r * cols;
      // Four interleaved partial sums (a fixed order) keep the f64 adds from serialising on their latency.
      double part[4] = {0.0, 0.0, 0.0, 0.0};
      int64_t i = 0;
      for (; i + 4 <= cols; i += 4) {
        for (int j = 0; j < 4; ++j) part[j] += static_cast<double>(d[i + j]) * p[i + j];
      }
      for (; i < cols; ++i) part[0] += static_cast<double>(d[i]) * p[i];
      const float shift = static_cast<float>((part[0] + part[1]) + (part[2] + part[3]));
      for (int64_t i = 0; i < cols; ++i) out[i] = p[i] * (d[i] - shift);
    }
  });
  return Status();
}

}  // namespace ddpm
