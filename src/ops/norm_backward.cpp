// GroupNorm backward. With x̂ = (x − μ)·r (r = 1/√(σ² + ε)), z = γ·x̂ + β and y = z or silu(z), per sample and
// group of n = C/G·H·W values:
//
//   dz = dy            or dy·silu'(z) = dy·σ(z)·(1 + z·(1 − σ(z)))
//   g  = dz·γ          (gradient w.r.t. x̂)
//   dx = r·(g − mean(g) − x̂·mean(g·x̂))
//   dγ_c = Σ_{b, pixels} dz·x̂,   dβ_c = Σ_{b, pixels} dz
//
// μ and σ² are recomputed with the forward's own f64 reductions (same kernel table entries, same order) and z
// with the forward's f32 scale/shift; elementwise work runs in f32 through the kernel table's vector rows, the
// sums above are accumulated in double. Each (sample, group) of dx is one task; each group of dγ/dβ is one task
// that walks the samples in order.
//
// When both are needed (training: x and γ, β all want gradients) the dx node also stores, per (sample, channel,
// chunk), the two double chunk sums Σ dz·x̂ and Σ dz that dγ/dβ accumulate, after its dx values; the parameter
// node then only adds them up, in the order it would have (sample, then chunk), so dγ and dβ keep every bit while
// their second pass over x and dy (statistics, x̂, SiLU derivative) disappears.
#include <algorithm>
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

// One channel of one sample: the forward's statistics and its per-channel affine, as the forward rounds them.
struct ChannelAffine {
  double inv_std;    // r
  float scale;       // γ·r, the forward's f32 scale
  float shift;       // β − μ·γ·r, the forward's f32 shift
  float xhat_scale;  // r
  float xhat_shift;  // −μ·r
};

// The forward's statistics for one (sample, group): contiguous `count` values.
void group_stats(const kernels::KernelTable& k, const float* in, int64_t count, double eps, double* mean,
                 double* inv_std) {
  *mean = k.sum_f64(count, in) / static_cast<double>(count);
  const double variance = k.sum_squared_deviation_f64(count, in, *mean) / static_cast<double>(count);
  *inv_std = 1.0 / std::sqrt(variance + eps);
}

ChannelAffine channel_affine(double mean, double inv_std, double gamma, double beta) {
  const double scale = inv_std * gamma;
  return {inv_std, static_cast<float>(scale), static_cast<float>(beta - mean * scale), static_cast<float>(inv_std),
          static_cast<float>(-mean * inv_std)};
}

// Channel values are processed in chunks of kChunk through the kernel table's vector rows (affine, exp, mul,
// f64 sums), with plain loops in between written over restrict pointers in blocks of 8 (a constant trip count
// without aliasing, which the compiler vectorises at -O2 for any target).
constexpr int64_t kChunk = 256;

// iparams of the backward nodes: groups, fused SiLU, and kPartials: the dx node stores chunk sums after dx / the
// parameter node reads them from its src[0] (that dx node).
enum NormGradParam { kGroups = 0, kSilu, kPartials };

int64_t chunks_per_channel(int64_t spatial) { return (spatial + kChunk - 1) / kChunk; }
// Floats before the chunk sums in the dx node's storage: dx, rounded up so that the doubles are aligned.
int64_t partials_offset(int64_t numel) { return (numel + 1) / 2 * 2; }

// io = r·io + b·x_hat + c, in place.
void combine_rows(int64_t n, float* __restrict__ io, const float* __restrict__ x_hat, float r, float b, float c) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int64_t j = 0; j < 8; ++j) io[i + j] = r * io[i + j] + b * x_hat[i + j] + c;
  }
  for (; i < n; ++i) io[i] = r * io[i] + b * x_hat[i] + c;
}

// For n <= kChunk values of one channel: x̂ and dz = dy (or dy·silu'(z), z = γ·x̂ + β as the forward rounds it).
void chunk_grads(const kernels::KernelTable& k, int64_t n, const float* x, const float* dy, const ChannelAffine& a,
                 bool silu, float* dz, float* x_hat) {
  k.affine(n, x, a.xhat_scale, a.xhat_shift, x_hat);
  if (!silu) {
    std::copy(dy, dy + n, dz);
    return;
  }
  float neg_z[kChunk], e[kChunk];
  k.affine(n, x, -a.scale, -a.shift, neg_z);
  k.exp_shifted_sum(n, neg_z, 0.0f, e);  // e^−z; overflow to inf gives σ = 0, as it should
  silu_backward_rows(n, dy, neg_z, e, dz);  // silu'(z) = σ(z)·(1 + z·(1 − σ(z)))
}

