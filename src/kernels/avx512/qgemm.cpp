// AVX-512BW quantised GEMM (8×16 tile) for CPUs without VNNI (Skylake-X, Cascade Lake without it): each block's
// int8 dot products with vpmaddubsw, which multiplies unsigned by signed bytes. B stays signed int8; its absolute
// value goes in as the unsigned operand and its sign moves onto the weight (negated under the sign-bit mask, as
// AVX-512 has no vpsignb). |b| ≤ 127 and |w| ≤ 127 keep each pair sum within int16. B holds q = u - 127, so
// the sums start at 127·Σw to become the contract's Σ w·u. Also the 16-column B
// quantiser that the VNNI kernel shares.
#include "kernels/avx512/qgemm_tile.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx512 {
namespace {

// 16 columns of one block per step: the int32 values of four consecutive k are packed into one 64-byte vector,
// byte j of lane n = q[k + j][n], which is the [kc/4][NR][4] layout.
template <bool kBiased>
void quantize_b16(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  constexpr int NR = kQGemmNR;
  const int64_t blocks = kc / 32;
  float* scales = reinterpret_cast<float*>(q_panel + kc * NR);
  float* sums = scales + blocks * NR;
  float* minima = sums + blocks * NR;
  const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(254.0f);
  // Stored as q = u - 127, or biased as q + 128 = u + 1.
  const __m512i bias = _mm512_set1_epi32(kBiased ? -1 : 127), byte = _mm512_set1_epi32(0xff);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* x = b_panel + b * 32 * NR;
    __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
    // min_ps(x, lo) is exactly `x < lo ? x : lo` (the second operand on NaN or equal zeros), as the reference.
    for (int i = 0; i < 32; ++i) {
      const __m512 v = _mm512_loadu_ps(x + i * NR);
      lo = _mm512_min_ps(v, lo);
      hi = _mm512_max_ps(v, hi);
    }
    const __m512 d = _mm512_div_ps(_mm512_sub_ps(hi, lo), _mm512_set1_ps(254.0f));
    const __mmask16 positive = _mm512_cmp_ps_mask(d, zero, _CMP_GT_OQ);
    const __m512 id = _mm512_maskz_div_ps(positive, _mm512_set1_ps(1.0f), d);
    __m512i sum = _mm512_setzero_si512();
    for (int quad = 0; quad < 8; ++quad) {
      __m512i packed = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        // Clamped in float before the conversion (max_ps(NaN, 0) = 0, as fmax), then cvtps2dq rounds to nearest even.
        const __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + (quad * 4 + j) * NR), lo), id);
        const __m512i u = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(y, zero), top));
        sum = _mm512_add_epi32(sum, u);
        const __m512i q = _mm512_sub_epi32(u, bias);
        packed = _mm512_or_si512(packed, _mm512_slli_epi32(_mm512_and_si512(q, byte), 8 * j));
      }
      _mm512_storeu_si512(q_panel + (b * 8 + quad) * 4 * NR, packed);
    }
    _mm512_storeu_ps(scales + b * NR, d);
    // Biased: the sum of the stored u + 1 and the minimum lo − d (QGemmMicroKernel::b_biased).
    if (kBiased) sum = _mm512_add_epi32(sum, _mm512_set1_epi32(32));
    _mm512_storeu_ps(sums + b * NR, _mm512_mul_ps(d, _mm512_cvtepi32_ps(sum)));
    _mm512_storeu_ps(minima + b * NR, kBiased ? _mm512_sub_ps(lo, d) : lo);
  }
}

void run_bw(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
            const GemmEpilogue* epilogue) {
  constexpr int MR = kQGemmMR, NR = kQGemmNR;
  const __m512i ones = _mm512_set1_epi16(1), zero = _mm512_setzero_si512();
  qgemm_tile(kc, a, q_panel, c, ldc, accumulate, epilogue, [&](int64_t b, __m512i* acc) {
    // With |w| <= 16 the block's eight pair sums stay within int16 (QGemmPanelA::small_q): widen once per block.
    const bool small = a.small_q;
    // B holds q = u - 127: starting at 127·Σw makes the sums Σ w·u (in int16 the start would not fit: added after).
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[m] = small ? zero : _mm512_set1_epi32(127 * a.qsum[b * MR + m]);
#pragma GCC unroll 1
    for (int quad = 0; quad < 8; ++quad) {
      const __m512i bv = _mm512_loadu_si512(q_panel + (b * 8 + quad) * 4 * NR);
      const __m512i b_abs = _mm512_abs_epi8(bv);
      const __mmask64 negative = _mm512_movepi8_mask(bv);
      const int8_t* w = a.q + (b * 8 + quad) * MR * 4;
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512i wv = _mm512_set1_epi32(load_weight_quad(w + m * 4));
        const __m512i product = _mm512_maddubs_epi16(b_abs, _mm512_mask_sub_epi8(wv, negative, zero, wv));
        acc[m] = small ? _mm512_add_epi16(acc[m], product) : _mm512_add_epi32(acc[m], _mm512_madd_epi16(product, ones));
      }
    }
    if (small) {
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m)
        acc[m] = _mm512_add_epi32(_mm512_madd_epi16(acc[m], ones), _mm512_set1_epi32(127 * a.qsum[b * MR + m]));
    }
  });
}

}  // namespace

void qgemm_quantize_b16(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  quantize_b16<false>(kc, b_panel, q_panel);
}
void qgemm_quantize_b16_biased(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  quantize_b16<true>(kc, b_panel, q_panel);
}

}  // namespace ddpm::kernels::avx512

namespace ddpm::kernels {

__attribute__((target("no-sse3"))) QGemmMicroKernel avx512_qgemm() {
  QGemmMicroKernel k;
  k.name = "avx512bw";
  k.mr = avx512::kQGemmMR;
  k.nr = avx512::kQGemmNR;
  k.b_biased = false;
  k.quantize_b = avx512::qgemm_quantize_b16;
  k.run = avx512::run_bw;
  return k;
}

}  // namespace ddpm::kernels
