// Mean squared error, forward and backward side by side.
//
//   loss = Σ (p − t)² / N            accumulated in double over fixed chunks of kChunk elements; the chunk sums
//                                    are added in chunk order, so the result does not depend on the thread count
//   dp   = dloss · 2·(p − t) / N     dt = −dp
#include <algorithm>
#include <vector>

#include "autograd/ops_backward.h"
#include "ddpm/autograd.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

constexpr int64_t kChunk = 16384;

bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; ++i) {
    if (a.shape[i] != b.shape[i]) return false;
  }
  return true;
}

}  // namespace

Tensor* mse_loss(Graph& g, Tensor* prediction, Tensor* target) {
  if (!prediction || !target) return nullptr;
  if (prediction->dtype != DType::F32 || target->dtype != DType::F32 || !same_shape(*prediction, *target)) {
    return g.fail(errorf("mse_loss: expected two f32 tensors of the same shape, got %s %s and %s %s",
                         dtype_name(prediction->dtype), prediction->shape_string().c_str(), dtype_name(target->dtype),
                         target->shape_string().c_str()));
  }
  prediction = contiguous(g, prediction);
  target = contiguous(g, target);
  const int64_t shape[1] = {1};
  return g.new_node(OpKind::MseLoss, DType::F32, 1, shape, {prediction, target});  // [1]
}

Status compute_mse_loss(const Tensor& node, ExecContext& ctx) {
  const float* p = node.src[0]->f32();
  const float* t = node.src[1]->f32();
  const int64_t n = node.src[0]->numel();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
  ctx.pool.run(chunks, [&](int64_t chunk, int) {
    const int64_t end = std::min(n, (chunk + 1) * kChunk);
    double sum = 0.0;
    for (int64_t i = chunk * kChunk; i < end; ++i) {
      const double d = static_cast<double>(p[i]) - t[i];
      sum += d * d;
    }
    partial[static_cast<size_t>(chunk)] = sum;
  });
  double sum = 0.0;
  for (double s : partial) sum += s;
  node.f32()[0] = static_cast<float>(sum / static_cast<double>(n));
  return Status();
}

Tensor* mse_loss_grad(Graph& g, Tensor* dloss, Tensor* prediction, Tensor* target, float sign) {
  if (!dloss || !prediction || !target) return nullptr;
  Tensor* grad = g.new_node(OpKind::MseLossGrad, DType::F32, prediction->rank, prediction->shape,
                            {contiguous(g, dloss), prediction, target});
  grad->fparams[0] = sign;
  return grad;
}

Status compute_mse_loss_grad(const Tensor& node, ExecContext& ctx) {
  const float* p = node.src[1]->f32();
  const float* t = node.src[2]->f32();
  const int64_t n = node.numel();
  const float factor =
      static_cast<float>(static_cast<double>(node.fparams[0]) * 2.0 * node.src[0]->f32()[0] / static_cast<double>(n));
  float* out = node.f32();
  ctx.pool.run((n + kChunk - 1) / kChunk, [&](int64_t chunk, int) {
    const int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (int64_t i = chunk * kChunk; i < end; ++i) out[i] = factor * (p[i] - t[i]);
  });
  return Status();
}

}  // namespace ddpm
