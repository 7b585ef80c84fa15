// NEON transposing copy: 4×4 tiles transposed in registers (vtrn, then the 64-bit halves), the ragged edges
// element by element.
#include <arm_neon.h>

#include "kernels/neon/neon.h"
#include "kernels/transpose_tiles.h"

namespace ddpm::kernels::neon {
namespace {

void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  const float32x4x2_t p0 = vtrnq_f32(vld1q_f32(src), vld1q_f32(src + src_stride));
  const float32x4x2_t p1 = vtrnq_f32(vld1q_f32(src + 2 * src_stride), vld1q_f32(src + 3 * src_stride));
  vst1q_f32(dst, vcombine_f32(vget_low_f32(p0.val[0]), vget_low_f32(p1.val[0])));
  vst1q_f32(dst + dst_stride, vcombine_f32(vget_low_f32(p0.val[1]), vget_low_f32(p1.val[1])));
  vst1q_f32(dst + 2 * dst_stride, vcombine_f32(vget_high_f32(p0.val[0]), vget_high_f32(p1.val[0])));
  vst1q_f32(dst + 3 * dst_stride, vcombine_f32(vget_high_f32(p0.val[1]), vget_high_f32(p1.val[1])));
}

}  // namespace

void transpose(int64_t rows, int64_t cols, const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  transpose_by_tiles<4>(rows, cols, src, src_stride, dst, dst_stride, transpose_tile);
}

}  // namespace ddpm::kernels::neon
