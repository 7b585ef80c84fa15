// Differential tests: every op, under every kernel level this CPU runs, against plain double-precision loops
// written here; shapes chosen to hit the micro-kernel tails (MR/NR ± 1, K around the 256 block) and odd sizes.
// Also: bit-identical results for 1, 2 and 3 threads, and shape errors reported as a Status.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/half.h"
#include "ddpm/autograd.h"
#include "ops/conv_direct.h"
#include "ops/conv_winograd.h"
#include "test_util.h"

using namespace ddpm;
using namespace ddpm::test;

namespace {

struct Runner {
  Graph g;
  std::vector<std::vector<float>> buffers;

  Tensor* param(const std::string& name, std::initializer_list<int64_t> shape, uint32_t seed, float scale = 1.0f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    buffers.push_back(random_vector(static_cast<size_t>(n), seed, scale));
    return g.param(name, DType::F32, shape, buffers.back().data());
  }
  Tensor* input(const std::string& name, std::initializer_list<int64_t> shape, uint32_t seed) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    buffers.push_back(random_vector(static_cast<size_t>(n), seed));
    inputs.push_back({g.input(name, DType::F32, shape), buffers.size() - 1});
    return inputs.back().first;
  }
  const std::vector<float>& data_of(Tensor* input_tensor) {
    for (auto& [t, index] : inputs) {
      if (t == input_tensor) return buffers[index];
    }
    FAIL("not an input");
    return buffers[0];
  }
  // Runs under kernel level `isa` with `threads` threads and returns a copy of `out`.
  std::vector<float> run(Tensor* out, const kernels::KernelTable& isa, int threads) {
    REQUIRE(out != nullptr);
    g.set_output(out);
    REQUIRE(g.status().ok());
    Status planned = g.plan();
    REQUIRE(planned.ok());
    for (auto& [t, index] : inputs) std::memcpy(t->data, buffers[index].data(), buffers[index].size() * sizeof(float));
    IsaGuard guard;
    REQUIRE(kernels::select(isa.isa_name).ok());
    ThreadPool pool(threads);
    Status status = g.compute(pool);
    INFO(status.message());
    REQUIRE(status.ok());
    return std::vector<float>(out->f32(), out->f32() + out->numel());
  }

 private:
  std::vector<std::pair<Tensor*, size_t>> inputs;
};

// Checks `out` under every level and thread count against `expected`; also that thread counts agree bitwise.
void check_all_levels(Runner& r, Tensor* out, const std::vector<double>& expected, double tolerance = kF32RelativeL2) {
  for (const kernels::KernelTable* level : all_levels()) {
    std::vector<float> one = r.run(out, *level, 1);
    INFO("level " << level->isa_name);
    REQUIRE(one.size() == expected.size());
    CHECK(relative_l2(one.data(), expected.data(), one.size()) <= tolerance);
    for (int threads : {2, 3}) {
      std::vector<float> many = r.run(out, *level, threads);
      INFO("threads " << threads);
      CHECK(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)) == 0);
    }
  }
}

std::vector<double> conv_reference(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* b,
                                   int64_t batch, int64_t ci, int64_t h, int64_t wd, int64_t co, int64_t kh, int64_t kw,
                                   const Conv2dParams& p, int64_t* oh_out, int64_t* ow_out) {
  const int64_t oh = (h + p.pad_top + p.pad_bottom - kh) / p.stride + 1;
  const int64_t ow = (wd + p.pad_left + p.pad_right - kw) / p.stride + 1;
  std::vector<double> y(static_cast<size_t>(batch * co * oh * ow));
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t o = 0; o < co; ++o)
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j) {
          double sum = b ? (*b)[o] : 0.0;
          for (int64_t c = 0; c < ci; ++c)
            for (int64_t u = 0; u < kh; ++u)
              for (int64_t v = 0; v < kw; ++v) {
                const int64_t iy = i * p.stride + u - p.pad_top, ix = j * p.stride + v - p.pad_left;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                sum += double(w[((o * ci + c) * kh + u) * kw + v]) * x[((n * ci + c) * h + iy) * wd + ix];
              }
          y[((n * co + o) * oh + i) * ow + j] = sum;
        }
  *oh_out = oh;
  *ow_out = ow;
  return y;
}

// A conv2d of `s` (random x, weights, bias, and a residual when asked) in r's graph, and its expected output in
// double precision.
struct ConvShape {
  int64_t batch, ci, h, w, co, k;
  Conv2dParams p;
  bool residual;
};
struct ConvCase {
  Tensor *x, *res, *y;
  std::vector<double> expected;
  int64_t oh, ow;
};
ConvCase build_conv_case(Runner& r, const ConvShape& s) {
  ConvCase c;
  c.x = r.input("x", {s.batch, s.ci, s.h, s.w}, 1);
  Tensor* w = r.param("w", {s.co, s.ci, s.k, s.k}, 2, 0.3f);
  Tensor* b = r.param("b", {s.co}, 3);
  c.expected = conv_reference(r.data_of(c.x), r.buffers[1], &r.buffers[2], s.batch, s.ci, s.h, s.w, s.co, s.k, s.k,
                              s.p, &c.oh, &c.ow);
  c.res = s.residual ? r.input("res", {s.batch, s.co, c.oh, c.ow}, 4) : nullptr;
  if (c.res) {
    const std::vector<float>& values = r.data_of(c.res);
    for (size_t i = 0; i < c.expected.size(); ++i) c.expected[i] += values[i];
  }
  c.y = conv2d(r.g, c.x, w, b, s.p, c.res);
  return c;
}

}  // namespace

