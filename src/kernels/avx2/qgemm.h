// AVX2 quantised-GEMM pieces shared with the 256-bit VNNI kernels (src/kernels/avxvnni/, and its EVEX build in
// src/kernels/avx512vnni/): the float half of the tile (qgemm_tile.h) and the 8-column B panels.
#pragma once

#include <cstdint>

#include "kernels/registry.h"

namespace ddpm::kernels::avx2 {

constexpr int kQGemmMR = 4;
constexpr int kQGemmNR = 8;
// The VNNI kernels need no registers for the sign trick: six rows fit the 16 ymm registers (6 int32 + 6 float
// accumulators, the B vector and a broadcast).
constexpr int kQGemmVnniMR = 6;

// QGemmMicroKernel::quantize_b for NR = 8, values stored as int8 q = u - 127 or, `biased`, as q + 128 = u + 1
// (unsigned, for vpdpbusd).
void qgemm_quantize_b8(int64_t kc, const float* b_panel, uint8_t* q_panel);
void qgemm_quantize_b8_biased(int64_t kc, const float* b_panel, uint8_t* q_panel);

// The QGemmMicroKernel of a 256-bit VNNI build (qgemm_vnni.h): 6×8 tiles over biased B panels, `run` from the
// build's own directory.
QGemmMicroKernel vnni256_kernel(const char* name, decltype(QGemmMicroKernel::run) run);

}  // namespace ddpm::kernels::avx2
