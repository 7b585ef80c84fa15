// Winograd F(2×2, 3×3) for stride-1 3×3 convolutions (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2015): a 2×2 output tile Y of one output channel is Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A, where d is the 4×4
// input patch under the tile and g the 3×3 filter, with
//
//   Bᵀ = | 1  0 -1  0 |    G = | 1    0    0   |    Aᵀ = | 1  1  1  0 |
//        | 0  1  1  0 |        | 1/2  1/2  1/2 |         | 0  1 -1 -1 |
//        | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//        | 0  1  0 -1 |        | 0    0    1   |
//
// So the sum over input channels becomes 16 independent GEMMs, one per position f of the 4×4 transformed tile:
// M_f[Co × tiles] = U_f[Co × Ci] · V_f[Ci × tiles], 16 multiply-adds per tile and channel pair instead of the
// implicit GEMM's 36 (2.25× fewer). The transforms only add and halve, so the results differ from the direct sum by
// rounding relative to the products' magnitudes (the reference tests hold it to the same tolerance as the GEMM
// path; against diffusers' outputs it is as close as the GEMM path).
//
// Why it pays here: the implicit GEMM already runs at ~95 % of the FMA peak (`ddpm bench ops`), and 3×3 convs are
// ~90 % of a U-Net forward, so only fewer multiply-adds make it faster. Why not F(4×4, 3×3) (4× fewer): its
// transforms have coefficients up to 8 and lose about two more decimal digits, past what the conformance tests
// against diffusers allow (relative L2 ≤ 1e-5).
//
// Work, per call: U for every (co, ci), 16/9 of the weights, is taken from the graph's kept filters (a loaded
// model's layers below kKeepBelowTiles tiles per image, made at the first call) or computed into the graph's shared
// buffer. Then the output tiles are taken in chunks of whole tile rows: the chunk's input is transformed into V
// (the level's winograd_input), the 16 GEMMs run through the blocked driver (its own split over threads), and the
// output transform (winograd_output) adds bias and residual while writing y. Every value is computed in a fixed
// order whatever the thread count: each tile's transforms are independent of the others, and each GEMM column is
// one k-ordered FMA chain (gemm.h) whichever chunk or split it falls in, so neither the thread count nor the batch
// split (chunks may span images) changes a bit.
//
// Block-typed weights (q8_0, q4_0, …) take the same path when the model asks for it (kFlagInt8Winograd, set by the
// loader: Model::set_int8_winograd) and the weight is frozen with Ci a multiple of 32: U is computed once from the
// dequantised filters, each position's [Co × Ci] matrix quantised to q8_0 (amax scale) and kept as the integer GEMM's
// panels (run_quantized). The tiles then go in groups, one task each (run_grouped): the group's V quantised per
// tile and 32 channels as the GEMM's B panels straight from the transform (the bits run_qgemm would give an f32 V),
// the 16 GEMMs in 8 bits and the output transform, all in the thread's own scratch. That is 2.25× fewer 8-bit
// multiply-adds than the direct integer conv, at the price of a second rounding of the filters and a coarser one of
// the inputs (V's four-term sums span about twice their range): on the cifar10 U-Net +0.2 (q4_0) to +0.85 (q8_0)
// points of relative output error (docs/QUANT.md), which is why the loader chooses it for 4-bit models and for
// others only when `ddpm quantize`'s calibration found the error affordable. Its kept panels take 16/9 of the
// direct path's. It needs at least 128 input channels: each position's
// GEMM has K = Ci, and with fewer the transforms and per-block scaling outweigh the 2.25× fewer products (`ddpm bench
// ops -t 1 --filter 'conv3x3 q8_0'`, AVX-512 VNNI, direct against Winograd: 64→128 @28×28 0.39 vs 0.50 ms, 64→64
// @28×28 0.21 vs 0.34, 64→64 @64×64 1.17 vs 1.15; 128→64 @32×32 0.56 vs 0.52, 128→128 @32×32 1.03 vs 0.79,
// 256→256 @16×16 0.97 vs 0.68).
//
// The rule: a 3×3 stride-1 conv with f32/f16 weights, at least kMinChannels in and out, and enough tiles per image
// (`conv2d_winograd_min_tiles`, 64: a 16×16 output) for the 16 GEMMs to fill their column panels: below that they
// stream U (16/9 of the weights) for little work and lose to the GEMM (`ddpm bench ops -t 1`, AVX-512, against the
// GEMM path: 256→256 @8×8 0.93×, @16×16 1.87×, 128→128 @32×32 1.61×, 64→64 @28×28 1.33×, 32→32 @28×28 1.03×).
#include "ops/conv_winograd.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/align.h"
#include "core/half.h"
#include "io/mapped_file.h"
#include "ops/gemm.h"
#include "ops/qgemm.h"
#include "quant/blocks.h"

