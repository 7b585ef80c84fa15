// Gradient checks: every backward rule against central finite differences of a double-precision reference.
//
// The reference is a small interpreter that evaluates any forward graph of ours in double (one plain loop nest per
// op, written here from the ops' definitions, not from their kernels). Finite differences of that interpreter are
// accurate to ~1e-10, so the comparison measures only our f32 analytical gradients: relative L2 ≤ 1e-4 over the
// checked coordinates. Each case also checks that the interpreter reproduces the f32 forward (so it is a faithful
// oracle), and that gradients are bit-identical for 1, 2 and 3 threads under every kernel level.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <ctime>
#include <map>

#include "core/half.h"
#include "autograd/ops_backward.h"
#include "ddpm/autograd.h"
#include "model/unet.h"
#include "ops/op_exec.h"
#include "test_util.h"

using namespace ddpm;
using namespace ddpm::test;

namespace {

// ---------------------------------------------------------------------------------------------------------------
// The double-precision reference: every node's value as row-major doubles of its shape.

int64_t numel(const Tensor& t) { return t.numel(); }

int64_t batch_count(const Tensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.rank - 2; ++i) n *= t.shape[i];
  return n;
}

// Row-major multi-index of flat position i in `t`'s shape.
void unravel(const Tensor& t, int64_t i, int64_t* index) {
  for (int d = t.rank - 1; d >= 0; --d) {
    index[d] = i % t.shape[d];
    i /= t.shape[d];
  }
}

class Reference {
 public:
  Reference(const Graph& g, const Tensor* last) : nodes_(g.nodes()), last_(last->id), value_(last->id + 1) {
    for (int id = 0; id <= last_; ++id) {
      const Tensor& t = *nodes_[id];
      if (t.op != OpKind::Leaf) continue;
      std::vector<double>& v = value_[id];
      v.resize(static_cast<size_t>(numel(t)));
      for (size_t i = 0; i < v.size(); ++i) {
        if (t.dtype == DType::F32) v[i] = static_cast<const float*>(t.data)[i];
        else if (t.dtype == DType::F16) v[i] = f16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
        else v[i] = static_cast<const int32_t*>(t.data)[i];
      }
    }
  }

  std::vector<double>& leaf(const Tensor* t) {
    REQUIRE(t->op == OpKind::Leaf);
    return value_[t->id];
  }
  const std::vector<double>& value(const Tensor* t) const { return value_[t->id]; }

  // Evaluates every node up to `last` and returns its first element.
  double evaluate() {
    for (int id = 0; id <= last_; ++id) {
      if (nodes_[id]->op != OpKind::Leaf) compute(*nodes_[id], &value_[id]);
    }
    return value_[last_][0];
  }

 private:
  const std::vector<double>& in(const Tensor& t, int i) const { return value_[t.src[i]->id]; }

  void compute(const Tensor& t, std::vector<double>* out_vector) {
    std::vector<double>& out = *out_vector;
    out.assign(static_cast<size_t>(numel(t)), 0.0);
    int64_t idx[kMaxRank];
    switch (t.op) {
      case OpKind::View: {
        const std::vector<double>& root = value_[t.view_source->id];
        for (int64_t i = 0; i < numel(t); ++i) {
          unravel(t, i, idx);
          int64_t offset = t.view_offset;
          for (int d = 0; d < t.rank; ++d) offset += idx[d] * t.stride[d];
          out[i] = root[offset];
        }
        break;
      }
      case OpKind::Contiguous: out = in(t, 0); break;
      case OpKind::Conv2d: conv2d(t, out); break;
      case OpKind::Matmul: matmul(t, out); break;
      case OpKind::GroupNorm: group_norm(t, out); break;
      case OpKind::Unary: {
        const std::vector<double>& x = in(t, 0);
        for (size_t i = 0; i < out.size(); ++i) {
          out[i] = t.iparams[0] == 0 ? x[i] / (1.0 + std::exp(-x[i])) : x[i] * double(t.fparams[0]);
        }
        break;
      }
      case OpKind::Binary: {
        const Tensor& a = *t.src[0];
        const Tensor& b = *t.src[1];
        for (int64_t i = 0; i < numel(t); ++i) {
          unravel(t, i, idx);
          const double x = in(t, 0)[broadcast_index(a, t, idx)], y = in(t, 1)[broadcast_index(b, t, idx)];
          out[i] = t.iparams[0] == 0 ? x + y : x * y;
        }
        break;
      }
      case OpKind::Concat: {
        const int64_t ca = t.src[0]->shape[1], cb = t.src[1]->shape[1], plane = t.shape[2] * t.shape[3];
        for (int64_t b = 0; b < t.shape[0]; ++b)
          for (int64_t c = 0; c < ca + cb; ++c)
            for (int64_t p = 0; p < plane; ++p) {
              out[(b * (ca + cb) + c) * plane + p] =
                  c < ca ? in(t, 0)[(b * ca + c) * plane + p] : in(t, 1)[(b * cb + c - ca) * plane + p];
            }
        break;
      }
      case OpKind::Upsample2x: {
        const int64_t h = t.src[0]->shape[2], w = t.src[0]->shape[3];
        for (int64_t p = 0; p < t.shape[0] * t.shape[1]; ++p)
          for (int64_t y = 0; y < 2 * h; ++y)
            for (int64_t x = 0; x < 2 * w; ++x) out[(p * 2 * h + y) * 2 * w + x] = in(t, 0)[(p * h + y / 2) * w + x / 2];
        break;
      }
      case OpKind::AvgPool2x: {
        const int64_t h = t.src[0]->shape[2], w = t.src[0]->shape[3], oh = t.shape[2], ow = t.shape[3];
        for (int64_t p = 0; p < t.shape[0] * t.shape[1]; ++p)
          for (int64_t y = 0; y < oh; ++y)
            for (int64_t x = 0; x < ow; ++x) {
              const double* r0 = in(t, 0).data() + (p * h + 2 * y) * w + 2 * x;
              out[(p * oh + y) * ow + x] = 0.25 * (r0[0] + r0[1] + r0[w] + r0[w + 1]);
            }
        break;
      }
      case OpKind::Softmax: {
        const int64_t cols = t.shape[t.rank - 1];
        const double s = t.fparams[0];  // the input scale
        for (int64_t r = 0; r < numel(t) / cols; ++r) {
          const double* x = in(t, 0).data() + r * cols;
          double m = -HUGE_VAL;
          for (int64_t i = 0; i < cols; ++i) m = std::max(m, s * x[i]);
          double sum = 0.0;
          for (int64_t i = 0; i < cols; ++i) sum += std::exp(s * x[i] - m);
          for (int64_t i = 0; i < cols; ++i) out[r * cols + i] = std::exp(s * x[i] - m) / sum;
        }
        break;
      }
      case OpKind::TimestepEmbedding: {
        const int64_t dim = t.shape[1], half = dim / 2;
        for (int64_t b = 0; b < t.shape[0]; ++b)
          for (int64_t k = 0; k < half; ++k) {
            const double angle =
                in(t, 0)[b] * std::exp(-std::log(10000.0) * double(k) / (double(half) - double(t.fparams[0])));
            out[b * dim + k] = t.iparams[0] ? std::cos(angle) : std::sin(angle);
            out[b * dim + half + k] = t.iparams[0] ? std::sin(angle) : std::cos(angle);
          }
        break;
      }
      case OpKind::GetRows: {
        const int64_t dim = t.shape[1];
        for (int64_t i = 0; i < t.shape[0]; ++i)
          for (int64_t d = 0; d < dim; ++d) out[i * dim + d] = in(t, 0)[static_cast<int64_t>(in(t, 1)[i]) * dim + d];
        break;
      }
      case OpKind::MseLoss: {
        double sum = 0.0;
        for (size_t i = 0; i < in(t, 0).size(); ++i) sum += (in(t, 0)[i] - in(t, 1)[i]) * (in(t, 0)[i] - in(t, 1)[i]);
        out[0] = sum / double(in(t, 0).size());
        break;
      }
      default: FAIL("reference: no forward for " << op_name(t.op));
    }
  }

