// NEON quantised GEMM without the dotprod extension (ARMv8.0: Cortex-A72 in the Raspberry Pi 4), and the NEON
// activation quantiser that the dotprod kernel (src/kernels/neon_dotprod/qgemm.cpp) shares.
//
// Without sdot, int8 products come from vmull_s8 (8 products as int16). A 16-byte B vector holds 4 columns × 4 k
// of one k quad; multiplied by one weight row's 4 bytes repeated 4 times, it gives the 16 products of those
// columns. vpaddq_s16 sums adjacent pairs — at most 2·127·127 = 32258 in magnitude, so int16 holds it (weights are
// in [-127, 127] for every block type, activations stored as q = u - 127 in [-127, 127]) — and vpadalq_s16 adds the next pairs into the
// int32 accumulator, leaving each lane the sum of one column's 4 products. Multiplies issue on one pipe of the
// A72 and the pairwise adds on the other, so neither waits for the other.
//
// Tile 4×8: 8 int32 block accumulators + 8 f32 accumulators + 3 loads + the broadcast weight row and 2 product
// vectors stay within the 32 q registers; a wider tile would spill in the inner loop.
#include "kernels/neon/qgemm.h"

#include <arm_neon.h>

#include <cmath>

#include "kernels/neon/qgemm_tile.h"
#include "kernels/registry.h"

namespace ddpm::kernels::neon {
namespace {

constexpr int kBlock = 32;
constexpr int kMR = kQTileRows, kNR = 8;

// The quantised values of one k quad for 4 columns (q_r: row k0 + r, one int32 lane per column) as the 16 bytes
// of the panel layout ([kc/4][NR][4]). vsli keeps the low bytes already inserted and shifts the next row's value
// above them, so lane c ends up as the bytes q[k0][c], q[k0+1][c], q[k0+2][c], q[k0+3][c] in memory order.
inline int32x4_t interleave_quad(int32x4_t q0, int32x4_t q1, int32x4_t q2, int32x4_t q3) {
  int32x4_t w = vsliq_n_s32(q0, q1, 8);
  w = vsliq_n_s32(w, q2, 16);
  return vsliq_n_s32(w, q3, 24);
}

// Bit for bit the reference quantiser: the same f32 operations in the same order per element. The minimum and
// maximum are compare + select, `x < lo ? x : lo` exactly (vminq would propagate NaN, vminnmq orders -0 below +0);
// vmaxnm is fmax (a NaN operand loses), so a NaN value clamps to 0 before the conversion, as
// fmin(fmax(nearbyint(NaN), 0), 254) does; clamping before rounding is the same as after since 0 and 254 are
// integers, and vcvtnq rounds to nearest even like nearbyint.
template <int NR>
void quantize_b(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  constexpr int V = NR / 4;
  static_assert(NR % 4 == 0, "whole vectors of columns");
  const int64_t blocks = kc / kBlock;
  float* scales = reinterpret_cast<float*>(q_panel + kc * NR);
  float* sums = scales + blocks * NR;
  float* minima = sums + blocks * NR;
  const float32x4_t top = vdupq_n_f32(254.0f), zero = vdupq_n_f32(0.0f);
  const int32x4_t bias = vdupq_n_s32(127);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* x = b_panel + b * kBlock * NR;
    float32x4_t lo[V], hi[V], id[V];
    int32x4_t sum[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      lo[v] = vdupq_n_f32(INFINITY);
      hi[v] = vdupq_n_f32(-INFINITY);
    }
    for (int i = 0; i < kBlock; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        const float32x4_t value = vld1q_f32(x + i * NR + 4 * v);
        lo[v] = vbslq_f32(vcltq_f32(value, lo[v]), value, lo[v]);
        hi[v] = vbslq_f32(vcgtq_f32(value, hi[v]), value, hi[v]);
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      const float32x4_t d = vdivq_f32(vsubq_f32(hi[v], lo[v]), top);
      id[v] = vbslq_f32(vcgtzq_f32(d), vdivq_f32(vdupq_n_f32(1.0f), d), zero);
      vst1q_f32(scales + b * NR + 4 * v, d);
      vst1q_f32(minima + b * NR + 4 * v, lo[v]);
      sum[v] = vdupq_n_s32(0);
    }
    int8_t* out = reinterpret_cast<int8_t*>(q_panel) + b * kBlock * NR;
    for (int t = 0; t < kBlock / 4; ++t) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        int32x4_t q[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          const float32x4_t y = vmulq_f32(vsubq_f32(vld1q_f32(x + (4 * t + r) * NR + 4 * v), lo[v]), id[v]);
          const int32x4_t u = vcvtnq_s32_f32(vminnmq_f32(vmaxnmq_f32(y, zero), top));
          sum[v] = vaddq_s32(sum[v], u);
          q[r] = vsubq_s32(u, bias);
        }
        vst1q_s8(out + t * NR * 4 + 16 * v, vreinterpretq_s8_s32(interleave_quad(q[0], q[1], q[2], q[3])));
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      vst1q_f32(sums + b * NR + 4 * v, vmulq_f32(vld1q_f32(scales + b * NR + 4 * v), vcvtq_f32_s32(sum[v])));
    }
  }
}

