// NEON elementwise rows and reductions; see src/kernels/ref/elementwise.cpp for the semantics each one must keep.
// Full vectors first, then one vector for the tail, loaded and stored through a stack buffer, so the tail computes
// exactly what a full vector would.
#include <algorithm>
#include <cstring>

#include "kernels/neon/neon.h"
#include "kernels/neon/vec.h"

namespace ddpm::kernels::neon {
namespace {

template <typename Op>
inline void map_unary(int64_t n, const float* x, float* y, Op op) {
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x4 a = op(load(x + i));
    const F32x4 b = op(load(x + i + kLanes));
    store(y + i, a);
    store(y + i + kLanes, b);
  }
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(x + i)));
  if (i < n) store_tail(y + i, n - i, op(load_tail(x + i, n - i)));
}

template <typename Op>
inline void map_binary(int64_t n, const float* a, const float* b, float* y, Op op) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(a + i), load(b + i)));
  if (i < n) store_tail(y + i, n - i, op(load_tail(a + i, n - i), load_tail(b + i, n - i)));
}

}  // namespace

void silu(int64_t n, const float* x, float* y) { map_unary(n, x, y, [](F32x4 v) { return vsilu(v); }); }

void add(int64_t n, const float* a, const float* b, float* y) {
  map_binary(n, a, b, y, [](F32x4 u, F32x4 v) { return vaddq_f32(u, v); });
}

void mul(int64_t n, const float* a, const float* b, float* y) {
  map_binary(n, a, b, y, [](F32x4 u, F32x4 v) { return vmulq_f32(u, v); });
}

void add_scalar(int64_t n, const float* a, float b, float* y) {
  const F32x4 bv = splat(b);
  map_unary(n, a, y, [bv](F32x4 v) { return vaddq_f32(v, bv); });
}

void mul_scalar(int64_t n, const float* a, float b, float* y) {
  const F32x4 bv = splat(b);
  map_unary(n, a, y, [bv](F32x4 v) { return vmulq_f32(v, bv); });
}

// One FMA, as g++ compiles the reference's x·scale + shift on ARM64 too.
void affine(int64_t n, const float* x, float scale, float shift, float* y) {
  const F32x4 scale_v = splat(scale), shift_v = splat(shift);
  map_unary(n, x, y, [=](F32x4 v) { return fma(v, scale_v, shift_v); });
}

void affine_silu(int64_t n, const float* x, float scale, float shift, float* y) {
  const F32x4 scale_v = splat(scale), shift_v = splat(shift);
  map_unary(n, x, y, [=](F32x4 v) { return vsilu(fma(v, scale_v, shift_v)); });
}

// Four f64 accumulators (8 floats per step). The zero-filled lanes of the tail add nothing.
double sum_f64(int64_t n, const float* x) {
  float64x2_t acc0 = vdupq_n_f64(0.0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x4 a = load(x + i), b = load(x + i + kLanes);
    acc0 = vaddq_f64(acc0, vcvt_f64_f32(vget_low_f32(a)));
    acc1 = vaddq_f64(acc1, vcvt_high_f64_f32(a));
    acc2 = vaddq_f64(acc2, vcvt_f64_f32(vget_low_f32(b)));
    acc3 = vaddq_f64(acc3, vcvt_high_f64_f32(b));
  }
  for (; i < n; i += kLanes) {
    const F32x4 a = n - i >= kLanes ? load(x + i) : load_tail(x + i, n - i);
    acc0 = vaddq_f64(acc0, vcvt_f64_f32(vget_low_f32(a)));
    acc1 = vaddq_f64(acc1, vcvt_high_f64_f32(a));
  }
  const float64x2_t total = vaddq_f64(vaddq_f64(acc0, acc1), vaddq_f64(acc2, acc3));
  return vgetq_lane_f64(total, 0) + vgetq_lane_f64(total, 1);
}