  // Flat index into operand `a` (broadcast against `out`, numpy rules) of the output multi-index.
  static int64_t broadcast_index(const Tensor& a, const Tensor& out, const int64_t* idx) {
    int64_t flat = 0;
    for (int d = 0; d < a.rank; ++d) {
      const int od = d + out.rank - a.rank;
      flat = flat * a.shape[d] + (a.shape[d] == 1 ? 0 : idx[od]);
    }
    return flat;
  }

  void conv2d(const Tensor& t, std::vector<double>& y) {
    const Tensor& xt = *t.src[0];
    const Tensor& wt = *t.src[1];
    const std::vector<double>& x = in(t, 0);
    const std::vector<double>& w = in(t, 1);
    const int64_t batch = xt.shape[0], ci = xt.shape[1], h = xt.shape[2], wd = xt.shape[3];
    const int64_t co = wt.shape[0], kh = wt.shape[2], kw = wt.shape[3], oh = t.shape[2], ow = t.shape[3];
    const int64_t stride = t.iparams[0], pt = t.iparams[1], pl = t.iparams[2];
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t o = 0; o < co; ++o)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            double sum = t.src[2] ? in(t, 2)[o] : 0.0;
            for (int64_t c = 0; c < ci; ++c)
              for (int64_t u = 0; u < kh; ++u)
                for (int64_t v = 0; v < kw; ++v) {
                  const int64_t iy = i * stride + u - pt, ix = j * stride + v - pl;
                  if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                  sum += w[((o * ci + c) * kh + u) * kw + v] * x[((n * ci + c) * h + iy) * wd + ix];
                }
            const int64_t at = ((n * co + o) * oh + i) * ow + j;
            y[at] = sum + (t.src[3] ? in(t, 3)[at] : 0.0);
          }
  }

  void matmul(const Tensor& t, std::vector<double>& c) {
    const Tensor& a = *t.src[0];
    const Tensor& b = *t.src[1];
    const int64_t m = a.shape[a.rank - 2], k = a.shape[a.rank - 1], n = b.shape[b.rank - 1];
    const int64_t na = batch_count(a), nb = batch_count(b);
    for (int64_t i = 0; i < batch_count(t); ++i) {
      const double* pa = in(t, 0).data() + (na == 1 ? 0 : i) * m * k;
      const double* pb = in(t, 1).data() + (nb == 1 ? 0 : i) * k * n;
      for (int64_t r = 0; r < m; ++r)
        for (int64_t col = 0; col < n; ++col) {
          double sum = t.src[2] ? in(t, 2)[col] : 0.0;
          for (int64_t q = 0; q < k; ++q) sum += pa[r * k + q] * pb[q * n + col];
          c[(i * m + r) * n + col] = sum;
        }
    }
  }

  void group_norm(const Tensor& t, std::vector<double>& y) {
    const std::vector<double>& x = in(t, 0);
    const int64_t batch = t.shape[0], channels = t.shape[1], spatial = numel(t) / (batch * channels);
    const int64_t groups = t.iparams[0], per_group = channels / groups, count = per_group * spatial;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t gi = 0; gi < groups; ++gi) {
        const int64_t begin = (b * channels + gi * per_group) * spatial;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < count; ++i) mean += x[begin + i];
        mean /= double(count);
        for (int64_t i = 0; i < count; ++i) var += (x[begin + i] - mean) * (x[begin + i] - mean);
        var /= double(count);
        const double inv_std = 1.0 / std::sqrt(var + double(t.fparams[0]));
        for (int64_t i = 0; i < count; ++i) {
          const int64_t c = gi * per_group + i / spatial;
          const double z = (x[begin + i] - mean) * inv_std * in(t, 1)[c] + in(t, 2)[c];
          y[begin + i] = t.iparams[1] ? z / (1.0 + std::exp(-z)) : z;
        }
      }
  }

  const std::vector<Tensor*>& nodes_;
  int last_;
  std::vector<std::vector<double>> value_;
};

// ---------------------------------------------------------------------------------------------------------------
// The harness: a graph, the data of its parameters and inputs, and the gradient check.

struct Harness {
  explicit Harness(Graph& graph) : g(graph) {}

  Graph& g;
  std::deque<std::vector<float>> floats;
  std::deque<std::vector<uint16_t>> halves;
  std::deque<std::vector<int32_t>> ints;
  std::vector<std::pair<Tensor*, const void*>> fills;  // inputs and the bytes copied into them before compute

