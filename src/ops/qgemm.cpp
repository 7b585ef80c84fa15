#include "ops/qgemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/align.h"
#include "core/half.h"
#include "io/mapped_file.h"
#include "quant/blocks.h"

namespace ddpm {
namespace {

constexpr int64_t kBlock = quant::kQuantBlock;
// K is summed in nearly equal blocks of at most kKcMax values (whole 32-value blocks). A task's quantised B block
// (kc × its columns, one byte each plus two floats per column and block) is kept within kBBlockBytes so it stays
// in L2 while every row panel of A streams over it; a short K lets the same bytes hold more columns, up to
// kMaxChunkCols. Unless the weight is unpacked once for all tasks (or kept: PackedWeights), each A panel is
// unpacked once per task and k block, so wide chunks also mean few unpacks.
constexpr int64_t kKcMax = 512;
constexpr int64_t kBBlockBytes = 512 * 1024;
constexpr int64_t kMaxChunkCols = 1024;
// B is packed as f32 (by the PackB callbacks) this many columns at a time, then quantised panel by panel.
constexpr int64_t kStageCols = 64;
constexpr int kMaxMr = 32, kMaxNr = 64;

// Cost model, in units of one int8 multiply-add of the micro-kernel (~1/64 cycle with VNNI). Packing one B element
// as f32 and quantising it costs about 40 of them, unpacking one A element from its blocks into a panel about 30,
// a task (waking, bookkeeping, ~1 µs) about 150000. kStraggler as in run_gemm: a late task stretches the end.
// With the weight unpacked once beforehand, a task still reads its rows of it, often from another core's cache:
// about 8.
// Gathering an already quantised B element (pack_quantized_b: a quarter of the bytes, no arithmetic) about 8.
constexpr double kQuantizeBCost = 40.0, kGatherQuantizedBCost = 8.0, kUnpackACost = 30.0, kReadACost = 8.0,
                 kTaskCost = 150000.0, kStraggler = 0.15;
// Below this many multiply-adds a second thread costs more than it saves.
constexpr double kMinParallelWork = 256.0 * 1024.0;


inline float load_element(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F16) return f16_to_f32(static_cast<const uint16_t*>(base)[index]);
  return static_cast<const float*>(base)[index];
}

int64_t stage_cols(int nr) { return std::max<int64_t>(nr, kStageCols / nr * nr); }

// Column panels one task may hold for a k block of kc values.
int64_t max_chunk_panels(int64_t kc, int nr) {
  const int64_t fit = kBBlockBytes / static_cast<int64_t>(kernels::qgemm_b_panel_bytes(kc, nr));
  return std::clamp<int64_t>(fit, 1, kMaxChunkCols / nr);
}

// Per-thread scratch, carved in this order; every part starts on a 64-byte boundary.
struct Scratch {
  float* b_stage;    // kKcMax × stage_cols(nr) f32, PackB's output for a few panels
  uint8_t* b_block;  // the task's quantised B panels for one k block
  int8_t* a_q;       // [kc/4][mr][4]
  float* a_d;        // [kc/32][mr]
  float* a_min;      // [kc/32][mr]
  int16_t* a_qsum;   // [kc/32][mr]
  float* a_lo_coef;  // [kc/32][mr]
  float* tile;       // mr × nr, partial tiles and transposed C
  float* residual;   // mr × nr, the residual of a partial tile
  float* row_bias;   // mr
  float* col_bias;   // kMaxChunkCols, zero past the chunk
};

struct ScratchLayout {
  size_t offsets[11];
  size_t total;
};

ScratchLayout scratch_layout(int mr, int nr) {
  const int64_t blocks = kKcMax / kBlock;
  const size_t sizes[11] = {
      static_cast<size_t>(kKcMax * stage_cols(nr)) * sizeof(float),
      static_cast<size_t>(kBBlockBytes) + kernels::qgemm_b_panel_bytes(kKcMax, nr),
      static_cast<size_t>(kKcMax * mr),
      static_cast<size_t>(blocks * mr) * sizeof(float),
      static_cast<size_t>(blocks * mr) * sizeof(float),
      static_cast<size_t>(blocks * mr) * sizeof(int16_t),
      static_cast<size_t>(blocks * mr) * sizeof(float),
      static_cast<size_t>(mr * nr) * sizeof(float),
      static_cast<size_t>(mr * nr) * sizeof(float),
      static_cast<size_t>(mr) * sizeof(float),
      static_cast<size_t>(kMaxChunkCols + nr) * sizeof(float),
  };
  ScratchLayout layout;
  size_t offset = 0;
  for (int i = 0; i < 11; ++i) {
    layout.offsets[i] = offset;
    offset += align_to_cache_line(sizes[i]);
  }
  layout.total = offset;
  return layout;
}

Scratch carve_scratch(uint8_t* base, int mr, int nr) {
  const ScratchLayout l = scratch_layout(mr, nr);
  Scratch s;
  s.b_stage = reinterpret_cast<float*>(base + l.offsets[0]);
  s.b_block = base + l.offsets[1];
  s.a_q = reinterpret_cast<int8_t*>(base + l.offsets[2]);
  s.a_d = reinterpret_cast<float*>(base + l.offsets[3]);
  s.a_min = reinterpret_cast<float*>(base + l.offsets[4]);
  s.a_qsum = reinterpret_cast<int16_t*>(base + l.offsets[5]);
  s.a_lo_coef = reinterpret_cast<float*>(base + l.offsets[6]);
  s.tile = reinterpret_cast<float*>(base + l.offsets[7]);
  s.residual = reinterpret_cast<float*>(base + l.offsets[8]);
  s.row_bias = reinterpret_cast<float*>(base + l.offsets[9]);
  s.col_bias = reinterpret_cast<float*>(base + l.offsets[10]);
  return s;
}

bool has_epilogue(const QGemmProblem& p) { return p.bias_row || p.bias_col || p.residual; }

// How many M-row matrices A holds: one per batch item with a_per_batch, else one for all.
int64_t a_matrices(const QGemmProblem& p) { return p.a_per_batch ? p.batch : 1; }

// With `unpack_once` the tasks read the weight unpacked beforehand: once in all, spread over the threads, unless
// it was `prepacked` by an earlier call.
double split_cost(const QGemmProblem& p, const QGemmPlan& plan, int mr, int nr, int64_t m_chunks, int64_t n_chunks,
                  int threads, bool unpack_once, bool prepacked) {
  const double k = static_cast<double>(plan.kc * plan.k_blocks);
  const double rows = static_cast<double>(plan.m_panels * mr), cols = static_cast<double>(plan.n_panels * nr);
  const double tasks = static_cast<double>(p.batch * m_chunks * n_chunks);
  const double unpack_per_task = unpack_once ? kReadACost : kUnpackACost;
  const double quantize_b = p.pack_quantized_b ? kGatherQuantizedBCost : kQuantizeBCost;
  const double total = static_cast<double>(p.batch) * k *
                           (rows * cols + quantize_b * cols * static_cast<double>(m_chunks) +
                            unpack_per_task * rows * static_cast<double>(n_chunks)) +
                       tasks * kTaskCost;
  const double max_rows = static_cast<double>(ceil_div(plan.m_panels, m_chunks) * mr);
  const double max_cols = static_cast<double>(ceil_div(plan.n_panels, n_chunks) * nr);
  const double largest = k * (max_rows * max_cols + quantize_b * max_cols + unpack_per_task * max_rows) + kTaskCost;
  const double rounds = std::ceil(tasks / threads);
  // The unpacking phase: its share of the work per thread, and one more round of waking the threads.
  const double unpack =
      unpack_once && !prepacked ? k * kUnpackACost * rows * static_cast<double>(a_matrices(p)) / threads + kTaskCost
                                : 0.0;
  return unpack + std::max(rounds * total / tasks, largest) + (threads > 1 ? kStraggler * largest : 0.0);
}

struct TaskRange {
  int64_t batch, n_begin, n_end, panel_begin, panel_end;
};

TaskRange task_range(const QGemmProblem& p, const QGemmPlan& plan, int nr, int64_t task) {
  TaskRange r;
  const int64_t m_chunk = task % plan.m_chunks;
  const int64_t n_chunk = (task / plan.m_chunks) % plan.n_chunks;
  r.batch = task / (plan.m_chunks * plan.n_chunks);
  split_range(plan.m_panels, plan.m_chunks, m_chunk, &r.panel_begin, &r.panel_end);
  int64_t first_panel, end_panel;
  split_range(plan.n_panels, plan.n_chunks, n_chunk, &first_panel, &end_panel);
  r.n_begin = first_panel * nr;
  r.n_end = std::min(p.N, end_panel * nr);
  return r;
}

// B[k0 : k0+kc, n_begin : n_end] of one batch item, quantised into consecutive panels of the kernel's layout. Rows
// k >= K (the padding of the last block) are zero, as the weights' padding is.
void quantize_b_block(const QGemmProblem& p, const kernels::QGemmMicroKernel& kernel, int64_t batch, int64_t k0,
                      int64_t kc, int64_t n_begin, int64_t n_end, const Scratch& s) {
  const int nr = kernel.nr;
  if (p.pack_quantized_b) {
    p.pack_quantized_b(p.pack_b_context, kernel, batch, k0, kc, n_begin, n_end - n_begin, s.b_block);
    return;
  }
  const int64_t k_valid = std::min(kc, p.K - k0);
  const int64_t width = stage_cols(nr);
  const size_t panel_bytes = kernels::qgemm_b_panel_bytes(kc, nr);
  for (int64_t n0 = n_begin; n0 < n_end; n0 += width) {
    const int64_t nc = std::min(width, n_end - n0);
    const int64_t panels = ceil_div(nc, nr);
    p.pack_b(p.pack_b_context, batch, k0, k_valid, n0, nc, nr, s.b_stage);
    if (k_valid < kc) {
      // Spread the k_valid-row panels to kc rows, last panel first so nothing is overwritten before it moves.
      for (int64_t j = panels - 1; j >= 0; --j) {
        float* panel = s.b_stage + j * kc * nr;
        std::memmove(panel, s.b_stage + j * k_valid * nr, static_cast<size_t>(k_valid * nr) * sizeof(float));
        std::memset(panel + k_valid * nr, 0, static_cast<size_t>((kc - k_valid) * nr) * sizeof(float));
      }
    }
    const int64_t first = (n0 - n_begin) / nr;
    for (int64_t j = 0; j < panels; ++j)
      kernel.quantize_b(kc, s.b_stage + j * kc * nr, s.b_block + (first + j) * panel_bytes);
  }
}

// One block of a weight row decoded straight into the panel: quad j (values 4j..4j+3) at q + j*quad_stride, the
// values quant::unpack_blocks gives (tests/test_qgemm.cpp checks the driver against it). Eight values at a time in
// a 64-bit word (SWAR): nibbles are masked out, `((x | 0x80…) - c…) ^ 0x80…` subtracts c from every byte without
// borrows crossing bytes (x - c as int8), and the block's sum comes from 16-bit lanes of byte pairs. This runs
// once per weight value and column chunk, so it must cost a small fraction of the value's multiply-adds.
constexpr uint64_t kHighBits = 0x8080808080808080ull, kLowNibbles = 0x0f0f0f0f0f0f0f0full,
                   kEvenBytes = 0x00ff00ff00ff00ffull;
inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
// The two 32-bit halves: values 4j..4j+3 and 4j+4..4j+7 (two quads).
inline void store_quads(int8_t* q, int64_t quad_stride, uint64_t v) {
  const uint32_t lo = static_cast<uint32_t>(v), hi = static_cast<uint32_t>(v >> 32);
  std::memcpy(q, &lo, 4);
  std::memcpy(q + quad_stride, &hi, 4);
}
inline uint64_t sub_bytes(uint64_t x, uint64_t c) { return ((x | kHighBits) - c) ^ kHighBits; }
// Unsigned bytes summed pairwise into four 16-bit lanes (each at most 510 per call).
inline uint64_t pair_sums(uint64_t u) { return (u & kEvenBytes) + ((u >> 8) & kEvenBytes); }
inline int32_t lane_total(uint64_t lanes) { return static_cast<int32_t>((lanes * 0x0001000100010001ull) >> 48); }

// Bits i of an 8-bit index -> bit 4 of byte i (q5_0's fifth bits, eight values at a time).
constexpr uint64_t spread_fifth_bits(uint64_t bits) {
  uint64_t out = 0;
  for (int i = 0; i < 8; ++i) out |= ((bits >> i) & 1u) << (8 * i + 4);
  return out;
}
struct FifthBitTable {
  uint64_t entries[256];
  constexpr FifthBitTable() : entries() {
    for (int i = 0; i < 256; ++i) entries[i] = spread_fifth_bits(static_cast<uint64_t>(i));
  }
};
constexpr FifthBitTable kFifthBits;

inline uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

// Returns Σ of the block's 32 values; *d and *min get the stored f16 scale and minimum (0 for types without).
int32_t decode_block(DType type, const uint8_t* block, int8_t* q, int64_t quad_stride, uint16_t* d, uint16_t* min) {
  *d = load_u16(block);
  *min = 0;
  uint64_t lanes = 0;
  switch (type) {
    case DType::Q8_0:
      for (int i = 0; i < 4; ++i) {
        const uint64_t v = load_u64(block + 2 + 8 * i);
        store_quads(q + 2 * i * quad_stride, quad_stride, v);
        lanes += pair_sums(v ^ kHighBits);  // q + 128
      }
      return lane_total(lanes) - 128 * 32;
    case DType::Q4_0:
    case DType::Q4_1: {
      const bool offset = type == DType::Q4_0;
      const uint8_t* qs = block + (offset ? 2 : 4);
      if (!offset) *min = load_u16(block + 2);
      for (int i = 0; i < 2; ++i) {
        const uint64_t packed = load_u64(qs + 8 * i);
        const uint64_t lo = packed & kLowNibbles, hi = (packed >> 4) & kLowNibbles;
        lanes += pair_sums(lo) + pair_sums(hi);
        // Low nibbles are values 8i..8i+7, high nibbles values 16+8i..
        store_quads(q + 2 * i * quad_stride, quad_stride, offset ? sub_bytes(lo, 0x0808080808080808ull) : lo);
        store_quads(q + (4 + 2 * i) * quad_stride, quad_stride, offset ? sub_bytes(hi, 0x0808080808080808ull) : hi);
      }
      return lane_total(lanes) - (offset ? 8 * 32 : 0);
    }
    case DType::Q5_0: {
      uint8_t high_bits[4];
      std::memcpy(high_bits, block + 2, 4);
      const uint8_t* qs = block + 6;
      for (int i = 0; i < 2; ++i) {
        const uint64_t packed = load_u64(qs + 8 * i);
        const uint64_t lo = (packed & kLowNibbles) | kFifthBits.entries[high_bits[i]];
        const uint64_t hi = ((packed >> 4) & kLowNibbles) | kFifthBits.entries[high_bits[2 + i]];
        lanes += pair_sums(lo) + pair_sums(hi);
        store_quads(q + 2 * i * quad_stride, quad_stride, sub_bytes(lo, 0x1010101010101010ull));
        store_quads(q + (4 + 2 * i) * quad_stride, quad_stride, sub_bytes(hi, 0x1010101010101010ull));
      }
      return lane_total(lanes) - 16 * 32;
    }
    default:
      DDPM_ASSERT(false && "qgemm: not a block type");
      return 0;
  }
}

using WidenBlockScales = decltype(kernels::KernelTable::widen_block_scales);

// Where an unpacked A panel goes: values [blocks*8][mr][4], then per block and row the scale, minimum (null for
// types without), Σq and lo_coef (QGemmPanelA), each [blocks][mr]. A kept or shared panel (d16 set) holds the
// scale and minimum as their stored f16 bits and no lo_coef, a sixth less memory: run_task widens them into
// scratch for the k block at hand (expand_panel), the same floats either way.
struct APanel {
  int8_t* q;
  float* d;
  float* min;
  int16_t* qsum;
  float* lo_coef;
  uint16_t* d16 = nullptr;
  uint16_t* min16 = nullptr;
};

// Rows m0 .. m0+mr of A's matrix starting at row `first_row` (0, or b·M for batch item b with a_per_batch), blocks
// [k0/32, (k0+kc)/32), into the kernel's panel layout. Rows past M repeat the last row: they only feed tile rows
// that are never copied out.
void unpack_a_panel(const QGemmProblem& p, int mr, size_t row_bytes, int64_t first_row, int64_t m0, int64_t k0,
                    int64_t kc, const APanel& out) {
  const int64_t blocks = kc / kBlock;
  const size_t block_bytes = dtype_traits(p.a_dtype).block_bytes;
  const int64_t quad_stride = 4 * mr, block_stride = 8 * quad_stride;
  const int64_t span = blocks * static_cast<int64_t>(block_bytes);
  for (int m = 0; m < mr; ++m) {
    const int64_t row = first_row + std::min<int64_t>(m0 + m, p.M - 1);
    const uint8_t* src = static_cast<const uint8_t*>(p.a) + row * row_bytes + (k0 / kBlock) * block_bytes;
    // The weights stream from memory once per column chunk, a few hundred bytes from each of mr rows far apart:
    // fetch the next panel's piece of this row while this one is decoded, or every row waits for DRAM.
    if (m0 + mr + m < p.M) {
      for (int64_t offset = 0; offset < span; offset += 64) __builtin_prefetch(src + mr * row_bytes + offset);
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i = b * mr + m;
      uint16_t d = 0, min = 0;
      const int32_t sum =
          decode_block(p.a_dtype, src + b * block_bytes, out.q + b * block_stride + m * 4, quad_stride, &d, &min);
      out.qsum[i] = static_cast<int16_t>(sum);  // |sum| <= 32·128 (q8_0 may hold -128)
      if (out.d16) {
        out.d16[i] = d;
        if (out.min16) out.min16[i] = min;
        continue;
      }
      out.d[i] = f16_to_f32(d);
      if (out.min) out.min[i] = f16_to_f32(min);
      out.lo_coef[i] = kernels::block_lo_coefficient(out.d[i], out.qsum[i], f16_to_f32(min), out.min != nullptr);
    }
  }
}

// The whole weight unpacked once (run_qgemm with ExecContext::shared or PackedWeights): panel after panel over all
// of the padded K, in four regions (values, f16 scales, f16 minima — empty for types without —, sums): 1.125 bytes
// per weight (q4_1: 1.19). A k block of a panel is a contiguous piece of it.
struct SharedALayout {
  int64_t padded_k = 0, blocks = 0, rows = 0;
  bool has_min = false;
  size_t offsets[4] = {};
  size_t total = 0;
};

SharedALayout shared_a_layout(int64_t m_panels, int mr, int64_t padded_k, DType type) {
  SharedALayout l;
  l.padded_k = padded_k;
  l.blocks = padded_k / kBlock;
  l.rows = m_panels * mr;
  l.has_min = type == DType::Q4_1;
  const size_t per_block = static_cast<size_t>(l.rows * l.blocks);
  const size_t sizes[4] = {static_cast<size_t>(l.rows * padded_k), per_block * sizeof(uint16_t),
                           l.has_min ? per_block * sizeof(uint16_t) : 0, per_block * sizeof(int16_t)};
  for (int i = 0; i < 4; ++i) {
    l.offsets[i] = l.total;
    l.total += align_to_cache_line(sizes[i]);
  }
  return l;
}

// Panel `panel` of the shared weight, from k block start k0 on.
APanel shared_a_panel(const uint8_t* const_base, const SharedALayout& l, int mr, int64_t panel, int64_t k0) {
  uint8_t* base = const_cast<uint8_t*>(const_base);  // APanel is written by the unpacker, read by the tasks
  const int64_t first = panel * mr * l.blocks + (k0 / kBlock) * mr;  // [panel][blocks][mr]
  APanel a{};
  a.q = reinterpret_cast<int8_t*>(base + l.offsets[0]) + panel * mr * l.padded_k + k0 * mr;
  a.d16 = reinterpret_cast<uint16_t*>(base + l.offsets[1]) + first;
  a.min16 = l.has_min ? reinterpret_cast<uint16_t*>(base + l.offsets[2]) + first : nullptr;
  a.qsum = reinterpret_cast<int16_t*>(base + l.offsets[3]) + first;
  return a;
}

// A shared or kept panel's k block as the kernel reads it: its f16 scales and minima widened by the level's kernel
// into the task's scratch, lo_coef computed there (`count` = blocks · mr values).
void expand_panel(const APanel& compact, int64_t count, WidenBlockScales widen, const Scratch& s, APanel* out) {
  out->q = compact.q;
  out->qsum = compact.qsum;
  out->d = s.a_d;
  out->lo_coef = s.a_lo_coef;
  out->min = compact.min16 ? s.a_min : nullptr;
  widen(count, compact.d16, compact.min16, compact.qsum, out->d, out->min, out->lo_coef);
}

// An unpacked or expanded panel as the kernel reads it.
kernels::QGemmPanelA kernel_panel(const APanel& panel, DType type) {
  kernels::QGemmPanelA a;
  a.q = panel.q;
  a.d = panel.d;
  a.min = type == DType::Q4_1 ? panel.min : nullptr;
  a.qsum = panel.qsum;
  a.lo_coef = panel.lo_coef;
  a.small_q = type != DType::Q8_0;
  return a;
}

// The problem and the plan are copied so that tasks on other threads do not keep reading lines of the caller's
// stack (see run_gemm).
// `unpacked`: the whole weight unpacked beforehand (shared_a_layout), or null to unpack each panel here.
void run_task(const QGemmProblem& problem, const QGemmPlan& shared_plan, const kernels::QGemmMicroKernel& shared_kernel,
              const TaskRange& r, const Scratch& s, const uint8_t* unpacked,
              WidenBlockScales widen) {
  const QGemmProblem p = problem;
  const QGemmPlan plan = shared_plan;
  const kernels::QGemmMicroKernel kernel = shared_kernel;
  const int mr = kernel.mr, nr = kernel.nr;
  const int64_t nc = r.n_end - r.n_begin;
  const int64_t padded_k = dtype_padded_row(p.a_dtype, p.K);
  const size_t row_bytes = dtype_row_bytes(p.a_dtype, padded_k);
  const bool has_min = p.a_dtype == DType::Q4_1;
  const bool epilogue = has_epilogue(p);
  float* c = p.c + r.batch * p.c_batch_stride;
  const float* residual = p.residual ? p.residual + r.batch * p.residual_batch_stride : nullptr;
  if (p.bias_col) {
    for (int64_t n = 0; n < nc; ++n) s.col_bias[n] = load_element(p.bias_col, p.bias_dtype, r.n_begin + n);
    for (int64_t n = nc; n < ceil_div(nc, nr) * nr; ++n) s.col_bias[n] = 0.0f;
  }
  const SharedALayout layout =
      unpacked ? shared_a_layout(a_matrices(p) * plan.m_panels, mr, padded_k, p.a_dtype) : SharedALayout();
  for (int64_t block = 0; block < plan.k_blocks; ++block) {
    const int64_t k0 = block * plan.kc, kc = std::min(plan.kc, padded_k - k0);
    const bool accumulate = block > 0, last = block + 1 == plan.k_blocks;
    const size_t panel_bytes = kernels::qgemm_b_panel_bytes(kc, nr);
    quantize_b_block(p, kernel, r.batch, k0, kc, r.n_begin, r.n_end, s);
    for (int64_t panel = r.panel_begin; panel < r.panel_end; ++panel) {
      const int64_t m0 = panel * mr;
      const int mr_valid = static_cast<int>(std::min<int64_t>(mr, p.M - m0));
      APanel unpacked_panel{s.a_q, s.a_d, has_min ? s.a_min : nullptr, s.a_qsum, s.a_lo_coef};
      if (unpacked) {
        const int64_t global_panel = (p.a_per_batch ? r.batch * plan.m_panels : 0) + panel;
        expand_panel(shared_a_panel(unpacked, layout, mr, global_panel, k0), kc / kBlock * mr, widen, s,
                     &unpacked_panel);
      } else {
        unpack_a_panel(p, mr, row_bytes, p.a_per_batch ? r.batch * p.M : 0, m0, k0, kc, unpacked_panel);
      }
      const kernels::QGemmPanelA a = kernel_panel(unpacked_panel, p.a_dtype);
      if (last && p.bias_row) {
        for (int m = 0; m < mr; ++m)
          s.row_bias[m] = m < mr_valid ? load_element(p.bias_row, p.bias_dtype, m0 + m) : 0.0f;
      }
      for (int64_t j = 0; j * nr < nc; ++j) {
        const int64_t n0 = r.n_begin + j * nr;
        const int nr_valid = static_cast<int>(std::min<int64_t>(nr, r.n_end - n0));
        const uint8_t* b_panel = s.b_block + j * panel_bytes;
        kernels::GemmEpilogue fused;
        if (last && epilogue) {
          fused.row_bias = p.bias_row ? s.row_bias : nullptr;
          fused.col_bias = p.bias_col ? s.col_bias + j * nr : nullptr;
          if (residual) {
            fused.residual = residual + m0 * p.residual_ld + n0;
            fused.residual_ld = p.residual_ld;
          }
        }
        const kernels::GemmEpilogue* fused_ptr = last && epilogue ? &fused : nullptr;
        float* c_tile = c + m0 * p.ldc + n0 * p.c_col_stride;
        // The output is not streamed (ExecContext::stream_outputs): with the cores far apart that measured ~2 %
        // slower for the direct q8_0 path and no faster for the others (session 14).
        if (mr_valid == mr && nr_valid == nr && p.c_col_stride == 1) {
          kernel.run(kc, a, b_panel, c_tile, p.ldc, accumulate, fused_ptr);
          continue;
        }
        // Partial tile or transposed C: the same kernel call on a full tile in scratch, then the valid part out.
        if (accumulate) {
          for (int m = 0; m < mr_valid; ++m) {
            for (int n = 0; n < nr_valid; ++n) s.tile[m * nr + n] = c_tile[m * p.ldc + n * p.c_col_stride];
          }
        }
        if (fused.residual) {
          for (int m = 0; m < mr; ++m) {
            for (int n = 0; n < nr; ++n) {
              s.residual[m * nr + n] = m < mr_valid && n < nr_valid ? fused.residual[m * p.residual_ld + n] : 0.0f;
            }
          }
          fused.residual = s.residual;
          fused.residual_ld = nr;
        }
        kernel.run(kc, a, b_panel, s.tile, nr, accumulate, fused_ptr);
        for (int m = 0; m < mr_valid; ++m) {
          for (int n = 0; n < nr_valid; ++n) c_tile[m * p.ldc + n * p.c_col_stride] = s.tile[m * nr + n];
        }
      }
    }
  }
}

}  // namespace

