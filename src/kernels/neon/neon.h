// NEON kernels (ARMv8-A Advanced SIMD, always present on ARM64).
#pragma once

#include <cstdint>

namespace ddpm::kernels::neon {

constexpr int kGemmMR = 8;
constexpr int kGemmNR = 12;
void gemm_8x12(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate);

}  // namespace ddpm::kernels::neon
