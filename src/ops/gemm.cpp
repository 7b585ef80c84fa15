#include "ops/gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/half.h"

namespace ddpm {
namespace {

// K is summed in nearly equal blocks of at most kKcMax, so that A's rows for one micro-panel (MR × kc) stay in L1
// while a task's B block (kc × its columns) stays in L2. The values do not depend on it (see gemm.h), only speed.
constexpr int64_t kKcMax = 384;
// Widest column chunk of one task: its B block, kKcMax × 256 floats = 384 KiB, leaves most of a 1 MiB L2 to C and A.
// When K is short the same block holds more columns (up to kWideChunk times as many), which saves per-task work.
constexpr int64_t kNcTarget = 256;
constexpr int64_t kWideChunk = 4;
constexpr int kMaxMr = 32, kMaxNr = 64;

// Cost model for choosing the split, in units of one multiply-add of one output element (1/16 of a cycle with
// AVX-512). Packing one B element costs about as much as 6 of them, packing one A element (a scalar transposition)
// about 8, converting one from f16 or bringing one read in place back from L2 for another column chunk about 2;
// waking a task, walking its panels and the pool's bookkeeping about 20000 (~1 µs). With several threads, a task
// that starts late (its thread was descheduled, or woke slowly) stretches the end by a fraction of a task:
// kStraggler of the largest, which favours a few tasks per thread over exactly one.
constexpr double kPackBCost = 6.0, kPackACost = 8.0, kRereadACost = 2.0, kConvertACost = 2.0, kTaskCost = 20000.0,
                 kStraggler = 0.15;
// Below this many multiply-adds (~2 µs of work on one core) a second thread costs more than it saves.
constexpr double kMinParallelWork = 64.0 * 1024.0;

int64_t column_block(int nr) { return std::max<int64_t>(nr, kNcTarget / nr * nr); }
size_t floats_aligned(int64_t floats) { return static_cast<size_t>(ceil_div(floats, 16) * 16); }

inline float load_element(const void* base, DType dtype, int64_t index) {
  if (dtype == DType::F16) return f16_to_f32(static_cast<const uint16_t*>(base)[index]);
  return static_cast<const float*>(base)[index];
}

bool has_epilogue(const GemmProblem& p) { return p.bias_row || p.bias_col || p.residual; }

// Per-thread scratch, carved in this order; every part starts on a 64-byte boundary.
struct Scratch {
  float* b_block;   // kKcMax × column_block(nr)
  float* a_panel;   // kKcMax × mr: packed A, or A's rows converted from f16
  float* tile;      // mr × nr, for partial tiles
  float* col_bias;  // kWideChunk × column_block(nr), the task's column bias as f32
  float* row_bias;  // mr, the panel's row bias as f32
};

size_t scratch_floats(int mr, int nr) {
  const int64_t nc = column_block(nr);
  return floats_aligned(kKcMax * nc) + floats_aligned(kKcMax * mr) + floats_aligned(mr * nr) +
         floats_aligned(kWideChunk * nc) + floats_aligned(mr);
}

Scratch carve_scratch(uint8_t* base, int mr, int nr) {
  float* f = reinterpret_cast<float*>(base);
  const int64_t nc = column_block(nr);
  Scratch s;
  s.b_block = f;
  f += floats_aligned(kKcMax * nc);
  s.a_panel = f;
  f += floats_aligned(kKcMax * mr);
  s.tile = f;
  f += floats_aligned(mr * nr);
  s.col_bias = f;
  f += floats_aligned(kWideChunk * nc);
  s.row_bias = f;
  return s;
}

void pack_a(const GemmProblem& p, int64_t batch, int64_t m0, int mr_valid, int mr, int64_t k0, int64_t kc,
            float* dst) {
  const int64_t base = batch * p.a_batch_stride + m0 * p.a_row_stride + k0 * p.a_col_stride;
  for (int m = 0; m < mr; ++m) {
    if (m >= mr_valid) {
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + m] = 0.0f;
      continue;
    }
    const int64_t row = base + m * p.a_row_stride;
    if (p.a_dtype == DType::F32 && p.a_col_stride == 1) {
      const float* src = static_cast<const float*>(p.a) + row;
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + m] = src[k];
    } else {
      for (int64_t k = 0; k < kc; ++k) dst[k * mr + m] = load_element(p.a, p.a_dtype, row + k * p.a_col_stride);
    }
  }
}

