// The vocabulary the NEON kernels are written in: 4-lane f32 vectors, tails through a small stack buffer (NEON has
// no masked loads) and a vectorised exp, so that elementwise.cpp reads like the scalar reference.
//
// Include only from src/kernels/neon/. The unnamed namespace gives every helper internal linkage, like the x86
// levels' vocabularies, so no copy is ever shared with code built for another level.
#pragma once

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

namespace ddpm::kernels::neon {
namespace {

using F32x4 = float32x4_t;
constexpr int64_t kLanes = 4;

inline F32x4 splat(float v) { return vdupq_n_f32(v); }
inline F32x4 load(const float* p) { return vld1q_f32(p); }
inline void store(float* p, F32x4 v) { vst1q_f32(p, v); }

// The first `count` (< 4) floats of p in the low lanes, zeros above; and the way back. Copying through a buffer
// keeps every access inside the caller's arrays.
inline F32x4 load_tail(const float* p, int64_t count) {
  float lanes[kLanes] = {};
  std::memcpy(lanes, p, static_cast<size_t>(count) * sizeof(float));
  return vld1q_f32(lanes);
}
inline void store_tail(float* p, int64_t count, F32x4 v) {
  float lanes[kLanes];
  vst1q_f32(lanes, v);
  std::memcpy(p, lanes, static_cast<size_t>(count) * sizeof(float));
}
// All-ones in lanes [0, count).
inline uint32x4_t tail_mask(int64_t count) {
  const uint32_t index[kLanes] = {0, 1, 2, 3};
  return vcltq_u32(vld1q_u32(index), vdupq_n_u32(static_cast<uint32_t>(count)));
}

inline F32x4 fma(F32x4 a, F32x4 b, F32x4 c) { return vfmaq_f32(c, a, b); }  // a·b + c, one rounding

// The core of exp: z = n·ln2 + r, returns p ≈ exp(r) (so exp(z) = p·2^n); the same Cody–Waite reduction and
// minimax polynomial as the AVX2 level (see src/kernels/avx2/vec.h for the error budget).
inline F32x4 exp_reduced(F32x4 z, F32x4* n) {
  *n = vrndnq_f32(vmulq_f32(z, splat(1.44269502f)));
  F32x4 r = vfmsq_f32(z, *n, splat(0.693145752f));
  r = vfmsq_f32(r, *n, splat(1.42860677e-06f));
  F32x4 p = splat(1.38145406e-03f);
  p = fma(p, r, splat(8.36874545e-03f));
  p = fma(p, r, splat(4.16683890e-02f));
  p = fma(p, r, splat(1.66665211e-01f));
  p = fma(p, r, splat(4.99999940e-01f));
  p = fma(p, r, splat(1.0f));
  return fma(p, r, splat(1.0f));
}

// exp(x) for every float x: clamp to [-104, 89], then 2^n as 2^(n/2)·2^(n - n/2) so that overflow gives inf and
// subnormal results are rounded once (as in the AVX2 level). NEON's min/max return NaN when either input is NaN,
// which keeps NaN inputs NaN through the clamp.
inline F32x4 vexp(F32x4 x) {
  x = vmaxq_f32(splat(-104.0f), vminq_f32(splat(89.0f), x));
  F32x4 n;
  const F32x4 p = exp_reduced(x, &n);
  const int32x4_t n_int = vcvtq_s32_f32(n);
  const int32x4_t half_n = vshrq_n_s32(n_int, 1);
  const int32x4_t bias = vdupq_n_s32(127);
  const F32x4 scale_a = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(half_n, bias), 23));
  const F32x4 scale_b = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vsubq_s32(n_int, half_n), bias), 23));
  return vmulq_f32(vmulq_f32(p, scale_a), scale_b);
}

// x / (1 + exp(-x)), the reference's formula, with the AVX2 level's shortcut (see src/kernels/avx2/vec.h): -x
// clamped to [-87, 89], one 2^(n-1) scale, denominator fma(exp(-x)/2, 2, 1), and a true division.
inline F32x4 vsilu(F32x4 x) {
  const F32x4 z = vmaxq_f32(splat(-87.0f), vminq_f32(splat(89.0f), vnegq_f32(x)));
  F32x4 n;
  const F32x4 p = exp_reduced(z, &n);
  const int32x4_t half_scale = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(126)), 23);
  const F32x4 half_exp = vmulq_f32(p, vreinterpretq_f32_s32(half_scale));
  return vdivq_f32(x, fma(half_exp, splat(2.0f), splat(1.0f)));
}

// The reference's max step, "v > m ? v : m" (vmaxq_f32 would propagate NaNs instead of skipping them).
inline F32x4 max_step(F32x4 v, F32x4 m) { return vbslq_f32(vcgtq_f32(v, m), v, m); }

}  // namespace
}  // namespace ddpm::kernels::neon