namespace ddpm {
namespace {

constexpr int64_t kDefaultMinTiles = 64;
constexpr int64_t kMinChannels = 16;
constexpr int64_t kDefaultMinInt8Channels = 128;
// Output tiles per chunk: V and M for 256 tiles of a 384 → 128 conv take 8 MiB, within the shared L3; fewer tiles
// would leave the GEMMs' column panels short.
constexpr int64_t kChunkTiles = 256;
// Tiles of one tile row handled per pass of the input and output transforms (their staging lives on the stack).
constexpr int64_t kSegment = 64;
constexpr int kPositions = 16;  // the 4×4 transformed tile

std::atomic<int64_t> min_tiles{kDefaultMinTiles};
std::atomic<int64_t> min_int8_channels{kDefaultMinInt8Channels};
std::atomic<bool> fused_input{true};
std::atomic<int64_t> grouped_runs{0};

// A frozen weight's transformed filters are kept by the graph (ExecContext::packed_weights) instead of being
// rebuilt in the shared buffer at every call, where rebuilding them costs much against the layer's GEMMs: below
// kKeepBelowTiles tiles per image. Kept filters are f32, 16/9 of f32 weights' memory (32/9 of f16 ones; an f32
// generate with the cifar10 U-Net: +24 MB for its 16×16 layers, keeping the 32×32 ones too would add 32 MB more to
// save ~10 % of their time). Kept or rebuilt, they are the same bits.
constexpr int64_t kKeepBelowTiles = 256;
bool frozen(const Tensor& weight) { return (weight.flags & kFlagParam) && (weight.flags & kFlagFrozen); }
bool keeps_filters(const Tensor& weight, int64_t tiles_per_image) {
  if (quant::is_block_type(weight.dtype)) return true;  // always kept (run_quantized)
  return frozen(weight) && tiles_per_image < kKeepBelowTiles;
}

// iparams of a Conv2d node (conv.cpp).
enum ConvParam { kStride = 0, kPadTop, kPadLeft };

int64_t align_floats(int64_t n) { return ceil_div(n, 16) * 16; }

struct Geometry {
  int64_t batch, ci, height, width, co, pad_top, pad_left, out_h, out_w;
  int64_t tiles_h, tiles_w;  // 2×2 output tiles per image, down and across
  int64_t chunk_rows;        // tile rows per chunk
  int64_t tile_rows() const { return batch * tiles_h; }
  int64_t chunk_tiles() const { return chunk_rows * tiles_w; }
  // Shared buffer, in floats: U [16][Co][Ci] (unless kept), V [16][Ci][chunk tiles], M [16][Co][chunk tiles];
  // block-typed filters by tile groups need neither V nor M there (run_grouped: the threads' scratch).
  bool kept_filters = false;
  bool grouped = false;
  int64_t u_floats() const { return kept_filters ? 0 : align_floats(kPositions * co * ci); }
  int64_t v_floats() const { return grouped ? 0 : align_floats(kPositions * ci * chunk_tiles()); }
  int64_t m_floats() const { return grouped ? 0 : align_floats(kPositions * co * chunk_tiles()); }
  int64_t u_q8_bytes = 0;  // block-typed filters: their q8_0 transform at the first call (run_quantized)
  size_t shared_bytes() const {
    return std::max(static_cast<size_t>(u_floats() + v_floats() + m_floats()) * sizeof(float),
                    static_cast<size_t>(u_q8_bytes));
  }
};

// Block-typed filters, by tile groups (run_grouped): each task takes a group of column panels (nr tiles each, in
// order over all images' tile rows) and does all of its work in the thread's scratch, so that neither V nor M is
// written by one core and read by another. Those writes were what made the 8-bit path scale badly over threads:
// on a VM whose two cores sit on different CCDs (230 ns one way), storing to lines the other core has read runs
// at 5.7 GB/s against 90 GB/s for lines of one's own (/tmp microbenchmark), and V and M — 2.5 MB for a 128 → 128
// conv at 32×32 — were each written by one thread and read by the other.
//   V: the group's transformed input quantised as the GEMM's B panels: for each position f, k block (qgemm_k_blocks)
//      and panel j, qgemm_b_panel_bytes(kc, nr) bytes, [f][k block][j];
//   M: [16][rows][group columns] f32 for one block of output rows at a time (kMBlockRows), then transformed into y.
// Tiles per group: up to kGroupTiles, fewer where V would pass kGroupVBytes (wide inputs), and fewer still so that
// every thread gets a group.
constexpr int64_t kGroupTiles = 64;
constexpr int64_t kGroupVBytes = 384 * 1024;
constexpr int64_t kMBlockRows = 64;

struct GroupLayout {
  int nr = 0, mr = 0;
  int64_t max_panels = 0;   // column panels per group at most
  int64_t block_rows = 0;   // M rows per block, a multiple of mr
  size_t v_bytes = 0, m_bytes = 0, stage_bytes = 0, gemm_scratch_bytes = 0;
  size_t total() const { return v_bytes + m_bytes + stage_bytes + gemm_scratch_bytes; }
};


// Bytes of one position's B panels for `panels` column panels over all of K.
size_t v_position_bytes(int64_t ci, int nr, int64_t panels) {
  const QGemmKBlocks k = qgemm_k_blocks(ci);
  const int64_t last_kc = ci - (k.count - 1) * k.kc;
  return static_cast<size_t>(panels) * ((k.count - 1) * kernels::qgemm_b_panel_bytes(k.kc, nr) +
                                        kernels::qgemm_b_panel_bytes(last_kc, nr));
}

GroupLayout group_layout(const Geometry& g, const kernels::QGemmMicroKernel& kernel, size_t gemm_scratch_bytes) {
  GroupLayout l;
  l.nr = kernel.nr;
  l.mr = kernel.mr;
  const int64_t by_tiles = std::max<int64_t>(1, kGroupTiles / l.nr);
  const int64_t by_bytes = kGroupVBytes / static_cast<int64_t>(kPositions * v_position_bytes(g.ci, l.nr, 1));
  l.max_panels = std::clamp<int64_t>(by_bytes, 1, by_tiles);
  l.block_rows = std::min(ceil_div(kMBlockRows, l.mr), ceil_div(g.co, l.mr)) * l.mr;
  l.v_bytes = align_to_cache_line(kPositions * v_position_bytes(g.ci, l.nr, l.max_panels));
  l.m_bytes = align_to_cache_line(static_cast<size_t>(kPositions * l.block_rows * l.max_panels * l.nr) * sizeof(float));
  l.stage_bytes = align_to_cache_line(static_cast<size_t>(kPositions * quant::kQuantBlock * l.nr) * sizeof(float)) +
                  align_to_cache_line(kernels::qgemm_b_panel_bytes(quant::kQuantBlock, l.nr));
  l.gemm_scratch_bytes = align_to_cache_line(gemm_scratch_bytes);
  return l;
}

Geometry geometry(const Tensor& node) {
  const Tensor& x = *node.src[0];
  Geometry g;
  g.batch = x.shape[0];
  g.ci = x.shape[1];
  g.height = x.shape[2];
  g.width = x.shape[3];
  g.co = node.shape[1];
  g.pad_top = node.iparams[kPadTop];
  g.pad_left = node.iparams[kPadLeft];
  g.out_h = node.shape[2];
  g.out_w = node.shape[3];
  g.tiles_h = ceil_div(g.out_h, 2);
  g.tiles_w = ceil_div(g.out_w, 2);
  const bool quantized = quant::is_block_type(node.src[1]->dtype);
  g.chunk_rows = std::clamp<int64_t>(kChunkTiles / g.tiles_w, 1, g.tile_rows());
  // As many chunks as that takes, of nearly equal rows: a short last chunk would leave its GEMMs' panels short.
  const int64_t chunks = ceil_div(g.tile_rows(), g.chunk_rows);
  g.chunk_rows = ceil_div(g.tile_rows(), chunks);
  g.kept_filters = keeps_filters(*node.src[1], g.tiles_h * g.tiles_w);
  // The first call of a quantised layer makes its q8_0 filters in the shared buffer, before V and M are used.
  if (quantized) {
    g.u_q8_bytes = static_cast<int64_t>(kPositions * g.co) * static_cast<int64_t>(dtype_row_bytes(DType::Q8_0, g.ci));
    g.grouped = fused_input.load(std::memory_order_relaxed);
  }
  return g;
}

bool applies(const Tensor& node) {
  const Tensor& w = *node.src[1];
  if (quant::is_block_type(w.dtype)) {
    // Block-typed filters go through Winograd as 8-bit transformed filters, made once and kept (run_quantized):
    // when the model asks for it (kFlagInt8Winograd), only for a frozen model's weights, and for whole 32-channel
    // blocks (no padding inside a position's rows).
    if (!(w.flags & kFlagInt8Winograd) || !frozen(w) || w.shape[1] % quant::kQuantBlock != 0) return false;
    if (w.shape[1] < min_int8_channels.load(std::memory_order_relaxed)) return false;
  } else if (w.dtype != DType::F32 && w.dtype != DType::F16) {
    return false;
  }
  if (node.src[2] && node.src[2]->dtype != DType::F32 && node.src[2]->dtype != DType::F16) return false;
  if (w.shape[2] != 3 || w.shape[3] != 3 || node.iparams[kStride] != 1) return false;
  if (w.shape[0] < kMinChannels || w.shape[1] < kMinChannels) return false;
  // Per image, not per batch: the path must not depend on the batch size, or a batch of n images would differ
  // from n single runs in the last bits.
  const int64_t tiles = ceil_div(node.shape[2], 2) * ceil_div(node.shape[3], 2);
  return tiles >= min_tiles.load(std::memory_order_relaxed);
}

// G g Gᵀ for kLanes filters side by side: k[t][c] is tap t (row-major 3×3) of filter c, out[f][c] position f of
// its 4×4 transform. Each step is one fixed-length loop over the lanes (vectorised by the compiler).
template <int kLanes>
void transform_filter_lanes(const float (&k)[9][kLanes], float (&out)[kPositions][kLanes]) {
  float a[4][3][kLanes];  // G g: rows of the filter combined
  for (int x = 0; x < 3; ++x) {
    for (int c = 0; c < kLanes; ++c) {
      a[0][x][c] = k[x][c];
      a[1][x][c] = 0.5f * (k[x][c] + k[3 + x][c] + k[6 + x][c]);
      a[2][x][c] = 0.5f * (k[x][c] - k[3 + x][c] + k[6 + x][c]);
      a[3][x][c] = k[6 + x][c];
    }
  }
  for (int i = 0; i < 4; ++i) {  // (G g) Gᵀ: columns combined
    for (int c = 0; c < kLanes; ++c) {
      out[4 * i + 0][c] = a[i][0][c];
      out[4 * i + 1][c] = 0.5f * (a[i][0][c] + a[i][1][c] + a[i][2][c]);
      out[4 * i + 2][c] = 0.5f * (a[i][0][c] - a[i][1][c] + a[i][2][c]);
      out[4 * i + 3][c] = a[i][2][c];
    }
  }
}

// U_f[co][ci] = (G g Gᵀ)_f for every filter, tasks over output channels. Filters go kLanes input channels at a
// time, tap-major in local arrays, so each step is one fixed-length loop over the lanes (vectorised by the compiler).
void transform_weights(const Geometry& g, const Tensor& w, float* u, ExecContext& ctx) {
  constexpr int kLanes = 16;
  const int64_t filters_per_task = std::max<int64_t>(1, 4096 / g.ci);
  const int64_t tasks = ceil_div(g.co, filters_per_task);
  const int64_t position_stride = g.co * g.ci;
  ctx.pool.run(tasks, [&](int64_t task, int) {
    const int64_t co_end = std::min(g.co, (task + 1) * filters_per_task);
    for (int64_t co = task * filters_per_task; co < co_end; ++co) {
      for (int64_t ci0 = 0; ci0 < g.ci; ci0 += kLanes) {
        const int64_t lanes = std::min<int64_t>(kLanes, g.ci - ci0);
        const int64_t first = (co * g.ci + ci0) * 9;
        // The lanes' filters are 9·lanes consecutive values: f16 ones widened by the level's row converter (F16C /
        // NEON; exact, as every f16 → f32 conversion is), which per element was most of an f16 layer's transform.
        float raw[9 * kLanes];
        const float* filters = raw;
        if (w.dtype == DType::F16) {
          ctx.kernels.f16_to_f32(9 * lanes, static_cast<const uint16_t*>(w.data) + first, raw);
        } else {
          filters = w.f32() + first;
        }
        float k[9][kLanes] = {};
        for (int64_t c = 0; c < lanes; ++c) {
          for (int t = 0; t < 9; ++t) k[t][c] = filters[c * 9 + t];
        }
        float out[kPositions][kLanes];
        transform_filter_lanes(k, out);
        // A whole row of lanes as a fixed-size copy: a variable-length memcpy of 64 bytes compiles to `rep movsq`,
        // whose start-up cost made these stores a third of the transform (perf).
        for (int f = 0; f < kPositions; ++f) {
          float* dst = u + f * position_stride + co * g.ci + ci0;
          if (lanes == kLanes) {
            std::memcpy(dst, out[f], sizeof out[f]);
          } else {
            std::memcpy(dst, out[f], static_cast<size_t>(lanes) * sizeof(float));
          }
        }
      }
    }
  });
}

// The four input rows under tiles [tx0, tx0 + n) (n <= kSegment) of tile row ty of one channel's plane, zero-padded:
// staged column j is input column 2·tx0 - pad_left + j, for j < 2n + 2 (winograd_input's rows).
constexpr int64_t kStaged = 2 * kSegment + 2;
void stage_input_rows(const Geometry& g, const float* plane, int64_t ty, int64_t tx0, int64_t n,
                      float (&staged)[4][kStaged]) {
  const int64_t ix0 = 2 * tx0 - g.pad_left, lead = std::clamp<int64_t>(-ix0, 0, 2 * n + 2);
  const int64_t valid_end = std::clamp<int64_t>(g.width - ix0, lead, 2 * n + 2);
  for (int r = 0; r < 4; ++r) {
    const int64_t iy = 2 * ty - g.pad_top + r;
    float* dst = staged[r];
    if (iy < 0 || iy >= g.height) {
      std::memset(dst, 0, static_cast<size_t>(2 * n + 2) * sizeof(float));
      continue;
    }
    for (int64_t j = 0; j < lead; ++j) dst[j] = 0.0f;
    if (valid_end > lead) {  // (no pointer formed past the row otherwise)
      const float* src = plane + iy * g.width + ix0 + lead;
      std::memcpy(dst + lead, src, static_cast<size_t>(valid_end - lead) * sizeof(float));
    }
    for (int64_t j = valid_end; j < 2 * n + 2; ++j) dst[j] = 0.0f;
  }
}

// V_f[ci][t] = (Bᵀ d B)_f for the chunk's tiles t (tile rows [row0, row0 + rows), tile t = (row - row0)·tiles_w + tx),
// tasks over (input channel, tile row). Each segment of a tile row stages its four input rows zero-padded, then
// the level's winograd_input transforms them.
void transform_input(const Geometry& g, const float* x, int64_t row0, int64_t rows, float* v, ExecContext& ctx) {
  const int64_t chunk_tiles = rows * g.tiles_w;
  const int64_t position_stride = g.ci * chunk_tiles;
  const int64_t units = g.ci * rows;  // (channel, tile row)
  const int64_t tasks = std::min<int64_t>(units, 64);
  const auto transform = ctx.kernels.winograd_input;
  ctx.pool.run(tasks, [&](int64_t task, int) {
    int64_t begin, end;
    split_range(units, tasks, task, &begin, &end);
    float staged[4][kStaged];
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t ci = unit / rows, row = row0 + unit % rows;
      const int64_t b = row / g.tiles_h, ty = row % g.tiles_h;
      const float* plane = x + (b * g.ci + ci) * g.height * g.width;
      float* out_row = v + ci * chunk_tiles + (row - row0) * g.tiles_w;
      for (int64_t tx0 = 0; tx0 < g.tiles_w; tx0 += kSegment) {
        const int64_t n = std::min(kSegment, g.tiles_w - tx0);
        stage_input_rows(g, plane, ty, tx0, n, staged);
        transform(staged[0], kStaged, n, out_row + tx0, position_stride);
      }
    }
  });
}

// One output row from the transform's staging (which it may overwrite) into y, plus the residual if any; streamed
// when the run streams its outputs.
void store_output_row(const ExecContext& ctx, float* staged, const float* residual, int64_t width, float* y) {
  if (ctx.stream_outputs) {
    if (residual) ctx.kernels.add(width, staged, residual, staged);
    ctx.kernels.stream_copy(width, staged, y);
  } else if (residual) {
    ctx.kernels.add(width, staged, residual, y);
  } else {
    std::memcpy(y, staged, static_cast<size_t>(width) * sizeof(float));
  }
}

// V of one group (tiles [t0, t1), numbered over all images' tile rows; `panels` column panels of nr) as the GEMM's
// B panels (GroupLayout). Per 32-channel block and panel: the panel's V for those channels and all 16 positions
// staged in f32 (transform_input's bits), each position's [32 × nr] quantised by the kernel's quantize_b, and its
// values and scales put where that block sits in the panel over the k block. Padding tiles quantise to nothing.
void quantize_group_input(const Geometry& g, const GroupLayout& l, const kernels::KernelTable& kernels,
                          const float* x, int64_t t0, int64_t t1, int64_t panels, uint8_t* v_panels,
                          uint8_t* stage) {
  constexpr int64_t kLanes = quant::kQuantBlock;
  const int nr = l.nr;
  const kernels::QGemmMicroKernel& kernel = kernels.qgemm;
  const QGemmKBlocks k = qgemm_k_blocks(g.ci);
  const size_t full_panel_bytes = kernels::qgemm_b_panel_bytes(k.kc, nr);
  const int64_t position_stride = kLanes * nr;  // in the staged V: [f][c][t]
  float* v = reinterpret_cast<float*>(stage);
  uint8_t* quantized = stage + align_to_cache_line(static_cast<size_t>(kPositions * position_stride) * sizeof(float));
  const size_t position_bytes = v_position_bytes(g.ci, nr, panels);
  float staged[4][kStaged];
  for (int64_t j = 0; j < panels; ++j) {
    const int64_t p0 = t0 + j * nr, p1 = std::min(t1, p0 + nr);
    for (int64_t kb = 0; kb < g.ci / kLanes; ++kb) {
      if (p1 - p0 < nr) {
        for (int64_t r = 0; r < kPositions * kLanes; ++r) std::fill(v + r * nr + (p1 - p0), v + (r + 1) * nr, 0.0f);
      }
      for (int64_t t = p0; t < p1;) {  // the panel's tiles, one tile row's run at a time
        const int64_t row = t / g.tiles_w, tx = t % g.tiles_w, n = std::min(p1 - t, g.tiles_w - tx);
        const int64_t b = row / g.tiles_h, ty = row % g.tiles_h;
        for (int64_t c = 0; c < kLanes; ++c) {
          const float* plane = x + (b * g.ci + kb * kLanes + c) * g.height * g.width;
          stage_input_rows(g, plane, ty, tx, n, staged);
          kernels.winograd_input(staged[0], kStaged, n, v + c * nr + (t - p0), position_stride);
        }
        t += n;
      }
      // Where block kb sits: k block kb / (kc/32), at block `local` of it.
      const int64_t blocks_per_k = k.kc / kLanes, k_block = kb / blocks_per_k, local = kb % blocks_per_k;
      const int64_t kc = std::min(k.kc, g.ci - k_block * k.kc);
      const size_t panel_bytes = kernels::qgemm_b_panel_bytes(kc, nr);
      const size_t scale_bytes = static_cast<size_t>((kc / kLanes) * nr) * sizeof(float);
      for (int f = 0; f < kPositions; ++f) {
        kernel.quantize_b(kLanes, v + f * position_stride, quantized);
        uint8_t* panel = v_panels + f * position_bytes + k_block * panels * full_panel_bytes + j * panel_bytes;
        std::memcpy(panel + local * kLanes * nr, quantized, static_cast<size_t>(kLanes * nr));
        for (int e = 0; e < 3; ++e) {
          std::memcpy(panel + kc * nr + e * scale_bytes + local * nr * sizeof(float),
                      quantized + kLanes * nr + e * nr * sizeof(float), static_cast<size_t>(nr) * sizeof(float));
        }
      }
    }
  }
}

// y = Aᵀ M A + bias (+ residual) for output channels [co0, co1) and the group's tiles [t0, t1), from the block's M
// ([16][l.block_rows][ldm], row co - co0, column t - t0), one tile row's run at a time.
void transform_group_output(const Geometry& g, const Tensor& node, const ExecContext& ctx, const float* m,
                            int64_t ldm, int64_t position_stride, int64_t co0, int64_t co1, int64_t t0, int64_t t1) {
  const kernels::KernelTable& kernels = ctx.kernels;
  const Tensor* bias = node.src[2];
  const Tensor* residual = node.src[3];
  float* y = node.f32();
  constexpr int64_t kOutStaged = 2 * kSegment;
  float staged[2][kOutStaged];
  for (int64_t co = co0; co < co1; ++co) {
    float bias_value = 0.0f;
    if (bias) {
      bias_value = bias->dtype == DType::F16 ? f16_to_f32(static_cast<const uint16_t*>(bias->data)[co])
                                             : bias->f32()[co];
    }
    for (int64_t t = t0; t < t1;) {
      const int64_t row = t / g.tiles_w, tx = t % g.tiles_w;
      const int64_t n = std::min({t1 - t, g.tiles_w - tx, kSegment});
      const int64_t b = row / g.tiles_h, ty = row % g.tiles_h;
      kernels.winograd_output(m + (co - co0) * ldm + (t - t0), position_stride, n, bias_value, staged[0],
                              kOutStaged);
      const int64_t width = std::min<int64_t>(2 * n, g.out_w - 2 * tx);
      for (int r = 0; r < 2 && 2 * ty + r < g.out_h; ++r) {
        const int64_t offset = ((b * g.co + co) * g.out_h + 2 * ty + r) * g.out_w + 2 * tx;
        store_output_row(ctx, staged[r], residual ? residual->f32() + offset : nullptr, width, y + offset);
      }
      t += n;
    }
  }
}

// y = Aᵀ M A + bias (+ residual) for the chunk's tiles, tasks over (output channel, tile row): the level's
// winograd_output writes both output rows of a segment to the stack, whence they are copied (or added to the
// residual) into y, cut at the output's width and height.
void transform_output(const Geometry& g, const float* m, int64_t row0, int64_t rows, const Tensor& node,
                      ExecContext& ctx) {
  const Tensor* bias = node.src[2];
  const Tensor* residual = node.src[3];
  float* y = node.f32();
  const int64_t chunk_tiles = rows * g.tiles_w;
  const int64_t position_stride = g.co * chunk_tiles;
  const int64_t units = g.co * rows;
  const int64_t tasks = std::min<int64_t>(units, 64);
  const auto transform = ctx.kernels.winograd_output;
  ctx.pool.run(tasks, [&](int64_t task, int) {
    int64_t begin, end;
    split_range(units, tasks, task, &begin, &end);
    constexpr int64_t kStaged = 2 * kSegment;
    float staged[2][kStaged];
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t co = unit / rows, row = row0 + unit % rows;
      const int64_t b = row / g.tiles_h, ty = row % g.tiles_h;
      float bias_value = 0.0f;
      if (bias) {
        bias_value = bias->dtype == DType::F16 ? f16_to_f32(static_cast<const uint16_t*>(bias->data)[co])
                                               : bias->f32()[co];
      }
      const int64_t plane_offset = (b * g.co + co) * g.out_h * g.out_w;
      const float* in_row = m + co * chunk_tiles + (row - row0) * g.tiles_w;
      for (int64_t tx0 = 0; tx0 < g.tiles_w; tx0 += kSegment) {
        const int64_t n = std::min(kSegment, g.tiles_w - tx0);
        transform(in_row + tx0, position_stride, n, bias_value, staged[0], kStaged);
        const int64_t width = std::min<int64_t>(2 * n, g.out_w - 2 * tx0);
        for (int r = 0; r < 2 && 2 * ty + r < g.out_h; ++r) {
          const int64_t offset = plane_offset + (2 * ty + r) * g.out_w + 2 * tx0;
          store_output_row(ctx, staged[r], residual ? residual->f32() + offset : nullptr, width, y + offset);
        }
      }
    }
    if (ctx.stream_outputs) ctx.kernels.store_fence();
  });
}

