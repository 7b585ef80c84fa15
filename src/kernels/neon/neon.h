// NEON kernels (ARMv8-A Advanced SIMD, always present on ARM64).
#pragma once

#include <cstdint>

namespace ddpm::kernels {
struct DirectConv;
}

namespace ddpm::kernels::neon {

constexpr int kGemmMR = 8;
constexpr int kGemmNR = 12;
void gemm_8x12(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate);

// Elementwise rows and reductions (elementwise.cpp); same contracts as the reference entries in kernels/registry.h.
void silu(int64_t n, const float* x, float* y);
void add(int64_t n, const float* a, const float* b, float* y);
void mul(int64_t n, const float* a, const float* b, float* y);
void add_scalar(int64_t n, const float* a, float b, float* y);
void mul_scalar(int64_t n, const float* a, float b, float* y);
void affine(int64_t n, const float* x, float scale, float shift, float* y);
void affine_silu(int64_t n, const float* x, float scale, float shift, float* y);
double sum_f64(int64_t n, const float* x);
double sum_squared_deviation_f64(int64_t n, const float* x, double mean);
float max(int64_t n, const float* x);
float exp_shifted_sum(int64_t n, const float* x, float shift, float* y);
void f16_to_f32(int64_t n, const uint16_t* x, float* y);
void f32_to_f16(int64_t n, const float* x, uint16_t* y);
void widen_block_scales(int64_t n, const uint16_t* d16, const uint16_t* min16, const int16_t* qsum, float* d,
                        float* min, float* lo_coef);

// Direct convolution over few input channels (conv_direct.cpp); contract: DirectConv in kernels/registry.h.
void conv_direct(const DirectConv& conv);

// Transposing copy (transpose.cpp); contract: KernelTable::transpose.
void transpose(int64_t rows, int64_t cols, const float* src, int64_t src_stride, float* dst, int64_t dst_stride);
// Winograd F(2×2, 3×3) tile-row transforms (winograd.cpp); contracts: KernelTable::winograd_input / _output.
void winograd_input(const float* rows, int64_t row_stride, int64_t tiles, float* out, int64_t out_stride);
void winograd_output(const float* m, int64_t m_stride, int64_t tiles, float bias, float* out, int64_t out_stride);

}  // namespace ddpm::kernels::neon
