// The vocabulary the AVX-512 kernels are written in: 16-lane f32 vectors, mask-register tails and a vectorised exp,
// so that elementwise.cpp reads like the scalar reference.
//
// Include only from src/kernels/avx512/: these inline functions are compiled with AVX-512 flags, and the unnamed
// namespace keeps the linker from ever merging them with a same-named copy built for another level (which could
// then run on a CPU without those instructions).
#pragma once

// GCC 12 reports its own _mm512_undefined_*() placeholders (the pass-through operand of unmasked intrinsics) as
// (maybe-)uninitialized once they are inlined here; the warning is about the header, not about this code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>

namespace ddpm::kernels::avx512 {
namespace {

using F32x16 = __m512;
constexpr int64_t kLanes = 16;

inline F32x16 splat(float v) { return _mm512_set1_ps(v); }
inline F32x16 load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, F32x16 v) { _mm512_storeu_ps(p, v); }

// Lanes [0, count) set, for count in [0, 16]. Masked loads and stores never touch the memory of cleared lanes, so a
// tail may end right at the end of a buffer.
inline __mmask16 tail_mask(int64_t count) { return static_cast<__mmask16>((1u << count) - 1u); }
inline F32x16 load_tail(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }  // cleared: 0
inline void store_tail(float* p, __mmask16 mask, F32x16 v) { _mm512_mask_storeu_ps(p, mask, v); }

inline F32x16 fma(F32x16 a, F32x16 b, F32x16 c) { return _mm512_fmadd_ps(a, b, c); }  // a·b + c, one rounding

// exp(x) for every float x; the same reduction and polynomial as the AVX2 level (see src/kernels/avx2/vec.h), but
// the final ·2^n is one vscalefps, which rounds once and handles overflow to inf and subnormal results itself.
// The clamp to [-104, 89] keeps r meaningful for huge |x| (exp(-104) rounds to 0, exp(89) overflows); min/max take
// the NaN from their second operand, which keeps NaN inputs NaN.
inline F32x16 vexp(F32x16 x) {
  x = _mm512_max_ps(splat(-104.0f), _mm512_min_ps(splat(89.0f), x));
  const F32x16 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, splat(1.44269502f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  F32x16 r = _mm512_fnmadd_ps(n, splat(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, splat(1.42860677e-06f), r);
  F32x16 p = splat(1.38145406e-03f);
  p = fma(p, r, splat(8.36874545e-03f));
  p = fma(p, r, splat(4.16683890e-02f));
  p = fma(p, r, splat(1.66665211e-01f));
  p = fma(p, r, splat(4.99999940e-01f));
  p = fma(p, r, splat(1.0f));
  p = fma(p, r, splat(1.0f));
  return _mm512_scalef_ps(p, n);
}

// x / (1 + exp(-x)), the reference's formula (see src/kernels/avx2/vec.h for why it is a true division).
inline F32x16 vsilu(F32x16 x) {
  const F32x16 negated = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN)));
  return _mm512_div_ps(x, _mm512_add_ps(splat(1.0f), vexp(negated)));
}

// Widening f32 → f64 of each half, for the double-precision reductions.
inline __m512d low_f64(F32x16 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
inline __m512d high_f64(F32x16 v) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)); }

// Horizontal sums in a fixed lane order, so that a level's result never depends on anything but its input.
inline double sum_lanes(__m512d v) {
  const __m256d quad = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));  // i + (i+4)
  const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(quad), _mm256_extractf128_pd(quad, 1));
  return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}
inline float sum_lanes(F32x16 v) {
  const __m256 oct = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));  // i + (i+8)
  __m128 quad = _mm_add_ps(_mm256_castps256_ps128(oct), _mm256_extractf128_ps(oct, 1));
  quad = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
  return _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)));
}

}  // namespace
}  // namespace ddpm::kernels::avx512