QGemmPlan plan_qgemm(const QGemmProblem& p, const kernels::QGemmMicroKernel& kernel, int threads,
                     AUnpacking unpacking) {
  const bool prepacked = unpacking == AUnpacking::kPrepacked;
  const bool can_unpack_once = unpacking != AUnpacking::kPerTask;
  QGemmPlan plan;
  const QGemmKBlocks k_blocks = qgemm_k_blocks(p.K);
  plan.k_blocks = k_blocks.count;
  plan.kc = k_blocks.kc;
  plan.m_panels = ceil_div(p.M, kernel.mr);
  plan.n_panels = ceil_div(p.N, kernel.nr);
  // The kernel computes whole nr-column panels: a batch-1 linear (N = 1) costs nr columns' work, which is what
  // decides whether a second thread pays.
  const double work = static_cast<double>(p.batch) * static_cast<double>(p.M) *
                      static_cast<double>(plan.n_panels * kernel.nr) * static_cast<double>(p.K);
  plan.threads = work < kMinParallelWork ? 1 : std::max(1, threads);
  const int64_t widest = std::min(max_chunk_panels(plan.kc, kernel.nr), plan.n_panels);
  const int64_t max_m_chunks = plan.threads == 1 ? 1 : std::min<int64_t>({plan.m_panels, 2 * plan.threads, 64});
  double best = std::numeric_limits<double>::infinity();
  for (bool once : {false, true}) {
    if ((once && !can_unpack_once) || (!once && prepacked)) continue;
    int64_t previous_n_chunks = 0;
    for (int64_t chunk_panels = widest; chunk_panels >= 1; --chunk_panels) {
      const int64_t n_chunks = ceil_div(plan.n_panels, chunk_panels);
      if (n_chunks == previous_n_chunks) continue;
      previous_n_chunks = n_chunks;
      // Unpacking once only pays when a panel would otherwise be unpacked more than once.
      if (once && !prepacked && (p.batch / a_matrices(p)) * n_chunks == 1) continue;
      for (int64_t m_chunks = 1; m_chunks <= max_m_chunks; ++m_chunks) {
        const double cost =
            split_cost(p, plan, kernel.mr, kernel.nr, m_chunks, n_chunks, plan.threads, once, prepacked);
        if (cost < best * (1.0 - 1e-9)) {
          best = cost;
          plan.n_chunks = n_chunks;
          plan.m_chunks = m_chunks;
          plan.unpack_once = once;
        }
      }
      if (plan.threads == 1) break;  // one thread: the widest chunks are best
    }
  }
  plan.tasks = p.batch * plan.n_chunks * plan.m_chunks;
  if (plan.tasks < plan.threads) plan.threads = static_cast<int>(std::max<int64_t>(1, plan.tasks));
  return plan;
}

