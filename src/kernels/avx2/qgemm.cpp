// AVX2 quantised GEMM (4×8 tile): each block's int8 dot products with vpmaddubsw (unsigned × signed bytes, pairs
// summed to int16) and vpmaddwd by ones (to int32). The sign trick keeps B signed: |b| is the unsigned operand and
// vpsignb moves b's sign (or zero) onto the broadcast weight; |b|, |w| ≤ 127 keep each pair sum within int16.
// B holds q = u - 127, so the sums start at 127·Σw to make them Σ w·u (the contract's sum). Also the 8-column B
// quantiser that the 256-bit VNNI kernels share.
#include <cmath>

#include "kernels/avx2/qgemm_tile.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx2 {
namespace {

// 8 columns of one block per step: four consecutive k packed into one 32-byte vector, byte j of lane n =
// q[k + j][n] (the [kc/4][NR][4] layout).
template <bool kBiased>
void quantize_b8(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  constexpr int kNR = kQGemmNR;
  const int64_t blocks = kc / 32;
  float* scales = reinterpret_cast<float*>(q_panel + kc * kNR);
  float* sums = scales + blocks * kNR;
  float* minima = sums + blocks * kNR;
  const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(254.0f);
  // Stored as q = u - 127, or biased as q + 128 = u + 1.
  const __m256i bias = _mm256_set1_epi32(kBiased ? -1 : 127), byte = _mm256_set1_epi32(0xff);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* x = b_panel + b * 32 * kNR;
    __m256 lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY);
    // min_ps(x, lo) is exactly `x < lo ? x : lo` (the second operand on NaN or equal zeros), as the reference.
    for (int i = 0; i < 32; ++i) {
      const __m256 v = _mm256_loadu_ps(x + i * kNR);
      lo = _mm256_min_ps(v, lo);
      hi = _mm256_max_ps(v, hi);
    }
    const __m256 d = _mm256_div_ps(_mm256_sub_ps(hi, lo), _mm256_set1_ps(254.0f));
    const __m256 positive = _mm256_cmp_ps(d, zero, _CMP_GT_OQ);
    const __m256 id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), positive);
    __m256i sum = _mm256_setzero_si256();
    for (int quad = 0; quad < 8; ++quad) {
      __m256i packed = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        // Clamped in float before the conversion (max_ps(NaN, 0) = 0, as fmax), then cvtps2dq rounds to nearest even.
        const __m256 y = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + (quad * 4 + j) * kNR), lo), id);
        const __m256i u = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, zero), top));
        sum = _mm256_add_epi32(sum, u);
        const __m256i q = _mm256_sub_epi32(u, bias);
        packed = _mm256_or_si256(packed, _mm256_slli_epi32(_mm256_and_si256(q, byte), 8 * j));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q_panel + (b * 8 + quad) * 4 * kNR), packed);
    }
    _mm256_storeu_ps(scales + b * kNR, d);
    // Biased: the sum of the stored u + 1 and the minimum lo − d (QGemmMicroKernel::b_biased).
    if (kBiased) sum = _mm256_add_epi32(sum, _mm256_set1_epi32(32));
    _mm256_storeu_ps(sums + b * kNR, _mm256_mul_ps(d, _mm256_cvtepi32_ps(sum)));
    _mm256_storeu_ps(minima + b * kNR, kBiased ? _mm256_sub_ps(lo, d) : lo);
  }
}

void run(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
         const GemmEpilogue* epilogue) {
  constexpr int kMR = kQGemmMR, kNR = kQGemmNR;
  const __m256i ones = _mm256_set1_epi16(1);
  qgemm_tile<kMR>(kc, a, q_panel, c, ldc, accumulate, epilogue, [&](int64_t b, __m256i* acc) {
    if (a.small_q) {
      // |w| <= 16: the block's eight pair sums stay within int16 (QGemmPanelA::small_q); widen once per block.
      __m256i acc16[kMR];
#pragma GCC unroll 4
      for (int m = 0; m < kMR; ++m) acc16[m] = _mm256_setzero_si256();
#pragma GCC unroll 1
      for (int quad = 0; quad < 8; ++quad) {
        const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q_panel + (b * 8 + quad) * 4 * kNR));
        const __m256i b_abs = _mm256_abs_epi8(bv);
        const int8_t* w = a.q + (b * 8 + quad) * kMR * 4;
#pragma GCC unroll 4
        for (int m = 0; m < kMR; ++m) {
          const __m256i signed_w = _mm256_sign_epi8(_mm256_set1_epi32(load_weight_quad(w + m * 4)), bv);
          acc16[m] = _mm256_add_epi16(acc16[m], _mm256_maddubs_epi16(b_abs, signed_w));
        }
      }
#pragma GCC unroll 4
      for (int m = 0; m < kMR; ++m)
        acc[m] = _mm256_add_epi32(_mm256_madd_epi16(acc16[m], ones), _mm256_set1_epi32(127 * a.qsum[b * kMR + m]));
      return;
    }
#pragma GCC unroll 4
    for (int m = 0; m < kMR; ++m) acc[m] = _mm256_set1_epi32(127 * a.qsum[b * kMR + m]);
    // Not unrolled: across unrolled quads GCC re-associates the int32 adds into a tree of 32 live products and
    // spills them; one quad at a time keeps everything in the 16 registers.
#pragma GCC unroll 1
    for (int quad = 0; quad < 8; ++quad) {
      const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q_panel + (b * 8 + quad) * 4 * kNR));
      const __m256i b_abs = _mm256_abs_epi8(bv);
      const int8_t* w = a.q + (b * 8 + quad) * kMR * 4;
#pragma GCC unroll 4
      for (int m = 0; m < kMR; ++m) {
        const __m256i signed_w = _mm256_sign_epi8(_mm256_set1_epi32(load_weight_quad(w + m * 4)), bv);
        acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(_mm256_maddubs_epi16(b_abs, signed_w), ones));
      }
    }
  });
}

}  // namespace

void qgemm_quantize_b8(int64_t kc, const float* b_panel, uint8_t* q_panel) { quantize_b8<false>(kc, b_panel, q_panel); }
void qgemm_quantize_b8_biased(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  quantize_b8<true>(kc, b_panel, q_panel);
}

__attribute__((target("no-sse3"))) QGemmMicroKernel vnni256_kernel(const char* name,
                                                                    decltype(QGemmMicroKernel::run) run) {
  QGemmMicroKernel k;
  k.name = name;
  k.mr = kQGemmVnniMR;
  k.nr = kQGemmNR;
  k.b_biased = true;
  k.quantize_b = qgemm_quantize_b8_biased;
  k.run = run;
  return k;
}

}  // namespace ddpm::kernels::avx2

namespace ddpm::kernels {

__attribute__((target("no-sse3"))) QGemmMicroKernel avx2_qgemm() {
  QGemmMicroKernel k;
  k.name = "avx2";
  k.mr = avx2::kQGemmMR;
  k.nr = avx2::kQGemmNR;
  k.b_biased = false;
  k.quantize_b = avx2::qgemm_quantize_b8;
  k.run = avx2::run;
  return k;
}

}  // namespace ddpm::kernels
