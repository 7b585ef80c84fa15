// The GEMM driver and its micro-kernels: every level's kernels against plain loops and against each other (the
// in-place-A kernel and fused epilogue must give the packed kernel's bits), the im2col gather against the reference
// gather, the driver on M/N/K tails with every epilogue and A layout, the split it chooses for a thread count, and
// the thread pool handing out every task exactly once.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/half.h"
#include "ops/gemm.h"
#include "test_util.h"

using namespace ddpm;
using namespace ddpm::test;

namespace {

std::vector<const kernels::KernelTable*> levels_with_gemm() {
  std::vector<const kernels::KernelTable*> out;
  for (const kernels::KernelTable* t : all_levels()) {
    if (t->gemm.run) out.push_back(t);
  }
  return out;
}

// Tile = A_panel · B_panel (+ C) in double, from the packed layouts.
std::vector<double> tile_reference(int mr, int nr, int64_t kc, const std::vector<float>& a_panel,
                                   const std::vector<float>& b_panel, const std::vector<float>* c_in) {
  std::vector<double> out(static_cast<size_t>(mr * nr));
  for (int m = 0; m < mr; ++m)
    for (int n = 0; n < nr; ++n) {
      double sum = c_in ? (*c_in)[m * nr + n] : 0.0;
      for (int64_t k = 0; k < kc; ++k) sum += double(a_panel[k * mr + m]) * b_panel[k * nr + n];
      out[m * nr + n] = sum;
    }
  return out;
}

struct Context {
  ThreadPool pool;
  std::vector<std::unique_ptr<uint8_t, decltype(&std::free)>> buffers;
  std::vector<uint8_t*> scratch;
  size_t bytes;
  explicit Context(int threads) : pool(threads), bytes(gemm_scratch_bytes_max()) {
    for (int t = 0; t < pool.size(); ++t) {
      buffers.emplace_back(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)), &std::free);
      scratch.push_back(buffers.back().get());
    }
  }
  void run(const GemmProblem& p, const kernels::KernelTable& level) {
    ExecContext ctx{pool, scratch.data(), bytes, level};
    run_gemm(p, ctx);
  }
};

}  // namespace

TEST_CASE("every micro-kernel matches the product of its panels, packed and in place bit for bit", "[gemm]") {
  for (const kernels::KernelTable* level : levels_with_gemm()) {
    const kernels::GemmMicroKernel& kernel = level->gemm;
    const int mr = kernel.mr, nr = kernel.nr;
    INFO("level " << level->isa_name << " " << mr << "x" << nr);
    for (int64_t kc : {1, 2, 7, 64, 255, 384}) {
      INFO("kc " << kc);
      const std::vector<float> a_panel = random_vector(static_cast<size_t>(kc * mr), 1);
      const std::vector<float> b_panel = random_vector(static_cast<size_t>(kc * nr), 2);
      const std::vector<float> c_in = random_vector(static_cast<size_t>(mr * nr), 3);
      // The same A as rows of a larger matrix, for run_rows.
      const int64_t lda = kc + 5;
      std::vector<float> a_matrix(static_cast<size_t>(mr * lda), 99.0f);
      const float* a_rows[64];
      for (int m = 0; m < mr; ++m) {
        for (int64_t k = 0; k < kc; ++k) a_matrix[m * lda + k] = a_panel[k * mr + m];
        a_rows[m] = a_matrix.data() + m * lda;
      }
      for (bool accumulate : {false, true}) {
        INFO("accumulate " << accumulate);
        // C with a wider row stride than the tile, to catch ldc mistakes; the guard columns must survive.
        const int64_t ldc = nr + 3;
        std::vector<float> c(static_cast<size_t>(mr * ldc), -7.0f);
        for (int m = 0; m < mr; ++m)
          for (int n = 0; n < nr; ++n) c[m * ldc + n] = c_in[m * nr + n];
        std::vector<float> c_rows = c;
        kernel.run(kc, a_panel.data(), b_panel.data(), c.data(), ldc, accumulate);
        const std::vector<double> expected = tile_reference(mr, nr, kc, a_panel, b_panel, accumulate ? &c_in : nullptr);
        std::vector<float> tile(static_cast<size_t>(mr * nr));
        for (int m = 0; m < mr; ++m)
          for (int n = 0; n < nr; ++n) tile[m * nr + n] = c[m * ldc + n];
        CHECK(relative_l2(tile.data(), expected.data(), tile.size()) <= kF32RelativeL2);
        for (int m = 0; m < mr; ++m)
          for (int n = nr; n < ldc; ++n) CHECK(c[m * ldc + n] == -7.0f);
        if (kernel.run_rows) {
          kernel.run_rows(kc, a_rows, b_panel.data(), c_rows.data(), ldc, accumulate, nullptr);
          CHECK(std::memcmp(c.data(), c_rows.data(), c.size() * sizeof(float)) == 0);
        }
      }
    }
  }
}