QGemmKBlocks qgemm_k_blocks(int64_t K) {
  const int64_t blocks = ceil_div(K, kBlock);
  QGemmKBlocks k;
  k.count = std::max<int64_t>(1, ceil_div(blocks * kBlock, kKcMax));
  k.kc = ceil_div(blocks, k.count) * kBlock;
  return k;
}

size_t qgemm_scratch_bytes(const kernels::KernelTable& kernels) {
  return scratch_layout(kernels.qgemm.mr, kernels.qgemm.nr).total;
}

size_t qgemm_scratch_bytes_max() {
  return max_over_qgemm_kernels([](const kernels::QGemmMicroKernel& k) { return scratch_layout(k.mr, k.nr).total; });
}

namespace {
PackedWeights::Key kept_key(const QGemmProblem& p, int mr) {
  return PackedWeights::Key{p.a_key ? p.a_key : p.a, p.a_dtype, a_matrices(p) * p.M, dtype_padded_row(p.a_dtype, p.K),
                            mr, p.a_form};
}

size_t a_bytes(const QGemmProblem& p) {
  return static_cast<size_t>(a_matrices(p) * p.M) * dtype_row_bytes(p.a_dtype, dtype_padded_row(p.a_dtype, p.K));
}

// Every panel of A (all its matrices) unpacked into `into` (shared_a_layout), in `parts` tasks.
void unpack_all_panels(const QGemmProblem& p, ExecContext& ctx, int parts_wanted, uint8_t* into) {
  DDPM_ASSERT(p.a != nullptr);
  const int mr = ctx.kernels.qgemm.mr;
  const int64_t padded_k = dtype_padded_row(p.a_dtype, p.K);
  const int64_t m_panels = ceil_div(p.M, mr), panels = a_matrices(p) * m_panels;
  const SharedALayout layout = shared_a_layout(panels, mr, padded_k, p.a_dtype);
  const size_t row_bytes = dtype_row_bytes(p.a_dtype, padded_k);
  auto unpack_panels = [&](int64_t part, int64_t parts) {
    int64_t begin, end;
    split_range(panels, parts, part, &begin, &end);
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t matrix = panel / m_panels, local = panel % m_panels;
      unpack_a_panel(p, mr, row_bytes, matrix * p.M, local * mr, 0, padded_k,
                     shared_a_panel(into, layout, mr, panel, 0));
    }
  };
  const int64_t parts = std::min<int64_t>(panels, parts_wanted);
  if (parts <= 1) {
    unpack_panels(0, 1);
  } else {
    ctx.pool.run(parts, [&](int64_t part, int) { unpack_panels(part, parts); });
  }
}
}  // namespace

