// GroupNorm backward. With x̂ = (x − μ)·r (r = 1/√(σ² + ε)), z = γ·x̂ + β and y = z or silu(z), per sample and
// group of n = C/G·H·W values:
//
//   dz = dy            or dy·silu'(z) = dy·σ(z)·(1 + z·(1 − σ(z)))
//   g  = dz·γ          (gradient w.r.t. x̂)
//   dx = r·(g − mean(g) − x̂·mean(g·x̂))
//   dγ_c = Σ_{b, pixels} dz·x̂,   dβ_c = Σ_{b, pixels} dz
//
// μ and σ² are recomputed with the forward's own f64 reductions (same kernel table entries, same order), so x̂
// matches the forward's; the sums above are accumulated in double. Each (sample, group) of dx is one task; each
// group of dγ/dβ is one task that walks the samples in order.
#include <cmath>
#include <vector>

#include "autograd/ops_backward.h"
#include "core/half.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

double load_param(const Tensor& t, int64_t i) {
  return t.dtype == DType::F16 ? f16_to_f32(static_cast<const uint16_t*>(t.data)[i]) : t.f32()[i];
}

Tensor* norm_grad_node(Graph& g, OpKind op, Tensor* dy, const Tensor& y, int rank, const int64_t* shape) {
  if (!dy) return nullptr;
  dy = contiguous(g, dy);
  Tensor* node = g.new_node(op, DType::F32, rank, shape, {dy, y.src[0], y.src[1], y.src[2]});
  node->iparams[0] = y.iparams[0];  // groups
  node->iparams[1] = y.iparams[1];  // fused SiLU
  node->fparams[0] = y.fparams[0];  // eps
  return node;
}

struct GroupStats {
  double mean, inv_std;
};

// The forward's statistics for one (sample, group): contiguous `count` values.
GroupStats group_stats(const kernels::KernelTable& k, const float* in, int64_t count, double eps) {
  const double mean = k.sum_f64(count, in) / static_cast<double>(count);
  const double variance = k.sum_squared_deviation_f64(count, in, mean) / static_cast<double>(count);
  return {mean, 1.0 / std::sqrt(variance + eps)};
}

// dz for one value: dy, through SiLU's derivative when the forward fused it.
inline double pre_activation_grad(double dy, double x_hat, double gamma, double beta, bool silu) {
  if (!silu) return dy;
  const double z = gamma * x_hat + beta;
  const double sigmoid = 1.0 / (1.0 + std::exp(-z));
  return dy * sigmoid * (1.0 + z * (1.0 - sigmoid));
}

}  // namespace

Tensor* group_norm_grad_input(Graph& g, Tensor* dy, const Tensor& y) {
  const Tensor& x = *y.src[0];
  return norm_grad_node(g, OpKind::GroupNormGradInput, dy, y, x.rank, x.shape);  // [B, C, ...]
}

Tensor* group_norm_grad_params(Graph& g, Tensor* dy, const Tensor& y) {
  const int64_t shape[2] = {2, y.src[0]->shape[1]};
  return norm_grad_node(g, OpKind::GroupNormGradParams, dy, y, 2, shape);  // [2, C]: dγ, dβ
}

Status compute_group_norm_grad_input(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const Tensor& x = *node.src[1];
  const Tensor& gamma = *node.src[2];
  const Tensor& beta = *node.src[3];
  const int64_t batch = x.shape[0], channels = x.shape[1];
  const int64_t spatial = x.numel() / (batch * channels);
  const int64_t groups = node.iparams[0], per_group = channels / groups;
  const bool silu = node.iparams[1] != 0;
  const double eps = node.fparams[0];
  ctx.pool.run(batch * groups, [&](int64_t task, int) {
    const int64_t c0 = (task % groups) * per_group;
    const int64_t begin = ((task / groups) * channels + c0) * spatial;
    const float* in = x.f32() + begin;
    const float* grad = dy.f32() + begin;
    float* out = node.f32() + begin;
    const int64_t count = per_group * spatial;
    const GroupStats s = group_stats(ctx.kernels, in, count, eps);
    // Pass 1: g = dz·γ into the output, and its two sums.
    double sum_g = 0.0, sum_g_xhat = 0.0;
    for (int64_t c = 0; c < per_group; ++c) {
      const double gm = load_param(gamma, c0 + c), bt = load_param(beta, c0 + c);
      for (int64_t i = c * spatial; i < (c + 1) * spatial; ++i) {
        const double x_hat = (in[i] - s.mean) * s.inv_std;
        const double gx = pre_activation_grad(grad[i], x_hat, gm, bt, silu) * gm;
        out[i] = static_cast<float>(gx);
        sum_g += gx;
        sum_g_xhat += gx * x_hat;
      }
    }
    // Pass 2: dx = r·(g − mean(g) − x̂·mean(g·x̂)).
    const double mean_g = sum_g / static_cast<double>(count), mean_g_xhat = sum_g_xhat / static_cast<double>(count);
    for (int64_t i = 0; i < count; ++i) {
      const double x_hat = (in[i] - s.mean) * s.inv_std;
      out[i] = static_cast<float>(s.inv_std * (out[i] - mean_g - x_hat * mean_g_xhat));
    }
  });
  return Status();
}

Status compute_group_norm_grad_params(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const Tensor& x = *node.src[1];
  const Tensor& gamma = *node.src[2];
  const Tensor& beta = *node.src[3];
  const int64_t batch = x.shape[0], channels = x.shape[1];
  const int64_t spatial = x.numel() / (batch * channels);
  const int64_t groups = node.iparams[0], per_group = channels / groups;
  const bool silu = node.iparams[1] != 0;
  const double eps = node.fparams[0];
  float* dgamma = node.f32();            // [C]
  float* dbeta = node.f32() + channels;  // [C]
  ctx.pool.run(groups, [&](int64_t group, int) {
    const int64_t c0 = group * per_group;
    // Per-channel sums of this group; every channel adds samples in order b = 0, 1, … and pixels in order.
    std::vector<double> sum_dz_xhat(static_cast<size_t>(per_group), 0.0), sum_dz(static_cast<size_t>(per_group), 0.0);
    for (int64_t b = 0; b < batch; ++b) {
      const GroupStats s = group_stats(ctx.kernels, x.f32() + (b * channels + c0) * spatial, per_group * spatial, eps);
      for (int64_t c = 0; c < per_group; ++c) {
        const double gm = load_param(gamma, c0 + c), bt = load_param(beta, c0 + c);
        const float* in = x.f32() + (b * channels + c0 + c) * spatial;
        const float* grad = dy.f32() + (b * channels + c0 + c) * spatial;
        double a = 0.0, d = 0.0;
        for (int64_t i = 0; i < spatial; ++i) {
          const double x_hat = (in[i] - s.mean) * s.inv_std;
          const double dz = pre_activation_grad(grad[i], x_hat, gm, bt, silu);
          a += dz * x_hat;
          d += dz;
        }
        sum_dz_xhat[c] += a;
        sum_dz[c] += d;
      }
    }
    for (int64_t c = 0; c < per_group; ++c) {
      dgamma[c0 + c] = static_cast<float>(sum_dz_xhat[c]);
      dbeta[c0 + c] = static_cast<float>(sum_dz[c]);
    }
  });
  return Status();
}

}  // namespace ddpm
