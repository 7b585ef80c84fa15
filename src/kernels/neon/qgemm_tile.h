// The f32 side of the NEON quantised-GEMM micro-kernels (contract: QGemmMicroKernel in kernels/registry.h): the
// tile's accumulators, each k block's isum·(wd·ad) + lo_coef·lo [+ wmin·as], the epilogue and the store. Shared by
// src/kernels/neon/qgemm.cpp and src/kernels/neon_dotprod/qgemm.cpp, which differ only in how they form the
// integer sums.
//
// Everything here has internal linkage on purpose: the two directories are compiled with different -march flags,
// and one shared (inline, external) copy could be linked from the dotprod object into the kernel that has to run
// on a Cortex-A72. Each including file gets its own copy, compiled with its own flags.
#pragma once

#include <arm_neon.h>

#include "kernels/registry.h"

namespace ddpm::kernels::neon {
namespace {  // internal linkage, see above

constexpr int kQTileRows = 4;

// MR = 4 rows × J vectors of 4 columns.
template <int J>
struct QTile {
  float32x4_t acc[kQTileRows][J];
};

template <int J>
__attribute__((always_inline)) inline void qtile_load(QTile<J>& t, const float* c, int64_t ldc, bool accumulate) {
#pragma GCC unroll 4
  for (int m = 0; m < kQTileRows; ++m) {
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) t.acc[m][j] = accumulate ? vld1q_f32(c + m * ldc + 4 * j) : vdupq_n_f32(0.0f);
  }
}

// Where a row's integer sums of block `blk` start: B holds q = u - 127, and 127·Σw turns Σ w·q into the contract's
// Σ w·u.
__attribute__((always_inline)) inline int32x4_t qtile_sum_start(const QGemmPanelA& a, int64_t blk, int m) {
  return vdupq_n_s32(127 * a.qsum[blk * kQTileRows + m]);
}

// Block `blk`'s integer sums into the tile, in the contract's order: acc + isum·(wd·ad), + lo_coef·lo, then
// + wmin·as. Each pair is one FMA (the contract allows it); the scale product is the reference's wd·ad
// (multiplication commutes).
template <int J>
__attribute__((always_inline)) inline void qtile_add_block(QTile<J>& t, const int32x4_t (&isum)[kQTileRows][J],
                                                           const QGemmPanelA& a, const uint8_t* q_panel, int64_t kc,
                                                           int64_t blk) {
  constexpr int nr = 4 * J;
  const int64_t blocks = kc / 32;
  const float* bd = reinterpret_cast<const float*>(q_panel + kc * nr);
  const float* bs = bd + blocks * nr;
  const float* blo = bs + blocks * nr;
  float32x4_t ad[J], alo[J];
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j) {
    ad[j] = vld1q_f32(bd + blk * nr + 4 * j);
    alo[j] = vld1q_f32(blo + blk * nr + 4 * j);
  }
#pragma GCC unroll 4
  for (int m = 0; m < kQTileRows; ++m) {
    const float wd = a.d[blk * kQTileRows + m], lo_coef = a.lo_coef[blk * kQTileRows + m];
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) {
      t.acc[m][j] = vfmaq_f32(t.acc[m][j], vcvtq_f32_s32(isum[m][j]), vmulq_n_f32(ad[j], wd));
      t.acc[m][j] = vfmaq_n_f32(t.acc[m][j], alo[j], lo_coef);
    }
  }
  if (a.min) {
#pragma GCC unroll 4
    for (int m = 0; m < kQTileRows; ++m) {
      const float wmin = a.min[blk * kQTileRows + m];
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) t.acc[m][j] = vfmaq_n_f32(t.acc[m][j], vld1q_f32(bs + blk * nr + 4 * j), wmin);
    }
  }
}

// The epilogue's three separately rounded adds (when given), then the store.
template <int J>
__attribute__((always_inline)) inline void qtile_store(QTile<J>& t, float* c, int64_t ldc,
                                                       const GemmEpilogue* epilogue) {
  if (epilogue) {
#pragma GCC unroll 4
    for (int m = 0; m < kQTileRows; ++m) {
      if (epilogue->row_bias) {
        const float32x4_t bias = vdupq_n_f32(epilogue->row_bias[m]);
#pragma GCC unroll 4
        for (int j = 0; j < J; ++j) t.acc[m][j] = vaddq_f32(t.acc[m][j], bias);
      }
      if (epilogue->col_bias) {
#pragma GCC unroll 4
        for (int j = 0; j < J; ++j) t.acc[m][j] = vaddq_f32(t.acc[m][j], vld1q_f32(epilogue->col_bias + 4 * j));
      }
      if (epilogue->residual) {
        const float* residual = epilogue->residual + m * epilogue->residual_ld;
#pragma GCC unroll 4
        for (int j = 0; j < J; ++j) t.acc[m][j] = vaddq_f32(t.acc[m][j], vld1q_f32(residual + 4 * j));
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < kQTileRows; ++m) {
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) vst1q_f32(c + m * ldc + 4 * j, t.acc[m][j]);
  }
}

}  // namespace
}  // namespace ddpm::kernels::neon
