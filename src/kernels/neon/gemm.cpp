// NEON GEMM micro-kernel: 8 rows × 12 columns = 24 q-register accumulators; A is loaded as two vectors and used
// lane by lane (fmla by element), which saves the broadcast loads.
#include <arm_neon.h>

#include "kernels/neon/neon.h"

namespace ddpm::kernels::neon {

void gemm_8x12(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) {
  float32x4_t acc[kGemmMR][3];
  for (int m = 0; m < kGemmMR; ++m) {
    for (int j = 0; j < 3; ++j) acc[m][j] = accumulate ? vld1q_f32(c + m * ldc + 4 * j) : vdupq_n_f32(0.0f);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float32x4_t b0 = vld1q_f32(b_panel + k * kGemmNR);
    const float32x4_t b1 = vld1q_f32(b_panel + k * kGemmNR + 4);
    const float32x4_t b2 = vld1q_f32(b_panel + k * kGemmNR + 8);
    const float32x4_t a_lo = vld1q_f32(a_panel + k * kGemmMR);
    const float32x4_t a_hi = vld1q_f32(a_panel + k * kGemmMR + 4);
#define DDPM_NEON_ROW(m, a, lane) \
  acc[m][0] = vfmaq_laneq_f32(acc[m][0], b0, a, lane); \
  acc[m][1] = vfmaq_laneq_f32(acc[m][1], b1, a, lane); \
  acc[m][2] = vfmaq_laneq_f32(acc[m][2], b2, a, lane);
    DDPM_NEON_ROW(0, a_lo, 0)
    DDPM_NEON_ROW(1, a_lo, 1)
    DDPM_NEON_ROW(2, a_lo, 2)
    DDPM_NEON_ROW(3, a_lo, 3)
    DDPM_NEON_ROW(4, a_hi, 0)
    DDPM_NEON_ROW(5, a_hi, 1)
    DDPM_NEON_ROW(6, a_hi, 2)
    DDPM_NEON_ROW(7, a_hi, 3)
#undef DDPM_NEON_ROW
  }
  for (int m = 0; m < kGemmMR; ++m) {
    for (int j = 0; j < 3; ++j) vst1q_f32(c + m * ldc + 4 * j, acc[m][j]);
  }
}

}  // namespace ddpm::kernels::neon
