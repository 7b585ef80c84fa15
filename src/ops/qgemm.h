// The quantised GEMM driver: C[M×N] = A[M×K] · B[K×N] (+ bias) (+ residual), where A is a block-quantised weight
// (q8_0, q4_0, q4_1, q5_0: rows of K values padded with zeros to a whole number of 32-value blocks) and B comes
// from the same PackB callbacks as run_gemm (src/ops/gemm.h), as f32 panels that the driver quantises to 8 bits per
// column and block of 32 k values (kernels/registry.h, QGemmMicroKernel, has the exact arithmetic), or already
// quantised by the caller (pack_quantized_b: conv2d with tap-major weights quantises its input once per op, 8-bit
// Winograd its transformed input as it makes it).
//
// Work is cut into tasks of (batch item, chunk of columns, chunk of rows). A task quantises its columns' B block
// once per k block and multiplies it with MR-row panels of A decoded from the weight rows into int8 values (those
// quant::unpack_blocks gives) plus per-block scales and sums: decoded right before use, or once per op into a
// shared buffer, or kept across calls (PackedWeights); weights are never dequantised to floats. K blocks are whole
// 32-value blocks and every output element is the same chain of per-block adds whatever the blocking, so the
// result does not depend on the thread count, the split or where the panels came from.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <tuple>

#include "ops/gemm.h"