  Tensor* param(const std::string& name, std::initializer_list<int64_t> shape, uint32_t seed, float scale = 1.0f) {
    floats.push_back(random_vector(count(shape), seed, scale));
    return g.param(name, DType::F32, shape, floats.back().data());
  }
  Tensor* param_f16(const std::string& name, std::initializer_list<int64_t> shape, uint32_t seed, float scale) {
    std::vector<float> v = random_vector(count(shape), seed, scale);
    halves.emplace_back(v.size());
    for (size_t i = 0; i < v.size(); ++i) halves.back()[i] = f32_to_f16(v[i]);
    return g.param(name, DType::F16, shape, halves.back().data());
  }
  Tensor* input(const std::string& name, std::initializer_list<int64_t> shape, uint32_t seed, float scale = 1.0f) {
    floats.push_back(random_vector(count(shape), seed, scale));
    return fill(g.input(name, DType::F32, shape), floats.back().data());
  }
  Tensor* indices(const std::string& name, std::vector<int32_t> values) {
    ints.push_back(std::move(values));
    return fill(g.input(name, DType::I32, {static_cast<int64_t>(ints.back().size())}), ints.back().data());
  }
  Tensor* fill(Tensor* t, const void* data) {
    fills.push_back({t, data});
    return t;
  }

  // An input shaped like `t` with random values (the regression target).
  Tensor* input_like(const Tensor& t, uint32_t seed) {
    const int64_t* s = t.shape;
    Tensor* x = nullptr;
    switch (t.rank) {
      case 1: x = g.input("target", DType::F32, {s[0]}); break;
      case 2: x = g.input("target", DType::F32, {s[0], s[1]}); break;
      case 3: x = g.input("target", DType::F32, {s[0], s[1], s[2]}); break;
      default: x = g.input("target", DType::F32, {s[0], s[1], s[2], s[3]}); break;
    }
    floats.push_back(random_vector(static_cast<size_t>(t.numel()), seed));
    return fill(x, floats.back().data());
  }

  void copy_inputs() {
    for (auto& [t, data] : fills) std::memcpy(t->data, data, dtype_row_bytes(t->dtype, t->numel()));
  }

  static size_t count(std::initializer_list<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return static_cast<size_t>(n);
  }
};

struct CheckOptions {
  int max_coords = 48;        // finite differences on at most this many random coordinates per tensor
  double tolerance = 1e-4;    // relative L2, analytical (f32) vs finite differences (f64)
  std::vector<Tensor*> fd_only;  // when not empty: the tensors to finite-difference (the rest: determinism only)
};

std::vector<float> read(const Tensor* t) { return std::vector<float>(t->f32(), t->f32() + t->numel()); }

