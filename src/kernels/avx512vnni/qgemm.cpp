// AVX-512 VNNI quantised GEMM (8×16 tile): vpdpbusd adds four u8×s8 products per int32 lane, 64 per instruction.
// B is stored biased (q + 128 = u + 1, unsigned) and each weight row's 4 bytes are broadcast as the signed operand;
// the bias adds Σw per block over the contract's Σ w·u, which the stored minimum lo − d takes back in the float
// half (QGemmMicroKernel::b_biased), so a block's dot products need no integer correction (that vpsubd per row and
// block cost 2–3 % of a q8_0 U-Net forward). The int32 lanes cannot overflow: 32 products of at most 255·128.
// Compiled with -mavx512vnni; the registry hands this kernel out only when cpu_features().avx512_vnni.
#include "kernels/avx512/qgemm_tile.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx512 {
namespace {

void run_vnni(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
              const GemmEpilogue* epilogue) {
  constexpr int MR = kQGemmMR, NR = kQGemmNR;
  qgemm_tile(kc, a, q_panel, c, ldc, accumulate, epilogue, [&](int64_t b, __m512i* acc) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[m] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int quad = 0; quad < 8; ++quad) {
      const __m512i bv = _mm512_loadu_si512(q_panel + (b * 8 + quad) * 4 * NR);
      const int8_t* w = a.q + (b * 8 + quad) * MR * 4;
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m)
        acc[m] = _mm512_dpbusd_epi32(acc[m], bv, _mm512_set1_epi32(load_weight_quad(w + m * 4)));
    }
  });
}

}  // namespace
}  // namespace ddpm::kernels::avx512

namespace ddpm::kernels {

__attribute__((target("no-sse3"))) QGemmMicroKernel avx512vnni_qgemm() {
  QGemmMicroKernel k;
  k.name = "avx512vnni";
  k.mr = avx512::kQGemmMR;
  k.nr = avx512::kQGemmNR;
  k.b_biased = true;
  k.quantize_b = avx512::qgemm_quantize_b16_biased;
  k.run = avx512::run_vnni;
  return k;
}

}  // namespace ddpm::kernels
