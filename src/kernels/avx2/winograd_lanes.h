// The 8- and 4-tile lane types of the Winograd tile-row transforms (winograd_tiles.h) for x86: AVX2 uses them as its
// widest and next vectors, AVX-512 for rows too short for 16 tiles (a 16×16 output has 8 per row). Included only
// from src/kernels/avx2/ and src/kernels/avx512/, whose flags both include AVX2; unnamed, so each copy keeps its own.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace ddpm::kernels {
namespace {

struct Avx2Lanes {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V splat(float v) { return _mm256_set1_ps(v); }
  static void deinterleave(const float* p, V* even, V* odd) {
    const V a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    // [a0 a2 b0 b2 | a4 a6 b4 b6] → 64-bit pairs reordered 0, 2, 1, 3.
    const V evens = _mm256_shuffle_ps(a, b, 0x88), odds = _mm256_shuffle_ps(a, b, 0xDD);
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(evens), 0xD8));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odds), 0xD8));
  }
  static void store_interleaved(float* p, V even, V odd) {
    const V low = _mm256_unpacklo_ps(even, odd), high = _mm256_unpackhi_ps(even, odd);
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(low, high, 0x20));
    _mm256_storeu_ps(p + 8, _mm256_permute2f128_ps(low, high, 0x31));
  }
};

struct SseLanes {
  using V = __m128;
  static constexpr int64_t kWidth = 4;
  static V load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, V v) { _mm_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm_add_ps(a, b); }
  static V sub(V a, V b) { return _mm_sub_ps(a, b); }
  static V splat(float v) { return _mm_set1_ps(v); }
  static void deinterleave(const float* p, V* even, V* odd) {
    const V a = _mm_loadu_ps(p), b = _mm_loadu_ps(p + 4);
    *even = _mm_shuffle_ps(a, b, 0x88);
    *odd = _mm_shuffle_ps(a, b, 0xDD);
  }
  static void store_interleaved(float* p, V even, V odd) {
    _mm_storeu_ps(p, _mm_unpacklo_ps(even, odd));
    _mm_storeu_ps(p + 4, _mm_unpackhi_ps(even, odd));
  }
};

}  // namespace
}  // namespace ddpm::kernels
