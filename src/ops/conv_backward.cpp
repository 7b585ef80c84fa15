// conv2d backward, as two GEMMs on the shared driver, each with its own B packer (like the forward's pack_im2col,
// nothing is materialised):
//
//   dx[b] [Ci × H·W]     = Wᵀ [Ci × Co·T] · gather(dy[b]) [Co·T × H·W]
//   dw    [Co × Ci·T]    = dy [Co × B·Ho·Wo] · im2col(x)ᵀ [B·Ho·Wo × Ci·T]
//
// dx is the transposed convolution. With stride 1 it is an ordinary convolution with rotated weights and runs as
// one (see conv2d_grad_input). Otherwise, instead of scattering Wᵀ·dy columns back into the image (col2im, whose
// overlapping adds would need a fixed order across tasks), each input pixel gathers the dy values of the outputs
// that read it: B element (co, u, v; y, x) is dy[co, (y + pad_top − u)/s, (x + pad_left − v)/s] when both
// divisions are exact and in range, else 0. Every dx element is then one GEMM dot product, computed by one task.
// With stride 2, three quarters of those B entries are zeros, so dx is split by output phase (y mod s, x mod s)
// into one GEMM per phase over just the taps that reach it (compute_grad_input_phases; same bits).
//
// dw sums over batch and pixels: one GEMM with K = B·Ho·Wo over dy permuted to [Co, B, Ho·Wo] (an extra copy of
// dy, small next to the GEMM). A weight too small to give the GEMM's tasks to several threads is split into image
// groups instead (the GEMM batch, one partial dw each, summed afterwards in group order); with one image per
// group dy is read in place. im2col(x)ᵀ puts x's channels along the packed panel's rows, a transposition: with
// 16 or more input channels x is first copied channels-last ([B, H, W, Ci], one pass) so that every tap packs Ci
// consecutive floats with plain copies, and dw comes out as [Co, kh, kw, Ci], reordered at the end (weight-sized).
#include <algorithm>
#include <cstring>

#include "autograd/ops_backward.h"
#include "core/half.h"
#include "ops/gemm.h"