TEST_CASE("conv2d matches direct convolution on tail shapes, every level", "[ops][conv]") {
  struct Shape {
    int64_t batch, ci, h, w, co, k;
    Conv2dParams p;
  };
  const std::vector<Shape> shapes = {
      {1, 1, 28, 28, 32, 3, {1, 1, 1, 1, 1}},    // conv_in of a gray model
      {2, 3, 5, 7, 7, 3, {1, 1, 1, 1, 1}},       // odd everything, batch 2
      {1, 5, 1, 1, 9, 3, {1, 1, 1, 1, 1}},       // 1×1 spatial
      {1, 4, 4, 8, 8, 3, {1, 1, 1, 1, 1}},       // N = 32
      {1, 4, 31, 1, 17, 3, {1, 1, 1, 1, 1}},     // N = 31, M = 17
      {1, 2, 3, 11, 33, 3, {1, 1, 1, 1, 1}},     // N = 33, M = 33
      {2, 6, 8, 8, 16, 3, {2, 1, 1, 1, 1}},      // stride 2, symmetric padding
      {1, 6, 8, 8, 16, 3, {2, 0, 0, 1, 1}},      // stride 2, right/bottom padding (downsample_padding=0)
      {1, 3, 9, 9, 5, 3, {2, 0, 0, 1, 1}},       // stride 2 on odd input
      {1, 255, 3, 5, 9, 1, {1, 0, 0, 0, 0}},     // K = 255
      {1, 256, 3, 5, 9, 1, {1, 0, 0, 0, 0}},     // K = 256 (one block)
      {2, 257, 6, 6, 12, 1, {1, 0, 0, 0, 0}},    // K = 257 (two blocks)
      {1, 29, 6, 7, 24, 3, {1, 1, 1, 1, 1}},     // K = 261, 3×3
  };
  for (const Shape& s : shapes) {
    INFO("x [" << s.batch << "," << s.ci << "," << s.h << "," << s.w << "] -> " << s.co << " k" << s.k << " stride "
               << s.p.stride);
    Runner r;
    Tensor* x = r.input("x", {s.batch, s.ci, s.h, s.w}, 1);
    Tensor* w = r.param("w", {s.co, s.ci, s.k, s.k}, 2, 0.3f);
    Tensor* b = r.param("b", {s.co}, 3);
    Tensor* y = conv2d(r.g, x, w, b, s.p);
    int64_t oh, ow;
    std::vector<double> expected = conv_reference(r.data_of(x), r.buffers[1], &r.buffers[2], s.batch, s.ci, s.h, s.w,
                                                  s.co, s.k, s.k, s.p, &oh, &ow);
    REQUIRE(y);
    CHECK(y->shape[2] == oh);
    CHECK(y->shape[3] == ow);
    check_all_levels(r, y, expected);
  }
}

TEST_CASE("conv2d fuses the residual add", "[ops][conv]") {
  Runner r;
  Tensor* x = r.input("x", {2, 4, 6, 5}, 1);
  Tensor* res = r.input("res", {2, 9, 6, 5}, 4);
  Tensor* w = r.param("w", {9, 4, 3, 3}, 2, 0.3f);
  Tensor* b = r.param("b", {9}, 3);
  Tensor* y = conv2d(r.g, x, w, b, conv_same3x3(), res);
  int64_t oh, ow;
  std::vector<double> expected =
      conv_reference(r.data_of(x), r.buffers[2], &r.buffers[3], 2, 4, 6, 5, 9, 3, 3, conv_same3x3(), &oh, &ow);
  const std::vector<float>& residual = r.data_of(res);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += residual[i];
  check_all_levels(r, y, expected);
}