namespace ddpm {

// Constant block-typed weights decoded into the micro-kernels' panel layout (QGemmPanelA) once, at their first
// use, and kept for every later compute() of the graph that owns them: the decoding otherwise costs about a seventh
// of a quantised U-Net forward on one thread. The panels take 1.125 bytes per weight (int8 values plus the f16
// scale and an int16 sum per 32; q4_1 also its f16 minima: 1.19), against 1.06 for q8_0 and 0.56 for q4_0 stored;
// each task widens a panel's scales for the k block at hand. With a_mapped the stored bytes leave memory once
// decoded. Keyed by the weight's address (or the caller's QGemmProblem::a_key) and the kernel's row count (a
// forced ISA level packs again). Also holds frozen f32/f16 filters transformed for Winograd
// (Form::kWinogradF2x2_3) and block-typed ones as 8-bit panels (Form::kWinogradQ8Panels, conv_winograd.cpp). Not
// thread-safe: run_qgemm and run_conv2d_winograd are called by one thread at a time per graph.
class PackedWeights {
 public:
  // Which derived form of a weight an entry holds.
  enum class Form : uint8_t {
    kQGemmPanels,     // block types decoded into QGemmPanelA panels (run_qgemm)
    kWinogradF2x2_3,  // f32/f16 3×3 filters transformed for Winograd F(2×2, 3×3), [16][Co][Ci] f32 (conv_winograd.cpp)
    kWinogradQ8Panels,  // block-typed 3×3 filters transformed for Winograd, as q8_0, decoded into QGemmPanelA panels
  };
  // What identifies a weight's derived form: its bytes, its type and shape, and the kernel's rows per panel.
  struct Key {
    const void* weight;
    DType type;
    int64_t rows, padded_k;
    int mr;
    Form form = Form::kQGemmPanels;
    bool operator<(const Key& o) const;
  };
  const uint8_t* find(const Key& key) const;
  // Room for a weight's panels (64-byte aligned), owned by this object; null when out of memory. The caller fills
  // it before the next find().
  uint8_t* add(const Key& key, size_t bytes);
  size_t bytes() const { return bytes_; }
  size_t count() const { return panels_.size(); }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::map<Key, std::unique_ptr<uint8_t[], Free>> panels_;
  size_t bytes_ = 0;
};

struct QGemmProblem {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  // A row m: the bytes at a + m * dtype_row_bytes(a_dtype, dtype_padded_row(a_dtype, K)); shared by all batch items
  // unless a_per_batch.
  const void* a = nullptr;
  DType a_dtype = DType::Q8_0;
  PackB pack_b = nullptr;
  const void* pack_b_context = nullptr;
  // Instead of pack_b: B already quantised by the caller (conv2d with tap-major weights quantises each input pixel
  // once per op; 8-bit Winograd its transformed input), written straight into `panels`: ceil(nc / kernel.nr)
  // consecutive panels of qgemm_b_panel_bytes(kc, kernel.nr) bytes for columns [n0, n0 + nc) and k values
  // [k0, k0 + kc) (K a multiple of 32; run_qgemm asks for k0 and kc multiples of 32 and n0 a multiple of nr), the
  // values, scales, sums and minima kernel.quantize_b gives for the same B, except that a padding column's or
  // all-zero block's values may be any bytes (its scale, sum and minimum are 0, so they add nothing).
  void (*pack_quantized_b)(const void* context, const kernels::QGemmMicroKernel& kernel, int64_t batch, int64_t k0,
                           int64_t kc, int64_t n0, int64_t nc, uint8_t* panels) = nullptr;
  // C element (m, n) of batch item b: c + b*c_batch_stride + m*ldc + n*c_col_stride.
  float* c = nullptr;
  int64_t c_batch_stride = 0, ldc = 0, c_col_stride = 1;
  // Epilogue, applied once all of K is summed: C += bias_row[m] or bias_col[n] (f32|f16), C += residual.
  const void* bias_row = nullptr;
  const void* bias_col = nullptr;
  DType bias_dtype = DType::F32;
  const float* residual = nullptr;  // element (m, n) at residual + b*residual_batch_stride + m*residual_ld + n
  int64_t residual_batch_stride = 0, residual_ld = 0;
  // Batch item b multiplies rows [b·M, (b+1)·M) of A (Winograd's 16 transformed-filter matrices, one per
  // position); otherwise every batch item multiplies rows [0, M).
  bool a_per_batch = false;
  // What names A's kept panels in ExecContext::packed_weights: A's own address unless a_key is set. A caller whose
  // A is a transient derived from a weight names the weight and the form instead, and once the panels are kept
  // (qgemm_panels_kept) may leave `a` null.
  const void* a_key = nullptr;
  PackedWeights::Form a_form = PackedWeights::Form::kQGemmPanels;
  // A is a graph parameter, constant from one compute() to the next: its unpacked panels may be kept in
  // ExecContext::packed_weights and reused instead of decoded again.
  bool a_constant = false;
  // A's bytes are a read-only file mapping: once kept unpacked, its pages are handed back to the OS (they are only
  // read again, from the file, if something else touches them), so a packed model is not in memory twice.
  bool a_mapped = false;
};

// a_constant and a_mapped from the weight tensor's flags (kFlagParam, kFlagMapped).
inline void set_weight_flags(const Tensor& weight, QGemmProblem* p) {
  p->a_constant = (weight.flags & kFlagParam) != 0;
  p->a_mapped = p->a_constant && (weight.flags & kFlagMapped) != 0;
}

// How run_qgemm cuts the work: K (padded to 32) in k_blocks blocks of kc (multiples of 32, the last may be
// shorter); per batch item n_chunks chunks of the n_panels column panels and m_chunks of the m_panels row panels;
// one task per (batch item, column chunk, row chunk), row chunk fastest. Every row chunk quantises its columns again,
// so the plan prefers splitting columns.
struct QGemmPlan {
  int64_t kc = 0, k_blocks = 0;
  int64_t m_panels = 0, n_panels = 0;
  int64_t m_chunks = 1, n_chunks = 1;
  int64_t tasks = 0;
  int threads = 1;
  bool unpack_once = false;  // tasks read whole-weight panels: unpacked before them (ExecContext::shared) or kept
};
// How the weight's panels can be had: decoded by each task that needs them, or also decoded once before the tasks
// into ExecContext::shared (the plan says whether that is cheaper), or already decoded (PackedWeights).
enum class AUnpacking { kPerTask, kCanUnpackOnce, kPrepacked };
QGemmPlan plan_qgemm(const QGemmProblem& problem, const kernels::QGemmMicroKernel& kernel, int threads,
                     AUnpacking unpacking = AUnpacking::kPerTask);


// Per-thread scratch bytes run_qgemm needs with this table's qgemm kernel, and the most any kernel this CPU can run
// needs (kernels::available_qgemm_kernels).
size_t qgemm_scratch_bytes(const kernels::KernelTable& kernels);
size_t qgemm_scratch_bytes_max();
// The largest `bytes(kernel)` over every quantised-GEMM kernel this CPU can run (kernels::available_qgemm_kernels,
// not only the tables' own: DDPM_QGEMM may put any of them in a level): what a planner reserves, not knowing which
// kernel will run.
template <typename Bytes>
size_t max_over_qgemm_kernels(Bytes&& bytes) {
  kernels::QGemmMicroKernel all[16];
  const int count = kernels::available_qgemm_kernels(all, 16);
  size_t most = 0;
  for (int i = 0; i < count; ++i) most = std::max(most, static_cast<size_t>(bytes(all[i])));
  return most;
}
// Bytes of ExecContext::shared with which run_qgemm unpacks an M×K weight once for all tasks (when it would
// otherwise be unpacked more than once: several column chunks or batch items), for any kernel this CPU can run;
// `matrices` such weights for an a_per_batch A (one per batch item).
size_t qgemm_shared_bytes_max(int64_t M, int64_t K, int64_t matrices = 1);
// Runs with ctx.kernels.qgemm; ctx.scratch_bytes must be at least qgemm_scratch_bytes(ctx.kernels). With
// ctx.shared_bytes >= qgemm_shared_bytes_max(M, K) (with a_per_batch: (M, K, batch)) the weight panels are
// unpacked once, by all threads, before the tasks run, when the plan finds it pays; with ctx.packed_weights and
// problem.a_constant they are unpacked at the first call only and kept.
// The result is the same bit for bit.
void run_qgemm(const QGemmProblem& problem, ExecContext& ctx);
// Whether run_qgemm with ctx would find A's panels kept (p.a_constant, ctx.packed_weights, an earlier call).
bool qgemm_panels_kept(const QGemmProblem& problem, const ExecContext& ctx);
// Makes A's kept panels now, as run_qgemm would at its first call (p.a_constant, ctx.packed_weights), so that a
// caller can then reuse the memory p.a points to; false when they cannot be kept (no PackedWeights, out of memory).
bool keep_qgemm_panels(const QGemmProblem& problem, ExecContext& ctx);

// How run_qgemm sums K (padded to 32): `count` blocks of `kc` values, multiples of 32, the last maybe shorter.
struct QGemmKBlocks {
  int64_t kc = 0, count = 0;
};
QGemmKBlocks qgemm_k_blocks(int64_t K);

// For a caller that runs its own tasks over columns (8-bit Winograd: each tile group's 16 GEMMs, inside the task
// that quantised its input and transforms its output, so that nothing crosses to another core):
// C = A·B for batch item `batch`, row panels [panel_begin, panel_end) of A's kept panels (keep_qgemm_panels, then
// `kept` = qgemm_kept_panels) and `n_panels` column panels of B already quantised by kernels.qgemm.quantize_b's
// layout, k block after k block: panel j of k block b at b_panels + (b·n_panels + j)·qgemm_b_panel_bytes(kc, nr)
// (kc, count: qgemm_k_blocks(K)). Whole tiles, no epilogue: C's (panel_end − panel_begin)·mr rows of n_panels·nr
// columns from c, row stride ldc. The same kernel calls as run_qgemm makes: the same bits.
// `scratch`: qgemm_kept_block_scratch_bytes(kernels.qgemm.mr) bytes, the thread's, 64-byte aligned.
const uint8_t* qgemm_kept_panels(const QGemmProblem& problem, const ExecContext& ctx);
size_t qgemm_kept_block_scratch_bytes(int mr);
void qgemm_kept_block(const QGemmProblem& problem, const uint8_t* kept, const kernels::KernelTable& kernels,
                      int64_t batch, int64_t panel_begin, int64_t panel_end, const uint8_t* b_panels,
                      int64_t n_panels, float* c, int64_t ldc, uint8_t* scratch);

}  // namespace ddpm