// The output tiles in chunks of whole tile rows: `gemms(row0, rows, tiles)` makes M for the chunk's tiles, then y
// from M (transform_output).
template <typename Gemms>
void for_each_chunk(const Geometry& g, const Tensor& node, float* m, ExecContext& ctx, Gemms&& gemms) {
  for (int64_t row0 = 0; row0 < g.tile_rows(); row0 += g.chunk_rows) {
    const int64_t rows = std::min(g.chunk_rows, g.tile_rows() - row0);
    gemms(row0, rows, rows * g.tiles_w);
    transform_output(g, m, row0, rows, node, ctx);
  }
}

// V for the chunk (transform_input) as the GEMMs' B: a StridedB over its 16 positions.
StridedB transformed_input(const Geometry& g, const Tensor& node, int64_t row0, int64_t rows, float* v,
                           ExecContext& ctx) {
  transform_input(g, node.src[0]->f32(), row0, rows, v, ctx);
  const int64_t tiles = rows * g.tiles_w;
  return StridedB{v, DType::F32, g.ci * tiles, tiles, 1, ctx.kernels.gemm.gather_rows};
}

// Block-typed filters: U_f = G g Gᵀ from the dequantised filter g, each position's [Co × Ci] matrix quantised to
// q8_0 rows (row f·Co + co, Ci values), tasks over output channels. The 16 values of a (co, ci) pair come from the
// same f32 arithmetic as transform_weights; each position's 32 channels then make one q8_0 block.
void transform_block_weights(const Geometry& g, const Tensor& w, uint8_t* u, ExecContext& ctx) {
  constexpr int kLanes = quant::kQuantBlock;
  const bool tap_major = (w.flags & kFlagTapMajor) != 0;
  const int64_t row_values = g.ci * 9;
  const size_t w_row_bytes = dtype_row_bytes(w.dtype, dtype_padded_row(w.dtype, row_values));
  const size_t u_row_bytes = dtype_row_bytes(DType::Q8_0, g.ci);
  const auto to_f32 = dtype_traits(w.dtype).to_f32;
  const int64_t filters_per_task = std::max<int64_t>(1, 4096 / g.ci);
  const int64_t tasks = ceil_div(g.co, filters_per_task);
  ctx.pool.run(tasks, [&](int64_t task, int) {
    std::vector<float> row(static_cast<size_t>(dtype_padded_row(w.dtype, row_values)));
    const int64_t co_end = std::min(g.co, (task + 1) * filters_per_task);
    for (int64_t co = task * filters_per_task; co < co_end; ++co) {
      to_f32(static_cast<const uint8_t*>(w.data) + co * w_row_bytes, row.data(), static_cast<int64_t>(row.size()));
      for (int64_t ci0 = 0; ci0 < g.ci; ci0 += kLanes) {
        float k[9][kLanes];  // tap t of input channel ci0 + c
        for (int t = 0; t < 9; ++t) {
          for (int64_t c = 0; c < kLanes; ++c)
            k[t][c] = tap_major ? row[t * g.ci + ci0 + c] : row[(ci0 + c) * 9 + t];
        }
        float out[kPositions][kLanes];
        transform_filter_lanes(k, out);
        for (int f = 0; f < kPositions; ++f) {
          uint8_t* dst = u + (f * g.co + co) * u_row_bytes + (ci0 / kLanes) * sizeof(quant::BlockQ8_0);
          quant::quantize_row_q8_0_amax(out[f], dst, kLanes);
        }
      }
    }
  });
}