// The epilogue on a block of C that went through a temporary tile or a kernel without a fused epilogue: the same
// three separately rounded adds, in the same order, as GemmEpilogue.
void apply_epilogue(const GemmProblem& p, const kernels::KernelTable& kern, int64_t batch, int64_t m0, int64_t rows,
                    int64_t n0, int64_t cols, const float* row_bias, const float* col_bias) {
  float* c = p.c + batch * p.c_batch_stride;
  for (int64_t m = 0; m < rows; ++m) {
    float* row = c + (m0 + m) * p.ldc + n0;
    if (p.bias_row) kern.add_scalar(cols, row, row_bias[m], row);
    if (p.bias_col) kern.add(cols, row, col_bias, row);
    if (p.residual) {
      kern.add(cols, row, p.residual + batch * p.residual_batch_stride + (m0 + m) * p.residual_ld + n0, row);
    }
  }
}

// Makespan estimate of a split: with tasks handed out dynamically, about ceil(tasks / threads) rounds of the mean
// task, and never less than the largest task. Closed form, so planning costs nanoseconds whatever the size.
double split_cost(const GemmProblem& p, const kernels::GemmMicroKernel& kernel, double a_cost, int64_t m_panels,
                  int64_t n_panels, int64_t m_chunks, int64_t n_chunks, int threads) {
  const double k = static_cast<double>(p.K);
  const double rows = static_cast<double>(m_panels * kernel.mr), cols = static_cast<double>(n_panels * kernel.nr);
  const double tasks = static_cast<double>(p.batch * n_chunks * m_chunks);
  const double total = static_cast<double>(p.batch) * k *
                           (rows * cols + kPackBCost * cols * static_cast<double>(m_chunks) +
                            a_cost * rows * static_cast<double>(n_chunks)) +
                       tasks * kTaskCost;
  const double max_rows = static_cast<double>(ceil_div(m_panels, m_chunks) * kernel.mr);
  const double max_cols = static_cast<double>(ceil_div(n_panels, n_chunks) * kernel.nr);
  const double largest = k * (max_rows * max_cols + kPackBCost * max_cols + a_cost * max_rows) + kTaskCost;
  const double rounds = std::ceil(tasks / threads);
  return std::max(rounds * total / tasks, largest) + (threads > 1 ? kStraggler * largest : 0.0);
}

struct TaskRange {
  int64_t batch, n_begin, n_end, panel_begin, panel_end;
};

