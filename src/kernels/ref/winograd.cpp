// Reference Winograd F(2×2, 3×3) tile-row transforms: the shared loops one tile at a time.
#include "kernels/ref/ref.h"
#include "kernels/winograd_tiles.h"

namespace ddpm::kernels::ref {

void winograd_input(const float* rows, int64_t row_stride, int64_t tiles, float* out, int64_t out_stride) {
  winograd_input_by_lanes<>(rows, row_stride, tiles, out, out_stride);
}

void winograd_output(const float* m, int64_t m_stride, int64_t tiles, float bias, float* out, int64_t out_stride) {
  winograd_output_by_lanes<>(m, m_stride, tiles, bias, out, out_stride);
}

}  // namespace ddpm::kernels::ref
