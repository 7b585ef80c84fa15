#include <cstring>

#include "kernels/ref/ref.h"
#include "kernels/registry.h"

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

namespace ddpm::kernels {
namespace {

void gather_rows(const GatherRun* runs, int64_t count, int64_t step, const float* src, int64_t src_stride, float* dst,
                 int64_t dst_stride, int64_t rows) {
  for (int64_t i = 0; i < count; ++i) {
    const GatherRun& run = runs[i];
    const int32_t valid_end = run.length - run.trail;
    for (int64_t r = 0; r < rows; ++r) {
      float* out = dst + r * dst_stride + run.dst_offset;
      const float* in = src + r * src_stride + run.src_offset;
      for (int32_t lane = 0; lane < run.lead; ++lane) out[lane] = 0.0f;
      // Copied as bytes: the quantised conv gathers int8 quads through here, and a float copy may quiet a
      // signalling-NaN pattern on some targets (x87).
      for (int32_t lane = run.lead; lane < valid_end; ++lane)
        std::memcpy(out + lane, in + (lane - run.lead) * step, sizeof(float));
      for (int32_t lane = valid_end; lane < run.length; ++lane) out[lane] = 0.0f;
    }
  }
}

}  // namespace

GemmMicroKernel reference_gemm() {
  GemmMicroKernel k;
  k.mr = ref::kGemmMR;
  k.nr = ref::kGemmNR;
  k.run = ref::gemm_4x8;
  k.gather_rows = gather_rows;
  return k;
}

}  // namespace ddpm::kernels
