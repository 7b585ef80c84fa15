// AVX-512 quantised-GEMM pieces shared with src/kernels/avx512vnni/ (same 16-column B panels).
#pragma once

#include <cstdint>

namespace ddpm::kernels::avx512 {

constexpr int kQGemmMR = 8;
constexpr int kQGemmNR = 16;

// QGemmMicroKernel::quantize_b for NR = 16, values stored as int8 or, `biased`, as q + 128 (for vpdpbusd).
void qgemm_quantize_b16(int64_t kc, const float* b_panel, uint8_t* q_panel);
void qgemm_quantize_b16_biased(int64_t kc, const float* b_panel, uint8_t* q_panel);

}  // namespace ddpm::kernels::avx512
