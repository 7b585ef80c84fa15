// NEON GEMM micro-kernels: 8 rows × 12 columns = 24 q-register accumulators. The packed-A kernel loads A as two
// vectors and uses it lane by lane (fmla by element), which saves the broadcast loads.
#include <arm_neon.h>

#include <cstring>

#include "kernels/neon/neon.h"
#include "kernels/registry.h"

namespace ddpm::kernels::neon {

void gemm_8x12(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) {
  float32x4_t acc[kGemmMR][3];
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) acc[m][j] = accumulate ? vld1q_f32(c + m * ldc + 4 * j) : vdupq_n_f32(0.0f);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float32x4_t b0 = vld1q_f32(b_panel + k * kGemmNR);
    const float32x4_t b1 = vld1q_f32(b_panel + k * kGemmNR + 4);
    const float32x4_t b2 = vld1q_f32(b_panel + k * kGemmNR + 8);
    const float32x4_t a_lo = vld1q_f32(a_panel + k * kGemmMR);
    const float32x4_t a_hi = vld1q_f32(a_panel + k * kGemmMR + 4);
#define DDPM_NEON_ROW(m, a, lane) \
  acc[m][0] = vfmaq_laneq_f32(acc[m][0], b0, a, lane); \
  acc[m][1] = vfmaq_laneq_f32(acc[m][1], b1, a, lane); \
  acc[m][2] = vfmaq_laneq_f32(acc[m][2], b2, a, lane);
    DDPM_NEON_ROW(0, a_lo, 0)
    DDPM_NEON_ROW(1, a_lo, 1)
    DDPM_NEON_ROW(2, a_lo, 2)
    DDPM_NEON_ROW(3, a_lo, 3)
    DDPM_NEON_ROW(4, a_hi, 0)
    DDPM_NEON_ROW(5, a_hi, 1)
    DDPM_NEON_ROW(6, a_hi, 2)
    DDPM_NEON_ROW(7, a_hi, 3)
#undef DDPM_NEON_ROW
  }
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) vst1q_f32(c + m * ldc + 4 * j, acc[m][j]);
  }
}

namespace {

// A read straight from its rows: one scalar load per row and k step, used by element like the packed kernel's
// lanes (24 accumulators + 3 B + 1 A registers of the 32).
void gemm_8x12_rows(int64_t kc, const float* const* a_rows, const float* b_panel, float* c, int64_t ldc,
                    bool accumulate, const GemmEpilogue* epilogue) {
  const float* a[kGemmMR];
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) a[m] = a_rows[m];
  float32x4_t acc[kGemmMR][3];
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) acc[m][j] = accumulate ? vld1q_f32(c + m * ldc + 4 * j) : vdupq_n_f32(0.0f);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float32x4_t b0 = vld1q_f32(b_panel + k * kGemmNR);
    const float32x4_t b1 = vld1q_f32(b_panel + k * kGemmNR + 4);
    const float32x4_t b2 = vld1q_f32(b_panel + k * kGemmNR + 8);
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      const float am = a[m][k];
      acc[m][0] = vfmaq_n_f32(acc[m][0], b0, am);
      acc[m][1] = vfmaq_n_f32(acc[m][1], b1, am);
      acc[m][2] = vfmaq_n_f32(acc[m][2], b2, am);
    }
  }
  if (epilogue) {
#pragma GCC unroll 8
    for (int m = 0; m < kGemmMR; ++m) {
      if (epilogue->row_bias) {
        const float32x4_t bias = vdupq_n_f32(epilogue->row_bias[m]);
#pragma GCC unroll 8
        for (int j = 0; j < 3; ++j) acc[m][j] = vaddq_f32(acc[m][j], bias);
      }
      if (epilogue->col_bias) {
#pragma GCC unroll 8
        for (int j = 0; j < 3; ++j) acc[m][j] = vaddq_f32(acc[m][j], vld1q_f32(epilogue->col_bias + 4 * j));
      }
      if (epilogue->residual) {
        const float* residual = epilogue->residual + m * epilogue->residual_ld;
#pragma GCC unroll 8
        for (int j = 0; j < 3; ++j) acc[m][j] = vaddq_f32(acc[m][j], vld1q_f32(residual + 4 * j));
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kGemmMR; ++m) {
#pragma GCC unroll 8
    for (int j = 0; j < 3; ++j) vst1q_f32(c + m * ldc + 4 * j, acc[m][j]);
  }
}

void gather_rows(const GatherRun* runs, int64_t count, int64_t step, const float* src, int64_t src_stride, float* dst,
                 int64_t dst_stride, int64_t rows) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  for (int64_t i = 0; i < count; ++i) {
    const GatherRun& run = runs[i];
    const int valid_end = run.length - run.trail;
    for (int64_t r = 0; r < rows; ++r) {
      float* out = dst + r * dst_stride + run.dst_offset;
      const float* in = src + r * src_stride + run.src_offset;
      int lane = 0;
      for (; lane < run.lead; ++lane) out[lane] = 0.0f;
      if (step == 1) {
        for (; lane + 4 <= valid_end; lane += 4) vst1q_f32(out + lane, vld1q_f32(in + (lane - run.lead)));
      }
      for (; lane < valid_end; ++lane) std::memcpy(out + lane, in + (lane - run.lead) * step, sizeof(float));
      for (; lane + 4 <= run.length; lane += 4) vst1q_f32(out + lane, zero);
      for (; lane < run.length; ++lane) out[lane] = 0.0f;
    }
  }
}

}  // namespace
}  // namespace ddpm::kernels::neon

namespace ddpm::kernels {

GemmMicroKernel neon_gemm() {
  GemmMicroKernel k;
  k.mr = neon::kGemmMR;
  k.nr = neon::kGemmNR;
  k.run = neon::gemm_8x12;
  k.run_rows = neon::gemm_8x12_rows;
  k.gather_rows = neon::gather_rows;
  return k;
}

}  // namespace ddpm::kernels