// The transformed filters as a QGemm A: 16 matrices of Co q8_0 rows, one per batch item (position), named in
// PackedWeights by the weight they come from.
QGemmProblem quantized_problem(const Geometry& g, const Tensor& w) {
  QGemmProblem p;
  p.batch = kPositions;
  p.M = g.co;
  p.K = g.ci;
  p.a_dtype = DType::Q8_0;
  p.a_per_batch = true;
  p.a_key = w.data;
  p.a_form = PackedWeights::Form::kWinogradQ8Panels;
  p.a_constant = true;
  return p;
}

// Block-typed filters by tile groups (GroupLayout): tasks over (group, part of the output rows); each quantises its
// group's V into the thread's scratch, then per block of output rows runs the 16 positions' GEMMs into M there and
// transforms M into y. Output rows are split only when there are fewer groups than threads (each part then
// transforms its group's input again). The groups' size follows the thread count, which changes no bit: every
// tile's transforms are its own, and each GEMM column the same chain of kernel calls (qgemm_kept_block).
void run_grouped(const Geometry& g, const GroupLayout& l, const Tensor& node, const QGemmProblem& p,
                 const uint8_t* kept, ExecContext& ctx) {
  const int64_t tiles = g.tile_rows() * g.tiles_w;
  const int64_t total_panels = ceil_div(tiles, l.nr);
  const int threads = ctx.pool.size();
  const int64_t group_panels = std::min(l.max_panels, ceil_div(total_panels, threads));
  const int64_t groups = ceil_div(total_panels, group_panels);
  const int64_t m_panels = ceil_div(g.co, l.mr), block_panels = l.block_rows / l.mr;
  const int64_t row_parts = groups < threads ? std::min<int64_t>(m_panels, ceil_div(threads, groups)) : 1;
  const float* x = node.src[0]->f32();
  ctx.pool.run(groups * row_parts, [&](int64_t task, int thread) {
    const int64_t group = task / row_parts, part = task % row_parts;
    const int64_t first_panel = group * group_panels, panels = std::min(group_panels, total_panels - first_panel);
    const int64_t t0 = first_panel * l.nr, t1 = std::min(tiles, (first_panel + panels) * l.nr);
    uint8_t* v_panels = ctx.scratch[thread];
    float* m = reinterpret_cast<float*>(v_panels + l.v_bytes);
    uint8_t* stage = v_panels + l.v_bytes + l.m_bytes;
    uint8_t* gemm_scratch = stage + l.stage_bytes;
    quantize_group_input(g, l, ctx.kernels, x, t0, t1, panels, v_panels, stage);
    const size_t position_bytes = v_position_bytes(g.ci, l.nr, panels);
    const int64_t ldm = panels * l.nr, position_stride = l.block_rows * ldm;
    int64_t part_begin, part_end;
    split_range(m_panels, row_parts, part, &part_begin, &part_end);
    for (int64_t b0 = part_begin; b0 < part_end; b0 += block_panels) {
      const int64_t b1 = std::min(part_end, b0 + block_panels);
      for (int f = 0; f < kPositions; ++f) {
        qgemm_kept_block(p, kept, ctx.kernels, f, b0, b1, v_panels + f * position_bytes, panels,
                         m + f * position_stride, ldm, gemm_scratch);
      }
      transform_group_output(g, node, ctx, m, ldm, position_stride, b0 * l.mr, std::min(g.co, b1 * l.mr), t0, t1);
    }
    if (ctx.stream_outputs) ctx.kernels.store_fence();
  });
  grouped_runs.fetch_add(1, std::memory_order_relaxed);
}

