// AVX2 + FMA + F16C elementwise rows and reductions; see src/kernels/ref/elementwise.cpp for the semantics each
// one must keep. Full vectors first, then one masked vector for the tail (never a scalar loop: scalar code here
// would be compiled with FMA contraction and differ from both the vector lanes and the reference).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/avx2/avx2.h"
#include "kernels/avx2/vec.h"

namespace ddpm::kernels::avx2 {
namespace {

// y[i] = op(x[i]) for a lane-wise op; a lane's result does not depend on where the lane sits, so the tail computes
// exactly what a full vector would.
template <typename Op>
inline void map_unary(int64_t n, const float* x, float* y, Op op) {
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x8 a = op(load(x + i));
    const F32x8 b = op(load(x + i + kLanes));
    store(y + i, a);
    store(y + i + kLanes, b);
  }
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(x + i)));
  if (i < n) {
    const __m256i mask = tail_mask(n - i);
    store_tail(y + i, mask, op(load_tail(x + i, mask)));
  }
}

template <typename Op>
inline void map_binary(int64_t n, const float* a, const float* b, float* y, Op op) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(a + i), load(b + i)));
  if (i < n) {
    const __m256i mask = tail_mask(n - i);
    store_tail(y + i, mask, op(load_tail(a + i, mask), load_tail(b + i, mask)));
  }
}

}  // namespace

// Plain stores up to the first 32-byte boundary of y, then 32-byte streaming stores (vmovntps needs the alignment),
// then plain stores for the tail: a copy has no arithmetic, so scalar head and tail are exact.
// Only whole 64-byte lines are streamed: a partly written line leaves the write-combining buffer as a partial write,
// which costs far more than a plain store (rows of 7, 14 or 28 floats, as a 28×28 model's are, ran ~8× slower
// streamed than stored). The partial lines at either end are stored as usual.
void stream_copy(int64_t n, const float* x, float* y) {
  constexpr int64_t kLineFloats = 64 / sizeof(float);
  int64_t i = 0;
  const int64_t misaligned = static_cast<int64_t>((reinterpret_cast<uintptr_t>(y) / sizeof(float)) % kLineFloats);
  const int64_t head = std::min<int64_t>(n, misaligned ? kLineFloats - misaligned : 0);
  for (; i < head; ++i) y[i] = x[i];
  for (; i + kLineFloats <= n; i += kLineFloats) {
    _mm256_stream_ps(y + i, _mm256_loadu_ps(x + i));
    _mm256_stream_ps(y + i + 8, _mm256_loadu_ps(x + i + 8));
  }
  for (; i < n; ++i) y[i] = x[i];
}

void store_fence() { _mm_sfence(); }

void silu(int64_t n, const float* x, float* y) { map_unary(n, x, y, [](F32x8 v) { return vsilu(v); }); }

void add(int64_t n, const float* a, const float* b, float* y) {
  map_binary(n, a, b, y, [](F32x8 u, F32x8 v) { return _mm256_add_ps(u, v); });
}

void mul(int64_t n, const float* a, const float* b, float* y) {
  map_binary(n, a, b, y, [](F32x8 u, F32x8 v) { return _mm256_mul_ps(u, v); });
}

void add_scalar(int64_t n, const float* a, float b, float* y) {
  const F32x8 bv = splat(b);
  map_unary(n, a, y, [bv](F32x8 v) { return _mm256_add_ps(v, bv); });
}

void mul_scalar(int64_t n, const float* a, float b, float* y) {
  const F32x8 bv = splat(b);
  map_unary(n, a, y, [bv](F32x8 v) { return _mm256_mul_ps(v, bv); });
}

// One FMA where the x86 reference rounds the product first; the difference is at most half an ulp of x·scale.
void affine(int64_t n, const float* x, float scale, float shift, float* y) {
  const F32x8 scale_v = splat(scale), shift_v = splat(shift);
  map_unary(n, x, y, [=](F32x8 v) { return fma(v, scale_v, shift_v); });
}

void affine_silu(int64_t n, const float* x, float scale, float shift, float* y) {
  const F32x8 scale_v = splat(scale), shift_v = splat(shift);
  map_unary(n, x, y, [=](F32x8 v) { return vsilu(fma(v, scale_v, shift_v)); });
}