namespace ddpm {
namespace {

// iparams of Conv2dGradInput and Conv2dGradWeight nodes. kPermuted: dy is given as [Co, B, Ho, Wo].
// kChannelsLast: x is given as [B, H, W, Ci] and dw's columns are ordered (kh, kw, Ci).
enum ConvGradParam { kStride = 0, kPadTop, kPadLeft, kKernelH, kKernelW, kGroups, kPermuted, kChannelsLast };

// Input channels from which dw reads x channels-last (Ci contiguous floats per tap, copied as runs).
constexpr int64_t kChannelsLastMin = 16;

// dw's GEMM is split into image groups (one partial dw each) until it has this many nominal 8×32 output tiles.
// dw is small (Co × Ci·T) and K = B·Ho·Wo long: without groups, every column chunk of a task streams all images'
// x again and the few tiles split unevenly over threads; groups give whole tasks that read their own images. 256
// measured best on the fashion-mnist preset at batch 64 (dw 333 -> 306 ms per step on 2 threads; 1024: 306 ms,
// but summing the partial dws then costs 17 ms more).
constexpr int64_t kMinTiles = 256;

// out[t] = row[start + t] for t < run where 0 <= start + t < width, else 0: a run of packed lanes read from one
// dy row, which may begin before it or end past it (the padding).
void copy_row_span(const float* row, int64_t width, int64_t start, int64_t run, float* out) {
  const int64_t first = std::clamp<int64_t>(-start, 0, run);
  const int64_t last = std::clamp<int64_t>(width - start, first, run);
  for (int64_t i = 0; i < first; ++i) out[i] = 0.0f;
  std::memcpy(out + first, row + (start + first), static_cast<size_t>(last - first) * sizeof(float));
  for (int64_t i = last; i < run; ++i) out[i] = 0.0f;
}

// The walk both dy packers share: for every k of the block, the columns n0 .. n0+nc (dx pixels of rows
// `row_width` wide) in runs that stay on one dx row and in one packed panel; fill(kk, row, column, run, out)
// writes a run's `run` lanes. The padding lanes of the last panel are zeroed.
template <typename FillRun>
void pack_dy_runs(int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr, int64_t row_width, float* dst,
                  FillRun fill) {
  for (int64_t k = 0; k < kc; ++k) {
    int64_t n = n0;
    while (n < n0 + nc) {
      const int64_t row = n / row_width, column = n % row_width;
      const int64_t lane = (n - n0) % nr;
      const int64_t run = std::min({row_width - column, static_cast<int64_t>(nr) - lane, n0 + nc - n});
      fill(k0 + k, row, column, run, dst + ((n - n0) / nr) * kc * nr + k * nr + lane);
      n += run;
    }
    if (const int64_t tail = nc % nr) {
      float* out = dst + (nc / nr) * kc * nr + k * nr;
      for (int64_t i = tail; i < nr; ++i) out[i] = 0.0f;
    }
  }
}

struct DyGather {
  const float* dy;  // [B, Co, Ho, Wo]
  int64_t out_channels, out_height, out_width;
  int64_t kernel_h, kernel_w, width;  // width: of dx
  int64_t stride, pad_top, pad_left;
};

void pack_dy_gather(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                    float* dst) {
  const DyGather& g = *static_cast<const DyGather*>(context);
  const float* image = g.dy + batch * g.out_channels * g.out_height * g.out_width;
  const int64_t taps = g.kernel_h * g.kernel_w;
  pack_dy_runs(k0, kc, n0, nc, nr, g.width, dst, [&](int64_t kk, int64_t y, int64_t x, int64_t run, float* out) {
    const int64_t channel = kk / taps, tap = kk % taps;
    const int64_t u = tap / g.kernel_w, v = tap % g.kernel_w;
    const float* plane = image + channel * g.out_height * g.out_width;
    const int64_t oy_times_stride = y + g.pad_top - u;
    const int64_t ox0_times_stride = x + g.pad_left - v;
    if (oy_times_stride < 0 || oy_times_stride % g.stride != 0 || oy_times_stride / g.stride >= g.out_height) {
      std::memset(out, 0, static_cast<size_t>(run) * sizeof(float));
      return;
    }
    const float* row = plane + (oy_times_stride / g.stride) * g.out_width;
    if (g.stride == 1) {
      copy_row_span(row, g.out_width, ox0_times_stride, run, out);
      return;
    }
    for (int64_t i = 0; i < run; ++i) {
      const int64_t ox_times_stride = ox0_times_stride + i;
      const bool hit =
          ox_times_stride >= 0 && ox_times_stride % g.stride == 0 && ox_times_stride / g.stride < g.out_width;
      out[i] = hit ? row[ox_times_stride / g.stride] : 0.0f;
    }
  });
}

// One output phase of a strided dx (pixels y ≡ py, x ≡ px mod s): B element (k = (co, i, j), n) is
// dy[co, (y + pad_top − u)/s, (x + pad_left − v)/s] with u = u0 + i·s, v = v0 + j·s, y = py + s·(n / phase_width),
// x = px + s·(n % phase_width) — the divisions are exact by the choice of u0, v0 — or 0 outside dy. Along a run of
// n on one dx row, x steps by s and the dy column by one: each run is a contiguous piece of a dy row.
struct DyPhaseGather {
  const float* dy;  // [B, Co, Ho, Wo]
  int64_t out_channels, out_height, out_width;
  int64_t taps_u, taps_v, u0, v0, stride;       // the phase's taps: u0 + i·s (i < taps_u), v0 + j·s (j < taps_v)
  int64_t py, px, phase_width, pad_top, pad_left;
};

void pack_dy_phase(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                   float* dst) {
  const DyPhaseGather& g = *static_cast<const DyPhaseGather*>(context);
  const float* image = g.dy + batch * g.out_channels * g.out_height * g.out_width;
  const int64_t taps = g.taps_u * g.taps_v;
  pack_dy_runs(k0, kc, n0, nc, nr, g.phase_width, dst,
               [&](int64_t kk, int64_t row, int64_t column, int64_t run, float* out) {
                 const int64_t channel = kk / taps, tap = kk % taps;
                 const int64_t u = g.u0 + (tap / g.taps_v) * g.stride, v = g.v0 + (tap % g.taps_v) * g.stride;
                 const int64_t oy_times_stride = g.py + g.stride * row + g.pad_top - u;  // a multiple of s
                 const int64_t oy = oy_times_stride / g.stride;
                 if (oy_times_stride < 0 || oy >= g.out_height) {
                   std::memset(out, 0, static_cast<size_t>(run) * sizeof(float));
                   return;
                 }
                 const float* plane = image + channel * g.out_height * g.out_width;
                 const int64_t ox0 = (g.px + g.stride * column + g.pad_left - v) / g.stride;  // exact
                 copy_row_span(plane + oy * g.out_width, g.out_width, ox0, run, out);
               });
}

// The output phases of a stride-s dx and the shared-buffer room their GEMMs take: the phases' compact weights
// (Ci × Co·taps each, all together one weight's worth) and their outputs (one dx's worth) before the scatter.
size_t phase_shared_floats(const Tensor& node) {
  const Tensor& weight_t = *node.src[1];  // [Ci, Co, kh, kw]
  return static_cast<size_t>(weight_t.numel() + node.numel()) + 2 * 16;
}

struct Im2colT {
  const float* x;  // [B, Ci, H, W]
  int64_t channels, height, width, kernel_h, kernel_w, out_width, pixels;  // pixels = Ho·Wo
  int64_t stride, pad_top, pad_left;
  int64_t images_per_batch;  // images summed by one GEMM batch item
};

// B element (k = (image, oy, ox), n = (ci, u, v)) = x[image, ci, oy·s + u − pad_top, ox·s + v − pad_left] or 0.
// Along a run of k on one output row, a fixed n reads x with stride s, so the panel is filled one run (at most
// kMaxRun rows of it, a few KiB that stay in L1) at a time, lane by lane: one bounds computation per lane and run,
// then a strided copy. Those scalar transposing stores are most of dw's cost when Co is small (the tiny U-Net);
// with 16 or more channels x is transposed once instead (channels-last, below).
void pack_im2col_t(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                   float* dst) {
  const Im2colT& g = *static_cast<const Im2colT*>(context);
  constexpr int64_t kMaxRun = 32;
  DDPM_ASSERT(nr <= 64);
  int64_t channel_offset[64], row_tap[64], col_tap[64];  // per lane of a panel
  const int64_t taps = g.kernel_h * g.kernel_w, plane = g.height * g.width, s = g.stride;
  for (int64_t j = 0; j * nr < nc; ++j) {
    const int64_t width = std::min<int64_t>(nr, nc - j * nr);
    for (int64_t lane = 0; lane < width; ++lane) {
      const int64_t n = n0 + j * nr + lane;
      const int64_t tap = n % taps;
      channel_offset[lane] = (n / taps) * plane;
      row_tap[lane] = tap / g.kernel_w - g.pad_top;
      col_tap[lane] = tap % g.kernel_w - g.pad_left;
    }
    float* panel = dst + j * kc * nr;
    int64_t k = 0;
    while (k < kc) {
      const int64_t kk = k0 + k;
      const int64_t image = batch * g.images_per_batch + kk / g.pixels, pixel = kk % g.pixels;
      const int64_t oy = pixel / g.out_width, ox = pixel % g.out_width;
      const int64_t run = std::min({g.out_width - ox, kc - k, kMaxRun});
      const float* source = g.x + image * g.channels * plane;
      float* block = panel + k * nr;  // rows k .. k+run of the panel: run × nr floats, a few KiB
      for (int64_t lane = 0; lane < width; ++lane) {
        float* o = block + lane;  // element t at o[t * nr]
        const int64_t iy = oy * s + row_tap[lane];
        if (iy < 0 || iy >= g.height) {
          for (int64_t t = 0; t < run; ++t) o[t * nr] = 0.0f;
          continue;
        }
        const float* row = source + channel_offset[lane] + iy * g.width;
        const int64_t ix0 = ox * s + col_tap[lane];  // input column of the run's first element; then + t·s
        const int64_t first = std::min(run, ix0 >= 0 ? int64_t(0) : (-ix0 + s - 1) / s);
        const int64_t last = std::clamp<int64_t>(g.width - ix0 <= 0 ? 0 : (g.width - ix0 + s - 1) / s, first, run);
        for (int64_t t = 0; t < first; ++t) o[t * nr] = 0.0f;
        for (int64_t t = first; t < last; ++t) o[t * nr] = row[ix0 + t * s];
        for (int64_t t = last; t < run; ++t) o[t * nr] = 0.0f;
      }
      for (int64_t t = 0; t < run; ++t) {
        for (int64_t lane = width; lane < nr; ++lane) block[t * nr + lane] = 0.0f;
      }
      k += run;
    }
  }
}

// A copy of a few dozen floats: whole 16-float pieces with a constant size, which the compiler turns into vector
// moves (a libc memcpy call per 128-byte piece costs about as much as the copy), then the rest.
inline void copy_short(float* dst, const float* src, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) std::memcpy(dst + i, src + i, 16 * sizeof(float));
  for (; i < count; ++i) dst[i] = src[i];
}
inline void zero_short(float* dst, int64_t count) {
  static constexpr float kZeros[16] = {};
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) std::memcpy(dst + i, kZeros, 16 * sizeof(float));
  for (; i < count; ++i) dst[i] = 0.0f;
}

