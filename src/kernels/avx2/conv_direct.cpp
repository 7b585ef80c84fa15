// AVX2 direct convolution (contract: DirectConv in kernels/registry.h). A tile is up to 4 output channels × 24
// consecutive output columns of one row: 12 ymm accumulators, 3 shifted input vectors and one broadcast weight
// fill the 16 registers. Per tap the input vectors are loaded once and used by all 4 channels, whose weights are
// broadcast from a tap-major copy. Ragged row ends use masked loads and stores.
#include <immintrin.h>

#include <cstdint>

#include "kernels/avx2/avx2.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx2 {
namespace {

constexpr int kLanes = 8, kMaxChannels = 4, kMaxVectors = 3;
static_assert(kLanes <= kDirectConvLanes, "reads past out_width must stay within the staged rows");

// Lane mask of the first n lanes (n in 1..8) for maskload/maskstore.
inline __m256i first_lanes(int64_t n) {
  alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + kLanes - n));
}

// Channels [o0, o0 + CB) × columns [j0, j0 + NV·8) of output row r; `last` masks the last vector's lanes.
// wp: the block's weights tap-major (wp[k·CB + m]); taps: offset of tap k's input for output (0, 0).
template <int CB, int NV>
void tile(const DirectConv& c, const float* wp, const int64_t* taps, int64_t k_total, int64_t o0, int64_t r,
          int64_t j0, __m256i last) {
  __m256 acc[CB][NV];
#pragma GCC unroll 4
  for (int m = 0; m < CB; ++m) {
#pragma GCC unroll 3
    for (int n = 0; n < NV; ++n) acc[m][n] = _mm256_setzero_ps();
  }
  const float* x = c.x + r * c.stride * c.x_row_stride + j0;
  for (int64_t k = 0; k < k_total; ++k) {
    const float* in = x + taps[k];
    __m256 xv[NV];
#pragma GCC unroll 3
    for (int n = 0; n < NV; ++n) xv[n] = _mm256_loadu_ps(in + n * kLanes);
#pragma GCC unroll 4
    for (int m = 0; m < CB; ++m) {
      const __m256 wm = _mm256_broadcast_ss(wp + k * CB + m);
#pragma GCC unroll 3
      for (int n = 0; n < NV; ++n) acc[m][n] = _mm256_fmadd_ps(wm, xv[n], acc[m][n]);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < CB; ++m) {
    if (c.bias) {
      const __m256 b = _mm256_broadcast_ss(c.bias + o0 + m);
#pragma GCC unroll 3
      for (int n = 0; n < NV; ++n) acc[m][n] = _mm256_add_ps(acc[m][n], b);
    }
    if (c.residual) {
      const float* res = c.residual + (o0 + m) * c.residual_channel_stride + r * c.residual_row_stride + j0;
#pragma GCC unroll 3
      for (int n = 0; n + 1 < NV; ++n) acc[m][n] = _mm256_add_ps(acc[m][n], _mm256_loadu_ps(res + n * kLanes));
      acc[m][NV - 1] = _mm256_add_ps(acc[m][NV - 1], _mm256_maskload_ps(res + (NV - 1) * kLanes, last));
    }
    float* y = c.y + (o0 + m) * c.y_channel_stride + r * c.y_row_stride + j0;
#pragma GCC unroll 3
    for (int n = 0; n + 1 < NV; ++n) _mm256_storeu_ps(y + n * kLanes, acc[m][n]);
    _mm256_maskstore_ps(y + (NV - 1) * kLanes, last, acc[m][NV - 1]);
  }
}

template <int CB>
void channel_block(const DirectConv& c, const int64_t* taps, int64_t k_total, int64_t o0) {
  alignas(32) float wp[kDirectConvMaxK * CB];
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
    if (rest > 2 * kLanes) {
      tile<CB, 3>(c, wp, taps, k_total, o0, r, j0, first_lanes(rest - 2 * kLanes));
    } else if (rest > kLanes) {
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
    default: break;
  }
}

}  // namespace ddpm::kernels::avx2
