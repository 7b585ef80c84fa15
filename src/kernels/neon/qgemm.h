// NEON quantised-GEMM pieces shared with the dotprod kernel (src/kernels/neon_dotprod/), which is compiled with
// other flags. Defined once, in src/kernels/neon/qgemm.cpp, with the baseline ARMv8-A flags: a template in a header
// instantiated in both directories could be linked from the dotprod object and fault on a Cortex-A72.
#pragma once

#include <cstdint>

namespace ddpm::kernels::neon {

// quantize_b (contract: QGemmMicroKernel in kernels/registry.h) for panels of 12 columns.
void qgemm_quantize_b_nr12(int64_t kc, const float* b_panel, uint8_t* q_panel);

}  // namespace ddpm::kernels::neon