TaskRange task_range(const GemmProblem& p, const GemmPlan& plan, int nr, int64_t task) {
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

// The problem and the plan are copied: they live on the calling thread's stack, next to lines that thread keeps
// writing, and every other thread reading them per tile would keep losing those lines to it (false sharing).
void run_task(const GemmProblem& problem, const GemmPlan& shared_plan, const kernels::KernelTable& kern,
              const TaskRange& r, const Scratch& s) {
  const GemmProblem p = problem;
  const GemmPlan plan = shared_plan;
  const kernels::GemmMicroKernel kernel = kern.gemm;
  const int mr = kernel.mr, nr = kernel.nr;
  const int64_t nc = r.n_end - r.n_begin;
  float* c = p.c + r.batch * p.c_batch_stride;
  const bool epilogue = has_epilogue(p);
  const bool rows_kernel = plan.a_in_place || plan.a_f16_rows;
  if (p.bias_col) {
    for (int64_t n = 0; n < nc; ++n) s.col_bias[n] = load_element(p.bias_col, p.bias_dtype, r.n_begin + n);
    for (int64_t n = nc; n < ceil_div(nc, nr) * nr; ++n) s.col_bias[n] = 0.0f;
  }
  const float* a_rows[kMaxMr];
  for (int64_t block = 0; block < plan.k_blocks; ++block) {
    const int64_t k0 = block * plan.kc, kc = std::min(plan.kc, p.K - k0);
    const bool accumulate = block > 0, last = block + 1 == plan.k_blocks;
    p.pack_b(p.pack_b_context, r.batch, k0, kc, r.n_begin, nc, nr, s.b_block);
    for (int64_t panel = r.panel_begin; panel < r.panel_end; ++panel) {
      const int64_t m0 = panel * mr;
      const int mr_valid = static_cast<int>(std::min<int64_t>(mr, p.M - m0));
      // Rows past M repeat the last row: they only feed tile rows that are never copied out.
      if (plan.a_in_place) {
        const float* a = static_cast<const float*>(p.a) + r.batch * p.a_batch_stride + k0;
        for (int m = 0; m < mr; ++m) a_rows[m] = a + std::min<int64_t>(m0 + m, p.M - 1) * p.a_row_stride;
      } else if (plan.a_f16_rows) {
        const uint16_t* a = static_cast<const uint16_t*>(p.a) + r.batch * p.a_batch_stride + k0;
        for (int m = 0; m < mr; ++m) {
          float* row = s.a_panel + m * kc;
          kern.f16_to_f32(kc, a + std::min<int64_t>(m0 + m, p.M - 1) * p.a_row_stride, row);
          a_rows[m] = row;
        }
      } else {
        pack_a(p, r.batch, m0, mr_valid, mr, k0, kc, s.a_panel);
      }
      if (last && p.bias_row) {
        for (int m = 0; m < mr; ++m) s.row_bias[m] = m < mr_valid ? load_element(p.bias_row, p.bias_dtype, m0 + m) : 0.0f;
      }
      for (int64_t j = 0; j * nr < nc; ++j) {
        const int64_t n0 = r.n_begin + j * nr;
        const int nr_valid = static_cast<int>(std::min<int64_t>(nr, r.n_end - n0));
        float* c_tile = c + m0 * p.ldc + n0;
        const float* b_panel = s.b_block + j * kc * nr;
        if (mr_valid == mr && nr_valid == nr) {
          if (rows_kernel) {
            kernels::GemmEpilogue fused;
            if (last && epilogue) {
              fused.row_bias = p.bias_row ? s.row_bias : nullptr;
              fused.col_bias = p.bias_col ? s.col_bias + j * nr : nullptr;
              if (p.residual) {
                fused.residual = p.residual + r.batch * p.residual_batch_stride + m0 * p.residual_ld + n0;
                fused.residual_ld = p.residual_ld;
              }
            }
            kernel.run_rows(kc, a_rows, b_panel, c_tile, p.ldc, accumulate, last && epilogue ? &fused : nullptr);
          } else {
            kernel.run(kc, s.a_panel, b_panel, c_tile, p.ldc, accumulate);
            if (last && epilogue) apply_epilogue(p, kern, r.batch, m0, mr, n0, nr, s.row_bias, s.col_bias + j * nr);
          }
          continue;
        }
        // Partial tile: compute a full tile in scratch, copy the valid part.
        if (accumulate) {
          for (int m = 0; m < mr_valid; ++m) std::memcpy(s.tile + m * nr, c_tile + m * p.ldc, nr_valid * sizeof(float));
        }
        if (rows_kernel) {
          kernel.run_rows(kc, a_rows, b_panel, s.tile, nr, accumulate, nullptr);
        } else {
          kernel.run(kc, s.a_panel, b_panel, s.tile, nr, accumulate);
        }
        for (int m = 0; m < mr_valid; ++m) std::memcpy(c_tile + m * p.ldc, s.tile + m * nr, nr_valid * sizeof(float));
        if (last && epilogue) {
          apply_epilogue(p, kern, r.batch, m0, mr_valid, n0, nr_valid, s.row_bias, s.col_bias + j * nr);
        }
      }
    }
  }
}

// K = 0: C is the epilogue alone.
void run_empty_k(const GemmProblem& p, const kernels::KernelTable& kern, const Scratch& s) {
  const int64_t width = column_block(kern.gemm.nr);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t n0 = 0; n0 < p.N; n0 += width) {
      const int64_t cols = std::min(width, p.N - n0);
      if (p.bias_col) {
        for (int64_t n = 0; n < cols; ++n) s.col_bias[n] = load_element(p.bias_col, p.bias_dtype, n0 + n);
      }
      for (int64_t m = 0; m < p.M; ++m) {
        std::memset(p.c + b * p.c_batch_stride + m * p.ldc + n0, 0, static_cast<size_t>(cols) * sizeof(float));
        if (p.bias_row) s.row_bias[0] = load_element(p.bias_row, p.bias_dtype, m);
        apply_epilogue(p, kern, b, m, 1, n0, cols, s.row_bias, s.col_bias);
      }
    }
  }
}

}  // namespace