bool qgemm_panels_kept(const QGemmProblem& p, const ExecContext& ctx) {
  return p.a_constant && ctx.packed_weights && ctx.packed_weights->find(kept_key(p, ctx.kernels.qgemm.mr));
}

bool keep_qgemm_panels(const QGemmProblem& p, ExecContext& ctx) {
  if (!p.a_constant || !ctx.packed_weights) return false;
  const int mr = ctx.kernels.qgemm.mr;
  const PackedWeights::Key key = kept_key(p, mr);
  if (ctx.packed_weights->find(key)) return true;
  const size_t bytes =
      shared_a_layout(a_matrices(p) * ceil_div(p.M, mr), mr, dtype_padded_row(p.a_dtype, p.K), p.a_dtype).total;
  uint8_t* into = ctx.packed_weights->add(key, bytes);
  if (!into) return false;
  unpack_all_panels(p, ctx, ctx.pool.size(), into);
  if (p.a_mapped) release_mapped_pages(p.a, a_bytes(p));
  return true;
}

const uint8_t* qgemm_kept_panels(const QGemmProblem& p, const ExecContext& ctx) {
  if (!p.a_constant || !ctx.packed_weights) return nullptr;
  return ctx.packed_weights->find(kept_key(p, ctx.kernels.qgemm.mr));
}