// loss = mse_loss(out, random target); gradients of every wrt tensor checked against finite differences of the
// reference under every kernel level, and bit-identical for 1, 2 and 3 threads.
void check_gradients(Harness& h, Tensor* out, const std::vector<Tensor*>& wrt, const CheckOptions& options = {}) {
  REQUIRE(out != nullptr);
  REQUIRE(h.g.status().ok());
  out = contiguous(h.g, out);  // read back in row-major order below
  Tensor* loss = mse_loss(h.g, out, h.input_like(*out, 777));
  REQUIRE(loss != nullptr);
  h.g.set_output(loss);
  h.g.set_output(out);
  std::vector<Tensor*> grads;
  Status built = build_backward(h.g, loss, wrt, &grads);
  INFO(built.message());
  REQUIRE(built.ok());
  REQUIRE(grads.size() == wrt.size());
  for (size_t i = 0; i < wrt.size(); ++i) {
    INFO("wrt " << wrt[i]->name);
    REQUIRE(grads[i] != nullptr);
    CHECK(grads[i]->dtype == DType::F32);
    CHECK(grads[i]->is_contiguous());
    CHECK(grads[i]->numel() == wrt[i]->numel());
  }
  Status planned = h.g.plan();
  INFO(planned.message());
  REQUIRE(planned.ok());
  h.copy_inputs();

  // The oracle: the f64 forward must agree with ours, and its finite differences give the expected gradients.
  Reference ref(h.g, loss);
  ref.evaluate();
  std::vector<std::vector<int64_t>> coords(wrt.size());
  std::vector<std::vector<double>> expected(wrt.size());
  std::mt19937 rng(12345);
  for (size_t w = 0; w < wrt.size(); ++w) {
    const std::vector<Tensor*>& only = options.fd_only;
    if (!only.empty() && std::find(only.begin(), only.end(), wrt[w]) == only.end()) continue;
    const int64_t n = wrt[w]->numel();
    if (n <= options.max_coords) {
      for (int64_t i = 0; i < n; ++i) coords[w].push_back(i);
    } else {
      std::uniform_int_distribution<int64_t> pick(0, n - 1);
      while (static_cast<int>(coords[w].size()) < options.max_coords) {
        const int64_t i = pick(rng);
        if (std::find(coords[w].begin(), coords[w].end(), i) == coords[w].end()) coords[w].push_back(i);
      }
    }
    std::vector<double>& v = ref.leaf(wrt[w]);
    for (int64_t i : coords[w]) {
      const double saved = v[i], step = 1e-5 * std::max(1.0, std::fabs(saved));
      v[i] = saved + step;
      const double plus = ref.evaluate();
      v[i] = saved - step;
      const double minus = ref.evaluate();
      v[i] = saved;
      expected[w].push_back((plus - minus) / (2 * step));
    }
  }
  ref.evaluate();  // back to the unperturbed values
  // Errors are relative to each tensor's gradient, but a gradient that is zero in exact arithmetic (a key bias
  // under softmax's shift invariance) is compared against a floor: 1e-3 of the largest RMS gradient checked.
  auto rms = [](const double* v, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) s += v[i] * v[i];
    return n ? std::sqrt(s / double(n)) : 0.0;
  };
  double largest_rms = 0.0;
  for (const std::vector<double>& e : expected) largest_rms = std::max(largest_rms, rms(e.data(), e.size()));

  for (const kernels::KernelTable* level : all_levels()) {
    INFO("level " << level->isa_name);
    IsaGuard guard;
    REQUIRE(kernels::select(level->isa_name).ok());
    std::vector<std::vector<float>> first;
    for (int threads : {1, 2, 3}) {
      INFO("threads " << threads);
      ThreadPool pool(threads);
      h.copy_inputs();
      Status computed = h.g.compute(pool);
      INFO(computed.message());
      REQUIRE(computed.ok());
      if (threads == 1) {
        CHECK(relative_l2(out->f32(), ref.value(out).data(), static_cast<size_t>(out->numel())) <= kF32RelativeL2);
        for (size_t w = 0; w < wrt.size(); ++w) {
          first.push_back(read(grads[w]));
          if (coords[w].empty()) continue;
          std::vector<double> error;
          for (size_t j = 0; j < coords[w].size(); ++j) error.push_back(first.back()[coords[w][j]] - expected[w][j]);
          const double scale = std::max(rms(expected[w].data(), expected[w].size()), 1e-3 * largest_rms);
          INFO("d loss / d " << wrt[w]->name << " " << wrt[w]->shape_string() << ": RMS error "
                             << rms(error.data(), error.size()) << ", RMS gradient " << scale);
          if (std::getenv("DDPM_AUTOGRAD_VERBOSE")) {
            std::printf("%-8s %-50s rel %.3g\n", level->isa_name, wrt[w]->name.c_str(), rms(error.data(), error.size()) / scale);
          }
          CHECK(rms(error.data(), error.size()) <= options.tolerance * scale);
        }
      } else {
        for (size_t w = 0; w < wrt.size(); ++w) {
          INFO("d loss / d " << wrt[w]->name);
          CHECK(std::memcmp(first[w].data(), grads[w]->f32(), first[w].size() * sizeof(float)) == 0);
        }
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("conv2d gradients: x, weight, bias, residual; strides, paddings, 1x1, long K", "[autograd][conv]") {
  struct Shape {
    int64_t batch, ci, h, w, co, k;
    Conv2dParams p;
    bool residual;
  };
  const std::vector<Shape> shapes = {
      {2, 3, 5, 7, 4, 3, {1, 1, 1, 1, 1}, true},     // odd sizes, batch 2
      {2, 3, 7, 6, 5, 3, {2, 1, 1, 1, 1}, false},    // stride 2, symmetric padding
      {2, 4, 8, 8, 3, 3, {2, 0, 0, 1, 1}, false},    // stride 2, bottom/right padding (downsample_padding = 0)
      {1, 3, 9, 9, 4, 3, {2, 0, 0, 1, 1}, false},    // stride 2 on an odd input
      {2, 5, 4, 5, 6, 1, {1, 0, 0, 0, 0}, true},     // 1×1 projection with a residual
      {1, 2, 3, 4, 3, 3, {1, 2, 0, 1, 2}, false},    // asymmetric padding on every side
      {2, 2, 17, 19, 32, 3, {1, 1, 1, 1, 1}, false},  // K of dw per image = 323 > one 256 block, K of dx = 288
      {1, 2, 3, 37, 3, 3, {1, 1, 1, 1, 1}, false},    // output rows wider than dw's 32-element packing runs
      {2, 2, 4, 70, 3, 3, {2, 1, 1, 1, 1}, false},    // the same with stride 2
      {2, 16, 5, 6, 3, 3, {1, 1, 1, 1, 1}, true},     // Ci >= 16: dw reads x channels-last
      {3, 17, 7, 6, 5, 3, {2, 0, 0, 1, 1}, false},    // ... with stride 2, bottom/right padding, batch 3
      {2, 20, 3, 5, 4, 1, {1, 0, 0, 0, 0}, false},    // ... and a 1×1 kernel
  };
  for (const Shape& s : shapes) {
    INFO("x [" << s.batch << "," << s.ci << "," << s.h << "," << s.w << "] -> " << s.co << " k" << s.k << " stride "
               << s.p.stride);
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {s.batch, s.ci, s.h, s.w}, 1);
    Tensor* w = h.param("w", {s.co, s.ci, s.k, s.k}, 2, 0.3f);
    Tensor* b = h.param("b", {s.co}, 3);
    Tensor* y = conv2d(g, x, w, b, s.p);
    Tensor* res = nullptr;
    if (s.residual && y) {
      res = h.input("res", {y->shape[0], y->shape[1], y->shape[2], y->shape[3]}, 4);
      y = conv2d(g, x, w, b, s.p, res);
    }
    std::vector<Tensor*> wrt = {x, w, b};
    if (res) wrt.push_back(res);
    check_gradients(h, y, wrt);
  }
}

TEST_CASE("conv2d gradients: a large weight (one GEMM over the batch) and f16 weights", "[autograd][conv]") {
  SECTION("Co·Ci·T > 65536: dw in one GEMM over dy permuted to [Co, B, pixels]") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 96, 3, 4}, 1);
    Tensor* w = h.param("w", {80, 96, 3, 3}, 2, 0.05f);
    check_gradients(h, conv2d(g, x, w, nullptr, conv_same3x3()), {x, w}, CheckOptions{24, 1e-4, {}});
  }
  SECTION("f16 weight: an f32 gradient") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 6, 5}, 1);
    Tensor* w = h.param_f16("w", {4, 3, 3, 3}, 2, 0.3f);
    check_gradients(h, conv2d(g, x, w, nullptr, Conv2dParams{2, 1, 1, 1, 1}), {x, w});
  }
}