// Channels-last: B element (k = (image, oy, ox), n = (u, v, ci)) = xc[image, oy·s + u − pad_top, ox·s + v −
// pad_left, ci] or 0. For one k, every tap reads Ci consecutive floats: copied into the panel as contiguous
// pieces (split where a panel ends), with no transposing stores. The pieces depend on the columns only, so they
// are listed once per call and the k loop only steps a pixel counter: no divisions per element (a 64-bit
// division per piece of 32 floats cost as much as the copy).
void pack_im2col_t_channels_last(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                                 int nr, float* dst) {
  const Im2colT& g = *static_cast<const Im2colT*>(context);
  const int64_t channels = g.channels;
  struct Piece {
    int64_t dst_offset;     // in the panel row of k = 0: (panel)·kc·nr + lane
    int64_t source_offset;  // tap's pixel offset ·Ci + channel, from the tap's top-left pixel
    int64_t row_tap, col_tap, length;
  };
  // A piece ends at a tap's last channel or a panel's last lane: at most nc/Ci + nc/nr + 1 of them, and a task's
  // column chunk is at most 1024 wide (gemm.cpp) with Ci >= kChannelsLastMin.
  constexpr int kMaxPieces = 1024 / kChannelsLastMin + 1024 / 8 + 1;
  Piece pieces[kMaxPieces];
  int count = 0;
  for (int64_t n = n0; n < n0 + nc;) {
    const int64_t tap = n / channels, channel = n % channels;
    const int64_t offset = n - n0, lane = offset % nr;
    const int64_t length = std::min({channels - channel, n0 + nc - n, static_cast<int64_t>(nr) - lane});
    const int64_t u = tap / g.kernel_w, v = tap % g.kernel_w;
    DDPM_ASSERT(count < kMaxPieces);
    pieces[count++] = {(offset / nr) * kc * nr + lane, (u * g.width + v) * channels + channel, u, v, length};
    n += length;
  }
  const int64_t tail = nc % nr;  // the padding columns of the last panel
  const int64_t first = k0 + batch * g.images_per_batch * g.pixels;
  int64_t image = first / g.pixels, pixel = first % g.pixels;
  int64_t oy = pixel / g.out_width, ox = pixel % g.out_width;
  const int64_t out_height = g.pixels / g.out_width;
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t iy0 = oy * g.stride - g.pad_top, ix0 = ox * g.stride - g.pad_left;
    // Offset of the pixel (iy0, ix0) of this image's [H, W, Ci] (maybe outside it: only in-bounds pieces are read).
    const int64_t origin = ((image * g.height + iy0) * g.width + ix0) * channels;
    const bool inside = iy0 >= 0 && ix0 >= 0 && iy0 + g.kernel_h <= g.height && ix0 + g.kernel_w <= g.width;
    for (int i = 0; i < count; ++i) {
      const Piece& piece = pieces[i];
      float* out = dst + piece.dst_offset + k * nr;
      const int64_t iy = iy0 + piece.row_tap, ix = ix0 + piece.col_tap;
      if (inside || (iy >= 0 && iy < g.height && ix >= 0 && ix < g.width)) {
        copy_short(out, g.x + (origin + piece.source_offset), piece.length);  // origin alone may lie before x
      } else {
        zero_short(out, piece.length);
      }
    }
    if (tail) zero_short(dst + (nc / nr) * kc * nr + k * nr + tail, nr - tail);
    if (++ox == g.out_width) {
      ox = 0;
      if (++oy == out_height) {
        oy = 0;
        ++image;
      }
    }
  }
}