// A k block's widened scales, minima and lo coefficients (expand_panel), for at most kKcMax values.
size_t qgemm_kept_block_scratch_bytes(int mr) {
  return 3 * align_to_cache_line(static_cast<size_t>(kKcMax / kBlock * mr) * sizeof(float));
}

void qgemm_kept_block(const QGemmProblem& p, const uint8_t* kept, const kernels::KernelTable& kernels,
                      int64_t batch, int64_t panel_begin, int64_t panel_end, const uint8_t* b_panels,
                      int64_t n_panels, float* c, int64_t ldc, uint8_t* scratch) {
  const kernels::QGemmMicroKernel& kernel = kernels.qgemm;
  const int mr = kernel.mr, nr = kernel.nr;
  const int64_t padded_k = dtype_padded_row(p.a_dtype, p.K), m_panels = ceil_div(p.M, mr);
  const SharedALayout layout = shared_a_layout(a_matrices(p) * m_panels, mr, padded_k, p.a_dtype);
  const QGemmKBlocks k_blocks = qgemm_k_blocks(p.K);
  const size_t part = align_to_cache_line(static_cast<size_t>(kKcMax / kBlock * mr) * sizeof(float));
  Scratch s{};
  s.a_d = reinterpret_cast<float*>(scratch);
  s.a_min = reinterpret_cast<float*>(scratch + part);
  s.a_lo_coef = reinterpret_cast<float*>(scratch + 2 * part);
  for (int64_t block = 0; block < k_blocks.count; ++block) {
    const int64_t k0 = block * k_blocks.kc, kc = std::min(k_blocks.kc, padded_k - k0);
    const size_t panel_bytes = kernels::qgemm_b_panel_bytes(kc, nr);
    const uint8_t* b_block = b_panels + block * n_panels * kernels::qgemm_b_panel_bytes(k_blocks.kc, nr);
    for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
      const int64_t global_panel = (p.a_per_batch ? batch * m_panels : 0) + panel;
      APanel expanded{};
      expand_panel(shared_a_panel(kept, layout, mr, global_panel, k0), kc / kBlock * mr, kernels.widen_block_scales, s,
                   &expanded);
      const kernels::QGemmPanelA a = kernel_panel(expanded, p.a_dtype);
      float* c_row = c + (panel - panel_begin) * mr * ldc;
      for (int64_t j = 0; j < n_panels; ++j) {
        kernel.run(kc, a, b_block + j * panel_bytes, c_row + j * nr, ldc, block > 0, nullptr);
      }
    }
  }
}

