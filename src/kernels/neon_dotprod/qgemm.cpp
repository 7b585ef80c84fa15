// NEON quantised GEMM with the dotprod extension (ARMv8.2-A sdot: Cortex-A76 in the Raspberry Pi 5, A55, Neoverse).
// This directory is compiled with -march=armv8.2-a+dotprod, so nothing in it may run unless the CPU reports
// HWCAP_ASIMDDP: src/kernels/neon/table.cpp checks before it even calls neon_dotprod_qgemm(). It keeps no code
// that would also run elsewhere: the activation quantiser comes from src/kernels/neon/, and the f32 side of the
// tile (src/kernels/neon/qgemm_tile.h) is compiled into this object as a private copy.
//
// vdotq_laneq_s32(acc, b, a, m) adds to each of the 4 lanes (columns) of acc the dot product of that column's 4
// values of the k quad with weight row m's 4 values — exactly the [k/4][NR][4] and [k/4][MR][4] panel layouts, so
// one 16-byte load of A serves 4 rows and each 16-byte load of B 4 columns.
//
// Tile 4×12: 12 int32 block accumulators + 12 f32 accumulators + 3 B vectors + 1 A vector = 28 of the 32 q
// registers; per k quad 4 loads feed 12 sdots, so the loop is bound by sdot throughput, not by loads. 8 rows would
// need 32 accumulators before any operand.
#include <arm_neon.h>

#include "kernels/neon/qgemm.h"
#include "kernels/neon/qgemm_tile.h"
#include "kernels/registry.h"

namespace ddpm::kernels::neon_dotprod {
namespace {

constexpr int kBlock = 32;
constexpr int kMR = neon::kQTileRows, kNR = 12;

void run_4x12(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
              const GemmEpilogue* epilogue) {
  const int64_t blocks = kc / kBlock;
  const int8_t* bq = reinterpret_cast<const int8_t*>(q_panel);
  neon::QTile<3> tile;
  neon::qtile_load(tile, c, ldc, accumulate);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int32x4_t isum[kMR][3];
#pragma GCC unroll 4
    for (int m = 0; m < kMR; ++m) isum[m][0] = isum[m][1] = isum[m][2] = neon::qtile_sum_start(a, blk, m);
    const int8_t* aq = a.q + blk * kBlock * kMR;
    const int8_t* b = bq + blk * kBlock * kNR;
#pragma GCC unroll 2
    for (int t = 0; t < kBlock / 4; ++t) {
      const int8x16_t arows = vld1q_s8(aq + t * kMR * 4);
      const int8x16_t b0 = vld1q_s8(b + t * kNR * 4), b1 = vld1q_s8(b + t * kNR * 4 + 16),
                      b2 = vld1q_s8(b + t * kNR * 4 + 32);
      // The lane (weight row) must be a constant, hence the macro rather than a loop.
#define DDPM_QROW(m)                                      \
  isum[m][0] = vdotq_laneq_s32(isum[m][0], b0, arows, m); \
  isum[m][1] = vdotq_laneq_s32(isum[m][1], b1, arows, m); \
  isum[m][2] = vdotq_laneq_s32(isum[m][2], b2, arows, m);
      DDPM_QROW(0)
      DDPM_QROW(1)
      DDPM_QROW(2)
      DDPM_QROW(3)
#undef DDPM_QROW
    }
    neon::qtile_add_block(tile, isum, a, q_panel, kc, blk);
  }
  neon::qtile_store(tile, c, ldc, epilogue);
}

}  // namespace
}  // namespace ddpm::kernels::neon_dotprod

namespace ddpm::kernels {

QGemmMicroKernel neon_dotprod_qgemm() {
  QGemmMicroKernel k;
  k.name = "neon-dotprod";
  k.mr = neon_dotprod::kMR;
  k.nr = neon_dotprod::kNR;
  k.b_biased = false;
  k.quantize_b = neon::qgemm_quantize_b_nr12;
  k.run = neon_dotprod::run_4x12;
  return k;
}

}  // namespace ddpm::kernels