// A contiguous tensor's elements viewed with another row-major shape.
Tensor* view_as_rows(Graph& g, Tensor* t, int rank, const int64_t* shape) {
  int64_t stride[kMaxRank];
  int64_t step = 1;
  for (int i = rank - 1; i >= 0; --i) {
    stride[i] = step;
    step *= shape[i];
  }
  return g.new_view(contiguous(g, t), rank, shape, stride, 0);
}

void set_conv_params(Tensor* t, const Conv2dParams& p, int64_t kh, int64_t kw) {
  t->iparams[kStride] = p.stride;
  t->iparams[kPadTop] = p.pad_top;
  t->iparams[kPadLeft] = p.pad_left;
  t->iparams[kKernelH] = kh;
  t->iparams[kKernelW] = kw;
}

}  // namespace

Tensor* conv2d_grad_input(Graph& g, Tensor* dy, Tensor* weight, const Tensor& x, const Conv2dParams& p) {
  if (!dy || !weight) return nullptr;
  dy = contiguous(g, dy);  // [B, Co, Ho, Wo]
  const int64_t kh = weight->shape[2], kw = weight->shape[3];
  if (p.stride == 1 && p.pad_top < kh && p.pad_left < kw && p.pad_bottom < kh && p.pad_right < kw) {
    // Stride 1: the transposed convolution is a plain convolution of dy with the weights transposed (Ci ↔ Co)
    // and rotated by 180°, padded by k − 1 − pad, so it runs on the forward's tuned path. The rotated copy is
    // weight-sized; an f32 weight is scattered into place (w[co, ci, t] → r[ci, co, T−1−t]), others (f16) are
    // copied through a view with negative strides.
    const int64_t co = weight->shape[0], ci = weight->shape[1], taps = kh * kw;
    const int64_t shape[4] = {ci, co, kh, kw};
    Tensor* rotated;
    if (weight->dtype == DType::F32 && weight->is_contiguous()) {
      const int64_t flat[3] = {co, ci, taps}, flat_stride[3] = {ci * taps, taps, 1};
      const int64_t to_rotated[3] = {taps, co * taps, -1};  // where w[co, ci, t] lands in r
      rotated = scatter(g, g.new_view(weight, 3, flat, flat_stride, 0), 4, shape, 3, to_rotated, taps - 1, true);
    } else {
      const int64_t stride[4] = {weight->stride[1], weight->stride[0], -weight->stride[2], -weight->stride[3]};
      rotated = contiguous(g, g.new_view(weight, 4, shape, stride,
                                         (kh - 1) * weight->stride[2] + (kw - 1) * weight->stride[3]));
    }
    const Conv2dParams q{1, static_cast<int>(kh - 1 - p.pad_top), static_cast<int>(kw - 1 - p.pad_left),
                         static_cast<int>(kh - 1 - p.pad_bottom), static_cast<int>(kw - 1 - p.pad_right)};
    Tensor* dx = conv2d(g, dy, rotated, nullptr, q);  // [B, Ci, H, W]
    DDPM_ASSERT(!dx || (dx->shape[2] == x.shape[2] && dx->shape[3] == x.shape[3]));
    return dx;
  }
  Tensor* weight_t = contiguous(g, permute(g, weight, {1, 0, 2, 3}));  // Wᵀ [Ci, Co, kh, kw], small
  if (!weight_t) return nullptr;
  Tensor* dx = g.new_node(OpKind::Conv2dGradInput, DType::F32, 4, x.shape, {dy, weight_t});  // [B, Ci, H, W]
  set_conv_params(dx, p, weight->shape[2], weight->shape[3]);
  return dx;
}

