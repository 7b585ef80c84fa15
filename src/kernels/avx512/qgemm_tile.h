// The float half of the AVX-512 quantised micro-kernels (8×16 tile), shared by avx512/qgemm.cpp (AVX-512BW) and
// avx512vnni/qgemm.cpp, which differ only in how they form each block's exact int32 dot products. Internal
// linkage on purpose: each directory compiles it with its own flags, and one shared inline copy could otherwise
// carry VNNI instructions into the code a CPU without VNNI runs.
#pragma once

// GCC 12 reports its own _mm512_undefined_*() placeholders as (maybe-)uninitialized once inlined (see vec.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/avx512/qgemm.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx512 {
namespace {

inline int32_t load_weight_quad(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// C[8×16] (+)= A·B: block_dot(b, acc) sets acc[m] to Σ_i wq·u over block b of row m (16 columns per vector); the
// scales turn it into floats in block order, as the contract in kernels/registry.h says, the mul+add fused.
template <class BlockDot>
inline void qgemm_tile(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
                       const GemmEpilogue* epilogue, BlockDot block_dot) {
  constexpr int MR = kQGemmMR, NR = kQGemmNR;
  const int64_t blocks = kc / 32;
  const float* b_scale = reinterpret_cast<const float*>(q_panel + kc * NR);
  const float* b_sum = b_scale + blocks * NR;
  const float* b_lo = b_sum + blocks * NR;
  __m512 f[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) f[m] = accumulate ? _mm512_loadu_ps(c + m * ldc) : _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i acc[MR];
    block_dot(b, acc);
    const __m512 ad = _mm512_loadu_ps(b_scale + b * NR);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(a.d[b * MR + m]), ad);
      f[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m]), scale, f[m]);
    }
    const __m512 alo = _mm512_loadu_ps(b_lo + b * NR);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) f[m] = _mm512_fmadd_ps(_mm512_set1_ps(a.lo_coef[b * MR + m]), alo, f[m]);
    if (a.min) {
      const __m512 as = _mm512_loadu_ps(b_sum + b * NR);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) f[m] = _mm512_fmadd_ps(_mm512_set1_ps(a.min[b * MR + m]), as, f[m]);
    }
  }
  if (epilogue) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      if (epilogue->row_bias) f[m] = _mm512_add_ps(f[m], _mm512_set1_ps(epilogue->row_bias[m]));
      if (epilogue->col_bias) f[m] = _mm512_add_ps(f[m], _mm512_loadu_ps(epilogue->col_bias));
      if (epilogue->residual)
        f[m] = _mm512_add_ps(f[m], _mm512_loadu_ps(epilogue->residual + m * epilogue->residual_ld));
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) _mm512_storeu_ps(c + m * ldc, f[m]);
}

}  // namespace
}  // namespace ddpm::kernels::avx512