// Block-typed weights: the 16 GEMMs in 8-bit integers, with the transformed filters quantised once, at the first
// call, and kept as panels; V quantised as it is transformed, by tile groups (run_grouped), or, when the plan made
// room for an f32 V instead (set_conv2d_winograd_fused_input(false), for tests), by run_qgemm as any B: the same
// bits.
bool run_quantized(const Geometry& g, const Tensor& node, ExecContext& ctx, float* v, float* m) {
  const Tensor& w = *node.src[1];
  if (!ctx.packed_weights) return false;
  const GroupLayout l = group_layout(g, ctx.kernels.qgemm, qgemm_kept_block_scratch_bytes(ctx.kernels.qgemm.mr));
  // The group's scratch fits the thread's (planned for every kernel) and a panel's staging the stack's rows: true by
  // construction; otherwise the direct path, before anything is written.
  if (g.grouped && (ctx.scratch_bytes < l.total() || l.nr > kSegment)) return false;
  QGemmProblem p = quantized_problem(g, w);
  // At the first call the q8_0 filters go to the shared buffer (V and M are only written after that) and from there
  // into kept panels, before any output is written.
  if (!qgemm_panels_kept(p, ctx)) {
    transform_block_weights(g, w, ctx.shared, ctx);
    p.a = ctx.shared;
    if (!keep_qgemm_panels(p, ctx)) return false;  // out of memory: the direct path needs none (nothing written yet)
    p.a = nullptr;
    // From now on the filters are read through their kept transform only: a model file's pages can go.
    if (w.flags & kFlagMapped) release_mapped_pages(w.data, dtype_tensor_bytes(w.dtype, w.rank, w.shape));
  }
  if (g.grouped) {
    const uint8_t* kept = qgemm_kept_panels(p, ctx);
    DDPM_ASSERT(kept);
    run_grouped(g, l, node, p, kept, ctx);
    return true;
  }
  ExecContext gemm_ctx = ctx;  // the shared buffer holds V and M; kept panels need none
  gemm_ctx.shared = nullptr;
  gemm_ctx.shared_bytes = 0;
  for_each_chunk(g, node, m, ctx, [&](int64_t row0, int64_t rows, int64_t tiles) {
    const StridedB b = transformed_input(g, node, row0, rows, v, ctx);
    p.N = tiles;
    p.c = m;
    p.c_batch_stride = g.co * tiles;
    p.ldc = tiles;
    p.pack_b = pack_b_strided;
    p.pack_b_context = &b;
    run_qgemm(p, gemm_ctx);
  });
  return true;
}

}  // namespace