// Σ a_i·b_i (products rounded to f32) and Σ a_i, accumulated in double by the kernel table's reduction.
void dot_and_sum(const kernels::KernelTable& k, int64_t n, const float* a, const float* b, double* dot, double* sum) {
  float products[kChunk];
  k.mul(n, a, b, products);
  *dot += k.sum_f64(n, products);
  *sum += k.sum_f64(n, a);
}

}  // namespace

Tensor* group_norm_grad_input(Graph& g, Tensor* dy, const Tensor& y) {
  const Tensor& x = *y.src[0];
  return norm_grad_node(g, OpKind::GroupNormGradInput, dy, y, x.rank, x.shape);  // [B, C, ...]
}

void group_norm_grad_input_and_params(Graph& g, Tensor* dy, const Tensor& y, Tensor** dx, Tensor** params) {
  *dx = *params = nullptr;
  const Tensor& x = *y.src[0];
  const int64_t batch = x.shape[0], channels = x.shape[1], spatial = x.numel() / (batch * channels);
  // [dx as x.numel() floats (+1 to align), then B·C·chunks pairs of doubles (dot, sum) = 4 floats each]
  const int64_t storage[1] = {partials_offset(x.numel()) + batch * channels * chunks_per_channel(spatial) * 4};
  Tensor* fused = norm_grad_node(g, OpKind::GroupNormGradInput, dy, y, 1, storage);
  if (!fused) return;
  fused->iparams[kPartials] = 1;
  int64_t stride[kMaxRank];
  int64_t step = 1;
  for (int i = x.rank - 1; i >= 0; --i) {
    stride[i] = step;
    step *= x.shape[i];
  }
  *dx = g.new_view(fused, x.rank, x.shape, stride, 0);  // [B, C, ...]
  const int64_t shape[2] = {2, channels};
  *params = g.new_node(OpKind::GroupNormGradParams, DType::F32, 2, shape, {fused, y.src[0]});  // [2, C]: dγ, dβ
  (*params)->iparams[kGroups] = y.iparams[0];
  (*params)->iparams[kPartials] = 1;
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
  const kernels::KernelTable& k = ctx.kernels;
  const int64_t chunks = chunks_per_channel(spatial);
  double* partials = node.iparams[kPartials]  // [B, C, chunks, 2]
                         ? reinterpret_cast<double*>(node.f32() + partials_offset(x.numel()))
                         : nullptr;
  ctx.pool.run(batch * groups, [&](int64_t task, int) {
    const int64_t c0 = (task % groups) * per_group;
    const int64_t begin = ((task / groups) * channels + c0) * spatial;
    const float* in = x.f32() + begin;
    const float* grad = dy.f32() + begin;
    float* out = node.f32() + begin;
    double mean, inv_std;
    group_stats(k, in, per_group * spatial, eps, &mean, &inv_std);
    float dz[kChunk], x_hat[kChunk];
    // Pass 1: g = dz·γ into the output, and the group's sums Σ g = Σ_c γ_c·Σ dz and Σ g·x̂ = Σ_c γ_c·Σ dz·x̂,
    // from the same chunk sums dγ/dβ take (one pass over each chunk's products instead of two).
    double sum_g = 0.0, sum_g_xhat = 0.0;
    for (int64_t c = 0; c < per_group; ++c) {
      const double gm = load_param(gamma, c0 + c);
      const ChannelAffine a = channel_affine(mean, inv_std, gm, load_param(beta, c0 + c));
      const float gmf = static_cast<float>(gm);
      for (int64_t i0 = c * spatial; i0 < (c + 1) * spatial; i0 += kChunk) {
        const int64_t n = std::min(kChunk, (c + 1) * spatial - i0);
        chunk_grads(k, n, in + i0, grad + i0, a, silu, dz, x_hat);
        double dot = 0.0, sum = 0.0;
        dot_and_sum(k, n, dz, x_hat, &dot, &sum);
        if (partials) {  // dγ/dβ's chunk sums, as compute_group_norm_grad_params forms them
          double* p = partials + (((task / groups) * channels + c0 + c) * chunks + (i0 - c * spatial) / kChunk) * 2;
          p[0] = dot;
          p[1] = sum;
        }
        sum_g_xhat += gm * dot;
        sum_g += gm * sum;
        k.mul_scalar(n, dz, gmf, out + i0);
      }
    }
    // Pass 2: dx = r·(g − mean(g) − x̂·mean(g·x̂)).
    const double count = static_cast<double>(per_group * spatial);
    const float r = static_cast<float>(inv_std);
    const float b = static_cast<float>(-inv_std * sum_g_xhat / count);
    const float c = static_cast<float>(-inv_std * sum_g / count);
    const float xhat_scale = static_cast<float>(inv_std), xhat_shift = static_cast<float>(-mean * inv_std);
    for (int64_t i0 = 0; i0 < per_group * spatial; i0 += kChunk) {
      const int64_t n = std::min(kChunk, per_group * spatial - i0);
      k.affine(n, in + i0, xhat_scale, xhat_shift, x_hat);
      combine_rows(n, out + i0, x_hat, r, b, c);
    }
  });
  return Status();
}

