// conv2d as an implicit GEMM: C[Co × Ho·Wo] = W[Co × Ci·kh·kw] · im2col(x)[Ci·kh·kw × Ho·Wo] per image.
// im2col is never materialised: the GEMM driver asks for one KC × NC block at a time and pack_im2col builds it
// straight into the packed panel layout, copying contiguous runs of input rows where the stride allows.
#include <algorithm>
#include <cstring>

#include "ddpm/ops.h"
#include "ops/gemm.h"

namespace ddpm {
namespace {

// iparams layout of a Conv2d node.
enum ConvParam { kStride = 0, kPadTop, kPadLeft, kPadBottom, kPadRight };

struct Im2col {
  const float* x;  // [B, Ci, H, W]
  int64_t channels, height, width, kernel_h, kernel_w, out_width;
  int64_t stride, pad_top, pad_left;
};

void pack_im2col(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                 float* dst) {
  const Im2col& g = *static_cast<const Im2col*>(context);
  const float* image = g.x + batch * g.channels * g.height * g.width;
  const int64_t taps = g.kernel_h * g.kernel_w;
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t kk = k0 + k;
    const int64_t channel = kk / taps, tap = kk % taps;
    const int64_t u = tap / g.kernel_w, v = tap % g.kernel_w;
    const float* plane = image + channel * g.height * g.width;
    // Walk the columns n0..n0+nc in runs that share an output row and a packed panel.
    int64_t n = n0;
    while (n < n0 + nc) {
      const int64_t oy = n / g.out_width, ox = n % g.out_width;
      const int64_t lane = (n - n0) % nr;
      const int64_t run = std::min({g.out_width - ox, static_cast<int64_t>(nr) - lane, n0 + nc - n});
      float* out = dst + ((n - n0) / nr) * kc * nr + k * nr + lane;
      const int64_t iy = oy * g.stride + u - g.pad_top;
      if (iy < 0 || iy >= g.height) {
        std::memset(out, 0, static_cast<size_t>(run) * sizeof(float));
      } else {
        const float* row = plane + iy * g.width;
        const int64_t ix0 = ox * g.stride + v - g.pad_left;
        if (g.stride == 1) {
          // Valid input columns form one contiguous span; zeros on either side.
          const int64_t first = std::clamp<int64_t>(-ix0, 0, run);
          const int64_t last = std::clamp<int64_t>(g.width - ix0, first, run);
          for (int64_t i = 0; i < first; ++i) out[i] = 0.0f;
          std::memcpy(out + first, row + ix0 + first, static_cast<size_t>(last - first) * sizeof(float));
          for (int64_t i = last; i < run; ++i) out[i] = 0.0f;
        } else {
          for (int64_t i = 0; i < run; ++i) {
            const int64_t ix = ix0 + i * g.stride;
            out[i] = (ix >= 0 && ix < g.width) ? row[ix] : 0.0f;
          }
        }
      }
      n += run;
    }
    // Zero the padding columns of the last panel.
    const int64_t tail = nc % nr;
    if (tail) {
      float* out = dst + (nc / nr) * kc * nr + k * nr;
      for (int64_t i = tail; i < nr; ++i) out[i] = 0.0f;
    }
  }
}

}  // namespace

Tensor* conv2d(Graph& g, Tensor* x, Tensor* weight, Tensor* bias, const Conv2dParams& p, Tensor* residual) {
  if (!x || !weight) return nullptr;
  if (x->rank != 4 || weight->rank != 4 || x->dtype != DType::F32) {
    return g.fail(errorf("conv2d: expected x [B,Ci,H,W] f32 and weight [Co,Ci,kh,kw], got x %s and weight %s",
                         x->shape_string().c_str(), weight->shape_string().c_str()));
  }
  if (weight->dtype != DType::F32 && weight->dtype != DType::F16) {
    return g.fail(errorf("conv2d: weight type %s is not supported", dtype_name(weight->dtype)));
  }
  if (x->shape[1] != weight->shape[1]) {
    return g.fail(errorf("conv2d: input has %lld channels but weight %s expects %lld", (long long)x->shape[1],
                         weight->shape_string().c_str(), (long long)weight->shape[1]));
  }
  if (p.stride < 1 || p.pad_top < 0 || p.pad_left < 0 || p.pad_bottom < 0 || p.pad_right < 0) {
    return g.fail(errorf("conv2d: invalid stride %d or padding", p.stride));
  }
  const int64_t co = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
  const int64_t padded_h = x->shape[2] + p.pad_top + p.pad_bottom, padded_w = x->shape[3] + p.pad_left + p.pad_right;
  if (padded_h < kh || padded_w < kw) {
    return g.fail(errorf("conv2d: kernel %lldx%lld larger than padded input %s", (long long)kh, (long long)kw,
                         x->shape_string().c_str()));
  }
  const int64_t out_shape[4] = {x->shape[0], co, (padded_h - kh) / p.stride + 1, (padded_w - kw) / p.stride + 1};
  if (bias && (bias->rank != 1 || bias->shape[0] != co || bias->dtype == DType::I32)) {
    return g.fail(errorf("conv2d: bias %s does not match %lld output channels", bias->shape_string().c_str(),
                         (long long)co));
  }
  if (residual) {
    bool same = residual->rank == 4 && residual->dtype == DType::F32;
    for (int i = 0; same && i < 4; ++i) same = residual->shape[i] == out_shape[i];
    if (!same) {
      return g.fail(errorf("conv2d: residual %s does not match output [%lld, %lld, %lld, %lld]",
                           residual->shape_string().c_str(), (long long)out_shape[0], (long long)out_shape[1],
                           (long long)out_shape[2], (long long)out_shape[3]));
    }
  }
  x = contiguous(g, x);
  if (residual) residual = contiguous(g, residual);
  if (!weight->is_contiguous()) weight = contiguous(g, weight);
  Tensor* y = g.new_node(OpKind::Conv2d, DType::F32, 4, out_shape, {x, weight, bias, residual});
  y->iparams[kStride] = p.stride;
  y->iparams[kPadTop] = p.pad_top;
  y->iparams[kPadLeft] = p.pad_left;
  y->iparams[kPadBottom] = p.pad_bottom;
  y->iparams[kPadRight] = p.pad_right;
  return y;
}

size_t scratch_conv2d(const Tensor&) { return gemm_scratch_bytes_max(); }

Status compute_conv2d(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const Tensor& w = *node.src[1];
  const Tensor* bias = node.src[2];
  const Tensor* residual = node.src[3];
  Im2col im2col{x.f32(), x.shape[1], x.shape[2], x.shape[3], w.shape[2], w.shape[3], node.shape[3],
                node.iparams[kStride], node.iparams[kPadTop], node.iparams[kPadLeft]};
  GemmProblem p;
  p.batch = x.shape[0];
  p.M = w.shape[0];
  p.N = node.shape[2] * node.shape[3];
  p.K = w.shape[1] * w.shape[2] * w.shape[3];
  p.a = w.data;
  p.a_dtype = w.dtype;
  p.a_row_stride = p.K;
  p.a_col_stride = 1;
  p.pack_b = pack_im2col;
  p.pack_b_context = &im2col;
  p.c = node.f32();
  p.ldc = p.N;
  p.c_batch_stride = p.M * p.N;
  if (bias) {
    p.bias_row = bias->data;
    p.bias_dtype = bias->dtype;
  }
  if (residual) {
    p.residual = residual->f32();
    p.residual_ld = p.N;
    p.residual_batch_stride = p.M * p.N;
  }
  run_gemm(p, ctx);
  return Status();
}

}  // namespace ddpm
