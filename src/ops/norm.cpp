// GroupNorm: per sample and group, mean and biased variance over (C/G channels × H × W) accumulated in double,
// two passes (mean first, then squared deviations) as the reference requires; then one fused scale/shift per
// channel, optionally followed by SiLU (the norm→activation pair that starts every resnet branch).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/half.h"
#include "ddpm/ops.h"
#include "ops/op_exec.h"

namespace ddpm {

Tensor* group_norm(Graph& g, Tensor* x, int groups, float eps, Tensor* gamma, Tensor* beta, bool fuse_silu,
                   Tensor* channel_bias) {
  if (!x || !gamma || !beta) return nullptr;
  if (x->rank < 2 || x->dtype != DType::F32) {
    return g.fail(errorf("group_norm: expected x [B, C, ...] f32, got %s", x->shape_string().c_str()));
  }
  const int64_t c = x->shape[1];
  if (groups < 1 || c % groups != 0) {
    return g.fail(errorf("group_norm: %lld channels do not divide into %d groups", (long long)c, groups));
  }
  for (Tensor* t : {gamma, beta}) {
    if (t->rank != 1 || t->shape[0] != c || (t->dtype != DType::F32 && t->dtype != DType::F16)) {
      return g.fail(errorf("group_norm: affine parameter %s %s does not match %lld channels (f32 or f16)",
                           dtype_name(t->dtype), t->shape_string().c_str(), (long long)c));
    }
  }
  if (!(eps > 0.0f)) return g.fail(errorf("group_norm: eps must be positive"));
  if (channel_bias && (channel_bias->dtype != DType::F32 || channel_bias->numel() != x->shape[0] * c ||
                       channel_bias->shape[0] != x->shape[0])) {
    return g.fail(errorf("group_norm: channel bias %s %s does not match [%lld, %lld] f32", dtype_name(channel_bias->dtype),
                         channel_bias->shape_string().c_str(), (long long)x->shape[0], (long long)c));
  }
  x = contiguous(g, x);
  if (channel_bias) channel_bias = contiguous(g, channel_bias);
  Tensor* y = g.new_node(OpKind::GroupNorm, DType::F32, x->rank, x->shape, {x, gamma, beta, channel_bias});
  y->iparams[0] = groups;
  y->iparams[1] = fuse_silu ? 1 : 0;
  y->fparams[0] = eps;
  return y;
}

// Floats staged at a time when the output is streamed (ExecContext::stream_outputs).
constexpr int64_t kStreamPiece = 1024;

static float load_param(const Tensor& t, int64_t i) {
  return t.dtype == DType::F16 ? f16_to_f32(static_cast<const uint16_t*>(t.data)[i]) : t.f32()[i];
}

// With a channel bias, one (sample, group) of x + bias is staged here: [C/G, H·W] floats.
size_t scratch_group_norm(const Tensor& node) {
  if (!node.src[3]) return 0;
  const int64_t channels = node.shape[1], batch = node.shape[0];
  const int64_t spatial = node.numel() / (batch * channels);
  return static_cast<size_t>(channels / node.iparams[0] * spatial) * sizeof(float);
}

Status compute_group_norm(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const Tensor& gamma = *node.src[1];
  const Tensor& beta = *node.src[2];
  const Tensor* channel_bias = node.src[3];
  const int64_t batch = x.shape[0], channels = x.shape[1];
  const int64_t spatial = x.numel() / (batch * channels);
  const int64_t groups = node.iparams[0];
  const int64_t per_group = channels / groups;
  const bool silu = node.iparams[1] != 0;
  const double eps = node.fparams[0];
  const kernels::KernelTable& k = ctx.kernels;
  // Written over its input (Graph::plan), the output's lines are the ones this task just read, in this core's
  // cache: streamed they would be sent away only to be read back (measured slower on cores far apart).
  const bool stream = ctx.stream_outputs && node.data != x.data;
  ctx.pool.run(batch * groups, [&](int64_t task, int thread) {
    const int64_t b = task / groups, group = task % groups;
    const int64_t c0 = group * per_group;
    const float* in = x.f32() + (b * channels + c0) * spatial;
    if (channel_bias) {
      // The sums rounded as the Binary op's broadcast add rounds them, kept in L1/L2 for the three passes below.
      float* staged = reinterpret_cast<float*>(ctx.scratch[thread]);
      const float* bias = channel_bias->f32() + b * channels + c0;
      for (int64_t c = 0; c < per_group; ++c) k.add_scalar(spatial, in + c * spatial, bias[c], staged + c * spatial);
      in = staged;
    }
    float* out = node.f32() + (b * channels + c0) * spatial;
    const int64_t count = per_group * spatial;
    const double mean = k.sum_f64(count, in) / static_cast<double>(count);
    const double variance = k.sum_squared_deviation_f64(count, in, mean) / static_cast<double>(count);
    const double inv_std = 1.0 / std::sqrt(variance + eps);
    for (int64_t c = 0; c < per_group; ++c) {
      const double scale = inv_std * load_param(gamma, c0 + c);
      const float shift = static_cast<float>(load_param(beta, c0 + c) - mean * scale);
      const auto apply = silu ? k.affine_silu : k.affine;
      if (!stream) {
        apply(spatial, in + c * spatial, static_cast<float>(scale), shift, out + c * spatial);
        continue;
      }
      float staged[kStreamPiece];  // the same values, through L1, then streamed out
      for (int64_t i = 0; i < spatial; i += kStreamPiece) {
        const int64_t n = std::min(kStreamPiece, spatial - i);
        apply(n, in + c * spatial + i, static_cast<float>(scale), shift, staged);
        k.stream_copy(n, staged, out + c * spatial + i);
      }
    }
    if (stream) k.store_fence();
  });
  return Status();
}

}  // namespace ddpm