TEST_CASE("conv2d over few input channels (direct path) equals the GEMM path bit for bit, every level", "[ops][conv]") {
  const std::vector<ConvShape> shapes = {
      {2, 1, 28, 28, 32, 3, {1, 1, 1, 1, 1}, false},   // conv_in of a gray model, batch 2
      {1, 3, 5, 1, 7, 3, {1, 1, 1, 1, 1}, true},       // width 1
      {3, 2, 4, 15, 5, 3, {1, 1, 1, 1, 1}, false},     // width 15, batch 3
      {1, 4, 3, 16, 9, 3, {1, 1, 1, 1, 1}, true},      // width 16
      {2, 1, 6, 17, 3, 3, {1, 1, 1, 1, 1}, false},     // width 17
      {1, 2, 7, 31, 33, 3, {1, 1, 1, 1, 1}, true},     // width 31, Co 33
      {1, 3, 9, 33, 1, 3, {1, 1, 1, 1, 1}, false},     // width 33, Co 1
      {1, 4, 6, 28, 13, 3, {1, 0, 0, 0, 0}, false},    // no padding
      {1, 2, 6, 9, 11, 3, {1, 2, 0, 1, 2}, true},      // asymmetric padding past the kernel's reach
      {2, 3, 8, 8, 5, 1, {1, 0, 0, 0, 0}, true},       // 1×1
      {2, 2, 9, 9, 7, 3, {2, 1, 1, 1, 1}, false},      // stride 2, symmetric padding
      {1, 1, 8, 33, 9, 3, {2, 0, 0, 1, 1}, true},      // stride 2, right/bottom padding
  };
  const int64_t saved = conv2d_direct_max_k();
  for (const ConvShape& s : shapes) {
    INFO("x [" << s.batch << "," << s.ci << "," << s.h << "," << s.w << "] -> " << s.co << " k" << s.k << " stride "
               << s.p.stride << (s.residual ? " + residual" : ""));
    REQUIRE(s.ci * s.k * s.k <= (s.p.stride == 1 ? saved : saved / 2));  // the default rule picks the direct path
    std::vector<float> by_path[2];
    for (int direct = 0; direct < 2; ++direct) {
      set_conv2d_direct_max_k(direct ? saved : 0);
      Runner r;
      const ConvCase c = build_conv_case(r, s);
      check_all_levels(r, c.y, c.expected);
      for (const kernels::KernelTable* level : all_levels()) {
        std::vector<float> out = r.run(c.y, *level, 2);
        by_path[direct].insert(by_path[direct].end(), out.begin(), out.end());
      }
    }
    REQUIRE(by_path[0].size() == by_path[1].size());
    CHECK(std::memcmp(by_path[0].data(), by_path[1].data(), by_path[0].size() * sizeof(float)) == 0);
  }
  set_conv2d_direct_max_k(saved);
}

TEST_CASE("conv2d by Winograd F(2x2,3x3) matches direct convolution on tail shapes, every level", "[ops][conv]") {
  struct Shape {
    ConvShape conv;
    DType weight_type;
  };
  const std::vector<Shape> shapes = {
      {{1, 16, 8, 8, 16, 3, {1, 1, 1, 1, 1}, false}, DType::F32},    // the smallest channel counts
      {{2, 17, 7, 9, 33, 3, {1, 1, 1, 1, 1}, true}, DType::F32},     // odd planes: half-empty edge tiles
      {{1, 24, 5, 131, 20, 3, {1, 1, 1, 1, 1}, false}, DType::F32},  // 66 tiles across: past one segment
      {{3, 16, 20, 22, 18, 3, {1, 1, 1, 1, 1}, true}, DType::F32},   // 330 tiles: two chunks
      {{1, 32, 9, 10, 16, 3, {1, 0, 0, 0, 0}, false}, DType::F32},   // no padding
      {{2, 16, 6, 7, 19, 3, {1, 2, 0, 1, 2}, true}, DType::F32},     // asymmetric padding
      {{1, 20, 12, 12, 24, 3, {1, 1, 1, 1, 1}, true}, DType::F16},   // f16 weights
  };
  struct RestoreRule {  // the rule is global: put it back even when a REQUIRE ends the test early
    int64_t tiles = conv2d_winograd_min_tiles();
    ~RestoreRule() { set_conv2d_winograd_min_tiles(tiles); }
  } restore;
  for (const Shape& shape : shapes) {
    const ConvShape& s = shape.conv;
    INFO("x [" << s.batch << "," << s.ci << "," << s.h << "," << s.w << "] -> " << s.co << " pads " << s.p.pad_top
               << "," << s.p.pad_left << "," << s.p.pad_bottom << "," << s.p.pad_right << " "
               << dtype_name(shape.weight_type) << (s.residual ? " + residual" : ""));
    Runner r;
    ConvCase c = build_conv_case(r, s);
    Tensor* w = c.y->src[1];
    std::vector<uint16_t> half;
    if (shape.weight_type == DType::F16) {
      // The weights rounded to f16, and the reference recomputed from the rounded values.
      std::vector<float>& values = r.buffers[1];
      for (float& v : values) {
        half.push_back(f32_to_f16(v));
        v = f16_to_f32(half.back());
      }
      c.expected = conv_reference(r.data_of(c.x), values, &r.buffers[2], s.batch, s.ci, s.h, s.w, s.co, s.k, s.k, s.p,
                                  &c.oh, &c.ow);
      if (c.res) {
        for (size_t i = 0; i < c.expected.size(); ++i) c.expected[i] += r.data_of(c.res)[i];
      }
      w->dtype = DType::F16;
      w->data = half.data();
    }
    std::vector<float> by_path[3];  // GEMM; Winograd, filters transformed per call; Winograd, filters kept
    for (int path = 0; path < 3; ++path) {
      set_conv2d_winograd_min_tiles(path == 0 ? std::numeric_limits<int64_t>::max() : 1);
      if (path == 2) w->flags |= kFlagFrozen;
      CHECK((conv2d_winograd_shared_bytes(*c.y) > 0) == (path > 0));
      check_all_levels(r, c.y, c.expected);  // kept filters: made at the first run, reused by the later ones
      for (const kernels::KernelTable* level : all_levels()) {
        std::vector<float> out = r.run(c.y, *level, 2);
        by_path[path].insert(by_path[path].end(), out.begin(), out.end());
      }
      // Only the frozen weight's filters are kept (every shape here has < 256 tiles per image).
      const size_t kept = path == 2 ? static_cast<size_t>(16 * s.co * s.ci) * sizeof(float) : 0;
      CHECK(r.g.packed_weight_bytes() == kept);
    }
    const size_t bytes = by_path[0].size() * sizeof(float);
    // Kept or not, the filters are the same transform; and the path really changed (rounding differs somewhere).
    CHECK(std::memcmp(by_path[1].data(), by_path[2].data(), bytes) == 0);
    CHECK(std::memcmp(by_path[0].data(), by_path[1].data(), bytes) != 0);
    // A batch gives each image the bits it gets alone (chunks of tile rows may span images).
    if (s.batch > 1) {
      const int64_t image_in = s.ci * s.h * s.w, image_out = s.co * c.oh * c.ow;
      const size_t out_bytes = static_cast<size_t>(image_out) * sizeof(float);
      const std::vector<float> batched = r.run(c.y, kernels::active(), 2);
      for (int64_t n = 0; n < s.batch; ++n) {
        INFO("image " << n);
        Graph g;
        Tensor* xi = g.input("x", DType::F32, {1, s.ci, s.h, s.w});
        Tensor* wi = g.param("w", w->dtype, {s.co, s.ci, s.k, s.k}, w->data);
        Tensor* bi = g.param("b", DType::F32, {s.co}, r.buffers[2].data());
        Tensor* ri = c.res ? g.input("res", DType::F32, {1, s.co, c.oh, c.ow}) : nullptr;
        Tensor* yi = conv2d(g, xi, wi, bi, s.p, ri);
        g.set_output(yi);
        REQUIRE(g.plan().ok());
        std::memcpy(xi->data, r.data_of(c.x).data() + n * image_in, static_cast<size_t>(image_in) * sizeof(float));
        if (ri) {
          std::memcpy(ri->data, r.data_of(c.res).data() + n * image_out, out_bytes);
        }
        ThreadPool pool(2);
        REQUIRE(g.compute(pool).ok());
        CHECK(std::memcmp(yi->f32(), batched.data() + n * image_out, out_bytes) == 0);
      }
    }
  }
}

