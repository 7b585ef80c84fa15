// NEON direct convolution (contract: DirectConv in kernels/registry.h). A tile is up to 4 output channels × 16
// consecutive output columns of one row: 16 q-register accumulators. Per tap the 4 shifted input vectors are
// loaded once, and the 4 channels' weights, stored tap-major, come in as one vector used lane by lane (fmla by
// element). NEON has no masked loads or stores, so a ragged row end goes through a 4-float buffer.
#include <arm_neon.h>

#include <cstdint>

#include "kernels/neon/neon.h"
#include "kernels/registry.h"

namespace ddpm::kernels::neon {
namespace {

constexpr int kLanes = 4, kMaxChannels = 4, kMaxVectors = 4;
static_assert(kLanes <= kDirectConvLanes, "reads past out_width must stay within the staged rows");

template <int m>
inline float32x4_t fma_lane(float32x4_t acc, float32x4_t x, float32x4_t w) {
  return vfmaq_laneq_f32(acc, x, w, m);
}

// Channels [o0, o0 + CB) × columns [j0, j0 + NV·4) of output row r; the last vector has `last` valid lanes.
// wp: the block's weights tap-major, 4 per tap (zero past CB); taps: offset of tap k's input for output (0, 0).
template <int CB, int NV>
void tile(const DirectConv& c, const float* wp, const int64_t* taps, int64_t k_total, int64_t o0, int64_t r,
          int64_t j0, int last) {
  float32x4_t acc[CB][NV];
#pragma GCC unroll 4
  for (int m = 0; m < CB; ++m) {
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[m][n] = vdupq_n_f32(0.0f);
  }
  const float* x = c.x + r * c.stride * c.x_row_stride + j0;
  for (int64_t k = 0; k < k_total; ++k) {
    const float* in = x + taps[k];
    float32x4_t xv[NV];
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) xv[n] = vld1q_f32(in + n * kLanes);
    const float32x4_t w = vld1q_f32(wp + k * kMaxChannels);
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) {
      acc[0][n] = fma_lane<0>(acc[0][n], xv[n], w);
      if (CB > 1) acc[CB > 1 ? 1 : 0][n] = fma_lane<1>(acc[CB > 1 ? 1 : 0][n], xv[n], w);
      if (CB > 2) acc[CB > 2 ? 2 : 0][n] = fma_lane<2>(acc[CB > 2 ? 2 : 0][n], xv[n], w);
      if (CB > 3) acc[CB > 3 ? 3 : 0][n] = fma_lane<3>(acc[CB > 3 ? 3 : 0][n], xv[n], w);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < CB; ++m) {
    if (c.bias) {
      const float32x4_t b = vdupq_n_f32(c.bias[o0 + m]);
#pragma GCC unroll 4
      for (int n = 0; n < NV; ++n) acc[m][n] = vaddq_f32(acc[m][n], b);
    }
    float buffer[kLanes] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c.residual) {
      const float* res = c.residual + (o0 + m) * c.residual_channel_stride + r * c.residual_row_stride + j0;
#pragma GCC unroll 4
      for (int n = 0; n + 1 < NV; ++n) acc[m][n] = vaddq_f32(acc[m][n], vld1q_f32(res + n * kLanes));
      for (int i = 0; i < last; ++i) buffer[i] = res[(NV - 1) * kLanes + i];
      acc[m][NV - 1] = vaddq_f32(acc[m][NV - 1], vld1q_f32(buffer));
    }
    float* y = c.y + (o0 + m) * c.y_channel_stride + r * c.y_row_stride + j0;
#pragma GCC unroll 4
    for (int n = 0; n + 1 < NV; ++n) vst1q_f32(y + n * kLanes, acc[m][n]);
    if (last == kLanes) {
      vst1q_f32(y + (NV - 1) * kLanes, acc[m][NV - 1]);
    } else {
      vst1q_f32(buffer, acc[m][NV - 1]);
      for (int i = 0; i < last; ++i) y[(NV - 1) * kLanes + i] = buffer[i];
    }
  }
}

template <int CB>
void channel_block(const DirectConv& c, const int64_t* taps, int64_t k_total, int64_t o0) {
  alignas(16) float wp[kDirectConvMaxK * kMaxChannels];
  for (int64_t k = 0; k < k_total; ++k) {
    for (int m = 0; m < kMaxChannels; ++m) wp[k * kMaxChannels + m] = m < CB ? c.w[(o0 + m) * k_total + k] : 0.0f;
  }
  constexpr int64_t kWide = kMaxVectors * kLanes;
  for (int64_t r = 0; r < c.rows; ++r) {
    int64_t j0 = 0;
    for (; j0 + kWide <= c.out_width; j0 += kWide) tile<CB, kMaxVectors>(c, wp, taps, k_total, o0, r, j0, kLanes);
    const int64_t rest = c.out_width - j0;
    const int last = static_cast<int>(rest - (rest - 1) / kLanes * kLanes);  // lanes of the last vector
    switch ((rest + kLanes - 1) / kLanes) {
      case 1: tile<CB, 1>(c, wp, taps, k_total, o0, r, j0, last); break;
      case 2: tile<CB, 2>(c, wp, taps, k_total, o0, r, j0, last); break;
      case 3: tile<CB, 3>(c, wp, taps, k_total, o0, r, j0, last); break;
      case 4: tile<CB, 4>(c, wp, taps, k_total, o0, r, j0, last); break;
      default: break;  // rest == 0
    }
  }
}

}  // namespace

void conv_direct(const DirectConv& c) {
  const int64_t* taps = c.taps;
  const int64_t k_total = c.in_channels * c.kernel_h * c.kernel_w;
  int64_t o0 = 0;
  for (; o0 + kMaxChannels <= c.out_channels; o0 += kMaxChannels) channel_block<kMaxChannels>(c, taps, k_total, o0);
  switch (c.out_channels - o0) {
    case 1: channel_block<1>(c, taps, k_total, o0); break;
    case 2: channel_block<2>(c, taps, k_total, o0); break;
    case 3: channel_block<3>(c, taps, k_total, o0); break;
    default: break;
  }
}

}  // namespace ddpm::kernels::neon
