// Softmax backward. With y = softmax(x) along a row: dx_i = y_i·(dy_i − Σ_j dy_j·y_j), through the kernel table's
// vector rows; the row's dot product is accumulated in double. Each row is one task.
#include <algorithm>

#include "autograd/ops_backward.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

constexpr int64_t kChunk = 1024;

}  // namespace

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
  const kernels::KernelTable& k = ctx.kernels;
  ctx.pool.run((rows + rows_per_task - 1) / rows_per_task, [&](int64_t task, int) {
    const int64_t end = std::min(rows, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < end; ++r) {
      const float* d = dy.f32() + r * cols;
      const float* p = y.f32() + r * cols;
      float* out = node.f32() + r * cols;
      // Σ dy·y: products rounded to f32, summed in double by the kernel table's reduction (a fixed order per
      // level), in chunks that fit a stack buffer.
      double dot = 0.0;
      float products[kChunk];
      for (int64_t i = 0; i < cols; i += kChunk) {
        const int64_t n = std::min(kChunk, cols - i);
        k.mul(n, d + i, p + i, products);
        dot += k.sum_f64(n, products);
      }
      k.add_scalar(cols, d, static_cast<float>(-dot), out);  // dy − Σ dy·y
      k.mul(cols, out, p, out);                               // · y
    }
  });
  return Status();
}

}  // namespace ddpm