TEST_CASE("conv2d over a batch of small planes (one GEMM for the batch) equals per-image runs bit for bit",
          "[ops][conv]") {
  const std::vector<ConvShape> shapes = {
      {3, 16, 7, 7, 24, 3, {1, 1, 1, 1, 1}, true},     // 49 columns per image: merged on every SIMD level
      {4, 9, 14, 14, 10, 3, {2, 1, 1, 1, 1}, false},   // stride 2 down to 7×7
      {2, 12, 5, 3, 33, 1, {1, 0, 0, 0, 0}, true},     // 1×1, 15 columns, Co past a tile
      {5, 8, 14, 14, 8, 3, {1, 1, 1, 1, 1}, false},    // 196 columns
  };
  for (const ConvShape& s : shapes) {
    INFO("x [" << s.batch << "," << s.ci << "," << s.h << "," << s.w << "] -> " << s.co << " k" << s.k);
    Runner r;
    const ConvCase c = build_conv_case(r, s);
    Tensor *x = c.x, *res = c.res, *y = c.y;
    const int64_t oh = c.oh, ow = c.ow;
    check_all_levels(r, y, c.expected);
    const int64_t image_in = s.ci * s.h * s.w, image_out = s.co * oh * ow;
    for (const kernels::KernelTable* level : all_levels()) {
      INFO("level " << level->isa_name);
      const std::vector<float> batched = r.run(y, *level, 2);
      for (int64_t n = 0; n < s.batch; ++n) {
        // The same image alone: one image never merges.
        Graph g;
        std::vector<float> xn(r.data_of(x).begin() + n * image_in, r.data_of(x).begin() + (n + 1) * image_in);
        Tensor* xi = g.input("x", DType::F32, {1, s.ci, s.h, s.w});
        Tensor* wi = g.param("w", DType::F32, {s.co, s.ci, s.k, s.k}, r.buffers[1].data());
        Tensor* bi = g.param("b", DType::F32, {s.co}, r.buffers[2].data());
        Tensor* ri = res ? g.input("res", DType::F32, {1, s.co, oh, ow}) : nullptr;
        Tensor* yi = conv2d(g, xi, wi, bi, s.p, ri);
        g.set_output(yi);
        REQUIRE(g.plan().ok());
        std::memcpy(xi->data, xn.data(), xn.size() * sizeof(float));
        if (ri) std::memcpy(ri->data, r.data_of(res).data() + n * image_out, static_cast<size_t>(image_out) * sizeof(float));
        IsaGuard guard;
        REQUIRE(kernels::select(level->isa_name).ok());
        ThreadPool pool(2);
        REQUIRE(g.compute(pool).ok());
        CHECK(std::memcmp(yi->f32(), batched.data() + n * image_out, static_cast<size_t>(image_out) * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("matmul and linear match naive products, incl. transposed views and batches", "[ops][matmul]") {
  SECTION("linear [B, in] · Wᵀ + b") {
    for (auto [rows, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 8, 32}, {3, 31, 33}, {9, 257, 7}}) {
      Runner r;
      Tensor* x = r.input("x", {rows, in}, 1);
      Tensor* w = r.param("w", {out, in}, 2);
      Tensor* b = r.param("b", {out}, 3);
      Tensor* y = linear(r.g, x, w, b);
      std::vector<double> expected(static_cast<size_t>(rows * out));
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t o = 0; o < out; ++o) {
          double sum = r.buffers[2][o];
          for (int64_t k = 0; k < in; ++k) sum += double(r.data_of(x)[i * in + k]) * r.buffers[1][o * in + k];
          expected[i * out + o] = sum;
        }
      check_all_levels(r, y, expected);
    }
  }
  SECTION("batched a [2,3,M,K] · permuted b") {
    const int64_t M = 9, K = 17, N = 33;
    Runner r;
    Tensor* a = r.input("a", {2, 3, M, K}, 1);
    Tensor* bt = r.input("bt", {2, 3, N, K}, 2);  // b = btᵀ: a strided view
    Tensor* y = matmul(r.g, a, permute(r.g, bt, {0, 1, 3, 2}));
    std::vector<double> expected(static_cast<size_t>(6 * M * N));
    const auto& av = r.data_of(a);
    const auto& bv = r.data_of(bt);
    for (int64_t batch = 0; batch < 6; ++batch)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double sum = 0;
          for (int64_t k = 0; k < K; ++k) sum += double(av[(batch * M + i) * K + k]) * bv[(batch * N + j) * K + k];
          expected[(batch * M + i) * N + j] = sum;
        }
    check_all_levels(r, y, expected);
  }
}

TEST_CASE("group_norm (with and without fused SiLU) matches f64 statistics", "[ops][norm]") {
  for (bool fuse : {false, true}) {
    for (auto [batch, c, hw, groups] :
         std::vector<std::tuple<int64_t, int64_t, int64_t, int>>{{2, 8, 5, 4}, {1, 32, 1, 8}, {1, 6, 17, 3}}) {
      Runner r;
      Tensor* x = r.input("x", {batch, c, hw, hw}, 1);
      Tensor* gamma = r.param("gamma", {c}, 2);
      Tensor* beta = r.param("beta", {c}, 3);
      Tensor* y = group_norm(r.g, x, groups, 1e-5f, gamma, beta, fuse);
      const auto& xv = r.data_of(x);
      std::vector<double> expected(xv.size());
      const int64_t per = c / groups * hw * hw;
      for (int64_t n = 0; n < batch; ++n)
        for (int64_t gi = 0; gi < groups; ++gi) {
          const float* in = xv.data() + (n * groups + gi) * per;
          double mean = 0, var = 0;
          for (int64_t i = 0; i < per; ++i) mean += in[i];
          mean /= per;
          for (int64_t i = 0; i < per; ++i) var += (in[i] - mean) * (in[i] - mean);
          var /= per;
          for (int64_t i = 0; i < per; ++i) {
            const int64_t channel = gi * (c / groups) + i / (hw * hw);
            double v = (in[i] - mean) / std::sqrt(var + 1e-5) * r.buffers[1][channel] + r.buffers[2][channel];
            if (fuse) v = v / (1 + std::exp(-v));
            expected[(n * groups + gi) * per + i] = v;
          }
        }
      check_all_levels(r, y, expected);
    }
  }
}

TEST_CASE("group_norm with a channel bias gives the bits of add then group_norm; no backward rule", "[ops][norm]") {
  // Odd sizes for the vector tails; 40×40 streams each channel in two pieces; batch 2 reads each sample's biases.
  for (auto [batch, c, hw, groups] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int>>{{2, 8, 5, 4}, {1, 32, 1, 8}, {1, 6, 17, 3}, {2, 8, 40, 2}}) {
    for (bool silu : {false, true}) {
      Runner r;
      Tensor* x = r.input("x", {batch, c, hw, hw}, 1);
      Tensor* bias = r.input("time", {batch, c}, 4);
      Tensor* gamma = r.param("gamma", {c}, 2);
      Tensor* beta = r.param("beta", {c}, 3);
      Tensor* fused = group_norm(r.g, x, groups, 1e-5f, gamma, beta, silu, bias);
      Tensor* separate = group_norm(r.g, add(r.g, x, reshape(r.g, bias, {batch, c, 1, 1})), groups, 1e-5f, gamma, beta, silu);
      r.g.set_output(separate);
      for (const kernels::KernelTable* level : all_levels()) {
        INFO("level " << level->isa_name << ", [" << batch << ", " << c << ", " << hw << ", " << hw << "], silu " << silu);
        const std::vector<float> expected = r.run(separate, *level, 1);
        for (StreamOutputs stream : {StreamOutputs::kOff, StreamOutputs::kOn}) {
          set_stream_outputs(stream);
          for (int threads : {1, 2}) {
            const std::vector<float> got = r.run(fused, *level, threads);
            CHECK(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)) == 0);
          }
        }
        set_stream_outputs(StreamOutputs::kAuto);
      }
    }
  }
  Graph g;
  Tensor* x = g.input("x", DType::F32, {2, 4, 3, 3});
  Tensor* gamma = g.input("gamma", DType::F32, {4});
  Tensor* beta = g.input("beta", DType::F32, {4});
  CHECK(group_norm(g, x, 2, 1e-5f, gamma, beta, false, g.input("wrong", DType::F32, {1, 4})) == nullptr);
  CHECK(g.status().message().find("channel bias") != std::string::npos);
  Graph h;
  Tensor* hx = h.param("x", DType::F32, {2, 4, 3, 3}, nullptr);
  Tensor* y = group_norm(h, hx, 2, 1e-5f, h.input("gamma", DType::F32, {4}), h.input("beta", DType::F32, {4}), false,
                         h.input("time", DType::F32, {2, 4}));
  std::vector<Tensor*> grads;
  const Status backward = build_backward(h, mse_loss(h, y, h.input("target", DType::F32, {2, 4, 3, 3})), {hx}, &grads);
  CHECK(!backward.ok());
  CHECK(backward.message().find("fused channel bias") != std::string::npos);
}

TEST_CASE("streamed outputs (ExecContext::stream_outputs) give the same bits: GroupNorm, Winograd with residual, "
          "upsample, concat",
          "[ops][norm][conv][resample]") {
  struct Restore {
    int64_t tiles = conv2d_winograd_min_tiles();
    ~Restore() {
      set_conv2d_winograd_min_tiles(tiles);
      set_stream_outputs(StreamOutputs::kAuto);
    }
  } restore;
  set_conv2d_winograd_min_tiles(1);
  Runner norm;
  // 40×40: each channel streams in two pieces (1024 floats, then the rest).
  Tensor* normed = group_norm(norm.g, norm.input("x", {1, 8, 40, 40}, 1), 4, 1e-5f, norm.param("gamma", {8}, 2),
                              norm.param("beta", {8}, 3), true);
  Runner conv;
  const ConvCase c = build_conv_case(conv, {2, 17, 7, 9, 33, 3, {1, 1, 1, 1, 1}, true});  // odd rows: every alignment
  Runner resample;
  // 300 columns upsampled: rows staged in two pieces.
  Tensor* joined = concat_channels(resample.g, upsample_nearest2x(resample.g, resample.input("a", {2, 3, 5, 300}, 5)),
                                   resample.input("b", {2, 2, 10, 600}, 6));
  for (const kernels::KernelTable* level : all_levels()) {
    INFO("level " << level->isa_name);
    for (auto [runner, y] :
         {std::make_pair(&norm, normed), std::make_pair(&conv, c.y), std::make_pair(&resample, joined)}) {
      set_stream_outputs(StreamOutputs::kOff);
      const std::vector<float> plain = runner->run(y, *level, 2);
      set_stream_outputs(StreamOutputs::kOn);
      const std::vector<float> streamed = runner->run(y, *level, 2);
      CHECK(std::memcmp(plain.data(), streamed.data(), plain.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("ThreadPool::cores_far_apart answers, for one thread and many, and keeps its answer", "[ops]") {
  ThreadPool one(1);
  CHECK_FALSE(one.cores_far_apart());
  for (int threads : {2, 8}) {
    ThreadPool pool(threads);
    const bool far = pool.cores_far_apart();
    CHECK(pool.cores_far_apart() == far);
    // The pool still runs jobs after its measurement.
    std::vector<int> seen(100, 0);
    pool.run(100, [&](int64_t task, int) { seen[static_cast<size_t>(task)] += 1; });
    CHECK(std::count(seen.begin(), seen.end(), 1) == 100);
  }
}

TEST_CASE("elementwise: silu, scale, broadcasting add and mul", "[ops][elementwise]") {
  Runner r;
  Tensor* x = r.input("x", {2, 3, 5, 7}, 1);
  Tensor* e = r.input("e", {2, 3, 1, 1}, 2);
  Tensor* row = r.input("row", {7}, 3);
  Tensor* y = mul(r.g, add(r.g, scale(r.g, silu(r.g, x), 0.5f), e), row);
  const auto& xv = r.data_of(x);
  const auto& ev = r.data_of(e);
  const auto& rv = r.data_of(row);
  std::vector<double> expected(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) {
    const double s = xv[i] / (1 + std::exp(-double(xv[i])));
    expected[i] = (0.5 * s + ev[i / 35]) * rv[i % 7];
  }
  check_all_levels(r, y, expected);
}

TEST_CASE("concat, nearest upsample, avg pool", "[ops][resample]") {
  Runner r;
  Tensor* a = r.input("a", {2, 3, 4, 6}, 1);
  Tensor* b = r.input("b", {2, 5, 4, 6}, 2);
  Tensor* y = avg_pool2x(r.g, upsample_nearest2x(r.g, concat_channels(r.g, a, b)));
  // avg_pool(upsample(z)) == z exactly, so compare against the concatenation itself.
  const auto& av = r.data_of(a);
  const auto& bv = r.data_of(b);
  std::vector<double> expected;
  for (int n = 0; n < 2; ++n) {
    expected.insert(expected.end(), av.begin() + n * 72, av.begin() + (n + 1) * 72);
    expected.insert(expected.end(), bv.begin() + n * 120, bv.begin() + (n + 1) * 120);
  }
  check_all_levels(r, y, expected, 0.0);

  Runner r2;
  Tensor* x = r2.input("x", {1, 2, 5, 3}, 4);
  Tensor* up = upsample_nearest2x(r2.g, x);
  const auto& xv = r2.data_of(x);
  std::vector<double> expected_up(120);
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 10; ++i)
      for (int j = 0; j < 6; ++j) expected_up[(c * 10 + i) * 6 + j] = xv[(c * 5 + i / 2) * 3 + j / 2];
  check_all_levels(r2, up, expected_up, 0.0);
}

TEST_CASE("softmax subtracts the row max and sums to one", "[ops][attention]") {
  Runner r;
  Tensor* x = r.input("x", {3, 5, 33}, 1);
  Tensor* y = softmax(r.g, scale(r.g, x, 40.0f));  // large logits: overflows without the max shift
  const auto& xv = r.data_of(x);
  std::vector<double> expected(xv.size());
  for (size_t row = 0; row < 15; ++row) {
    double m = -1e300, sum = 0;
    for (int j = 0; j < 33; ++j) m = std::max(m, 40.0 * xv[row * 33 + j]);
    for (int j = 0; j < 33; ++j) sum += std::exp(40.0 * xv[row * 33 + j] - m);
    for (int j = 0; j < 33; ++j) expected[row * 33 + j] = std::exp(40.0 * xv[row * 33 + j] - m) / sum;
  }
  check_all_levels(r, y, expected);
}

TEST_CASE("softmax's input scale gives the bits of a Scale op before it", "[ops][attention]") {
  // Rows of 1 (no tail), 15/16/17 (AVX-512 tails) and 33; 1/√d as attention uses it, and 40 (overflow without
  // the max shift).
  for (int64_t cols : {1, 15, 16, 17, 33}) {
    for (float factor : {0.0625f, 40.0f}) {
      Runner r;
      Tensor* x = r.input("x", {3, 5, cols}, 3);
      Tensor* fused = softmax(r.g, x, factor);
      Tensor* separate = softmax(r.g, scale(r.g, x, factor));
      r.g.set_output(separate);
      for (const kernels::KernelTable* level : all_levels()) {
        INFO("level " << level->isa_name << ", " << cols << " columns, scale " << factor);
        const std::vector<float> expected = r.run(separate, *level, 1);
        for (int threads : {1, 2}) {
          const std::vector<float> got = r.run(fused, *level, threads);
          CHECK(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)) == 0);
        }
      }
    }
  }
}

TEST_CASE("get_rows looks up rows and rejects out-of-range indices at compute time", "[ops][embedding]") {
  std::vector<float> table = random_vector(4 * 6, 1);
  for (int32_t bad : {1, 4}) {
    Graph g;
    Tensor* t = g.param("table", DType::F32, {4, 6}, table.data());
    Tensor* idx = g.input("idx", DType::I32, {2});
    Tensor* y = get_rows(g, t, idx);
    g.set_output(y);
    REQUIRE(g.plan().ok());
    static_cast<int32_t*>(idx->data)[0] = 3;
    static_cast<int32_t*>(idx->data)[1] = bad;
    ThreadPool pool(1);
    Status status = g.compute(pool);
    if (bad < 4) {
      REQUIRE(status.ok());
      CHECK(std::memcmp(y->f32(), table.data() + 18, 6 * sizeof(float)) == 0);
      CHECK(std::memcmp(y->f32() + 6, table.data() + 6, 6 * sizeof(float)) == 0);
    } else {
      CHECK(!status.ok());
      CHECK(status.message().find("outside") != std::string::npos);
    }
  }
}

TEST_CASE("shape errors become a Status naming the op and the shapes", "[ops][errors]") {
  Graph g;
  std::vector<float> w(8 * 4 * 9);
  Tensor* x = g.input("x", DType::F32, {1, 3, 8, 8});
  Tensor* weight = g.param("w", DType::F32, {8, 4, 3, 3}, w.data());
  Tensor* y = conv2d(g, x, weight, nullptr, conv_same3x3());
  CHECK(y == nullptr);
  Tensor* z = silu(g, y);  // errors propagate as nullptr
  CHECK(z == nullptr);
  REQUIRE(!g.status().ok());
  CHECK(g.status().message().find("conv2d") != std::string::npos);
  CHECK(g.status().message().find("[8, 4, 3, 3]") != std::string::npos);
  CHECK(!g.plan().ok());

  Graph g2;
  Tensor* a = g2.input("a", DType::F32, {2, 3});
  Tensor* b = g2.input("b", DType::F32, {4, 3});
  CHECK(add(g2, a, b) == nullptr);
  CHECK(g2.status().message().find("broadcast") != std::string::npos);
  CHECK(group_norm(g2, g2.input("c", DType::F32, {1, 6, 2, 2}), 4, 1e-5f, a, a) == nullptr);
}

TEST_CASE("the planner reuses activation memory", "[graph]") {
  const size_t tensor_bytes = 512 * 512 * 4;
  {
    // A chain of 20 elementwise ops over 1 MB tensors: each writes over the one before (its last reader), so the
    // input and one buffer, not twenty.
    Graph g;
    Tensor* x = g.input("x", DType::F32, {1, 1, 512, 512});
    Tensor* h = x;
    for (int i = 0; i < 20; ++i) h = silu(g, h);
    g.set_output(h);
    REQUIRE(g.plan().ok());
    CHECK(g.planned_arena_bytes() >= 2 * tensor_bytes);
    CHECK(g.planned_arena_bytes() <= 2 * tensor_bytes + 1024);
  }
  {
    // Conv outputs cannot be written in place: input + two alternating buffers.
    Graph g;
    Tensor* x = g.input("x", DType::F32, {1, 1, 512, 512});
    std::vector<float> one(1, 1.0f);
    Tensor* w = g.param("w", DType::F32, {1, 1, 1, 1}, one.data());
    Tensor* h = x;
    for (int i = 0; i < 20; ++i) h = conv2d(g, h, w, nullptr, Conv2dParams{});
    g.set_output(h);
    REQUIRE(g.plan().ok());
    CHECK(g.planned_arena_bytes() >= 3 * tensor_bytes);
    CHECK(g.planned_arena_bytes() <= 3 * tensor_bytes + 1024);
  }
}

TEST_CASE("ops written over their input only where nothing reads it later", "[graph]") {
  // a = silu(x); b = silu(a) may take a's memory only if a is not read afterwards: here a is (by the add, and by a
  // view in the same op), so every value must still be right, on every level and thread count.
  Runner r;
  Tensor* x = r.input("x", {2, 3, 5, 7}, 1);
  Tensor* a = silu(r.g, x);                                 // read by b, c, d and e
  Tensor* b = silu(r.g, a);                                 // may not overwrite a
  Tensor* c = add(r.g, b, a);                               // may overwrite b
  Tensor* d = add(r.g, c, reshape(r.g, reshape(r.g, a, {6, 35}), {2, 3, 5, 7}));  // a through a view: over c
  Tensor* e = mul(r.g, scale(r.g, d, 0.5f), a);             // scale over d; mul over the scaled d
  Tensor* gamma = r.param("gamma", {3}, 2);
  Tensor* beta = r.param("beta", {3}, 3);
  Tensor* f = group_norm(r.g, e, 3, 1e-5f, gamma, beta, true);
  Tensor* y = add(r.g, f, f);                               // one input twice
  const auto& xv = r.data_of(x);
  std::vector<double> ev(xv.size());
  auto silu_d = [](double v) { return v / (1 + std::exp(-v)); };
  for (size_t i = 0; i < xv.size(); ++i) {
    const double av = silu_d(xv[i]), bv = silu_d(av);
    ev[i] = (bv + av + av) * 0.5 * av;
  }
  std::vector<double> expected(xv.size());
  const int64_t per = 35;  // one channel per group
  for (int64_t n = 0; n < 2 * 3; ++n) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < per; ++i) mean += ev[n * per + i];
    mean /= per;
    for (int64_t i = 0; i < per; ++i) var += (ev[n * per + i] - mean) * (ev[n * per + i] - mean);
    var /= per;
    for (int64_t i = 0; i < per; ++i) {
      const int64_t channel = n % 3;
      const double v = (ev[n * per + i] - mean) / std::sqrt(var + 1e-5) * r.buffers[1][channel] + r.buffers[2][channel];
      expected[n * per + i] = 2 * silu_d(v);
    }
  }
  check_all_levels(r, y, expected, 1e-5);
  // s + sᵀ: were the transposed view read in place, an element written over s would be read after its transposed
  // twin overwrote it (today binary() copies a strided operand first, and the planner also refuses an op that reads
  // its first input through another input).
  Runner t;
  Tensor* sq = silu(t.g, t.input("x", {2, 3, 5, 5}, 4));
  Tensor* sym = add(t.g, sq, permute(t.g, sq, {0, 1, 3, 2}));
  const auto& sv = t.data_of(t.g.nodes()[0]);
  std::vector<double> expected_sym(sv.size());
  for (int64_t m = 0; m < 6; ++m)
    for (int64_t i = 0; i < 5; ++i)
      for (int64_t j = 0; j < 5; ++j) {
        expected_sym[(m * 5 + i) * 5 + j] = silu_d(sv[(m * 5 + i) * 5 + j]) + silu_d(sv[(m * 5 + j) * 5 + i]);
      }
  check_all_levels(t, sym, expected_sym, 1e-5);
}