Tensor* conv2d_grad_weight(Graph& g, Tensor* dy, Tensor* x, const Tensor& weight, const Conv2dParams& p) {
  if (!dy || !x) return nullptr;
  const int64_t batch = dy->shape[0], co = weight.shape[0];
  const int64_t row = weight.shape[1] * weight.shape[2] * weight.shape[3];  // Ci·T
  // Image groups: as few as give the GEMM enough tiles to share among threads (a function of the shape only,
  // so the summation order never depends on the thread count); a divisor of the batch.
  const int64_t tiles = ((co + 7) / 8) * ((row + 31) / 32);
  int64_t groups = 1;
  while (groups < batch && (groups * tiles < kMinTiles || batch % groups != 0)) ++groups;
  const bool permuted = groups < batch;
  dy = contiguous(g, dy);
  if (permuted) dy = contiguous(g, permute(g, dy, {1, 0, 2, 3}));  // [Co, B, Ho, Wo] (free when B = 1)
  x = contiguous(g, x);
  const int64_t ci = weight.shape[1], taps = weight.shape[2] * weight.shape[3];
  const bool channels_last = ci >= kChannelsLastMin;
  if (channels_last && x) {
    // x [B, Ci, H·W] scattered to [B, H, W, Ci]: one transposing pass instead of one per tap inside the packer.
    const int64_t hw = x->shape[2] * x->shape[3];
    const int64_t flat[3] = {batch, ci, hw}, flat_stride[3] = {ci * hw, hw, 1}, to_last[3] = {hw * ci, 1, ci};
    const int64_t last_shape[4] = {batch, x->shape[2], x->shape[3], ci};
    x = scatter(g, g.new_view(x, 3, flat, flat_stride, 0), 4, last_shape, 3, to_last, 0, true);
  }
  if (!x) return nullptr;
  const int64_t shape[3] = {groups, co, row};
  Tensor* partial = g.new_node(OpKind::Conv2dGradWeight, DType::F32, 3, shape, {dy, x});  // [G, Co, Ci·T]
  set_conv_params(partial, p, weight.shape[2], weight.shape[3]);
  partial->iparams[kGroups] = groups;
  partial->iparams[kPermuted] = permuted ? 1 : 0;
  partial->iparams[kChannelsLast] = channels_last ? 1 : 0;
  const int64_t summed_shape[2] = {co, row};
  Tensor* summed = sum_to(g, partial, 2, summed_shape);  // Σ over image groups, in group order
  if (!summed) return nullptr;
  if (channels_last) {
    // Columns ordered (kh, kw, Ci) → the weight's [Co, Ci, kh, kw].
    const int64_t flat[3] = {co, taps, ci}, to_weight[3] = {ci * taps, 1, taps};
    return scatter(g, view_as_rows(g, summed, 3, flat), 4, weight.shape, 3, to_weight, 0, true);
  }
  const int64_t stride[4] = {row, weight.shape[2] * weight.shape[3], weight.shape[3], 1};
  return g.new_view(summed, 4, weight.shape, stride, 0);  // [Co, Ci, kh, kw]
}