void run_qgemm(const QGemmProblem& p, ExecContext& ctx) {
  const kernels::QGemmMicroKernel& kernel = ctx.kernels.qgemm;
  const int mr = kernel.mr, nr = kernel.nr;
  DDPM_ASSERT(mr <= kMaxMr && nr <= kMaxNr && kernel.run && kernel.quantize_b);
  DDPM_ASSERT(quant::is_block_type(p.a_dtype));
  DDPM_ASSERT(!p.residual || p.c_col_stride == 1);
  DDPM_ASSERT(ctx.scratch_bytes >= qgemm_scratch_bytes(ctx.kernels));
  DDPM_ASSERT(p.pack_quantized_b ? p.K % kBlock == 0 : p.pack_b != nullptr);
  if (p.batch <= 0 || p.M <= 0 || p.N <= 0) return;
  if (p.K <= 0) {
    // No weights to multiply: C is the epilogue alone.
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t m = 0; m < p.M; ++m) {
        for (int64_t n = 0; n < p.N; ++n) {
          float v = 0.0f;
          if (p.bias_row) v = v + load_element(p.bias_row, p.bias_dtype, m);
          if (p.bias_col) v = v + load_element(p.bias_col, p.bias_dtype, n);
          if (p.residual) v = v + p.residual[b * p.residual_batch_stride + m * p.residual_ld + n];
          p.c[b * p.c_batch_stride + m * p.ldc + n * p.c_col_stride] = v;
        }
      }
    }
    return;
  }
  // A weight that several tasks' column chunks (or batch items) would each unpack again is unpacked once, by all
  // threads, into the shared buffer, and read from there; a constant one is unpacked at its first use and kept.
  const int64_t padded_k = dtype_padded_row(p.a_dtype, p.K);
  const int64_t m_panels = ceil_div(p.M, mr), matrices = a_matrices(p);
  const SharedALayout layout = shared_a_layout(matrices * m_panels, mr, padded_k, p.a_dtype);
  const uint8_t* unpacked = nullptr;
  uint8_t* unpack_into = nullptr;
  PackedWeights* packs = p.a_constant ? ctx.packed_weights : nullptr;
  const PackedWeights::Key key = kept_key(p, mr);
  if (packs) {
    unpacked = packs->find(key);
    if (!unpacked) unpack_into = packs->add(key, layout.total);  // out of memory: decode per op, as without
  }
  AUnpacking unpacking = AUnpacking::kPerTask;
  if (unpacked || unpack_into) {
    unpacking = AUnpacking::kPrepacked;
  } else if (ctx.shared && ctx.shared_bytes >= layout.total) {
    unpacking = AUnpacking::kCanUnpackOnce;
  }
  const QGemmPlan plan = plan_qgemm(p, kernel, ctx.pool.size(), unpacking);
  DDPM_ASSERT(!unpack_into || plan.unpack_once);  // a kept entry must be filled now
  if (plan.unpack_once && !unpacked) {
    if (!unpack_into) unpack_into = ctx.shared;
    unpack_all_panels(p, ctx, std::max(plan.threads, ctx.pool.size()), unpack_into);
    unpacked = unpack_into;
    if (unpack_into != ctx.shared && p.a_mapped) release_mapped_pages(p.a, a_bytes(p));
  }
  if (plan.threads == 1) {
    const Scratch s = carve_scratch(ctx.scratch[0], mr, nr);
    for (int64_t task = 0; task < plan.tasks; ++task)
      run_task(p, plan, kernel, task_range(p, plan, nr, task), s, unpacked, ctx.kernels.widen_block_scales);
    return;
  }
  ctx.pool.run(plan.tasks, [&](int64_t task, int thread) {
    run_task(p, plan, kernel, task_range(p, plan, nr, task), carve_scratch(ctx.scratch[thread], mr, nr), unpacked,
             ctx.kernels.widen_block_scales);
  });
}

