// Scalar reference of the direct convolution (contract in kernels/registry.h, DirectConv): the oracle the SIMD
// variants are tested against, and the same mul+add chain as the reference GEMM path.
#include "kernels/ref/ref.h"
#include "kernels/registry.h"

namespace ddpm::kernels::ref {

void conv_direct(const DirectConv& c) {
  const int64_t taps = c.kernel_h * c.kernel_w, k_total = c.in_channels * taps;
  for (int64_t o = 0; o < c.out_channels; ++o) {
    const float* w = c.w + o * k_total;
    for (int64_t r = 0; r < c.rows; ++r) {
      float* y = c.y + o * c.y_channel_stride + r * c.y_row_stride;
      for (int64_t j = 0; j < c.out_width; ++j) {
        float acc = 0.0f;
        for (int64_t ci = 0; ci < c.in_channels; ++ci) {
          for (int64_t u = 0; u < c.kernel_h; ++u) {
            const float* row = c.x + ci * c.x_channel_stride + (r * c.stride + u) * c.x_row_stride + j;
            for (int64_t v = 0; v < c.kernel_w; ++v) {
              acc += w[(ci * c.kernel_h + u) * c.kernel_w + v] * row[(v % c.stride) * c.x_phase_stride + v / c.stride];
            }
          }
        }
        if (c.bias) acc += c.bias[o];
        if (c.residual) acc += c.residual[o * c.residual_channel_stride + r * c.residual_row_stride + j];
        y[j] = acc;
      }
    }
  }
}

}  // namespace ddpm::kernels::ref