// dγ/dβ from the dx node's chunk sums: the same additions in the same order as the loop below.
void sum_partials(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[1];
  const int64_t batch = x.shape[0], channels = x.shape[1];
  const int64_t chunks = chunks_per_channel(x.numel() / (batch * channels));
  const double* partials = reinterpret_cast<const double*>(node.src[0]->f32() + partials_offset(x.numel()));
  float* dgamma = node.f32();            // [C]
  float* dbeta = node.f32() + channels;  // [C]
  ctx.pool.run(node.iparams[kGroups], [&](int64_t group, int) {
    const int64_t per_group = channels / node.iparams[kGroups];
    for (int64_t c = group * per_group; c < (group + 1) * per_group; ++c) {
      double dot = 0.0, sum = 0.0;
      for (int64_t b = 0; b < batch; ++b) {
        const double* p = partials + (b * channels + c) * chunks * 2;
        for (int64_t i = 0; i < chunks; ++i) {
          dot += p[2 * i];
          sum += p[2 * i + 1];
        }
      }
      dgamma[c] = static_cast<float>(dot);
      dbeta[c] = static_cast<float>(sum);
    }
  });
}

Status compute_group_norm_grad_params(const Tensor& node, ExecContext& ctx) {
  if (node.iparams[kPartials]) {
    sum_partials(node, ctx);
    return Status();
  }
  const Tensor& dy = *node.src[0];
  const Tensor& x = *node.src[1];
  const Tensor& gamma = *node.src[2];
  const Tensor& beta = *node.src[3];
  const int64_t batch = x.shape[0], channels = x.shape[1];
  const int64_t spatial = x.numel() / (batch * channels);
  const int64_t groups = node.iparams[0], per_group = channels / groups;
  const bool silu = node.iparams[1] != 0;
  const double eps = node.fparams[0];
  const kernels::KernelTable& k = ctx.kernels;
  float* dgamma = node.f32();            // [C]
  float* dbeta = node.f32() + channels;  // [C]
  ctx.pool.run(groups, [&](int64_t group, int) {
    const int64_t c0 = group * per_group;
    // Per-channel sums of this group; every channel adds samples in order b = 0, 1, … and chunks in order.
    std::vector<double> sum_dz_xhat(static_cast<size_t>(per_group), 0.0), sum_dz(static_cast<size_t>(per_group), 0.0);
    float dz[kChunk], x_hat[kChunk];
    for (int64_t b = 0; b < batch; ++b) {
      double mean, inv_std;
      group_stats(k, x.f32() + (b * channels + c0) * spatial, per_group * spatial, eps, &mean, &inv_std);
      for (int64_t c = 0; c < per_group; ++c) {
        const ChannelAffine a = channel_affine(mean, inv_std, load_param(gamma, c0 + c), load_param(beta, c0 + c));
        const float* in = x.f32() + (b * channels + c0 + c) * spatial;
        const float* grad = dy.f32() + (b * channels + c0 + c) * spatial;
        for (int64_t i0 = 0; i0 < spatial; i0 += kChunk) {
          const int64_t n = std::min(kChunk, spatial - i0);
          chunk_grads(k, n, in + i0, grad + i0, a, silu, dz, x_hat);
          dot_and_sum(k, n, dz, x_hat, &sum_dz_xhat[c], &sum_dz[c]);
        }
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