GemmPlan plan_gemm(const GemmProblem& p, const kernels::GemmMicroKernel& kernel, int threads) {
  GemmPlan plan;
  plan.k_blocks = std::max<int64_t>(1, ceil_div(p.K, kKcMax));
  plan.kc = ceil_div(p.K, plan.k_blocks);
  plan.m_panels = ceil_div(p.M, kernel.mr);
  plan.n_panels = ceil_div(p.N, kernel.nr);
  plan.a_in_place = kernel.run_rows && p.a_dtype == DType::F32 && p.a_col_stride == 1;
  plan.a_f16_rows = kernel.run_rows && p.a_dtype == DType::F16 && p.a_col_stride == 1;
  const double a_cost = plan.a_in_place ? kRereadACost : plan.a_f16_rows ? kConvertACost : kPackACost;
  const double work = static_cast<double>(p.batch) * static_cast<double>(p.M) * static_cast<double>(p.N) *
                      static_cast<double>(p.K);
  plan.threads = work < kMinParallelWork ? 1 : std::max(1, threads);
  // Column chunks no wider than a B block; then the split with the smallest estimated makespan, fewer tasks first.
  const int64_t block_floats = kKcMax * column_block(kernel.nr);
  const int64_t max_chunk_panels =
      std::clamp<int64_t>(block_floats / (plan.kc * kernel.nr), 1, kWideChunk * column_block(kernel.nr) / kernel.nr);
  const int64_t max_m_chunks = plan.threads == 1 ? 1 : std::min<int64_t>({plan.m_panels, 2 * plan.threads, 64});
  double best = std::numeric_limits<double>::infinity();
  int64_t previous_n_chunks = 0;
  for (int64_t chunk_panels = std::min(max_chunk_panels, plan.n_panels); chunk_panels >= 1; --chunk_panels) {
    const int64_t n_chunks = ceil_div(plan.n_panels, chunk_panels);
    if (n_chunks == previous_n_chunks) continue;
    previous_n_chunks = n_chunks;
    for (int64_t m_chunks = 1; m_chunks <= max_m_chunks; ++m_chunks) {
      const double cost =
          split_cost(p, kernel, a_cost, plan.m_panels, plan.n_panels, m_chunks, n_chunks, plan.threads);
      if (cost < best * (1.0 - 1e-9)) {
        best = cost;
        plan.n_chunks = n_chunks;
        plan.m_chunks = m_chunks;
      }
    }
    if (plan.threads == 1) break;  // one thread: the widest chunks are best
  }
  plan.tasks = p.batch * plan.n_chunks * plan.m_chunks;
  if (plan.tasks < plan.threads) plan.threads = static_cast<int>(std::max<int64_t>(1, plan.tasks));
  return plan;
}