// Four f64 accumulators (16 floats per step): enough independent adds to hide their latency. Masked-off tail lanes
// load as 0 and add nothing.
double sum_f64(int64_t n, const float* x) {
  __m256d acc0 = _mm256_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x8 a = load(x + i), b = load(x + i + kLanes);
    acc0 = _mm256_add_pd(acc0, low_f64(a));
    acc1 = _mm256_add_pd(acc1, high_f64(a));
    acc2 = _mm256_add_pd(acc2, low_f64(b));
    acc3 = _mm256_add_pd(acc3, high_f64(b));
  }
  for (; i < n; i += kLanes) {
    const F32x8 a = n - i >= kLanes ? load(x + i) : load_tail(x + i, tail_mask(n - i));
    acc0 = _mm256_add_pd(acc0, low_f64(a));
    acc1 = _mm256_add_pd(acc1, high_f64(a));
  }
  return sum_lanes(_mm256_add_pd(_mm256_add_pd(acc0, acc1), _mm256_add_pd(acc2, acc3)));
}

// Σ(x - mean)² in f64. Tail lanes are masked out of the accumulation (a zero-filled lane would add mean²).
double sum_squared_deviation_f64(int64_t n, const float* x, double mean) {
  const __m256d mean_v = _mm256_set1_pd(mean);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  auto accumulate = [&](__m256d& acc, __m256d values) {
    const __m256d d = _mm256_sub_pd(values, mean_v);
    acc = _mm256_fmadd_pd(d, d, acc);
  };
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x8 a = load(x + i), b = load(x + i + kLanes);
    accumulate(acc0, low_f64(a));
    accumulate(acc1, high_f64(a));
    accumulate(acc2, low_f64(b));
    accumulate(acc3, high_f64(b));
  }
  for (; i < n; i += kLanes) {
    if (n - i >= kLanes) {
      const F32x8 a = load(x + i);
      accumulate(acc0, low_f64(a));
      accumulate(acc1, high_f64(a));
    } else {
      const __m256i mask = tail_mask(n - i);
      const F32x8 a = load_tail(x + i, mask);
      // The deviation of a masked lane is forced to 0 by selecting mean as its value.
      const __m256d low_mask = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(mask)));
      const __m256d high_mask = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(mask, 1)));
      accumulate(acc0, _mm256_blendv_pd(mean_v, low_f64(a), low_mask));
      accumulate(acc1, _mm256_blendv_pd(mean_v, high_f64(a), high_mask));
    }
  }
  return sum_lanes(_mm256_add_pd(_mm256_add_pd(acc0, acc1), _mm256_add_pd(acc2, acc3)));
}

// max_ps(v, m) is "v > m ? v : m", the reference's step, lane by lane: NaNs after x[0] are skipped and a NaN x[0]
// wins. Every lane starts from x[0] and padding lanes hold x[0], which can never replace anything.
float max(int64_t n, const float* x) {
  const F32x8 first = splat(x[0]);
  F32x8 acc0 = first, acc1 = first;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 = _mm256_max_ps(load(x + i), acc0);
    acc1 = _mm256_max_ps(load(x + i + kLanes), acc1);
  }
  for (; i < n; i += kLanes) {
    if (n - i >= kLanes) {
      acc0 = _mm256_max_ps(load(x + i), acc0);
    } else {
      const __m256i mask = tail_mask(n - i);
      acc0 = _mm256_max_ps(_mm256_blendv_ps(first, load_tail(x + i, mask), _mm256_castsi256_ps(mask)), acc0);
    }
  }
  acc0 = _mm256_max_ps(acc1, acc0);
  alignas(32) float lanes[kLanes];
  _mm256_store_ps(lanes, acc0);
  float m = lanes[0];
  for (int j = 1; j < kLanes; ++j) m = lanes[j] > m ? lanes[j] : m;
  return m;
}