size_t scratch_conv2d_grad(const Tensor&) { return gemm_scratch_bytes_max(); }

size_t shared_conv2d_grad_input(const Tensor& node) {
  return node.iparams[kStride] > 1 ? phase_shared_floats(node) * sizeof(float) : 0;
}

namespace {

// Stride s > 1: dx splits into s² output phases (y mod s, x mod s). A phase's pixels are reached only by the taps
// u ≡ y + pad_top, v ≡ x + pad_left (mod s), so its GEMM has K = Co·(its taps) instead of Co·kh·kw, of which the
// full gather multiplies all but a quarter (stride 2, 3×3) by zeros. Every dx element is the same chain of FMAs
// with the terms that were exactly zero left out, and adding ±0 to a sum that starts at +0 never changes it: the
// bits are those of the full gather. Each phase's GEMM writes a compact [B, Ci, phase pixels] block, scattered
// into dx afterwards.
void compute_grad_input_phases(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const Tensor& weight_t = *node.src[1];  // [Ci, Co, kh, kw]
  const int64_t kh = node.iparams[kKernelH], kw = node.iparams[kKernelW], s = node.iparams[kStride];
  const int64_t pad_top = node.iparams[kPadTop], pad_left = node.iparams[kPadLeft];
  const int64_t batch = node.shape[0], ci = node.shape[1], height = node.shape[2], width = node.shape[3];
  const int64_t co = weight_t.shape[1];
  float* const weights = reinterpret_cast<float*>(ctx.shared);  // each phase's [Ci, Co·taps]
  float* const blocks = weights + (weight_t.numel() + 15) / 16 * 16;  // each phase's [B, Ci, pixels]
  float* dx = node.f32();
  int64_t weight_offset = 0, block_offset = 0;
  for (int64_t py = 0; py < s; ++py) {
    for (int64_t px = 0; px < s; ++px) {
      const int64_t phase_h = height > py ? (height - py + s - 1) / s : 0;
      const int64_t phase_w = width > px ? (width - px + s - 1) / s : 0;
      if (phase_h == 0 || phase_w == 0) continue;
      const int64_t u0 = (py + pad_top) % s, v0 = (px + pad_left) % s;
      const int64_t taps_u = u0 < kh ? (kh - u0 + s - 1) / s : 0, taps_v = v0 < kw ? (kw - v0 + s - 1) / s : 0;
      const int64_t pixels = phase_h * phase_w, k = co * taps_u * taps_v;
      float* a = weights + weight_offset;
      float* c = blocks + block_offset;
      weight_offset += ci * k;
      block_offset += batch * ci * pixels;
      if (k == 0) {
        std::fill(c, c + batch * ci * pixels, 0.0f);  // no tap reaches these pixels
      } else {
        for (int64_t m = 0; m < ci; ++m) {
          for (int64_t o = 0; o < co; ++o) {
            for (int64_t i = 0; i < taps_u; ++i) {
              for (int64_t j = 0; j < taps_v; ++j) {
                const int64_t source = ((m * co + o) * kh + u0 + i * s) * kw + v0 + j * s;
                a[m * k + (o * taps_u + i) * taps_v + j] =
                    weight_t.dtype == DType::F16 ? f16_to_f32(static_cast<const uint16_t*>(weight_t.data)[source])
                                                 : weight_t.f32()[source];
              }
            }
          }
        }
        DyPhaseGather gather{dy.f32(), dy.shape[1], dy.shape[2], dy.shape[3], taps_u, taps_v, u0, v0, s,
                             py, px, phase_w, pad_top, pad_left};
        GemmProblem p;
        p.batch = batch;
        p.M = ci;
        p.N = pixels;
        p.K = k;
        p.a = a;
        p.a_dtype = DType::F32;
        p.a_row_stride = k;
        p.pack_b = pack_dy_phase;
        p.pack_b_context = &gather;
        p.c = c;
        p.ldc = pixels;
        p.c_batch_stride = ci * pixels;
        run_gemm(p, ctx);
      }
      // [B, Ci, phase_h, phase_w] -> dx[b, m, py + s·i, px + s·j]
      ctx.pool.run(batch * ci, [&](int64_t task, int) {
        const float* from = c + task * pixels;
        float* to = dx + task * height * width;
        for (int64_t i = 0; i < phase_h; ++i) {
          float* row = to + (py + s * i) * width + px;
          for (int64_t j = 0; j < phase_w; ++j) row[s * j] = from[i * phase_w + j];
        }
      });
    }
  }
}

}  // namespace

