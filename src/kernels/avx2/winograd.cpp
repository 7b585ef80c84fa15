// AVX2 Winograd F(2×2, 3×3) tile-row transforms: 8 tiles per vector, then 4 (lane types in winograd_lanes.h).
#include "kernels/avx2/avx2.h"
#include "kernels/avx2/winograd_lanes.h"
#include "kernels/winograd_tiles.h"

namespace ddpm::kernels::avx2 {

void winograd_input(const float* rows, int64_t row_stride, int64_t tiles, float* out, int64_t out_stride) {
  winograd_input_by_lanes<Avx2Lanes, SseLanes>(rows, row_stride, tiles, out, out_stride);
}

void winograd_output(const float* m, int64_t m_stride, int64_t tiles, float bias, float* out, int64_t out_stride) {
  winograd_output_by_lanes<Avx2Lanes, SseLanes>(m, m_stride, tiles, bias, out, out_stride);
}

}  // namespace ddpm::kernels::avx2
