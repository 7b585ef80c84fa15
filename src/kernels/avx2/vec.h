// The vocabulary the AVX2 kernels are written in: 8-lane f32 vectors, masked tails and a vectorised exp, so that
// elementwise.cpp reads like the scalar reference.
//
// Include only from src/kernels/avx2/: these inline functions are compiled with AVX2+FMA flags, and the unnamed
// namespace keeps the linker from ever merging them with a same-named copy built for another level (which could
// then run on a CPU without those instructions).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace ddpm::kernels::avx2 {
namespace {

using F32x8 = __m256;
constexpr int64_t kLanes = 8;

inline F32x8 splat(float v) { return _mm256_set1_ps(v); }
inline F32x8 load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, F32x8 v) { _mm256_storeu_ps(p, v); }

// Lanes [0, count) set, for count in [0, 8]. maskload/maskstore never touch the memory of cleared lanes, so a tail
// may end right at the end of a buffer.
inline __m256i tail_mask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline F32x8 load_tail(const float* p, __m256i mask) { return _mm256_maskload_ps(p, mask); }  // cleared lanes: 0
inline void store_tail(float* p, __m256i mask, F32x8 v) { _mm256_maskstore_ps(p, mask, v); }

inline F32x8 fma(F32x8 a, F32x8 b, F32x8 c) { return _mm256_fmadd_ps(a, b, c); }  // a·b + c, one rounding

// The core of exp: z = n·ln2 + r with n = round(z·log2e), |r| <= ln2/2; returns p ≈ exp(r) (so exp(z) = p·2^n).
//   ln2 is split Cody–Waite style into a part whose product with any |n| <= 256 is exact and a small correction, so
//   r keeps full relative precision (±0.5 ulp).
//   exp(r) = 1 + r + r²·q(r), q a degree-4 weighted minimax fit (relative error 3e-9 on |r| <= ln2/2, fitted for
//   this file), evaluated by Horner with FMAs (~1 ulp).
inline F32x8 exp_reduced(F32x8 z, F32x8* n) {
  *n = _mm256_round_ps(_mm256_mul_ps(z, splat(1.44269502f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  F32x8 r = _mm256_fnmadd_ps(*n, splat(0.693145752f), z);
  r = _mm256_fnmadd_ps(*n, splat(1.42860677e-06f), r);
  F32x8 p = splat(1.38145406e-03f);
  p = fma(p, r, splat(8.36874545e-03f));
  p = fma(p, r, splat(4.16683890e-02f));
  p = fma(p, r, splat(1.66665211e-01f));
  p = fma(p, r, splat(4.99999940e-01f));
  p = fma(p, r, splat(1.0f));
  return fma(p, r, splat(1.0f));
}

// exp(x) for every float x, within 1 ulp of the correctly rounded result (checked over all 2^32 inputs).
// The input is clamped to [-104, 89] first (exp(-104) rounds to 0, exp(89) overflows); min/max take the NaN from
// their second operand, which keeps NaN inputs NaN. 2^n is applied as 2^(n/2)·2^(n - n/2): both factors stay normal
// for n in [-150, 128], so results that overflow become inf and results in the subnormal range are rounded once,
// like std::exp, instead of flushing.
inline F32x8 vexp(F32x8 x) {
  x = _mm256_max_ps(splat(-104.0f), _mm256_min_ps(splat(89.0f), x));
  F32x8 n;
  const F32x8 p = exp_reduced(x, &n);
  const __m256i n_int = _mm256_cvtps_epi32(n);
  const __m256i half_n = _mm256_srai_epi32(n_int, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const F32x8 scale_a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half_n, bias), 23));
  const F32x8 scale_b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(n_int, half_n), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, scale_a), scale_b);
}

// x / (1 + exp(-x)), the reference's formula: exp(-x) overflows to inf for x < -88.7 and the quotient is then -0,
// as in the reference; for large x exp(-x) vanishes and the result is x itself.
// SiLU needs less of exp than vexp gives: exp(-x) below 2^-125 vanishes next to 1, so -x is clamped to [-87, 89],
// n is then in [-126, 128] and 2^(n-1) is one normal float (or 0 at n = -126, which changes nothing). The
// denominator is fma(exp(-x)/2, 2, 1): rounded once, and inf exactly where 1 + exp(-x) overflows. That saves
// vexp's two-step scaling on every element.
// A true division, not a reciprocal estimate: the denominator may be inf, which Newton steps would turn into NaN.
inline F32x8 vsilu(F32x8 x) {
  const F32x8 z = _mm256_max_ps(splat(-87.0f), _mm256_min_ps(splat(89.0f), _mm256_xor_ps(x, splat(-0.0f))));
  F32x8 n;
  const F32x8 p = exp_reduced(z, &n);
  const __m256i half_scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
  const F32x8 half_exp = _mm256_mul_ps(p, _mm256_castsi256_ps(half_scale));
  return _mm256_div_ps(x, fma(half_exp, splat(2.0f), splat(1.0f)));
}

// Widening f32 → f64 of each half, for the double-precision reductions.
inline __m256d low_f64(F32x8 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d high_f64(F32x8 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

// Horizontal sums in a fixed lane order, so that a level's result never depends on anything but its input.
inline double sum_lanes(__m256d v) {
  const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));  // (0+2), (1+3)
  return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}
inline float sum_lanes(F32x8 v) {
  __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // lanes i + (i+4)
  quad = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));                                  // lanes 0+2, 1+3
  return _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)));
}

}  // namespace
}  // namespace ddpm::kernels::avx2
