// Channel concat (U-Net skip connections), nearest ×2 upsampling and 2×2 average pooling.
#include <algorithm>
#include <cstring>

#include "ddpm/ops.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

bool is_image(const Tensor* t) { return t->rank == 4 && t->dtype == DType::F32; }

// Floats of an upsampled row staged at a time when outputs are streamed (ExecContext::stream_outputs).
constexpr int64_t kStreamRow = 512;

// Planes (one channel of one image) per task: about 16K floats of output each.
int64_t planes_per_task(int64_t plane_elements) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_elements)); }

}  // namespace

Tensor* concat_channels(Graph& g, Tensor* a, Tensor* b) {
  if (!a || !b) return nullptr;
  if (!is_image(a) || !is_image(b) || a->shape[0] != b->shape[0] || a->shape[2] != b->shape[2] ||
      a->shape[3] != b->shape[3]) {
    return g.fail(errorf("concat_channels: %s and %s differ outside the channel dim", a->shape_string().c_str(),
                         b->shape_string().c_str()));
  }
  a = contiguous(g, a);
  b = contiguous(g, b);
  const int64_t shape[4] = {a->shape[0], a->shape[1] + b->shape[1], a->shape[2], a->shape[3]};
  return g.new_node(OpKind::Concat, DType::F32, 4, shape, {a, b});
}

Tensor* upsample_nearest2x(Graph& g, Tensor* x) {
  if (!x) return nullptr;
  if (!is_image(x)) return g.fail(errorf("upsample_nearest2x: expected [B,C,H,W] f32, got %s", x->shape_string().c_str()));
  x = contiguous(g, x);
  const int64_t shape[4] = {x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]};
  return g.new_node(OpKind::Upsample2x, DType::F32, 4, shape, {x});
}

Tensor* avg_pool2x(Graph& g, Tensor* x) {
  if (!x) return nullptr;
  if (!is_image(x) || x->shape[2] < 2 || x->shape[3] < 2) {
    return g.fail(errorf("avg_pool2x: expected [B,C,H,W] f32 with H, W >= 2, got %s", x->shape_string().c_str()));
  }
  x = contiguous(g, x);
  const int64_t shape[4] = {x->shape[0], x->shape[1], x->shape[2] / 2, x->shape[3] / 2};
  return g.new_node(OpKind::AvgPool2x, DType::F32, 4, shape, {x});
}

Status compute_concat(const Tensor& node, ExecContext& ctx) {
  const Tensor& a = *node.src[0];
  const Tensor& b = *node.src[1];
  const int64_t plane = node.shape[2] * node.shape[3];
  const int64_t channels = node.shape[1], ca = a.shape[1], cb = b.shape[1];
  const int64_t planes = node.shape[0] * channels;
  const int64_t per_task = planes_per_task(plane);
  ctx.pool.run((planes + per_task - 1) / per_task, [&](int64_t task, int) {
    const int64_t end = std::min(planes, (task + 1) * per_task);
    for (int64_t p = task * per_task; p < end; ++p) {
      const int64_t image = p / channels, c = p % channels;
      const float* src = c < ca ? a.f32() + (image * ca + c) * plane : b.f32() + (image * cb + c - ca) * plane;
      if (ctx.stream_outputs) ctx.kernels.stream_copy(plane, src, node.f32() + p * plane);
      else std::memcpy(node.f32() + p * plane, src, static_cast<size_t>(plane) * sizeof(float));
    }
    if (ctx.stream_outputs) ctx.kernels.store_fence();
  });
  return Status();
}

Status compute_upsample2x(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const int64_t h = x.shape[2], w = x.shape[3];
  const int64_t planes = x.shape[0] * x.shape[1];
  const int64_t per_task = planes_per_task(4 * h * w);
  ctx.pool.run((planes + per_task - 1) / per_task, [&](int64_t task, int) {
    const int64_t end = std::min(planes, (task + 1) * per_task);
    // Streamed, an output row is made in L1 (up to kStreamRow floats at a time) and written twice from there.
    float staged[kStreamRow];
    for (int64_t p = task * per_task; p < end; ++p) {
      const float* in = x.f32() + p * h * w;
      float* out = node.f32() + p * 4 * h * w;
      for (int64_t y = 0; y < h; ++y) {
        float* row = out + 2 * y * 2 * w;
        if (!ctx.stream_outputs) {
          for (int64_t i = 0; i < w; ++i) row[2 * i] = row[2 * i + 1] = in[y * w + i];
          std::memcpy(row + 2 * w, row, static_cast<size_t>(2 * w) * sizeof(float));
          continue;
        }
        for (int64_t i0 = 0; i0 < w; i0 += kStreamRow / 2) {
          const int64_t n = std::min(kStreamRow / 2, w - i0);
          for (int64_t i = 0; i < n; ++i) staged[2 * i] = staged[2 * i + 1] = in[y * w + i0 + i];
          ctx.kernels.stream_copy(2 * n, staged, row + 2 * i0);
          ctx.kernels.stream_copy(2 * n, staged, row + 2 * w + 2 * i0);
        }
      }
    }
    if (ctx.stream_outputs) ctx.kernels.store_fence();
  });
  return Status();
}

Status compute_avg_pool2x(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const int64_t h = x.shape[2], w = x.shape[3], oh = node.shape[2], ow = node.shape[3];
  const int64_t planes = x.shape[0] * x.shape[1];
  const int64_t per_task = planes_per_task(oh * ow);
  ctx.pool.run((planes + per_task - 1) / per_task, [&](int64_t task, int) {
    const int64_t end = std::min(planes, (task + 1) * per_task);
    for (int64_t p = task * per_task; p < end; ++p) {
      const float* in = x.f32() + p * h * w;
      float* out = node.f32() + p * oh * ow;
      for (int64_t y = 0; y < oh; ++y) {
        const float* r0 = in + 2 * y * w;
        const float* r1 = r0 + w;
        for (int64_t i = 0; i < ow; ++i) {
          out[y * ow + i] = ((r0[2 * i] + r0[2 * i + 1]) + (r1[2 * i] + r1[2 * i + 1])) * 0.25f;
        }
      }
    }
  });
  return Status();
}

}  // namespace ddpm
