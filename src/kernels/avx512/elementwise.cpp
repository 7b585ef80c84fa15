// AVX-512 elementwise rows and reductions; see src/kernels/ref/elementwise.cpp for the semantics each one must keep.
// Full vectors first, then one mask-register vector for the tail (never a scalar loop: scalar code here would be
// compiled with FMA contraction and differ from both the vector lanes and the reference).
#include "kernels/avx512/avx512.h"
#include "kernels/avx512/vec.h"

namespace ddpm::kernels::avx512 {
namespace {

// y[i] = op(x[i]) for a lane-wise op; a lane's result does not depend on where the lane sits, so the tail computes
// exactly what a full vector would.
template <typename Op>
inline void map_unary(int64_t n, const float* x, float* y, Op op) {
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x16 a = op(load(x + i));
    const F32x16 b = op(load(x + i + kLanes));
    store(y + i, a);
    store(y + i + kLanes, b);
  }
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(x + i)));
  if (i < n) {
    const __mmask16 mask = tail_mask(n - i);
    store_tail(y + i, mask, op(load_tail(x + i, mask)));
  }
}

template <typename Op>
inline void map_binary(int64_t n, const float* a, const float* b, float* y, Op op) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(y + i, op(load(a + i), load(b + i)));
  if (i < n) {
    const __mmask16 mask = tail_mask(n - i);
    store_tail(y + i, mask, op(load_tail(a + i, mask), load_tail(b + i, mask)));
  }
}

}  // namespace

void silu(int64_t n, const float* x, float* y) { map_unary(n, x, y, [](F32x16 v) { return vsilu(v); }); }

void add(int64_t n, const float* a, const float* b, float* y) {
  map_binary(n, a, b, y, [](F32x16 u, F32x16 v) { return _mm512_add_ps(u, v); });
}

void mul(int64_t n, const float* a, const float* b, float* y) {
  map_binary(n, a, b, y, [](F32x16 u, F32x16 v) { return _mm512_mul_ps(u, v); });
}

void add_scalar(int64_t n, const float* a, float b, float* y) {
  const F32x16 bv = splat(b);
  map_unary(n, a, y, [bv](F32x16 v) { return _mm512_add_ps(v, bv); });
}

void mul_scalar(int64_t n, const float* a, float b, float* y) {
  const F32x16 bv = splat(b);
  map_unary(n, a, y, [bv](F32x16 v) { return _mm512_mul_ps(v, bv); });
}

// One FMA where the x86 reference rounds the product first; the difference is at most half an ulp of x·scale.
void affine(int64_t n, const float* x, float scale, float shift, float* y) {
  const F32x16 scale_v = splat(scale), shift_v = splat(shift);
  map_unary(n, x, y, [=](F32x16 v) { return fma(v, scale_v, shift_v); });
}

void affine_silu(int64_t n, const float* x, float scale, float shift, float* y) {
  const F32x16 scale_v = splat(scale), shift_v = splat(shift);
  map_unary(n, x, y, [=](F32x16 v) { return vsilu(fma(v, scale_v, shift_v)); });
}

// Four f64 accumulators (32 floats per step): enough independent adds to hide their latency. Masked-off tail lanes
// load as 0 and add nothing.
double sum_f64(int64_t n, const float* x) {
  __m512d acc0 = _mm512_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x16 a = load(x + i), b = load(x + i + kLanes);
    acc0 = _mm512_add_pd(acc0, low_f64(a));
    acc1 = _mm512_add_pd(acc1, high_f64(a));
    acc2 = _mm512_add_pd(acc2, low_f64(b));
    acc3 = _mm512_add_pd(acc3, high_f64(b));
  }
  for (; i < n; i += kLanes) {
    const F32x16 a = n - i >= kLanes ? load(x + i) : load_tail(x + i, tail_mask(n - i));
    acc0 = _mm512_add_pd(acc0, low_f64(a));
    acc1 = _mm512_add_pd(acc1, high_f64(a));
  }
  return sum_lanes(_mm512_add_pd(_mm512_add_pd(acc0, acc1), _mm512_add_pd(acc2, acc3)));
}

// Σ(x - mean)² in f64. In the tail, masked lanes get a deviation of exactly 0 (a zero-filled lane would add mean²).
double sum_squared_deviation_f64(int64_t n, const float* x, double mean) {
  const __m512d mean_v = _mm512_set1_pd(mean);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  auto accumulate = [&](__m512d& acc, __m512d values, __mmask8 lanes) {
    const __m512d d = _mm512_maskz_sub_pd(lanes, values, mean_v);
    acc = _mm512_fmadd_pd(d, d, acc);
  };
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x16 a = load(x + i), b = load(x + i + kLanes);
    accumulate(acc0, low_f64(a), 0xff);
    accumulate(acc1, high_f64(a), 0xff);
    accumulate(acc2, low_f64(b), 0xff);
    accumulate(acc3, high_f64(b), 0xff);
  }
  for (; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask(n - i < kLanes ? n - i : kLanes);
    const F32x16 a = load_tail(x + i, mask);
    accumulate(acc0, low_f64(a), static_cast<__mmask8>(mask));
    accumulate(acc1, high_f64(a), static_cast<__mmask8>(mask >> 8));
  }
  return sum_lanes(_mm512_add_pd(_mm512_add_pd(acc0, acc1), _mm512_add_pd(acc2, acc3)));
}