int64_t conv2d_winograd_min_tiles() { return min_tiles.load(std::memory_order_relaxed); }
void set_conv2d_winograd_min_tiles(int64_t tiles) { min_tiles.store(tiles, std::memory_order_relaxed); }
int64_t conv2d_int8_winograd_min_channels() { return min_int8_channels.load(std::memory_order_relaxed); }
void set_conv2d_int8_winograd_min_channels(int64_t channels) {
  min_int8_channels.store(channels, std::memory_order_relaxed);
}
bool conv2d_winograd_fused_input() { return fused_input.load(std::memory_order_relaxed); }
void set_conv2d_winograd_fused_input(bool fused) { fused_input.store(fused, std::memory_order_relaxed); }
int64_t conv2d_winograd_grouped_runs() { return grouped_runs.load(std::memory_order_relaxed); }

size_t conv2d_winograd_scratch_bytes(const Tensor& node) {
  if (!quant::is_block_type(node.src[1]->dtype) || !applies(node)) return 0;
  const Geometry g = geometry(node);
  if (!g.grouped) return 0;
  return max_over_qgemm_kernels([&](const kernels::QGemmMicroKernel& k) {
    return group_layout(g, k, qgemm_kept_block_scratch_bytes(k.mr)).total();
  });
}

size_t conv2d_winograd_shared_bytes(const Tensor& node) {
  if (!applies(node)) return 0;
  const Geometry g = geometry(node);
  return g.shared_bytes();
}

