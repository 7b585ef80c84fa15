// AVX-512 Winograd F(2×2, 3×3) tile-row transforms: 16 tiles per vector, columns split into even and odd ones by
// two-source permutes (and merged back the same way); shorter rows 8 and 4 at a time (avx2/winograd_lanes.h).
#include "kernels/avx512/avx512.h"
#include "kernels/avx512/vec.h"  // <immintrin.h>, without GCC 12's false uninitialized warnings
#include "kernels/avx2/winograd_lanes.h"
#include "kernels/winograd_tiles.h"

namespace ddpm::kernels::avx512 {
namespace {

struct Lanes {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V splat(float v) { return _mm512_set1_ps(v); }
  static void deinterleave(const float* p, V* even, V* odd) {
    const __m512i even_index = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd_index = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const V a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
    *even = _mm512_permutex2var_ps(a, even_index, b);
    *odd = _mm512_permutex2var_ps(a, odd_index, b);
  }
  static void store_interleaved(float* p, V even, V odd) {
    const __m512i low_index = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high_index = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(p, _mm512_permutex2var_ps(even, low_index, odd));
    _mm512_storeu_ps(p + 16, _mm512_permutex2var_ps(even, high_index, odd));
  }
};

}  // namespace

void winograd_input(const float* rows, int64_t row_stride, int64_t tiles, float* out, int64_t out_stride) {
  winograd_input_by_lanes<Lanes, Avx2Lanes, SseLanes>(rows, row_stride, tiles, out, out_stride);
}

void winograd_output(const float* m, int64_t m_stride, int64_t tiles, float bias, float* out, int64_t out_stride) {
  winograd_output_by_lanes<Lanes, Avx2Lanes, SseLanes>(m, m_stride, tiles, bias, out, out_stride);
}

}  // namespace ddpm::kernels::avx512
