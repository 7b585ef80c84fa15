#include "kernels/ref/ref.h"

namespace ddpm::kernels::ref {

void gemm_4x8(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) {
  float acc[kGemmMR][kGemmNR];
  for (int m = 0; m < kGemmMR; ++m) {
    for (int n = 0; n < kGemmNR; ++n) acc[m][n] = accumulate ? c[m * ldc + n] : 0.0f;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float* a = a_panel + k * kGemmMR;
    const float* b = b_panel + k * kGemmNR;
    for (int m = 0; m < kGemmMR; ++m) {
      for (int n = 0; n < kGemmNR; ++n) acc[m][n] += a[m] * b[n];
    }
  }
  for (int m = 0; m < kGemmMR; ++m) {
    for (int n = 0; n < kGemmNR; ++n) c[m * ldc + n] = acc[m][n];
  }
}

}  // namespace ddpm::kernels::ref