bool run_conv2d_winograd(const Tensor& node, ExecContext& ctx) {
  if (!applies(node)) return false;
  const Geometry g = geometry(node);
  // Sized from this geometry, not by asking the rule again (a concurrent set_conv2d_winograd_min_tiles could answer
  // differently in between).
  const size_t needed = g.shared_bytes();
  if (!ctx.shared || ctx.shared_bytes < needed) return false;
  const Tensor& w = *node.src[1];
  float* v = reinterpret_cast<float*>(ctx.shared) + g.u_floats();
  float* m = v + g.v_floats();
  if (quant::is_block_type(w.dtype)) return run_quantized(g, node, ctx, v, m);
  const float* u = nullptr;
  if (g.kept_filters) {
    if (!ctx.packed_weights) return false;
    const PackedWeights::Key key{w.data, w.dtype, g.co, g.ci, 0, PackedWeights::Form::kWinogradF2x2_3};
    u = reinterpret_cast<const float*>(ctx.packed_weights->find(key));
    if (!u) {
      float* kept = reinterpret_cast<float*>(
          ctx.packed_weights->add(key, static_cast<size_t>(kPositions * g.co * g.ci) * sizeof(float)));
      // Out of memory: the GEMM path needs none. (This call's bits then differ from a normal run's in the last
      // place, as the GEMM's would; only under memory pressure.)
      if (!kept) return false;
      transform_weights(g, w, kept, ctx);
      // The filters are only read through their transform from now on: a model file's pages can go.
      if (w.flags & kFlagMapped) release_mapped_pages(w.data, dtype_tensor_bytes(w.dtype, w.rank, w.shape));
      u = kept;
    }
  } else {
    float* shared_u = reinterpret_cast<float*>(ctx.shared);
    transform_weights(g, w, shared_u, ctx);
    u = shared_u;
  }
  for_each_chunk(g, node, m, ctx, [&](int64_t row0, int64_t rows, int64_t tiles) {
    const StridedB b = transformed_input(g, node, row0, rows, v, ctx);
    GemmProblem p;
    p.batch = kPositions;
    p.M = g.co;
    p.N = tiles;
    p.K = g.ci;
    p.a = u;
    p.a_batch_stride = g.co * g.ci;
    p.a_row_stride = g.ci;
    p.a_col_stride = 1;
    p.pack_b = pack_b_strided;
    p.pack_b_context = &b;
    p.c = m;
    p.c_batch_stride = g.co * tiles;
    p.ldc = tiles;
    run_gemm(p, ctx);
  });
  return true;
}

}  // namespace ddpm