// Σ(x - mean)² in f64. Tail lanes beyond n are given the value mean, whose deviation is exactly 0.
double sum_squared_deviation_f64(int64_t n, const float* x, double mean) {
  const float64x2_t mean_v = vdupq_n_f64(mean);
  float64x2_t acc0 = vdupq_n_f64(0.0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  auto accumulate = [&](float64x2_t& acc, float64x2_t values) {
    const float64x2_t d = vsubq_f64(values, mean_v);
    acc = vfmaq_f64(acc, d, d);
  };
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x4 a = load(x + i), b = load(x + i + kLanes);
    accumulate(acc0, vcvt_f64_f32(vget_low_f32(a)));
    accumulate(acc1, vcvt_high_f64_f32(a));
    accumulate(acc2, vcvt_f64_f32(vget_low_f32(b)));
    accumulate(acc3, vcvt_high_f64_f32(b));
  }
  for (; i < n; i += kLanes) {
    const int64_t count = n - i >= kLanes ? kLanes : n - i;
    const F32x4 a = count == kLanes ? load(x + i) : load_tail(x + i, count);
    float64x2_t low = vcvt_f64_f32(vget_low_f32(a)), high = vcvt_high_f64_f32(a);
    if (count < kLanes) {
      const uint32x4_t mask = tail_mask(count);
      const uint64x2_t low_mask = vreinterpretq_u64_s64(vmovl_s32(vget_low_s32(vreinterpretq_s32_u32(mask))));
      const uint64x2_t high_mask = vreinterpretq_u64_s64(vmovl_high_s32(vreinterpretq_s32_u32(mask)));
      low = vbslq_f64(low_mask, low, mean_v);
      high = vbslq_f64(high_mask, high, mean_v);
    }
    accumulate(acc0, low);
    accumulate(acc1, high);
  }
  const float64x2_t total = vaddq_f64(vaddq_f64(acc0, acc1), vaddq_f64(acc2, acc3));
  return vgetq_lane_f64(total, 0) + vgetq_lane_f64(total, 1);
}

// Every lane starts from x[0]; tail lanes beyond n hold x[0] too, which can never replace anything.
float max(int64_t n, const float* x) {
  const F32x4 first = splat(x[0]);
  F32x4 acc0 = first, acc1 = first;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 = max_step(load(x + i), acc0);
    acc1 = max_step(load(x + i + kLanes), acc1);
  }
  for (; i < n; i += kLanes) {
    if (n - i >= kLanes) {
      acc0 = max_step(load(x + i), acc0);
    } else {
      acc0 = max_step(vbslq_f32(tail_mask(n - i), load_tail(x + i, n - i), first), acc0);
    }
  }
  acc0 = max_step(acc1, acc0);
  float lanes[kLanes];
  store(lanes, acc0);
  float m = lanes[0];
  for (int j = 1; j < kLanes; ++j) m = lanes[j] > m ? lanes[j] : m;
  return m;
}

// Two f32 sum vectors; the tail's padding lanes are zeroed before they are summed (exp(0) would add 1 each).
float exp_shifted_sum(int64_t n, const float* x, float shift, float* y) {
  const F32x4 shift_v = splat(shift);
  F32x4 sum0 = vdupq_n_f32(0.0f), sum1 = sum0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x4 a = vexp(vsubq_f32(load(x + i), shift_v));
    const F32x4 b = vexp(vsubq_f32(load(x + i + kLanes), shift_v));
    store(y + i, a);
    store(y + i + kLanes, b);
    sum0 = vaddq_f32(sum0, a);
    sum1 = vaddq_f32(sum1, b);
  }
  for (; i < n; i += kLanes) {
    if (n - i >= kLanes) {
      const F32x4 a = vexp(vsubq_f32(load(x + i), shift_v));
      store(y + i, a);
      sum0 = vaddq_f32(sum0, a);
    } else {
      const uint32x4_t mask = tail_mask(n - i);
      const F32x4 a = vreinterpretq_f32_u32(
          vandq_u32(vreinterpretq_u32_f32(vexp(vsubq_f32(load_tail(x + i, n - i), shift_v))), mask));
      store_tail(y + i, n - i, a);
      sum0 = vaddq_f32(sum0, a);
    }
  }
  const F32x4 total = vaddq_f32(sum0, sum1);
  return (vgetq_lane_f32(total, 0) + vgetq_lane_f32(total, 1)) + (vgetq_lane_f32(total, 2) + vgetq_lane_f32(total, 3));
}