size_t gemm_scratch_bytes(const kernels::KernelTable& kernels) {
  return scratch_floats(kernels.gemm.mr, kernels.gemm.nr) * sizeof(float);
}

size_t gemm_scratch_bytes_max() {
  const kernels::KernelTable* tables[8];
  const int count = kernels::available_tables(tables, 8);
  size_t bytes = 0;
  for (int i = 0; i < count; ++i) bytes = std::max(bytes, gemm_scratch_bytes(*tables[i]));
  return bytes;
}

void run_gemm(const GemmProblem& p, ExecContext& ctx) {
  const kernels::KernelTable& kern = ctx.kernels;
  const int mr = kern.gemm.mr, nr = kern.gemm.nr;
  DDPM_ASSERT(mr <= kMaxMr && nr <= kMaxNr);
  DDPM_ASSERT(ctx.scratch_bytes >= gemm_scratch_bytes(kern));
  if (p.batch <= 0 || p.M <= 0 || p.N <= 0) return;
  if (p.K <= 0) {
    run_empty_k(p, kern, carve_scratch(ctx.scratch[0], mr, nr));
    return;
  }
  const GemmPlan plan = plan_gemm(p, kern.gemm, ctx.pool.size());
  if (plan.threads == 1) {
    const Scratch s = carve_scratch(ctx.scratch[0], mr, nr);
    for (int64_t task = 0; task < plan.tasks; ++task) run_task(p, plan, kern, task_range(p, plan, nr, task), s);
    return;
  }
  ctx.pool.run(plan.tasks, [&](int64_t task, int thread) {
    run_task(p, plan, kern, task_range(p, plan, nr, task), carve_scratch(ctx.scratch[thread], mr, nr));
  });
}

void pack_b_strided(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                    float* dst) {
  const StridedB& b = *static_cast<const StridedB*>(context);
  if (b.dtype == DType::F32 && b.gather_rows) {
    // One run per panel, all kc rows at once; columns past nc are the runs' zero trails.
    const float* src = static_cast<const float*>(b.base) + batch * b.batch_stride + k0 * b.k_stride + n0 * b.n_stride;
    constexpr int kRunsPerCall = 16;
    kernels::GatherRun runs[kRunsPerCall];
    for (int64_t first = 0; first * nr < nc; first += kRunsPerCall) {
      int count = 0;
      for (int64_t j = first; j < first + kRunsPerCall && j * nr < nc; ++j) {
        kernels::GatherRun& run = runs[count++];
        run.dst_offset = j * kc * nr;
        run.src_offset = j * nr * b.n_stride;
        run.length = nr;
        run.lead = 0;
        run.trail = static_cast<int32_t>(nr - std::min<int64_t>(nr, nc - j * nr));
      }
      b.gather_rows(runs, count, b.n_stride, src, b.k_stride, dst, nr, kc);
    }
    return;
  }
  for (int64_t j = 0; j * nr < nc; ++j) {
    const int64_t width = std::min<int64_t>(nr, nc - j * nr);
    float* panel = dst + j * kc * nr;
    for (int64_t k = 0; k < kc; ++k) {
      const int64_t first = batch * b.batch_stride + (k0 + k) * b.k_stride + (n0 + j * nr) * b.n_stride;
      float* out = panel + k * nr;
      if (b.dtype == DType::F32 && b.n_stride == 1) {
        std::memcpy(out, static_cast<const float*>(b.base) + first, static_cast<size_t>(width) * sizeof(float));
      } else {
        for (int64_t n = 0; n < width; ++n) out[n] = load_element(b.base, b.dtype, first + n * b.n_stride);
      }
      for (int64_t n = width; n < nr; ++n) out[n] = 0.0f;
    }
  }
}

}  // namespace ddpm
