// NEON Winograd F(2×2, 3×3) tile-row transforms: 4 tiles per vector; ld2/st2 split columns into even and odd ones
// and merge them back.
#include "kernels/neon/neon.h"
#include "kernels/neon/vec.h"
#include "kernels/winograd_tiles.h"

namespace ddpm::kernels::neon {
namespace {

struct Lanes {
  using V = float32x4_t;
  static constexpr int64_t kWidth = 4;
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V splat(float v) { return vdupq_n_f32(v); }
  static void deinterleave(const float* p, V* even, V* odd) {
    const float32x4x2_t pair = vld2q_f32(p);
    *even = pair.val[0];
    *odd = pair.val[1];
  }
  static void store_interleaved(float* p, V even, V odd) {
    float32x4x2_t pair;
    pair.val[0] = even;
    pair.val[1] = odd;
    vst2q_f32(p, pair);
  }
};

}  // namespace

void winograd_input(const float* rows, int64_t row_stride, int64_t tiles, float* out, int64_t out_stride) {
  winograd_input_by_lanes<Lanes>(rows, row_stride, tiles, out, out_stride);
}

void winograd_output(const float* m, int64_t m_stride, int64_t tiles, float bias, float* out, int64_t out_stride) {
  winograd_output_by_lanes<Lanes>(m, m_stride, tiles, bias, out, out_stride);
}

}  // namespace ddpm::kernels::neon