// max_ps(v, m) is "v > m ? v : m", the reference's step, lane by lane: NaNs after x[0] are skipped and a NaN x[0]
// wins. Every lane starts from x[0] and padding lanes hold x[0], which can never replace anything.
float max(int64_t n, const float* x) {
  const F32x16 first = splat(x[0]);
  F32x16 acc0 = first, acc1 = first;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 = _mm512_max_ps(load(x + i), acc0);
    acc1 = _mm512_max_ps(load(x + i + kLanes), acc1);
  }
  for (; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask(n - i < kLanes ? n - i : kLanes);
    acc0 = _mm512_max_ps(_mm512_mask_loadu_ps(first, mask, x + i), acc0);
  }
  acc0 = _mm512_max_ps(acc1, acc0);
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, acc0);
  float m = lanes[0];
  for (int j = 1; j < kLanes; ++j) m = lanes[j] > m ? lanes[j] : m;
  return m;
}

// Two f32 sum vectors; the tail's masked lanes are zeroed before they are summed (exp(0) would add 1 each).
float exp_shifted_sum(int64_t n, const float* x, float shift, float* y) {
  const F32x16 shift_v = splat(shift);
  F32x16 sum0 = _mm512_setzero_ps(), sum1 = sum0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const F32x16 a = vexp(_mm512_sub_ps(load(x + i), shift_v));
    const F32x16 b = vexp(_mm512_sub_ps(load(x + i + kLanes), shift_v));
    store(y + i, a);
    store(y + i + kLanes, b);
    sum0 = _mm512_add_ps(sum0, a);
    sum1 = _mm512_add_ps(sum1, b);
  }
  for (; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask(n - i < kLanes ? n - i : kLanes);
    const F32x16 a = _mm512_maskz_mov_ps(mask, vexp(_mm512_sub_ps(load_tail(x + i, mask), shift_v)));
    store_tail(y + i, mask, a);
    sum0 = _mm512_add_ps(sum0, a);
  }
  return sum_lanes(_mm512_add_ps(sum0, sum1));
}

namespace {

// The hardware widening quiets signalling NaNs (sets the f32 quiet bit); the reference keeps the payload as it is.
// Lanes whose f16 exponent is all ones with the quiet bit clear (signalling NaNs, and infinities, for which the bit
// is already 0) get that bit cleared again.
inline F32x16 widen_f16(__m256i halves) {
  const __m512i wide = _mm512_castps_si512(_mm512_cvtph_ps(halves));
  const __mmask16 signalling =
      _mm256_cmpeq_epi16_mask(_mm256_and_si256(halves, _mm256_set1_epi16(0x7e00)), _mm256_set1_epi16(0x7c00));
  return _mm512_castsi512_ps(_mm512_mask_andnot_epi32(wide, signalling, _mm512_set1_epi32(0x00400000), wide));
}

// Round to nearest even, the reference's mode; NaNs come out quiet with the top payload bits, as in the reference.
inline __m256i narrow_f16(F32x16 v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

}  // namespace

void f16_to_f32(int64_t n, const uint16_t* x, float* y) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    store(y + i, widen_f16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))));
  }
  if (i < n) {
    const __mmask16 mask = tail_mask(n - i);
    store_tail(y + i, mask, widen_f16(_mm256_maskz_loadu_epi16(mask, x + i)));
  }
}

void f32_to_f16(int64_t n, const float* x, uint16_t* y) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), narrow_f16(load(x + i)));
  }
  if (i < n) {
    const __mmask16 mask = tail_mask(n - i);
    _mm256_mask_storeu_epi16(y + i, mask, narrow_f16(load_tail(x + i, mask)));
  }
}

// Sixteen blocks a step; the tail by masked loads and stores.
void widen_block_scales(int64_t n, const uint16_t* d16, const uint16_t* min16, const int16_t* qsum, float* d,
                        float* min, float* lo_coef) {
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = n - i >= kLanes ? static_cast<__mmask16>(0xffff) : tail_mask(n - i);
    const F32x16 scale = widen_f16(_mm256_maskz_loadu_epi16(mask, d16 + i));
    const F32x16 sum = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(mask, qsum + i)));
    F32x16 coef = _mm512_mul_ps(scale, sum);
    if (min16) {
      const F32x16 block_min = widen_f16(_mm256_maskz_loadu_epi16(mask, min16 + i));
      coef = _mm512_fmadd_ps(_mm512_set1_ps(32.0f), block_min, coef);  // 32·min exact: the reference's rounding
      store_tail(min + i, mask, block_min);
    }
    store_tail(d + i, mask, scale);
    store_tail(lo_coef + i, mask, coef);
  }
}

}  // namespace ddpm::kernels::avx512
