// AVX2 GEMM micro-kernel: 4 rows × 24 columns (three ymm per row) = 12 accumulators of the 16 ymm registers,
// leaving three for B and one for the broadcast A value.
#include <immintrin.h>

#include "kernels/avx2/avx2.h"

namespace ddpm::kernels::avx2 {

void gemm_4x24(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) {
  __m256 acc[kGemmMR][3];
  for (int m = 0; m < kGemmMR; ++m) {
    for (int j = 0; j < 3; ++j) acc[m][j] = accumulate ? _mm256_loadu_ps(c + m * ldc + 8 * j) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b_panel + k * kGemmNR);
    const __m256 b1 = _mm256_loadu_ps(b_panel + k * kGemmNR + 8);
    const __m256 b2 = _mm256_loadu_ps(b_panel + k * kGemmNR + 16);
    const float* a = a_panel + k * kGemmMR;
#pragma GCC unroll 4
    for (int m = 0; m < kGemmMR; ++m) {
      const __m256 am = _mm256_broadcast_ss(a + m);
      acc[m][0] = _mm256_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(am, b1, acc[m][1]);
      acc[m][2] = _mm256_fmadd_ps(am, b2, acc[m][2]);
    }
  }
  for (int m = 0; m < kGemmMR; ++m) {
    for (int j = 0; j < 3; ++j) _mm256_storeu_ps(c + m * ldc + 8 * j, acc[m][j]);
  }
}

}  // namespace ddpm::kernels::avx2