namespace {

// FCVTL quiets signalling NaNs (sets the f32 quiet bit); the reference keeps the payload as it is. Lanes whose f16
// exponent is all ones with the quiet bit clear (signalling NaNs, and infinities, whose bit is already 0) get that
// bit cleared again.
inline void widen_f16(uint16x8_t halves, F32x4* low, F32x4* high) {
  const uint16x8_t signalling = vceqq_u16(vandq_u16(halves, vdupq_n_u16(0x7e00)), vdupq_n_u16(0x7c00));
  const int16x8_t signalling_s = vreinterpretq_s16_u16(signalling);
  const uint32x4_t quiet_bit = vdupq_n_u32(0x00400000);
  const uint32x4_t clear_low = vandq_u32(vreinterpretq_u32_s32(vmovl_s16(vget_low_s16(signalling_s))), quiet_bit);
  const uint32x4_t clear_high = vandq_u32(vreinterpretq_u32_s32(vmovl_high_s16(signalling_s)), quiet_bit);
  const float16x8_t h = vreinterpretq_f16_u16(halves);
  *low = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(vcvt_f32_f16(vget_low_f16(h))), clear_low));
  *high = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(vcvt_high_f32_f16(h)), clear_high));
}

// Round to nearest even (FPCR's default mode, the reference's); NaNs come out quiet with the top payload bits, as in
// the reference.
inline uint16x8_t narrow_f16(F32x4 low, F32x4 high) {
  return vreinterpretq_u16_f16(vcvt_high_f16_f32(vcvt_f16_f32(low), high));
}

}  // namespace

void f16_to_f32(int64_t n, const uint16_t* x, float* y) {
  int64_t i = 0;
  F32x4 low, high;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    widen_f16(vld1q_u16(x + i), &low, &high);
    store(y + i, low);
    store(y + i + kLanes, high);
  }
  if (i < n) {
    uint16_t halves[2 * kLanes] = {};
    std::memcpy(halves, x + i, static_cast<size_t>(n - i) * sizeof(uint16_t));
    widen_f16(vld1q_u16(halves), &low, &high);
    float wide[2 * kLanes];
    store(wide, low);
    store(wide + kLanes, high);
    std::memcpy(y + i, wide, static_cast<size_t>(n - i) * sizeof(float));
  }
}

void f32_to_f16(int64_t n, const float* x, uint16_t* y) {
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) vst1q_u16(y + i, narrow_f16(load(x + i), load(x + i + kLanes)));
  if (i < n) {
    float wide[2 * kLanes] = {};
    std::memcpy(wide, x + i, static_cast<size_t>(n - i) * sizeof(float));
    uint16_t halves[2 * kLanes];
    vst1q_u16(halves, narrow_f16(load(wide), load(wide + kLanes)));
    std::memcpy(y + i, halves, static_cast<size_t>(n - i) * sizeof(uint16_t));
  }
}

// Eight blocks a step; the tail from zero-padded copies, its results copied out.
void widen_block_scales(int64_t n, const uint16_t* d16, const uint16_t* min16, const int16_t* qsum, float* d,
                        float* min, float* lo_coef) {
  constexpr int64_t kStep = 2 * kLanes;
  for (int64_t i = 0; i < n; i += kStep) {
    const int64_t count = std::min<int64_t>(kStep, n - i);
    uint16_t scales[kStep] = {}, minima[kStep] = {};
    int16_t sums[kStep] = {};
    std::memcpy(scales, d16 + i, static_cast<size_t>(count) * sizeof(uint16_t));
    std::memcpy(sums, qsum + i, static_cast<size_t>(count) * sizeof(int16_t));
    F32x4 scale[2], block_min[2], coef[2];
    widen_f16(vld1q_u16(scales), &scale[0], &scale[1]);
    const int16x8_t sum = vld1q_s16(sums);
    coef[0] = vmulq_f32(scale[0], vcvtq_f32_s32(vmovl_s16(vget_low_s16(sum))));
    coef[1] = vmulq_f32(scale[1], vcvtq_f32_s32(vmovl_high_s16(sum)));
    if (min16) {
      std::memcpy(minima, min16 + i, static_cast<size_t>(count) * sizeof(uint16_t));
      widen_f16(vld1q_u16(minima), &block_min[0], &block_min[1]);
      for (int h = 0; h < 2; ++h) coef[h] = vfmaq_f32(coef[h], vdupq_n_f32(32.0f), block_min[h]);  // 32·min exact
    }
    float out[3][kStep];
    for (int h = 0; h < 2; ++h) {
      store(out[0] + h * kLanes, scale[h]);
      store(out[1] + h * kLanes, coef[h]);
      if (min16) store(out[2] + h * kLanes, block_min[h]);
    }
    const size_t bytes = static_cast<size_t>(count) * sizeof(float);
    std::memcpy(d + i, out[0], bytes);
    std::memcpy(lo_coef + i, out[1], bytes);
    if (min16) std::memcpy(min + i, out[2], bytes);
  }
}

}  // namespace ddpm::kernels::neon
