// AVX-512 transposing copy: 16×16 tiles transposed in registers (32-bit, 64-bit, then two 128-bit lane
// interleaves), the ragged edges element by element.
#include "kernels/avx512/avx512.h"
#include "kernels/avx512/vec.h"  // <immintrin.h>, without GCC 12's false uninitialized warnings
#include "kernels/transpose_tiles.h"

namespace ddpm::kernels::avx512 {
namespace {

void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 r[16], a[16], b[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  // Within each 128-bit lane L: a[2i] = rows 2i, 2i+1 of columns 4L, 4L+1; a[2i+1] of columns 4L+2, 4L+3.
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // b[4i + j], lane L: rows 4i .. 4i+3 of column 4L + j.
  for (int i = 0; i < 4; ++i) {
    const __m512d a0 = _mm512_castps_pd(a[4 * i]), a1 = _mm512_castps_pd(a[4 * i + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * i + 2]), a3 = _mm512_castps_pd(a[4 * i + 3]);
    b[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  // Column 4L + j gathers lane L of b[j], b[4+j], b[8+j], b[12+j].
  for (int j = 0; j < 4; ++j) {
    const __m512 c0 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0x44), c1 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0xEE);
    const __m512 c2 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0x44);
    const __m512 c3 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0xEE);
    _mm512_storeu_ps(dst + j * dst_stride, _mm512_shuffle_f32x4(c0, c2, 0x88));
    _mm512_storeu_ps(dst + (4 + j) * dst_stride, _mm512_shuffle_f32x4(c0, c2, 0xDD));
    _mm512_storeu_ps(dst + (8 + j) * dst_stride, _mm512_shuffle_f32x4(c1, c3, 0x88));
    _mm512_storeu_ps(dst + (12 + j) * dst_stride, _mm512_shuffle_f32x4(c1, c3, 0xDD));
  }
}

}  // namespace

void transpose(int64_t rows, int64_t cols, const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  transpose_by_tiles<16>(rows, cols, src, src_stride, dst, dst_stride, transpose_tile);
}

}  // namespace ddpm::kernels::avx512
