// AVX2 + FMA + F16C kernels. Compiled only into src/kernels/avx2/ with matching flags; called only when
// cpu_features().avx2_fma_f16c is true.
#pragma once

#include <cstdint>

namespace ddpm::kernels::avx2 {

constexpr int kGemmMR = 4;
constexpr int kGemmNR = 24;
void gemm_4x24(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate);

}  // namespace ddpm::kernels::avx2