bool PackedWeights::Key::operator<(const Key& o) const {
  const auto address = reinterpret_cast<uintptr_t>(weight), other = reinterpret_cast<uintptr_t>(o.weight);
  return std::tie(address, type, rows, padded_k, mr, form) < std::tie(other, o.type, o.rows, o.padded_k, o.mr, o.form);
}

const uint8_t* PackedWeights::find(const Key& key) const {
  const auto it = panels_.find(key);
  return it == panels_.end() ? nullptr : it->second.get();
}

uint8_t* PackedWeights::add(const Key& key, size_t bytes) {
  auto* data = static_cast<uint8_t*>(std::aligned_alloc(64, align_to_cache_line(std::max<size_t>(bytes, 1))));
  if (!data) return nullptr;
  panels_[key].reset(data);
  bytes_ += bytes;
  return data;
}

size_t qgemm_shared_bytes_max(int64_t M, int64_t K, int64_t matrices) {
  const int64_t padded_k = ceil_div(std::max<int64_t>(K, 1), kBlock) * kBlock;
  return max_over_qgemm_kernels([&](const kernels::QGemmMicroKernel& k) -> size_t {
    return k.mr > 0 ? shared_a_layout(matrices * ceil_div(M, k.mr), k.mr, padded_k, DType::Q4_1).total : 0;
  });
}

}  // namespace ddpm
