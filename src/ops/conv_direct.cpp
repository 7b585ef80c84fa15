// conv2d computed directly (no im2col) when K = Ci·kh·kw is small: the first conv of a U-Net on gray or RGB
// images (1 or 3 input channels), and the stride-1 dx of its last conv (one channel of dy in).
//
// Why: the implicit GEMM packs a K × N block of im2col for every output tile column, and with K = 9 that packing
// costs as much as the 9 FMAs per output it feeds (1→32 @28² ran at a third of OpenBLAS's sgemm rate). The direct
// kernel (kernels::DirectConv) loads each shifted input vector once per tap and uses it for a block of output
// channels with broadcast weights, so nothing is packed. Its order of operations is the GEMM path's (one chain
// in k = (ci, u, v) order, then bias, then residual), so which path runs never changes a bit.
//
// The rule: K ≤ 36 (Ci ≤ 4 at 3×3) with stride 1, K ≤ 18 otherwise. Measured side by side (AVX-512, 1 and 2
// threads, Ci→32 @28², Ci→128 @32², Ci→64 @28² stride 2): stride 1 runs 1.1–2× the GEMM's rate up to Ci = 4 and
// about level with it from Ci = 6 to 16, where the GEMM's cache blocking is the safer choice for large images;
// stride 2 (14-wide output rows half-fill the 32-lane tile) wins up to Ci = 2 and loses ~10 % from Ci = 3.
//
// Work: per image, bands of output rows; each task stages its band's input rows, zero-padded and split into
// stride phases (so every tap of a stride-2 conv reads consecutive floats), in its scratch, then runs the kernel
// over every output channel. Bands depend only on the shape and the thread count, and every output element is
// computed by one kernel call in a fixed order, so results are the same for any thread count.
#include "ops/conv_direct.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "core/half.h"

namespace ddpm {
namespace {

constexpr int64_t kDefaultMaxK = 36, kStridedMaxK = 18;
static_assert(kDefaultMaxK <= kernels::kDirectConvMaxK, "the kernels' tap tables bound K");
std::atomic<int64_t> max_k{kDefaultMaxK};

// Staged input floats one task aims to hold (its band's rows): 64 KiB, in L2 next to the band's output.
constexpr int64_t kStageBudget = 16 * 1024;
// Below this many multiply-adds per band (~3 µs at one core) rows are not split across threads: waking a second
// thread for less costs more than it saves (1→32 @28², 226 k multiply-adds, ran slower on two threads than on one).
constexpr int64_t kMinBandWork = 128 * 1024;

// iparams of a Conv2d node (conv.cpp).
enum ConvParam { kStride = 0, kPadTop, kPadLeft };

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct Geometry {
  int64_t batch, ci, height, width, co, kh, kw, stride, pad_top, pad_left, out_h, out_w;
  int64_t lanes;     // staged floats per phase row
  int64_t max_band;  // output rows one task stages at most
  int64_t k() const { return ci * kh * kw; }
  int64_t staged_rows(int64_t band) const { return (band - 1) * stride + kh; }
  int64_t staged_floats(int64_t band) const { return ci * staged_rows(band) * stride * lanes; }
};

Geometry geometry(const Tensor& node) {
  const Tensor& x = *node.src[0];
  const Tensor& w = *node.src[1];
  Geometry g;
  g.batch = x.shape[0];
  g.ci = x.shape[1];
  g.height = x.shape[2];
  g.width = x.shape[3];
  g.co = w.shape[0];
  g.kh = w.shape[2];
  g.kw = w.shape[3];
  g.stride = node.iparams[kStride];
  g.pad_top = node.iparams[kPadTop];
  g.pad_left = node.iparams[kPadLeft];
  g.out_h = node.shape[2];
  g.out_w = node.shape[3];
  g.lanes = round_up(round_up(g.out_w, kernels::kDirectConvLanes) + (g.kw - 1) / g.stride, 16);
  g.max_band = std::clamp<int64_t>((kStageBudget / g.ci / g.stride / g.lanes - g.kh) / g.stride + 1, 1, g.out_h);
  return g;
}

bool applies(const Tensor& node) {
  const Tensor& w = *node.src[1];
  if (w.dtype != DType::F32 && w.dtype != DType::F16) return false;
  if (node.src[2] && node.src[2]->dtype != DType::F32 && node.src[2]->dtype != DType::F16) return false;
  const int64_t k = w.shape[1] * w.shape[2] * w.shape[3];
  const int64_t limit = std::min(max_k.load(std::memory_order_relaxed), kernels::kDirectConvMaxK);
  return k <= (node.iparams[kStride] == 1 ? limit : limit * kStridedMaxK / kDefaultMaxK);
}

size_t floats_aligned(int64_t n) { return static_cast<size_t>(round_up(n, 16)); }

// Scratch of one task: the weights and bias as f32 (when they are f16), then the staged band.
size_t scratch_floats(const Geometry& g) {
  return floats_aligned(g.co * g.k()) + floats_aligned(g.co) + floats_aligned(g.staged_floats(g.max_band));
}

// Input rows of output rows [r0, r0 + band) of image b, zero-padded, into dst[ci][row][phase][lane]:
// phase p, lane q holds padded column q·stride + p, i.e. input column q·stride + p − pad_left.
void stage(const Geometry& g, const float* x, int64_t b, int64_t r0, int64_t band, float* dst) {
  const int64_t rows = g.staged_rows(band), s = g.stride;
  for (int64_t c = 0; c < g.ci; ++c) {
    const float* plane = x + (b * g.ci + c) * g.height * g.width;
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t iy = r0 * s + row - g.pad_top;
      float* out = dst + (c * rows + row) * s * g.lanes;
      if (iy < 0 || iy >= g.height) {
        std::memset(out, 0, static_cast<size_t>(s * g.lanes) * sizeof(float));
        continue;
      }
      const float* in = plane + iy * g.width;
      for (int64_t p = 0; p < s; ++p) {
        float* phase = out + p * g.lanes;
        // Lanes q with 0 ≤ q·s + p − pad_left < width: [first, end).
        const int64_t first = std::clamp<int64_t>((g.pad_left - p + s - 1) / s, 0, g.lanes);
        const int64_t end = std::clamp<int64_t>((g.width + g.pad_left - p + s - 1) / s, first, g.lanes);
        std::memset(phase, 0, static_cast<size_t>(first) * sizeof(float));
        if (s == 1) {
          std::memcpy(phase + first, in + first - g.pad_left, static_cast<size_t>(end - first) * sizeof(float));
        } else {
          for (int64_t q = first; q < end; ++q) phase[q] = in[q * s + p - g.pad_left];
        }
        std::memset(phase + end, 0, static_cast<size_t>(g.lanes - end) * sizeof(float));
      }
    }
  }
}

}  // namespace

