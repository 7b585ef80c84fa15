// AVX-512 direct convolution (contract: DirectConv in kernels/registry.h). A tile is up to 8 output channels × 32
// consecutive output columns of one row: 16 zmm accumulators. Per tap the two shifted input vectors are loaded
// once and used by all 8 channels, whose weights are broadcast from a tap-major copy (8 consecutive floats per
// tap): 10 loads per 16 FMAs, the GEMM micro-kernel's ratio, without its packing pass. Ragged row ends use
// masked loads and stores.
#include <immintrin.h>

#include <cstdint>

#include "kernels/avx512/avx512.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx512 {
namespace {

constexpr int kLanes = 16, kMaxChannels = 8, kMaxVectors = 2;
static_assert(kLanes <= kDirectConvLanes, "reads past out_width must stay within the staged rows");

inline __mmask16 first_lanes(int64_t n) { return n >= kLanes ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }

// Channels [o0, o0 + CB) × columns [j0, j0 + NV·16) of output row r; `last` masks the last vector's lanes.
// wp: the block's weights tap-major (wp[k·CB + m]); taps: offset of tap k's input for output (0, 0).
template <int CB, int NV>
void tile(const DirectConv& c, const float* wp, const int64_t* taps, int64_t k_total, int64_t o0, int64_t r,
          int64_t j0, __mmask16 last) {
  __m512 acc[CB][NV];
#pragma GCC unroll 8
  for (int m = 0; m < CB; ++m) {
#pragma GCC unroll 2
    for (int n = 0; n < NV; ++n) acc[m][n] = _mm512_setzero_ps();
  }
  const float* x = c.x + r * c.stride * c.x_row_stride + j0;
  for (int64_t k = 0; k < k_total; ++k) {
    const float* in = x + taps[k];
    __m512 xv[NV];
#pragma GCC unroll 2
    for (int n = 0; n < NV; ++n) xv[n] = _mm512_loadu_ps(in + n * kLanes);
#pragma GCC unroll 8
    for (int m = 0; m < CB; ++m) {
      const __m512 wm = _mm512_set1_ps(wp[k * CB + m]);
#pragma GCC unroll 2
      for (int n = 0; n < NV; ++n) acc[m][n] = _mm512_fmadd_ps(wm, xv[n], acc[m][n]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < CB; ++m) {
    if (c.bias) {
      const __m512 b = _mm512_set1_ps(c.bias[o0 + m]);
#pragma GCC unroll 2
      for (int n = 0; n < NV; ++n) acc[m][n] = _mm512_add_ps(acc[m][n], b);
    }
    if (c.residual) {
      const float* res = c.residual + (o0 + m) * c.residual_channel_stride + r * c.residual_row_stride + j0;
#pragma GCC unroll 2
      for (int n = 0; n + 1 < NV; ++n) acc[m][n] = _mm512_add_ps(acc[m][n], _mm512_loadu_ps(res + n * kLanes));
      acc[m][NV - 1] = _mm512_add_ps(acc[m][NV - 1], _mm512_maskz_loadu_ps(last, res + (NV - 1) * kLanes));
    }
    float* y = c.y + (o0 + m) * c.y_channel_stride + r * c.y_row_stride + j0;
#pragma GCC unroll 2
    for (int n = 0; n + 1 < NV; ++n) _mm512_storeu_ps(y + n * kLanes, acc[m][n]);
    _mm512_mask_storeu_ps(y + (NV - 1) * kLanes, last, acc[m][NV - 1]);
  }
}

template <int CB>
void channel_block(const DirectConv& c, const int64_t* taps, int64_t k_total, int64_t o0) {
  alignas(64) float wp[kDirectConvMaxK * CB];
  for (int64_t k = 0; k < k_total; ++k) {
    for (int m = 0; m < CB; ++m) wp[k * CB + m] = c.w[(o0 + m) * k_total + k];
  }
  constexpr int64_t kWide = kMaxVectors * kLanes;
  for (int64_t r = 0; r < c.rows; ++r) {
    int64_t j0 = 0;
    for (; j0 + kWide <= c.out_width; j0 += kWide) {
      tile<CB, kMaxVectors>(c, wp, taps, k_total, o0, r, j0, first_lanes(kLanes));
    }
    const int64_t rest = c.out_width - j0;
    if (rest > kLanes) {
      tile<CB, 2>(c, wp, taps, k_total, o0, r, j0, first_lanes(rest - kLanes));
    } else if (rest > 0) {
      tile<CB, 1>(c, wp, taps, k_total, o0, r, j0, first_lanes(rest));
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
    case 4: channel_block<4>(c, taps, k_total, o0); break;
    case 5: channel_block<5>(c, taps, k_total, o0); break;
    case 6: channel_block<6>(c, taps, k_total, o0); break;
    case 7: channel_block<7>(c, taps, k_total, o0); break;
    default: break;
  }
}

}  // namespace ddpm::kernels::avx512
