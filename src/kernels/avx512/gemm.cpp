// AVX-512 GEMM micro-kernel: 8 rows × 32 columns (two zmm per row) = 16 accumulators.
// Zen 4 issues one 512-bit FMA per cycle, so 16 independent accumulators cover the 4-cycle FMA latency with room
// to spare, and 8 rows divide every channel count a U-Net uses (32, 64, 128, 256, …) without padding.
#include <immintrin.h>

#include "kernels/avx512/avx512.h"

namespace ddpm::kernels::avx512 {

void gemm_8x32(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) {
  __m512 acc[kGemmMR][2];
  if (accumulate) {
    for (int m = 0; m < kGemmMR; ++m) {
      acc[m][0] = _mm512_loadu_ps(c + m * ldc);
      acc[m][1] = _mm512_loadu_ps(c + m * ldc + 16);
    }
  } else {
    for (int m = 0; m < kGemmMR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b_panel + k * kGemmNR);
    const __m512 b1 = _mm512_loadu_ps(b_panel + k * kGemmNR + 16);
    const float* a = a_panel + k * kGemmMR;
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      const __m512 am = _mm512_set1_ps(a[m]);
      acc[m][0] = _mm512_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(am, b1, acc[m][1]);
    }
  }
  for (int m = 0; m < kGemmMR; ++m) {
    _mm512_storeu_ps(c + m * ldc, acc[m][0]);
    _mm512_storeu_ps(c + m * ldc + 16, acc[m][1]);
  }
}

}  // namespace ddpm::kernels::avx512