TEST_CASE("strided conv2d input gradient: the phase split gives the full gather's bits", "[autograd][conv]") {
  // dx of a strided conv runs as one GEMM per output phase when the graph's shared buffer has room (always, in a
  // planned graph); without it, as one GEMM that gathers every tap (zeros included). Both on the same node.
  struct Shape {
    int64_t batch, ci, h, w, co, k;
    Conv2dParams p;
  };
  const std::vector<Shape> shapes = {
      {2, 3, 8, 8, 5, 3, {2, 1, 1, 1, 1}},     // the U-Net's downsampler, symmetric padding
      {2, 4, 9, 7, 3, 3, {2, 0, 0, 1, 1}},     // bottom/right padding on odd sizes
      {1, 6, 11, 13, 4, 5, {3, 2, 1, 2, 1}},   // stride 3, 5×5, uneven padding
      {2, 5, 6, 6, 7, 1, {2, 0, 0, 0, 0}},     // 1×1 stride 2: three phases have no tap at all
      {2, 40, 14, 14, 33, 3, {2, 1, 1, 1, 1}}, // K and N past one micro-tile
  };
  for (const Shape& s : shapes) {
    INFO("x [" << s.batch << "," << s.ci << "," << s.h << "," << s.w << "] -> " << s.co << " k" << s.k << " stride "
               << s.p.stride);
    const int64_t ho = (s.h + s.p.pad_top + s.p.pad_bottom - s.k) / s.p.stride + 1;
    const int64_t wo = (s.w + s.p.pad_left + s.p.pad_right - s.k) / s.p.stride + 1;
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {s.batch, s.ci, s.h, s.w}, 1);
    Tensor* w = h.param("w", {s.co, s.ci, s.k, s.k}, 2, 0.3f);
    Tensor* dy = h.input("dy", {s.batch, s.co, ho, wo}, 3);
    Tensor* dx = conv2d_grad_input(g, dy, w, *x, s.p);
    REQUIRE(dx);
    REQUIRE(dx->op == OpKind::Conv2dGradInput);
    g.set_output(dx);
    REQUIRE(g.plan().ok());
    for (auto& [t, data] : h.fills) std::memcpy(t->data, data, static_cast<size_t>(t->numel()) * sizeof(float));
    ThreadPool pool(2);
    REQUIRE(g.compute(pool).ok());  // phases (the graph planned room for them)
    const std::vector<float> phases(dx->f32(), dx->f32() + dx->numel());
    std::vector<std::vector<uint8_t>> scratch(2, std::vector<uint8_t>(op_exec(OpKind::Conv2dGradInput).scratch_bytes(*dx) + 64));
    uint8_t* aligned[2];
    for (int t = 0; t < 2; ++t) {
      aligned[t] = scratch[t].data() + (64 - reinterpret_cast<uintptr_t>(scratch[t].data()) % 64) % 64;
    }
    ExecContext no_shared{pool, aligned, op_exec(OpKind::Conv2dGradInput).scratch_bytes(*dx), kernels::active()};
    std::fill(dx->f32(), dx->f32() + dx->numel(), -3.0f);
    REQUIRE(compute_conv2d_grad_input(*dx, no_shared).ok());  // the full gather
    CHECK(std::memcmp(phases.data(), dx->f32(), phases.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("linear and matmul gradients: transposed views, shared operands, batches", "[autograd][matmul]") {
  SECTION("linear [rows, in] with bias") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {3, 5}, 1);
    Tensor* w = h.param("w", {7, 5}, 2);
    Tensor* b = h.param("b", {7}, 3);
    check_gradients(h, linear(g, x, w, b), {x, w, b});
  }
  SECTION("linear on [B, T, in]: the weight is shared by the batch") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 5}, 1);
    Tensor* w = h.param("w", {4, 5}, 2);
    Tensor* b = h.param("b", {4}, 3);
    check_gradients(h, linear(g, x, w, b), {x, w, b});
  }
  SECTION("shared left operand a [M, K] · b [2, 3, K, N]") {
    Graph g;
    Harness h(g);
    Tensor* a = h.input("a", {3, 4}, 1);
    Tensor* b = h.input("b", {2, 3, 4, 5}, 2);
    check_gradients(h, matmul(g, a, b), {a, b});
  }
  SECTION("batched with a permuted right operand") {
    Graph g;
    Harness h(g);
    Tensor* a = h.input("a", {2, 3, 5, 7}, 1);
    Tensor* bt = h.input("bt", {2, 3, 6, 7}, 2);
    check_gradients(h, matmul(g, a, permute(g, bt, {0, 1, 3, 2})), {a, bt});
  }
  SECTION("K over one GEMM block") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {5, 300}, 1);
    Tensor* w = h.param("w", {9, 300}, 2, 0.1f);
    check_gradients(h, linear(g, x, w, nullptr), {x, w});
  }
}

TEST_CASE("multi-head attention gradients (1x1 projections, permuted matmuls, softmax)", "[autograd][attention]") {
  // The U-Net's attention pattern: channel-major Q, K, V from 1×1 convs, heads split by reshape, Q·Kᵀ through a
  // permuted view, softmax of scaled scores, Vᵀ·Pᵀ, output projection with the residual fused.
  const int64_t batch = 2, channels = 8, heads = 2, head_dim = 4, hh = 3, ww = 3, n = hh * ww;
  Graph g;
  Harness h(g);
  Tensor* x = h.input("x", {batch, channels, hh, ww}, 1);
  auto projection = [&](const char* name, Tensor* input, Tensor* residual, uint32_t seed) {
    Tensor* w = h.param(std::string(name) + ".weight", {channels, channels}, seed, 0.35f);
    Tensor* b = h.param(std::string(name) + ".bias", {channels}, seed + 100, 0.1f);
    return conv2d(g, input, reshape(g, w, {channels, channels, 1, 1}), b, Conv2dParams{}, residual);
  };
  Tensor* qt = reshape(g, projection("q", x, nullptr, 10), {batch, heads, head_dim, n});
  Tensor* kt = reshape(g, projection("k", x, nullptr, 11), {batch, heads, head_dim, n});
  Tensor* vt = reshape(g, projection("v", x, nullptr, 12), {batch, heads, head_dim, n});
  Tensor* scores = matmul(g, permute(g, qt, {0, 1, 3, 2}), kt);  // [B, heads, N, N]
  Tensor* probs = softmax(g, scale(g, scores, 0.5f));
  Tensor* out_t = reshape(g, matmul(g, vt, permute(g, probs, {0, 1, 3, 2})), {batch, channels, hh, ww});
  Tensor* y = projection("o", out_t, x, 13);
  std::vector<Tensor*> wrt = {x};
  for (Tensor* t : g.nodes()) {
    if (t->flags & kFlagParam) wrt.push_back(t);
  }
  check_gradients(h, y, wrt);
}

TEST_CASE("group_norm gradients with and without fused SiLU", "[autograd][norm]") {
  for (bool fuse : {false, true}) {
    for (auto [batch, c, hh, ww, groups] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int>>{
             {2, 6, 3, 5, 3}, {2, 8, 4, 4, 4}, {1, 4, 1, 1, 1}, {2, 6, 5, 3, 6}, {1, 4, 17, 17, 2}}) {
      INFO("fuse " << fuse << " x [" << batch << "," << c << "," << hh << "," << ww << "] groups " << groups);
      Graph g;
      Harness h(g);
      Tensor* x = h.input("x", {batch, c, hh, ww}, 1, 2.0f);
      Tensor* gamma = h.param("gamma", {c}, 2);
      Tensor* beta = h.param("beta", {c}, 3);
      if (c * hh * ww / groups == 1) continue;  // a group of one value normalises to a constant: nothing to test
      check_gradients(h, group_norm(g, x, groups, 1e-5f, gamma, beta, fuse), {x, gamma, beta});
    }
  }
}

