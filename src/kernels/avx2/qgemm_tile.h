// The float half of the 256-bit quantised micro-kernels (MR×8 tiles), shared by avx2/qgemm.cpp (vpmaddubsw) and the
// VNNI kernels (avxvnni/, avx512vnni/qgemm_ymm.cpp), which differ only in how they form each block's exact int32
// dot products. Internal linkage on purpose: each directory compiles it with its own flags, and one shared inline
// copy could otherwise carry VNNI or EVEX instructions into the code an AVX2-only CPU runs.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/avx2/qgemm.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx2 {
namespace {

inline int32_t load_weight_quad(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// C[MR×8] (+)= A·B: block_dot(b, acc) sets acc[m] to Σ_i wq·u over block b of row m (8 columns per vector); the
// scales turn it into floats in block order, as the contract in kernels/registry.h says, the mul+add fused.
template <int MR, class BlockDot>
inline void qgemm_tile(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
                       const GemmEpilogue* epilogue, BlockDot block_dot) {
  constexpr int NR = kQGemmNR;
  const int64_t blocks = kc / 32;
  const float* b_scale = reinterpret_cast<const float*>(q_panel + kc * NR);
  const float* b_sum = b_scale + blocks * NR;
  const float* b_lo = b_sum + blocks * NR;
  __m256 f[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) f[m] = accumulate ? _mm256_loadu_ps(c + m * ldc) : _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i acc[MR];
    block_dot(b, acc);
    const __m256 ad = _mm256_loadu_ps(b_scale + b * NR);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(a.d[b * MR + m]), ad);
      f[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m]), scale, f[m]);
    }
    const __m256 alo = _mm256_loadu_ps(b_lo + b * NR);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) f[m] = _mm256_fmadd_ps(_mm256_set1_ps(a.lo_coef[b * MR + m]), alo, f[m]);
    if (a.min) {
      const __m256 as = _mm256_loadu_ps(b_sum + b * NR);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) f[m] = _mm256_fmadd_ps(_mm256_set1_ps(a.min[b * MR + m]), as, f[m]);
    }
  }
  if (epilogue) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      if (epilogue->row_bias) f[m] = _mm256_add_ps(f[m], _mm256_set1_ps(epilogue->row_bias[m]));
      if (epilogue->col_bias) f[m] = _mm256_add_ps(f[m], _mm256_loadu_ps(epilogue->col_bias));
      if (epilogue->residual)
        f[m] = _mm256_add_ps(f[m], _mm256_loadu_ps(epilogue->residual + m * epilogue->residual_ld));
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) _mm256_storeu_ps(c + m * ldc, f[m]);
}

}  // namespace
}  // namespace ddpm::kernels::avx2