int64_t conv2d_direct_max_k() { return max_k.load(std::memory_order_relaxed); }
void set_conv2d_direct_max_k(int64_t k) { max_k.store(k, std::memory_order_relaxed); }

size_t conv2d_direct_scratch_bytes(const Tensor& node) {
  if (!applies(node)) return 0;
  return scratch_floats(geometry(node)) * sizeof(float);
}

bool run_conv2d_direct(const Tensor& node, ExecContext& ctx) {
  if (!applies(node) || !ctx.kernels.conv_direct) return false;
  const Geometry g = geometry(node);
  if (ctx.scratch_bytes < scratch_floats(g) * sizeof(float)) return false;  // planned before the rule changed
  const Tensor& x = *node.src[0];
  const Tensor& w = *node.src[1];
  const Tensor* bias = node.src[2];
  const Tensor* residual = node.src[3];
  // Bands: one per image when the batch feeds every thread, else as many as give each thread about two tasks,
  // none smaller than kMinBandWork multiply-adds, nor larger than the staging budget allows.
  const int threads = ctx.pool.size();
  const int64_t image_work = g.co * g.k() * g.out_h * g.out_w;
  int64_t bands = 1;
  if (threads > 1 && g.batch < 2 * threads) {
    bands = std::min<int64_t>((2 * threads + g.batch - 1) / g.batch, std::max<int64_t>(1, image_work / kMinBandWork));
  }
  const int64_t band = std::min(g.max_band, (g.out_h + bands - 1) / bands);
  const int64_t bands_per_image = (g.out_h + band - 1) / band;
  auto task = [&](int64_t t, int thread) {
    float* scratch = reinterpret_cast<float*>(ctx.scratch[thread]);
    const int64_t b = t / bands_per_image, r0 = (t % bands_per_image) * band;
    kernels::DirectConv c;
    if (w.dtype == DType::F16) {
      ctx.kernels.f16_to_f32(g.co * g.k(), static_cast<const uint16_t*>(w.data), scratch);
      c.w = scratch;
    } else {
      c.w = w.f32();
    }
    if (bias) {
      if (bias->dtype == DType::F16) {
        float* converted = scratch + floats_aligned(g.co * g.k());
        ctx.kernels.f16_to_f32(g.co, static_cast<const uint16_t*>(bias->data), converted);
        c.bias = converted;
      } else {
        c.bias = bias->f32();
      }
    }
    float* staged = scratch + floats_aligned(g.co * g.k()) + floats_aligned(g.co);
    c.rows = std::min(band, g.out_h - r0);
    stage(g, x.f32(), b, r0, c.rows, staged);
    c.x = staged;
    c.x_phase_stride = g.lanes;
    c.x_row_stride = g.stride * g.lanes;
    c.x_channel_stride = g.staged_rows(c.rows) * c.x_row_stride;
    int64_t taps[kernels::kDirectConvMaxK];
    int64_t k = 0;
    for (int64_t ci = 0; ci < g.ci; ++ci) {
      for (int64_t u = 0; u < g.kh; ++u) {
        for (int64_t v = 0; v < g.kw; ++v) {
          taps[k++] = ci * c.x_channel_stride + u * c.x_row_stride + (v % g.stride) * c.x_phase_stride + v / g.stride;
        }
      }
    }
    c.taps = taps;
    const int64_t plane = g.out_h * g.out_w;
    if (residual) {
      c.residual = residual->f32() + b * g.co * plane + r0 * g.out_w;
      c.residual_channel_stride = plane;
      c.residual_row_stride = g.out_w;
    }
    c.y = node.f32() + b * g.co * plane + r0 * g.out_w;
    c.y_channel_stride = plane;
    c.y_row_stride = g.out_w;
    c.in_channels = g.ci;
    c.kernel_h = g.kh;
    c.kernel_w = g.kw;
    c.stride = g.stride;
    c.out_channels = g.co;
    c.out_width = g.out_w;
    ctx.kernels.conv_direct(c);
  };
  const int64_t tasks = g.batch * bands_per_image;
  if (threads == 1 || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) task(t, 0);
  } else {
    ctx.pool.run(tasks, task);
  }
  return true;
}

}  // namespace ddpm