// Two f32 sum vectors; the tail's masked lanes are zeroed before they are summed (exp(0) would add 1 each).
float exp_shifted_sum(int64_t n, const float* x, float shift, float* y) {
  const F32x8 shift_v = splat(shift);
  F32x8 sum0 = _mm256_setzero_ps(), sum1 = sum0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x8 a = vexp(_mm256_sub_ps(load(x + i), shift_v));
    const F32x8 b = vexp(_mm256_sub_ps(load(x + i + kLanes), shift_v));
    store(y + i, a);
    store(y + i + kLanes, b);
    sum0 = _mm256_add_ps(sum0, a);
    sum1 = _mm256_add_ps(sum1, b);
  }
  for (; i < n; i += kLanes) {
    if (n - i >= kLanes) {
      const F32x8 a = vexp(_mm256_sub_ps(load(x + i), shift_v));
      store(y + i, a);
      sum0 = _mm256_add_ps(sum0, a);
    } else {
      const __m256i mask = tail_mask(n - i);
      const F32x8 a = _mm256_and_ps(vexp(_mm256_sub_ps(load_tail(x + i, mask), shift_v)), _mm256_castsi256_ps(mask));
      store_tail(y + i, mask, a);
      sum0 = _mm256_add_ps(sum0, a);
    }
  }
  return sum_lanes(_mm256_add_ps(sum0, sum1));
}

namespace {

// F16C's widening quiets signalling NaNs (sets the f32 quiet bit); the reference keeps the payload as it is. Lanes
// whose f16 exponent is all ones with the quiet bit clear (signalling NaNs, and infinities, for which the bit is
// already 0) get that bit cleared again. Rare, so tested once per vector and fixed only when present.
inline F32x8 widen_f16(__m128i halves) {
  F32x8 wide = _mm256_cvtph_ps(halves);
  const __m128i signalling = _mm_cmpeq_epi16(_mm_and_si128(halves, _mm_set1_epi16(0x7e00)), _mm_set1_epi16(0x7c00));
  if (!_mm_testz_si128(signalling, signalling)) {
    const __m256i quiet_bit = _mm256_and_si256(_mm256_cvtepi16_epi32(signalling), _mm256_set1_epi32(0x00400000));
    wide = _mm256_andnot_ps(_mm256_castsi256_ps(quiet_bit), wide);
  }
  return wide;
}

// Round to nearest even, the reference's mode; NaNs come out quiet with the top payload bits, as in the reference.
inline __m128i narrow_f16(F32x8 v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

}  // namespace

void f16_to_f32(int64_t n, const uint16_t* x, float* y) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    store(y + i, widen_f16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  }
  if (i < n) {
    uint16_t halves[kLanes] = {};
    std::memcpy(halves, x + i, static_cast<size_t>(n - i) * sizeof(uint16_t));
    store_tail(y + i, tail_mask(n - i), widen_f16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(halves))));
  }
}

void f32_to_f16(int64_t n, const float* x, uint16_t* y) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), narrow_f16(load(x + i)));
  if (i < n) {
    uint16_t halves[kLanes];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(halves), narrow_f16(load_tail(x + i, tail_mask(n - i))));
    std::memcpy(y + i, halves, static_cast<size_t>(n - i) * sizeof(uint16_t));
  }
}

// Eight blocks a step; the tail from zero-padded copies, stored through a mask.
void widen_block_scales(int64_t n, const uint16_t* d16, const uint16_t* min16, const int16_t* qsum, float* d,
                        float* min, float* lo_coef) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, n - i);
    uint16_t scales[kLanes] = {}, minima[kLanes] = {};
    int16_t sums[kLanes] = {};
    std::memcpy(scales, d16 + i, static_cast<size_t>(count) * sizeof(uint16_t));
    std::memcpy(sums, qsum + i, static_cast<size_t>(count) * sizeof(int16_t));
    const F32x8 scale = widen_f16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    const __m128i sums16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sums));
    const F32x8 sum = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(sums16));
    F32x8 coef = _mm256_mul_ps(scale, sum);
    const __m256i mask = tail_mask(count);
    if (min16) {
      std::memcpy(minima, min16 + i, static_cast<size_t>(count) * sizeof(uint16_t));
      const F32x8 block_min = widen_f16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(minima)));
      coef = _mm256_fmadd_ps(_mm256_set1_ps(32.0f), block_min, coef);  // 32·min exact: the reference's rounding
      store_tail(min + i, mask, block_min);
    }
    store_tail(d + i, mask, scale);
    store_tail(lo_coef + i, mask, coef);
  }
}

}  // namespace ddpm::kernels::avx2
