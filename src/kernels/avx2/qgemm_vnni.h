// The 256-bit VNNI quantised micro-kernel (6×8 tile): vpdpbusd adds four u8×s8 products per int32 lane, 32 per
// instruction, where AVX2 needs vpsignb + vpmaddubsw + vpmaddwd + vpaddd for the same work. One source, two
// encodings: src/kernels/avxvnni/ builds it with AVX-VNNI (VEX: the CPUs that have AVX2 and VNNI but no AVX-512,
// Intel client CPUs since Alder Lake) and src/kernels/avx512vnni/qgemm_ymm.cpp with AVX-512 VL+VNNI
// (EVEX), which is how this code is tested on a CPU without AVX-VNNI. `Dot` is the one instruction that differs.
// B is stored biased (q + 128 = u + 1, unsigned, qgemm_quantize_b8_biased) and each weight row's 4 bytes are
// broadcast as the signed operand; the bias adds Σw per block over the contract's Σ w·u, which the minimum the
// quantiser stores, lo − d, takes back in the float half (QGemmMicroKernel::b_biased): no integer correction per
// block. The int32 lanes cannot overflow: 32 products of at most 255·128 (q8_0 may hold -128).
#pragma once

#include "kernels/avx2/qgemm_tile.h"

namespace ddpm::kernels::avx2 {
namespace {

// Dot: __m256i(__m256i acc, __m256i unsigned_bytes, __m256i signed_bytes), acc + the four-product sums per lane.
template <class Dot>
void run_vnni256(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
                 const GemmEpilogue* epilogue, Dot dot) {
  constexpr int MR = kQGemmVnniMR, NR = kQGemmNR;
  qgemm_tile<MR>(kc, a, q_panel, c, ldc, accumulate, epilogue, [&](int64_t b, __m256i* acc) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) acc[m] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int quad = 0; quad < 8; ++quad) {
      const __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q_panel + (b * 8 + quad) * 4 * NR));
      const int8_t* w = a.q + (b * 8 + quad) * MR * 4;
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[m] = dot(acc[m], bv, _mm256_set1_epi32(load_weight_quad(w + m * 4)));
    }
  });
}

}  // namespace
}  // namespace ddpm::kernels::avx2