Status compute_conv2d_grad_input(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const Tensor& weight_t = *node.src[1];
  const int64_t kh = node.iparams[kKernelH], kw = node.iparams[kKernelW];
  if (node.iparams[kStride] > 1 && ctx.shared && ctx.shared_bytes >= shared_conv2d_grad_input(node)) {
    compute_grad_input_phases(node, ctx);
    return Status();
  }
  DyGather gather{dy.f32(), dy.shape[1], dy.shape[2], dy.shape[3], kh, kw, node.shape[3],
                  node.iparams[kStride], node.iparams[kPadTop], node.iparams[kPadLeft]};
  GemmProblem p;
  p.batch = node.shape[0];
  p.M = node.shape[1];
  p.N = node.shape[2] * node.shape[3];
  p.K = dy.shape[1] * kh * kw;
  p.a = weight_t.data;
  p.a_dtype = weight_t.dtype;
  p.a_row_stride = p.K;
  p.pack_b = pack_dy_gather;
  p.pack_b_context = &gather;
  p.c = node.f32();
  p.ldc = p.N;
  p.c_batch_stride = p.M * p.N;
  run_gemm(p, ctx);
  return Status();
}

Status compute_conv2d_grad_weight(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];  // [Co, B, Ho, Wo], or [B, Co, Ho, Wo] with one group per image
  const Tensor& x = *node.src[1];   // [B, Ci, H, W], or [B, H, W, Ci] channels-last
  const int64_t groups = node.iparams[kGroups];
  const int64_t batch = x.shape[0], pixels = dy.shape[2] * dy.shape[3];
  const bool channels_last = node.iparams[kChannelsLast] != 0;
  const int64_t channels = channels_last ? x.shape[3] : x.shape[1];
  const int64_t height = channels_last ? x.shape[1] : x.shape[2], width = channels_last ? x.shape[2] : x.shape[3];
  Im2colT im2col{x.f32(), channels, height, width, node.iparams[kKernelH], node.iparams[kKernelW],
                 dy.shape[3], pixels, node.iparams[kStride], node.iparams[kPadTop], node.iparams[kPadLeft],
                 batch / groups};
  GemmProblem p;
  p.batch = groups;
  p.M = node.shape[1];
  p.N = node.shape[2];
  p.K = (batch / groups) * pixels;
  p.a = dy.data;
  p.a_dtype = DType::F32;
  const bool permuted = node.iparams[kPermuted] != 0;
  p.a_batch_stride = permuted ? p.K : p.M * pixels;
  p.a_row_stride = permuted ? batch * pixels : pixels;
  p.pack_b = channels_last ? pack_im2col_t_channels_last : pack_im2col_t;
  p.pack_b_context = &im2col;
  p.c = node.f32();
  p.ldc = p.N;
  p.c_batch_stride = p.M * p.N;
  run_gemm(p, ctx);
  return Status();
}

}  // namespace ddpm
