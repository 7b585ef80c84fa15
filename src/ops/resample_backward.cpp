// Backward of nearest ×2 upsampling (each input pixel was copied to a 2×2 block: its gradient is the block's sum)
// and of 2×2 average pooling (each output spread ¼ of its gradient over its block; with an odd size the last
// row/column was never read and gets zero). concat_channels needs no kernel: its backward is two slices of dy.
#include <algorithm>

#include "autograd/ops_backward.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

int64_t planes_per_task(int64_t plane_elements) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_elements));
}

}  // namespace

Tensor* upsample2x_grad(Graph& g, Tensor* dy) {
  if (!dy) return nullptr;
  dy = contiguous(g, dy);  // [B, C, 2H, 2W]
  const int64_t shape[4] = {dy->shape[0], dy->shape[1], dy->shape[2] / 2, dy->shape[3] / 2};
  return g.new_node(OpKind::Upsample2xGrad, DType::F32, 4, shape, {dy});  // [B, C, H, W]
}

Tensor* avg_pool2x_grad(Graph& g, Tensor* dy, const Tensor& x) {
  if (!dy) return nullptr;
  dy = contiguous(g, dy);  // [B, C, H/2, W/2]
  return g.new_node(OpKind::AvgPool2xGrad, DType::F32, 4, x.shape, {dy});  // [B, C, H, W]
}

Status compute_upsample2x_grad(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const int64_t h = node.shape[2], w = node.shape[3];
  const int64_t planes = node.shape[0] * node.shape[1];
  const int64_t per_task = planes_per_task(4 * h * w);
  ctx.pool.run((planes + per_task - 1) / per_task, [&](int64_t task, int) {
    const int64_t end = std::min(planes, (task + 1) * per_task);
    for (int64_t p = task * per_task; p < end; ++p) {
      const float* in = dy.f32() + p * 4 * h * w;
      float* out = node.f32() + p * h * w;
      for (int64_t y = 0; y < h; ++y) {
        const float* r0 = in + 2 * y * 2 * w;
        const float* r1 = r0 + 2 * w;
        for (int64_t i = 0; i < w; ++i) out[y * w + i] = (r0[2 * i] + r0[2 * i + 1]) + (r1[2 * i] + r1[2 * i + 1]);
      }
    }
  });
  return Status();
}

Status compute_avg_pool2x_grad(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const int64_t h = node.shape[2], w = node.shape[3], oh = dy.shape[2], ow = dy.shape[3];
  const int64_t planes = node.shape[0] * node.shape[1];
  const int64_t per_task = planes_per_task(h * w);
  ctx.pool.run((planes + per_task - 1) / per_task, [&](int64_t task, int) {
    const int64_t end = std::min(planes, (task + 1) * per_task);
    for (int64_t p = task * per_task; p < end; ++p) {
      const float* in = dy.f32() + p * oh * ow;
      float* out = node.f32() + p * h * w;
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t i = 0; i < w; ++i) {
          out[y * w + i] = (y / 2 < oh && i / 2 < ow) ? in[(y / 2) * ow + i / 2] * 0.25f : 0.0f;
        }
      }
    }
  });
  return Status();
}

}  // namespace ddpm