TEST_CASE("elementwise gradients: silu, scale, broadcasting add and mul", "[autograd][elementwise]") {
  SECTION("silu and scale") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 5}, 1, 2.0f);
    check_gradients(h, scale(g, silu(g, x), -1.5f), {x});
  }
  SECTION("add [B,C,H,W] + [B,C,1,1] (the time embedding), mul by [C,1,1] and by a scalar [1]") {
    Graph g;
    Harness h(g);
    Tensor* a = h.input("a", {2, 3, 4, 5}, 1);
    Tensor* e = h.input("e", {2, 3, 1, 1}, 2);
    Tensor* s = h.input("s", {3, 1, 1}, 3);
    Tensor* k = h.param("k", {1}, 4);
    check_gradients(h, mul(g, mul(g, add(g, a, e), s), k), {a, e, s, k});
  }
  SECTION("add [3] + [2, 3] and mul [2, 1] * [2, 3]") {
    Graph g;
    Harness h(g);
    Tensor* a = h.input("a", {3}, 1);
    Tensor* b = h.input("b", {2, 3}, 2);
    Tensor* c = h.input("c", {2, 1}, 3);
    check_gradients(h, mul(g, c, add(g, a, b)), {a, b, c});
  }
  SECTION("a tensor used several times: x·x + x accumulates three contributions") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {4, 5}, 1);
    check_gradients(h, add(g, mul(g, x, x), x), {x});
  }
}

TEST_CASE("concat, upsample, avg_pool and softmax gradients", "[autograd][resample]") {
  SECTION("concat of two branches") {
    Graph g;
    Harness h(g);
    Tensor* a = h.input("a", {2, 3, 4, 5}, 1);
    Tensor* b = h.input("b", {2, 2, 4, 5}, 2);
    check_gradients(h, silu(g, concat_channels(g, a, silu(g, b))), {a, b});
  }
  SECTION("nearest upsample") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 3, 5}, 1);
    check_gradients(h, upsample_nearest2x(g, x), {x});
  }
  SECTION("avg pool, even and odd sizes") {
    for (auto [hh, ww] : std::vector<std::pair<int64_t, int64_t>>{{4, 6}, {5, 7}}) {
      Graph g;
      Harness h(g);
      Tensor* x = h.input("x", {2, 3, hh, ww}, 1);
      check_gradients(h, avg_pool2x(g, x), {x});
    }
  }
  SECTION("softmax along the last dim") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 7}, 1, 2.0f);
    check_gradients(h, softmax(g, x), {x});
  }
  SECTION("softmax of scaled logits (attention's 1/sqrt(d), fused)") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 7}, 1, 2.0f);
    check_gradients(h, softmax(g, x, 0.35f), {x});
  }
}

TEST_CASE("views: slices, permutes, reshapes and their chains", "[autograd][views]") {
  SECTION("two slices of one tensor (scale/shift split) and a permute") {
    Graph g;
    Harness h(g);
    Tensor* e = h.input("e", {2, 8}, 1);
    Tensor* x = h.input("x", {2, 4, 3, 3}, 2);
    Tensor* s = reshape(g, slice(g, e, 1, 0, 4), {2, 4, 1, 1});
    Tensor* t = reshape(g, slice(g, e, 1, 4, 4), {2, 4, 1, 1});
    Tensor* y = add(g, mul(g, x, s), t);
    check_gradients(h, permute(g, y, {0, 2, 3, 1}), {e, x});
  }
  SECTION("slice of a permuted view of a reshape (a chain with an offset)") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 4, 5}, 1);
    Tensor* v = slice(g, permute(g, reshape(g, x, {6, 4, 5}), {2, 0, 1}), 1, 2, 3);  // [5, 3, 4]
    check_gradients(h, silu(g, v), {x});
  }
  SECTION("a reshaped parameter (1x1 projection weight)") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3, 2, 3}, 1);
    Tensor* w = h.param("w", {4, 3}, 2);
    check_gradients(h, conv2d(g, x, reshape(g, w, {4, 3, 1, 1}), nullptr, Conv2dParams{}), {x, w});
  }
}

TEST_CASE("get_rows gradient sums repeated labels; unused rows get zero", "[autograd][embedding]") {
  Graph g;
  Harness h(g);
  Tensor* table = h.param("table", {4, 6}, 1);
  Tensor* labels = h.indices("labels", {1, 3, 1, 0, 1});
  check_gradients(h, silu(g, get_rows(g, table, labels)), {table});
}