TEST_CASE("fused epilogue terms give the bits of separate adds", "[gemm]") {
  for (const kernels::KernelTable* level : levels_with_gemm()) {
    const kernels::GemmMicroKernel& kernel = level->gemm;
    if (!kernel.run_rows) continue;
    const int mr = kernel.mr, nr = kernel.nr;
    INFO("level " << level->isa_name);
    const int64_t kc = 37, ldc = nr + 1, residual_ld = nr + 2;
    const std::vector<float> a = random_vector(static_cast<size_t>(mr * kc), 4);
    const std::vector<float> b_panel = random_vector(static_cast<size_t>(kc * nr), 5);
    const std::vector<float> row_bias = random_vector(static_cast<size_t>(mr), 6);
    const std::vector<float> col_bias = random_vector(static_cast<size_t>(nr), 7);
    const std::vector<float> residual = random_vector(static_cast<size_t>(mr * residual_ld), 8);
    const float* a_rows[64];
    for (int m = 0; m < mr; ++m) a_rows[m] = a.data() + m * kc;
    for (int terms = 1; terms < 8; ++terms) {
      INFO("terms " << terms);
      kernels::GemmEpilogue epilogue;
      if (terms & 1) epilogue.row_bias = row_bias.data();
      if (terms & 2) epilogue.col_bias = col_bias.data();
      if (terms & 4) {
        epilogue.residual = residual.data();
        epilogue.residual_ld = residual_ld;
      }
      std::vector<float> fused(static_cast<size_t>(mr * ldc)), separate(fused.size());
      kernel.run_rows(kc, a_rows, b_panel.data(), fused.data(), ldc, false, &epilogue);
      kernel.run_rows(kc, a_rows, b_panel.data(), separate.data(), ldc, false, nullptr);
      for (int m = 0; m < mr; ++m)
        for (int n = 0; n < nr; ++n) {
          float& v = separate[m * ldc + n];
          if (epilogue.row_bias) v = v + row_bias[m];
          if (epilogue.col_bias) v = v + col_bias[n];
          if (epilogue.residual) v = v + residual[m * residual_ld + n];
        }
      for (int m = 0; m < mr; ++m) CHECK(std::memcmp(&fused[m * ldc], &separate[m * ldc], nr * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("every level's gather_rows copies runs like the reference", "[gemm]") {
  const kernels::GemmMicroKernel& reference = kernels::reference().gemm;
  REQUIRE(reference.gather_rows);
  const std::vector<float> src = random_vector(4096, 9);
  for (const kernels::KernelTable* level : levels_with_gemm()) {
    if (!level->gemm.gather_rows) continue;
    INFO("level " << level->isa_name);
    for (int64_t step : {1, 2, 3}) {
      INFO("step " << step);
      // Runs of every length up to 70 with every lead/trail mix that fits, packed back to back in a row.
      std::vector<kernels::GatherRun> runs;
      int64_t dst_offset = 1;
      for (int32_t length : {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 64, 70}) {
        for (int32_t lead : {0, 1, 5, 16}) {
          for (int32_t trail : {0, 1, 9}) {
            if (lead + trail > length) continue;
            kernels::GatherRun run;
            run.dst_offset = dst_offset;
            run.length = length;
            run.lead = lead;
            run.trail = trail;
            run.src_offset = lead + trail == length ? 0 : 60 + dst_offset % 13;
            runs.push_back(run);
            dst_offset += length;
          }
        }
      }
      // Row strides of 1024 floats (4 KiB: 32×32 planes) take the row-by-row walk on x86; a few runs keep within
      // its chunk budget (8-lane chunks: 128 on AVX2), all of them exceed it. The longest prefix within the budget
      // also has whole chunks without padding, which AVX2 copies without masks.
      size_t within_budget = 0;
      for (int64_t chunks = 0; within_budget < runs.size(); ++within_budget) {
        chunks += (runs[within_budget].length + 7) / 8;
        if (chunks > 128) break;
      }
      REQUIRE(runs[within_budget - 1].length >= 16);
      for (int64_t src_stride : {1000, 1024}) {
        for (size_t run_count : {size_t{5}, within_budget, runs.size()}) {
          INFO("src_stride " << src_stride << " runs " << run_count);
          const int64_t rows = 3, dst_stride = dst_offset + 2;
          REQUIRE(src_stride * (rows - 1) + 60 + 13 + 70 * step < static_cast<int64_t>(src.size()));
          std::vector<float> expected(static_cast<size_t>(rows * dst_stride), -1.0f), actual = expected;
          reference.gather_rows(runs.data(), static_cast<int64_t>(run_count), step, src.data(), src_stride,
                                expected.data(), dst_stride, rows);
          level->gemm.gather_rows(runs.data(), static_cast<int64_t>(run_count), step, src.data(), src_stride,
                                  actual.data(), dst_stride, rows);
          CHECK(std::memcmp(expected.data(), actual.data(), expected.size() * sizeof(float)) == 0);
          CHECK(actual[0] == -1.0f);  // lanes outside every run are left alone
          CHECK(actual[dst_offset] == -1.0f);
        }
      }
    }
  }
}

namespace {

struct GemmCase {
  int64_t batch, M, N, K;
  bool f16_a = false, transposed_a = false, bias_row = false, bias_col = false, residual = false;
  bool transposed_b = false;  // B stored [N, K], as linear's Wᵀ
};

// Runs `c` on the driver under `level` with 1..4 threads; checks the values against double loops and that every
// thread count gives the bits of one thread.
void check_driver(const GemmCase& c, const kernels::KernelTable& level) {
  INFO("level " << level.isa_name << " batch " << c.batch << " M " << c.M << " N " << c.N << " K " << c.K
                << " f16 " << c.f16_a << " At " << c.transposed_a << " Bt " << c.transposed_b << " bias "
                << c.bias_row << c.bias_col << " residual " << c.residual);
  const std::vector<float> a = random_vector(static_cast<size_t>(c.batch * c.M * c.K), 11);
  const std::vector<float> b = random_vector(static_cast<size_t>(c.batch * c.K * c.N), 12);
  const std::vector<float> bias_row = random_vector(static_cast<size_t>(c.M), 13);
  const std::vector<float> bias_col = random_vector(static_cast<size_t>(c.N), 14);
  const std::vector<float> residual = random_vector(static_cast<size_t>(c.batch * c.M * c.N), 15);
  std::vector<uint16_t> a_f16(a.size());
  std::vector<float> a_used = a;
  if (c.f16_a) {
    for (size_t i = 0; i < a.size(); ++i) {
      a_f16[i] = f32_to_f16(a[i]);
      a_used[i] = f16_to_f32(a_f16[i]);
    }
  }
  // A element (m, k) of batch item b; transposed_a stores it column-major ([K, M]).
  auto a_index = [&](int64_t bi, int64_t m, int64_t k) {
    return bi * c.M * c.K + (c.transposed_a ? k * c.M + m : m * c.K + k);
  };
  auto b_index = [&](int64_t bi, int64_t k, int64_t n) {
    return bi * c.K * c.N + (c.transposed_b ? n * c.K + k : k * c.N + n);
  };
  std::vector<double> expected(static_cast<size_t>(c.batch * c.M * c.N));
  for (int64_t bi = 0; bi < c.batch; ++bi)
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) {
        double sum = 0.0;
        for (int64_t k = 0; k < c.K; ++k) sum += double(a_used[a_index(bi, m, k)]) * b[b_index(bi, k, n)];
        if (c.bias_row) sum += bias_row[m];
        if (c.bias_col) sum += bias_col[n];
        if (c.residual) sum += residual[(bi * c.M + m) * c.N + n];
        expected[(bi * c.M + m) * c.N + n] = sum;
      }
  // B packed through the level's gather_rows, except for one thread count that takes the scalar path: both must
  // give the same bits.
  StridedB packer{b.data(), DType::F32, c.K * c.N, c.transposed_b ? 1 : c.N, c.transposed_b ? c.K : 1,
                  level.gemm.gather_rows};
  GemmProblem p;
  p.batch = c.batch;
  p.M = c.M;
  p.N = c.N;
  p.K = c.K;
  p.a = c.f16_a ? static_cast<const void*>(a_f16.data()) : a.data();
  p.a_dtype = c.f16_a ? DType::F16 : DType::F32;
  p.a_batch_stride = c.M * c.K;
  p.a_row_stride = c.transposed_a ? 1 : c.K;
  p.a_col_stride = c.transposed_a ? c.M : 1;
  p.pack_b = pack_b_strided;
  p.pack_b_context = &packer;
  p.ldc = c.N;
  p.c_batch_stride = c.M * c.N;
  if (c.bias_row) p.bias_row = bias_row.data();
  if (c.bias_col) p.bias_col = bias_col.data();
  if (c.residual) {
    p.residual = residual.data();
    p.residual_ld = c.N;
    p.residual_batch_stride = c.M * c.N;
  }
  std::vector<float> first;
  for (int threads = 1; threads <= 4; ++threads) {
    INFO("threads " << threads);
    std::vector<float> out(expected.size(), 12345.0f);
    p.c = out.data();
    packer.gather_rows = threads == 3 ? nullptr : level.gemm.gather_rows;
    Context ctx(threads);
    ctx.run(p, level);
    if (threads == 1) {
      CHECK(relative_l2(out.data(), expected.data(), out.size()) <= kF32RelativeL2);
      first = out;
      if (c.f16_a) {
        // f16 widens exactly: the same A given as f32 must give the same bits, whichever path each takes.
        GemmProblem widened = p;
        widened.a = a_used.data();
        widened.a_dtype = DType::F32;
        std::vector<float> again(out.size());
        widened.c = again.data();
        ctx.run(widened, level);
        CHECK(std::memcmp(first.data(), again.data(), again.size() * sizeof(float)) == 0);
      }
    } else {
      CHECK(std::memcmp(first.data(), out.data(), out.size() * sizeof(float)) == 0);
    }
  }
}

}  // namespace

TEST_CASE("the driver handles M, N and K tails with every epilogue and A layout, any thread count", "[gemm]") {
  for (const kernels::KernelTable* level : levels_with_gemm()) {
    const int mr = level->gemm.mr, nr = level->gemm.nr;
    SECTION(std::string("tails ") + level->isa_name) {
      for (int64_t M : {int64_t{1}, int64_t{mr - 1}, int64_t{mr}, int64_t{mr + 1}, int64_t{3 * mr + 2}}) {
        for (int64_t N : {int64_t{1}, int64_t{nr - 1}, int64_t{nr + 1}, int64_t{2 * nr}, int64_t{300}}) {
          if (M < 1 || N < 1) continue;
          check_driver({1, M, N, 19, false, false, true, false, false}, *level);
        }
      }
      // K around the block boundaries (blocks of at most 384, split evenly).
      for (int64_t K : {1, 383, 384, 385, 769}) check_driver({1, 2 * mr + 1, nr + 3, K}, *level);
    }
    SECTION(std::string("epilogues and layouts ") + level->isa_name) {
      check_driver({2, 17, 70, 40, false, false, true, false, true}, *level);
      check_driver({1, 16, 64, 33, false, false, false, true, false}, *level);
      check_driver({3, 9, 33, 20, true, false, true, true, true}, *level);  // f16 A: rows converted per panel
      check_driver({1, 12, 40, 30, true, true, true, false, false}, *level);  // f16 transposed A: packed path
      check_driver({2, 11, 45, 26, false, true, false, true, true}, *level);  // transposed A: packed path
      check_driver({1, 5, 7, 0, false, false, true, true, true}, *level);     // K = 0: the epilogue alone
      check_driver({1, 64, 784, 288}, *level);                               // 32→32 conv-sized
      GemmCase linear{2, 13, 70, 45, false, false, false, true, false};
      linear.transposed_b = true;                                            // B = Wᵀ, gathered
      check_driver(linear, *level);
    }
  }
}

TEST_CASE("the split keeps B packed once when columns allow and balances the threads", "[gemm]") {
  kernels::GemmMicroKernel kernel;
  kernel.mr = 8;
  kernel.nr = 32;
  kernel.run = kernels::reference().gemm.run;  // only the shape and the presence of run_rows matter to the plan
  kernel.run_rows = [](int64_t, const float* const*, const float*, float*, int64_t, bool, const kernels::GemmEpilogue*) {};
  auto p_for_f16 = [](int64_t batch, int64_t M, int64_t N, int64_t K) {
    GemmProblem p;
    p.batch = batch;
    p.M = M;
    p.N = N;
    p.K = K;
    p.a_dtype = DType::F16;
    return p;
  };
  auto plan_for = [&](int64_t batch, int64_t M, int64_t N, int64_t K, int threads) {
    GemmProblem p;
    p.batch = batch;
    p.M = M;
    p.N = N;
    p.K = K;
    return plan_gemm(p, kernel, threads);
  };
  SECTION("one thread: widest column chunks, no row split") {
    const GemmPlan plan = plan_for(1, 256, 1024, 2304, 1);
    CHECK(plan.threads == 1);
    CHECK(plan.m_chunks == 1);
    CHECK(plan.n_chunks == 4);  // 32 panels in chunks of 8 (256 columns)
    CHECK(plan.a_in_place);
    GemmProblem f16 = p_for_f16(1, 256, 1024, 2304);
    const GemmPlan converted = plan_gemm(f16, kernel, 1);
    CHECK(!converted.a_in_place);
    CHECK(converted.a_f16_rows);
    CHECK(plan.k_blocks == 6);
    CHECK(plan.kc == 384);
  }
  SECTION("K blocks are nearly equal") {
    const GemmPlan plan = plan_for(1, 32, 784, 288, 1);
    CHECK(plan.k_blocks == 1);
    CHECK(plan.kc == 288);
    const GemmPlan nine = plan_for(1, 32, 784, 9, 1);
    CHECK(nine.kc == 9);
    const GemmPlan odd = plan_for(1, 32, 784, 385, 1);
    CHECK(odd.k_blocks == 2);
    CHECK(odd.kc == 193);
  }
  SECTION("two threads on 8x8, 16x16 and 32x32 images: a few tasks per thread, B packed at most three times") {
    for (int64_t N : {64, 256, 1024}) {
      INFO("N " << N);
      const GemmPlan plan = plan_for(1, 256, N, 2304, 2);
      CHECK(plan.threads == 2);
      CHECK(plan.tasks >= 4);
      CHECK(plan.tasks % 2 == 0);
      CHECK(plan.m_chunks <= 3);
    }
    const GemmPlan wide = plan_for(1, 128, 1024, 1152, 2);  // enough column panels: no row split at all
    CHECK(wide.m_chunks == 1);
  }
  SECTION("a single column panel splits rows evenly") {
    const GemmPlan plan = plan_for(1, 256, 16, 2304, 2);
    CHECK(plan.n_chunks == 1);
    CHECK(plan.m_chunks % 2 == 0);
  }
  SECTION("tiny problems stay on one thread") {
    const GemmPlan plan = plan_for(1, 8, 32, 9, 4);
    CHECK(plan.threads == 1);
  }
  SECTION("batches give tasks without splitting an image") {
    const GemmPlan plan = plan_for(4, 128, 256, 1152, 2);
    CHECK(plan.m_chunks == 1);
    CHECK(plan.tasks % 2 == 0);
  }
}

TEST_CASE("the thread pool's timing counts jobs, tasks and the time inside them only while on", "[gemm][pool]") {
  ThreadPool pool(2);
  auto spin = [](int64_t, int) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    while (std::chrono::steady_clock::now() < until) {
    }
  };
  pool.run(8, spin);
  CHECK(pool.timing().jobs == 0);  // off by default
  pool.set_timing(true);
  pool.run(8, spin);
  pool.run(1, spin);  // one task runs on the caller, outside any job
  pool.run(5, spin);
  pool.set_timing(false);
  pool.run(8, spin);
  const ThreadPool::Timing t = pool.timing();
  CHECK(t.jobs == 2);
  CHECK(t.tasks == 13);
  CHECK(t.busy_seconds >= 13 * 200e-6);
  // Two threads at most: busy time fits in twice the jobs' wall time.
  CHECK(t.busy_seconds <= 2 * t.wall_seconds + 1e-3);
}

TEST_CASE("the thread pool runs every task exactly once, whatever the thread and task counts", "[gemm][pool]") {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    INFO("threads " << threads);
    // Task counts around the job word's limit (2^20) take several successive jobs.
    for (int64_t tasks : {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{1000}, (int64_t{1} << 20) + 3}) {
      INFO("tasks " << tasks);
      std::vector<std::atomic<uint8_t>> hits(static_cast<size_t>(tasks));
      std::atomic<bool> bad_thread{false};
      for (int repeat = 0; repeat < (tasks > 1000 ? 1 : 50); ++repeat) {
        for (auto& h : hits) h.store(0, std::memory_order_relaxed);
        pool.run(tasks, [&](int64_t task, int thread) {
          hits[static_cast<size_t>(task)].fetch_add(1, std::memory_order_relaxed);
          if (thread < 0 || thread >= pool.size()) bad_thread = true;
        });
        bool once = true;
        for (auto& h : hits) once = once && h.load(std::memory_order_relaxed) == 1;
        REQUIRE(once);
      }
      CHECK(!bad_thread);
    }
  }
}
