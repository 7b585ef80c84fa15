// AVX-512 kernels (F + BW + VL + DQ). Compiled only into src/kernels/avx512/ with matching flags; called only when
// cpu_features().avx512 is true.
#pragma once

#include <cstdint>

namespace ddpm::kernels::avx512 {

constexpr int kGemmMR = 8;
constexpr int kGemmNR = 32;
void gemm_8x32(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate);

}  // namespace ddpm::kernels::avx512