// The 16 products of one weight row (its 4 bytes of the quad, repeated in every lane: `a_row`) with 4 columns × 4 k
// of B, added to the row's int32 accumulator of those columns.
inline int32x4_t dot_quad(int32x4_t acc, int8x16_t b, int8x16_t a_row) {
  const int16x8_t lo = vmull_s8(vget_low_s8(b), vget_low_s8(a_row));
  const int16x8_t hi = vmull_high_s8(b, a_row);
  return vpadalq_s16(acc, vpaddq_s16(lo, hi));
}

void run_4x8(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
             const GemmEpilogue* epilogue) {
  const int64_t blocks = kc / kBlock;
  const int8_t* bq = reinterpret_cast<const int8_t*>(q_panel);
  QTile<2> tile;
  qtile_load(tile, c, ldc, accumulate);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int32x4_t isum[kMR][2];
#pragma GCC unroll 4
    for (int m = 0; m < kMR; ++m) isum[m][0] = isum[m][1] = neon::qtile_sum_start(a, blk, m);
    const int8_t* aq = a.q + blk * kBlock * kMR;
    const int8_t* b = bq + blk * kBlock * kNR;
    for (int t = 0; t < kBlock / 4; ++t) {
      const int32x4_t arow = vreinterpretq_s32_s8(vld1q_s8(aq + t * kMR * 4));
      const int8x16_t b0 = vld1q_s8(b + t * kNR * 4), b1 = vld1q_s8(b + t * kNR * 4 + 16);
      // vdupq_laneq needs a constant lane, hence the macro rather than a loop.
#define DDPM_QROW(m)                                                    \
  {                                                                     \
    const int8x16_t am = vreinterpretq_s8_s32(vdupq_laneq_s32(arow, m)); \
    isum[m][0] = dot_quad(isum[m][0], b0, am);                          \
    isum[m][1] = dot_quad(isum[m][1], b1, am);                          \
  }
      DDPM_QROW(0)
      DDPM_QROW(1)
      DDPM_QROW(2)
      DDPM_QROW(3)
#undef DDPM_QROW
    }
    qtile_add_block(tile, isum, a, q_panel, kc, blk);
  }
  qtile_store(tile, c, ldc, epilogue);
}

}  // namespace

void qgemm_quantize_b_nr12(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  quantize_b<12>(kc, b_panel, q_panel);
}

}  // namespace ddpm::kernels::neon

namespace ddpm::kernels {

QGemmMicroKernel neon_qgemm() {
  QGemmMicroKernel k;
  k.name = "neon";
  k.mr = neon::kMR;
  k.nr = neon::kNR;
  k.b_biased = false;
  k.quantize_b = neon::quantize_b<neon::kNR>;
  k.run = neon::run_4x8;
  return k;
}

}  // namespace ddpm::kernels