TEST_CASE("build_backward: unreachable tensors, errors, mse in both arguments", "[autograd][api]") {
  SECTION("a parameter the loss does not depend on gets no gradient and no work") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3}, 1);
    Tensor* w = h.param("w", {3}, 2);
    Tensor* unused = h.param("unused", {3}, 3);
    Tensor* other = h.input("other", {2, 3}, 4);
    Tensor* loss = mse_loss(g, mul(g, x, w), h.input_like(*x, 5));
    silu(g, add(g, other, unused));  // a branch that does not reach the loss
    const size_t before = g.nodes().size();
    std::vector<Tensor*> grads;
    REQUIRE(build_backward(g, loss, {w, unused}, &grads).ok());
    REQUIRE(grads.size() == 2);
    CHECK(grads[0] != nullptr);
    CHECK(grads[1] == nullptr);
    for (size_t i = before; i < g.nodes().size(); ++i) {
      for (Tensor* s : g.nodes()[i]->src) CHECK(s != other);
    }
    REQUIRE(g.plan().ok());
  }
  SECTION("the target of mse_loss") {
    Graph g;
    Harness h(g);
    Tensor* p = h.input("p", {3, 4}, 1);
    Tensor* t = h.input("t", {3, 4}, 2);
    check_gradients(h, silu(g, mse_loss(g, silu(g, p), t)), {p, t});
  }
  SECTION("a gradient through timestep_embedding is an error naming the op") {
    Graph g;
    Harness h(g);
    Tensor* t = h.input("t", {2}, 1);
    Tensor* loss = mse_loss(g, timestep_embedding(g, t, 8, true, 0.0f), h.input("target", {2, 8}, 2));
    std::vector<Tensor*> grads;
    Status s = build_backward(g, loss, {t}, &grads);
    REQUIRE(!s.ok());
    CHECK(s.message().find("timestep_embedding") != std::string::npos);
    CHECK(!g.status().ok());
  }
  SECTION("bad arguments") {
    Graph g;
    Harness h(g);
    Tensor* x = h.input("x", {2, 3}, 1);
    Tensor* labels = h.indices("labels", {0, 1});
    Tensor* y = silu(g, x);
    std::vector<Tensor*> grads;
    CHECK(!build_backward(g, y, {x}, &grads).ok());  // not a scalar
    Graph other;
    Tensor* foreign = other.input("foreign", DType::F32, {1});
    Tensor* loss = mse_loss(g, y, h.input("target", {2, 3}, 2));
    CHECK(!build_backward(g, loss, {foreign}, &grads).ok());
    CHECK(!build_backward(g, loss, {labels}, &grads).ok());
    CHECK(g.status().ok());  // argument errors leave the graph usable
    CHECK(!mse_loss(g, x, labels));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// A whole tiny U-Net.

namespace {

UNetConfig tiny_config() {
  UNetConfig c;
  c.block_out_channels = {8, 16};
  c.layers_per_block = 1;
  c.norm_num_groups = 4;
  c.down_block_types = {"DownBlock2D", "AttnDownBlock2D"};
  c.up_block_types = {"AttnUpBlock2D", "UpBlock2D"};
  c.attention_head_dim = 8;  // two heads at level 1
  c.num_class_embeds = 3;
  c.in_channels = 3;
  c.out_channels = 3;
  return c;
}

// Random parameters scaled like an initialised network (fan-in), so activations stay of order one.
struct TinyWeights {
  std::map<std::string, std::vector<float>> values;
  std::vector<std::string> names;  // build order

  explicit TinyWeights(const UNetConfig& config) {
    std::vector<ParamSpec> specs;
    REQUIRE(unet_parameter_specs(config, &specs).ok());
    uint32_t seed = 100;
    for (const ParamSpec& s : specs) {
      int64_t n = 1, fan_in = 1;
      for (size_t i = 0; i < s.shape.size(); ++i) {
        n *= s.shape[i];
        if (i > 0) fan_in *= s.shape[i];
      }
      std::vector<float> v;
      const bool vector = s.shape.size() == 1;
      const bool norm_weight = vector && s.name.find("norm") != std::string::npos &&
                               s.name.compare(s.name.size() - 7, 7, ".weight") == 0;
      if (norm_weight) {
        v = random_vector(static_cast<size_t>(n), seed++, 0.2f);
        for (float& x : v) x += 1.0f;
      } else {
        v = random_vector(static_cast<size_t>(n), seed++, vector ? 0.2f : 1.0f / std::sqrt(float(fan_in)));
      }
      values[s.name] = std::move(v);
      names.push_back(s.name);
    }
  }

  WeightLookup lookup() {
    return [this](const std::string& name, const std::vector<int64_t>& expected, WeightRef* out) {
      auto it = values.find(name);
      if (it == values.end()) return errorf("no such tensor");
      out->dtype = DType::F32;
      out->rank = static_cast<int>(expected.size());
      for (int i = 0; i < out->rank; ++i) out->shape[i] = expected[i];
      out->data = it->second.data();
      return Status();
    };
  }
};

Tensor* find_node(Graph& g, const std::string& name) {
  for (Tensor* t : g.nodes()) {
    if (t->name == name) return t;
  }
  return nullptr;
}

Tensor* unet_output(Graph& g) {
  for (Tensor* t : g.nodes()) {
    if (t->op != OpKind::Leaf && (t->flags & kFlagOutput)) return t;
  }
  return nullptr;
}

std::vector<Tensor*> trainable(Graph& g) {
  std::vector<Tensor*> params;
  for (Tensor* t : g.nodes()) {
    if ((t->flags & kFlagParam) && t->name.rfind("constant.", 0) != 0 && t->name.rfind("autograd.", 0) != 0) {
      params.push_back(t);
    }
  }
  return params;
}

void check_tiny_unet(const UNetConfig& config, const std::vector<std::string>& fd_params) {
  TinyWeights weights(config);
  const int64_t batch = 2, size = 8;
  Graph g;  // as the trainer builds it: without the inference-only fusions, which have no backward rule
  UNetGraphParts parts;
  Status built = build_unet_graph(g, config, weights.lookup(), batch, size, size, &parts);
  INFO(built.message());
  REQUIRE(built.ok());
  Harness h(g);
  Tensor* sample = find_node(g, "sample");
  Tensor* timesteps = find_node(g, "timesteps");
  Tensor* labels = find_node(g, "class_labels");
  REQUIRE((sample && timesteps && labels));
  h.floats.push_back(random_vector(static_cast<size_t>(sample->numel()), 1));
  h.fill(sample, h.floats.back().data());
  h.floats.push_back({10.0f, 500.0f});
  h.fill(timesteps, h.floats.back().data());
  h.ints.push_back({0, 2});
  h.fill(labels, h.ints.back().data());
  std::vector<Tensor*> wrt = trainable(g);
  REQUIRE(wrt.size() == weights.names.size());
  CheckOptions options;
  options.max_coords = 6;
  for (const std::string& name : fd_params) {
    Tensor* t = find_node(g, name);
    INFO(name);
    REQUIRE(t);
    options.fd_only.push_back(t);
  }
  check_gradients(h, unet_output(g), wrt, options);
}

}  // namespace

TEST_CASE("tiny U-Net: parameter gradients match finite differences", "[autograd][unet]") {
  check_tiny_unet(tiny_config(), {"conv_in.weight", "time_embedding.linear_1.weight", "class_embedding.weight",
                                  "down_blocks.0.resnets.0.norm1.weight", "down_blocks.0.downsamplers.0.conv.weight",
                                  "down_blocks.1.attentions.0.to_q.weight", "down_blocks.1.attentions.0.group_norm.bias",
                                  "mid_block.attentions.0.to_out.0.bias", "mid_block.resnets.1.time_emb_proj.weight",
                                  "up_blocks.0.resnets.1.conv_shortcut.weight", "up_blocks.0.upsamplers.0.conv.weight",
                                  "up_blocks.1.resnets.0.norm2.bias", "conv_norm_out.weight", "conv_out.bias"});
}

TEST_CASE("tiny U-Net variant: scale_shift time embedding, downsample padding 0, resnet up/down", "[autograd][unet]") {
  UNetConfig config = tiny_config();
  config.resnet_time_scale_shift = "scale_shift";
  config.downsample_padding = 0;
  config.center_input_sample = true;
  check_tiny_unet(config, {"conv_in.weight", "down_blocks.0.downsamplers.0.conv.weight",
                           "down_blocks.1.resnets.0.time_emb_proj.weight", "down_blocks.1.resnets.0.time_emb_proj.bias",
                           "mid_block.attentions.0.to_v.weight", "up_blocks.1.resnets.1.norm1.bias"});
}

// ---------------------------------------------------------------------------------------------------------------
// Cost of a training step: `ddpm_tests "[.autograd-bench]"` (tiny U-Net; DDPM_AUTOGRAD_BENCH_FASHION=1 for the
// fashion-mnist preset's shape, DDPM_AUTOGRAD_NODES=N to list the N slowest nodes, 30 at least).

TEST_CASE("training step cost: forward + backward vs forward", "[.autograd-bench]") {
  UNetConfig config = tiny_config();
  int64_t batch = 8, size = 32;
  const char* name = "tiny U-Net";
  if (std::getenv("DDPM_AUTOGRAD_BENCH_FASHION")) {
    // The shape of `ddpm train --preset fashion-mnist` (src/train/net.cpp).
    name = "fashion-mnist U-Net";
    config.in_channels = config.out_channels = 1;
    config.block_out_channels = {32, 64, 128};
    config.layers_per_block = 2;
    config.down_block_types = {"DownBlock2D", "DownBlock2D", "AttnDownBlock2D"};
    config.up_block_types = {"AttnUpBlock2D", "UpBlock2D", "UpBlock2D"};
    config.attention_head_dim = 32;
    config.norm_num_groups = 8;
    config.num_class_embeds = 11;
    size = 28;
  }
  TinyWeights weights(config);
  std::unique_ptr<UNet> forward_net;
  REQUIRE(UNet::build(config, weights.lookup(), batch, size, size, &forward_net).ok());
  Graph g;  // the trainer's graph: no inference-only fusions
  UNetGraphParts parts;
  REQUIRE(build_unet_graph(g, config, weights.lookup(), batch, size, size, &parts).ok());
  const size_t forward_nodes = g.nodes().size();
  Tensor* target = g.input("target", DType::F32, {batch, config.out_channels, size, size});
  Tensor* loss = mse_loss(g, unet_output(g), target);
  std::vector<Tensor*> grads;
  REQUIRE(build_backward(g, loss, trainable(g), &grads).ok());
  REQUIRE(g.plan().ok());
  std::vector<float> x = random_vector(static_cast<size_t>(batch * config.in_channels * size * size), 1);
  std::vector<float> t(batch, 500.0f), out(x.size());
  std::vector<int32_t> labels(batch, 1);
  std::memcpy(target->data, x.data(), x.size() * sizeof(float));
  // The machine may be shared: single-thread figures use this thread's CPU time, which a busy neighbour does
  // not inflate; multi-thread figures are wall time.
  auto cpu_ms = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  };
  auto wall_ms = [] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    auto best_of = [&](const std::function<void()>& fn) {
      double best = 1e30;
      for (int i = 0; i < 5; ++i) {
        const double t0 = threads == 1 ? cpu_ms() : wall_ms();
        fn();
        best = std::min(best, (threads == 1 ? cpu_ms() : wall_ms()) - t0);
      }
      return best;
    };
    const double forward_ms = best_of([&] { REQUIRE(forward_net->forward(pool, x.data(), t.data(), labels.data(), out.data()).ok()); });
    const double train_ms = best_of([&] {
      std::memcpy(parts.sample->data, x.data(), x.size() * sizeof(float));
      std::memcpy(parts.timesteps->data, t.data(), t.size() * sizeof(float));
      if (parts.class_labels) std::memcpy(parts.class_labels->data, labels.data(), labels.size() * sizeof(int32_t));
      REQUIRE(g.compute(pool).ok());
    });
    std::printf("%s batch %lld %lldx%lld, %d thread(s), %s: forward %.2f ms, forward+backward %.2f ms (%.2fx); "
                "arena %.1f MB vs %.1f MB\n",
                name, (long long)batch, (long long)size, (long long)size, threads, kernels::active().isa_name, forward_ms,
                train_ms, train_ms / forward_ms, forward_net->activation_bytes() / 1e6, g.planned_arena_bytes() / 1e6);
  }
  // Per-op time of the training graph, node by node (single thread).
  ThreadPool pool(1);
  std::vector<uint8_t*> scratch(1, static_cast<uint8_t*>(std::aligned_alloc(64, g.scratch_bytes_per_thread() + 64)));
  ExecContext ctx{pool, scratch.data(), g.scratch_bytes_per_thread(), kernels::active()};
  std::map<std::string, double> per_op, per_node;
  double forward_total = 0, backward_total = 0;
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (Tensor* node : g.nodes()) {
      if (node->op == OpKind::Leaf || node->op == OpKind::View) continue;
      const double t0 = cpu_ms();
      REQUIRE(op_exec(node->op).compute(*node, ctx).ok());
      const double ms = (cpu_ms() - t0) / 3;
      const bool backward = static_cast<size_t>(node->id) >= forward_nodes;
      per_op[std::string(backward ? "bwd " : "fwd ") + op_name(node->op)] += ms;
      if (std::getenv("DDPM_AUTOGRAD_NODES")) {
        std::string what = std::string(backward ? "bwd " : "fwd ") + op_name(node->op) + " " + node->shape_string() + " <-";
        for (Tensor* s : node->src) {
          if (!s) continue;
          what += " " + s->shape_string() + (s->is_contiguous() ? "" : "(strided)");
        }
        per_node[what] += ms;
      }
      (backward ? backward_total : forward_total) += ms;
    }
  }
  std::free(scratch[0]);
  std::printf("per op (1 thread): forward %.2f ms, backward %.2f ms\n", forward_total, backward_total);
  std::vector<std::pair<double, std::string>> sorted;
  for (auto& [name, ms] : per_op) sorted.push_back({ms, name});
  std::sort(sorted.rbegin(), sorted.rend());
  for (auto& [ms, name] : sorted) std::printf("  %-28s %8.2f ms\n", name.c_str(), ms);
  sorted.clear();
  for (auto& [name, ms] : per_node) sorted.push_back({ms, name});
  std::sort(sorted.rbegin(), sorted.rend());
  const char* listed = std::getenv("DDPM_AUTOGRAD_NODES");
  const size_t count = listed ? static_cast<size_t>(std::max(30, std::atoi(listed))) : 0;
  for (size_t i = 0; i < std::min(sorted.size(), count); ++i) {
    std::printf("  %8.2f ms  %s\n", sorted[i].first, sorted[i].second.c_str());
  }
}
