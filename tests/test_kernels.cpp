// Every entry of every SIMD kernel table against the scalar reference table (the oracle), entry by entry: lengths
// that hit every vector/unroll tail, unaligned pointers, in-place calls, special values, and guard floats around
// every output to catch a write past either end. Plus the vectorised exp and SiLU against double precision over a
// sweep of the whole float range, and f16 conversions bit for bit over every f16 and every f32 rounding boundary.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/half.h"
#include "test_util.h"

using namespace ddpm;
using namespace ddpm::test;

namespace {

// --- Tolerances -------------------------------------------------------------------------------------------------
// exp: the vectorised exp is within 1 ulp of the correctly rounded result over every float (checked exhaustively
// once; the sweep below re-checks kExpUlpVsExact), glibc's expf within 1 ulp too; 4 leaves room for neither being
// the worst case of the other.
constexpr int64_t kExpUlp = 4;
constexpr int64_t kExpUlpVsExact = 2;
// SiLU: the exp error passes through 1 + e and one division (each +0.5 ulp), for both sides; the exhaustive
// comparison measured at most 4.
constexpr int64_t kSiluUlp = 6;
// Sums in double: any summation order is within (n-1)·2^-53·Σ|x| of the exact sum; for n <= 4097, 1e-12·Σ|x| bounds
// the difference of two orders with margin.
constexpr double kSumF64Relative = 1e-12;
// f32 sums (exp_shifted_sum): any order is within (n-1)·2^-24·Σ of the exact sum, so two orders differ by at most
// twice that (terms are >= 0), plus the terms' own exp error.
double f32_sum_tolerance(int64_t n, double sum_of_terms) {
  return (2.0 * static_cast<double>(n) * 0x1p-24 + kExpUlp * 0x1p-23) * sum_of_terms;
}
// GEMM tiles: one FMA chain vs mul+add chains over kc <= 257 terms; 1e-5 of Σ|a·b| (+|C|) is far above the ~1e-6
// such reorderings produce and far below what an indexing error gives.
constexpr double kGemmRelative = 1e-5;

// Lengths that hit the empty case, a lone tail, every tail size around 8/16/32/64 lanes, and long rows.
constexpr int64_t kLengths[] = {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4097};

// --- Float comparison -------------------------------------------------------------------------------------------

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
float float_of(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// Position on the number line counted in representable floats (±0 both at 0), so |a - b| in ulps is a difference.
int64_t float_index(float v) {
  const uint32_t b = bits_of(v);
  const int64_t magnitude = b & 0x7fffffffu;
  return (b >> 31) ? -magnitude : magnitude;
}

// ulps between a and b; two NaNs are 0 apart, a NaN and a number infinitely far.
int64_t ulp_distance(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) ? 0 : std::numeric_limits<int64_t>::max();
  return std::llabs(float_index(a) - float_index(b));
}

// Same bits, except that any NaN equals any NaN (payload propagation through + and × is not specified).
bool same_float(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits_of(a) == bits_of(b); }

// Same value for the reductions' results: NaNs equal, infinities by sign, finite within `tolerance`.
bool close_double(double actual, double expected, double tolerance) {
  if (std::isnan(expected) || std::isnan(actual)) return std::isnan(expected) && std::isnan(actual);
  if (std::isinf(expected) || std::isinf(actual)) return actual == expected;
  return std::fabs(actual - expected) <= tolerance;
}

// --- Inputs and guarded outputs ---------------------------------------------------------------------------------

// Values where exp, SiLU and conversions change behaviour: signed zeros, infinities, NaN, the exp overflow and
// underflow thresholds and their neighbourhood, huge magnitudes, and subnormals.
const float kSpecials[] = {0.0f,     -0.0f,    INFINITY, -INFINITY, NAN,        -100.0f,   -88.0f,  88.0f,
                           100.0f,   -88.73f,  88.72f,   88.73f,    -87.33f,    -103.9f,   -104.5f, 89.0f,
                           1e-45f,   -1e-45f,  1e-40f,   -3e-39f,   FLT_MIN,    -FLT_MIN,  FLT_MAX, -FLT_MAX,
                           1e30f,    -1e30f,   65504.0f, 65520.0f,  -6.1e-5f,   1.0f,      -1.0f,   0.5f};

enum class Data { Random, Special };

// n floats: normal(0, scale), or (Data::Special) the same with every third element a special value.
std::vector<float> make_input(int64_t n, uint32_t seed, float scale, Data data) {
  std::vector<float> v = random_vector(static_cast<size_t>(n), seed, scale);
  if (data == Data::Special) {
    const size_t count = sizeof kSpecials / sizeof kSpecials[0];
    for (size_t i = 0; i < v.size(); i += 3) v[i] = kSpecials[(i / 3 + seed) % count];
  }
  return v;
}


// ulp of a value's magnitude as a float (spacing of floats at |v|), for tolerances in absolute terms.
double ulp_of(double v) {
  v = std::fabs(v);
  if (!(v >= FLT_MIN)) return 0x1p-149;
  int exponent;
  std::frexp(v, &exponent);  // v = m·2^exponent, m in [0.5, 1)
  return std::ldexp(1.0, exponent - 24);
}

// An array of T with guard elements on both sides holding a marker pattern, to catch writes outside [0, n).
// `offset` shifts the data by that many elements from the allocation's alignment (+1: misaligned for any vector).
template <typename T>
class Guarded {
 public:
  Guarded(int64_t n, int offset) : n_(n), storage_(static_cast<size_t>(n + 2 * kGuard + offset), marker()) {
    data_ = storage_.data() + kGuard + offset;
  }
  Guarded(const std::vector<T>& values, int offset) : Guarded(static_cast<int64_t>(values.size()), offset) {
    std::copy(values.begin(), values.end(), data_);
  }
  T* data() { return data_; }
  std::vector<T> values() const { return std::vector<T>(data_, data_ + n_); }
  bool guards_intact() const {
    const T mark = marker();
    auto intact = [&](const T* p) { return std::memcmp(p, &mark, sizeof(T)) == 0; };
    for (const T* p = storage_.data(); p < data_; ++p) {
      if (!intact(p)) return false;
    }
    for (const T* p = data_ + n_; p < storage_.data() + storage_.size(); ++p) {
      if (!intact(p)) return false;
    }
    return true;
  }

 private:
  static constexpr int kGuard = 16;
  // A signalling-NaN pattern for floats (no kernel produces one from these inputs); an f16 sNaN for halves.
  static T marker() {
    if constexpr (sizeof(T) == 4) return float_of(0x7fa5a5a5u);
    else return T(0x7d5a);
  }
  int64_t n_;
  std::vector<T> storage_;
  T* data_;
};

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// How an elementwise entry is called: separate buffers (input at +0, output at +1 element, so the two are never
// mutually aligned), both at +1, or in place (y == x).
enum class Layout { Separate, Offset, InPlace };
const Layout kLayouts[] = {Layout::Separate, Layout::Offset, Layout::InPlace};
const char* layout_name(Layout l) {
  return l == Layout::Separate ? "separate" : l == Layout::Offset ? "offset +1" : "in place";
}

// Calls call(x, y) on a copy of `input` laid out as `layout`; returns y. Checks the guards, and that a separate
// input is left as it was.
template <typename Call>
std::vector<float> run_layout(const std::vector<float>& input, Layout layout, Call call) {
  Guarded<float> x(input, layout == Layout::Separate ? 0 : 1);
  if (layout == Layout::InPlace) {
    call(x.data(), x.data());
    CHECK(x.guards_intact());
    return x.values();
  }
  Guarded<float> y(static_cast<int64_t>(input.size()), 1);
  call(x.data(), y.data());
  CHECK(x.guards_intact());
  CHECK(y.guards_intact());
  CHECK(same_bits(x.values(), input));
  return y.values();
}

std::vector<const kernels::KernelTable*> simd_levels() {
  std::vector<const kernels::KernelTable*> out;
  for (const kernels::KernelTable* t : all_levels()) {
    if (t->isa != kernels::Isa::Scalar) out.push_back(t);
  }
  return out;
}

// Both non-finite in the same way (NaN, or the same infinity), or both finite: the caller then applies its tolerance.
bool same_class(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return true;
}

// One elementwise row entry under test: how to call it on a table, and whether a result is close enough to the
// reference's for input x.
struct RowEntry {
  const char* name;
  void (*call)(const kernels::KernelTable& k, int64_t n, const float* x, float* y);
  bool (*close)(float actual, float expected, float x);
};

constexpr float kScalar = -1.25f;                       // add_scalar / mul_scalar operand
constexpr float kScale = 2.3f, kShift = -0.375f;        // affine / affine_silu

bool exactly(float actual, float expected, float) { return same_float(actual, expected); }
bool silu_close(float actual, float expected, float) { return ulp_distance(actual, expected) <= kSiluUlp; }

// The reference rounds x·scale before adding shift on x86 (no FMA there) but g++ fuses the two on ARM64; the SIMD
// levels always fuse. The two differ by at most half an ulp of x·scale, plus the final rounding.
bool affine_close(float actual, float expected, float x) {
  if (!same_class(actual, expected)) return false;
  if (!std::isfinite(expected)) return true;
  return std::fabs(double(actual) - expected) <= ulp_of(expected) + ulp_of(double(x) * kScale);
}

// The same difference in the argument of SiLU, whose slope is at most 1.1 in magnitude, on top of SiLU's own error.
bool affine_silu_close(float actual, float expected, float x) {
  if (!same_class(actual, expected)) return false;
  if (!std::isfinite(expected)) return true;
  if (ulp_distance(actual, expected) <= kSiluUlp) return true;
  const double product = double(x) * kScale;
  const double argument_error = ulp_of(product) + ulp_of(product + kShift);
  return std::fabs(double(actual) - expected) <= kSiluUlp * ulp_of(expected) + 1.1 * argument_error;
}

const RowEntry kRowEntries[] = {
    {"silu", [](const kernels::KernelTable& k, int64_t n, const float* x, float* y) { k.silu(n, x, y); }, silu_close},
    {"add_scalar", [](const kernels::KernelTable& k, int64_t n, const float* x, float* y) { k.add_scalar(n, x, kScalar, y); },
     exactly},
    {"mul_scalar", [](const kernels::KernelTable& k, int64_t n, const float* x, float* y) { k.mul_scalar(n, x, kScalar, y); },
     exactly},
    {"affine", [](const kernels::KernelTable& k, int64_t n, const float* x, float* y) { k.affine(n, x, kScale, kShift, y); },
     affine_close},
    {"affine_silu",
     [](const kernels::KernelTable& k, int64_t n, const float* x, float* y) { k.affine_silu(n, x, kScale, kShift, y); },
     affine_silu_close},
};

}  // namespace

TEST_CASE("every table fills every entry", "[kernels]") {
  for (const kernels::KernelTable* t : all_levels()) {
    INFO("level " << t->isa_name);
    CHECK(t->gemm.run != nullptr);
    CHECK(t->gemm.mr > 0);
    CHECK(t->gemm.nr > 0);
    CHECK(t->silu);
    CHECK(t->add);
    CHECK(t->mul);
    CHECK(t->add_scalar);
    CHECK(t->mul_scalar);
    CHECK(t->affine);
    CHECK(t->affine_silu);
    CHECK(t->sum_f64);
    CHECK(t->sum_squared_deviation_f64);
    CHECK(t->max);
    CHECK(t->exp_shifted_sum);
    CHECK(t->f16_to_f32);
    CHECK(t->f32_to_f16);
    CHECK(t->conv_direct);
    CHECK(t->transpose);
    CHECK(t->winograd_input);
    CHECK(t->winograd_output);
    CHECK(t->stream_copy);
    CHECK(t->store_fence);
  }
}

TEST_CASE("transpose: every level copies exactly what the reference does, tiles and ragged edges", "[kernels]") {
  const kernels::KernelTable& ref = kernels::reference();
  // Around each level's tile (4, 8, 16): one short, exact, one over, and several tiles with odd edges.
  const int64_t sizes[] = {1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64};
  for (const kernels::KernelTable* level : simd_levels()) {
    for (int64_t rows : sizes) {
      for (int64_t cols : sizes) {
        INFO(level->isa_name << " " << rows << " x " << cols);
        const int64_t src_stride = cols + 3, dst_stride = rows + 5;  // padded rows: strides are honoured
        const std::vector<float> src = make_input(rows * src_stride, static_cast<uint32_t>(rows * 97 + cols),
                                                  1.0f, Data::Special);
        std::vector<float> expected(static_cast<size_t>(cols * dst_stride), -1.0f), actual = expected;
        ref.transpose(rows, cols, src.data(), src_stride, expected.data(), dst_stride);
        level->transpose(rows, cols, src.data(), src_stride, actual.data(), dst_stride);
        bool same = true, placed = true;
        for (size_t i = 0; i < expected.size(); ++i) same = same && same_float(actual[i], expected[i]);
        for (int64_t c = 0; c < cols; ++c) {
          for (int64_t r = 0; r < rows; ++r) {
            placed = placed && same_float(expected[c * dst_stride + r], src[r * src_stride + c]);
          }
        }
        CHECK(same);    // padding between output rows untouched too
        CHECK(placed);  // and the reference is a transpose
      }
    }
  }
}

TEST_CASE("winograd tile-row transforms: every level gives the reference's bits; the reference is B^T d B, A^T m A",
          "[kernels]") {
  const kernels::KernelTable& ref = kernels::reference();
  // Around each level's widths (16, 8, 4, then one by one): short, exact, over, and mixed remainders.
  const int64_t tile_counts[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 23, 28, 31, 32, 33, 64};
  for (int64_t tiles : tile_counts) for (Data data : {Data::Random, Data::Special}) {
    const int64_t row_stride = 2 * tiles + 2 + 3, out_stride = tiles + 5;  // padded: strides are honoured
    const std::vector<float> rows = make_input(4 * row_stride, static_cast<uint32_t>(tiles * 31 + 1), 1.0f, data);
    const std::vector<float> m = make_input(16 * out_stride, static_cast<uint32_t>(tiles * 31 + 2), 1.0f, data);
    std::vector<float> v_expected(static_cast<size_t>(16 * out_stride), -1.0f);
    std::vector<float> y_expected(static_cast<size_t>(2 * (2 * tiles + 1)), -1.0f);
    ref.winograd_input(rows.data(), row_stride, tiles, v_expected.data(), out_stride);
    ref.winograd_output(m.data(), out_stride, tiles, 0.25f, y_expected.data(), 2 * tiles + 1);
    // The reference against the matrices, in double, on finite data (a few rounded adds: within 1e-6 of the scale).
    const double bt[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
    const double at[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
    bool transformed = true;
    for (int64_t t = 0; data == Data::Random && t < tiles; ++t) {
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          double v = 0.0;
          for (int r = 0; r < 4; ++r) {
            for (int c = 0; c < 4; ++c) v += bt[i][r] * rows[r * row_stride + 2 * t + c] * bt[j][c];
          }
          const double got = v_expected[(4 * i + j) * out_stride + t];
          transformed = transformed && std::fabs(got - v) <= 1e-6 * (1.0 + std::fabs(v));
        }
      }
      for (int r = 0; r < 2; ++r) {
        for (int c = 0; c < 2; ++c) {
          double y = 0.25;
          for (int i = 0; i < 4; ++i) {
            for (int j = 0; j < 4; ++j) y += at[r][i] * m[(4 * i + j) * out_stride + t] * at[c][j];
          }
          const double got = y_expected[r * (2 * tiles + 1) + 2 * t + c];
          transformed = transformed && std::fabs(got - y) <= 1e-5 * (1.0 + std::fabs(y));
        }
      }
    }
    INFO("tiles " << tiles << (data == Data::Special ? " with special values" : ""));
    CHECK(transformed);
    for (const kernels::KernelTable* level : simd_levels()) {
      INFO(level->isa_name);
      std::vector<float> v(v_expected.size(), -1.0f), y(y_expected.size(), -1.0f);
      level->winograd_input(rows.data(), row_stride, tiles, v.data(), out_stride);
      level->winograd_output(m.data(), out_stride, tiles, 0.25f, y.data(), 2 * tiles + 1);
      bool same_v = true, same_y = true;
      for (size_t i = 0; i < v.size(); ++i) same_v = same_v && same_float(v[i], v_expected[i]);
      for (size_t i = 0; i < y.size(); ++i) same_y = same_y && same_float(y[i], y_expected[i]);
      CHECK(same_v);  // padding between output rows untouched too
      CHECK(same_y);
    }
  }
}

TEST_CASE("silu, add_scalar, mul_scalar, affine, affine_silu match the reference", "[kernels]") {
  const kernels::KernelTable& ref = kernels::reference();
  for (const kernels::KernelTable* level : simd_levels()) {
    for (const RowEntry& entry : kRowEntries) {
      for (int64_t n : kLengths) {
        for (Data data : {Data::Random, Data::Special}) {
          // Scale 40 reaches past both exp thresholds (±88) in the SiLU entries; scale 1 is the common case.
          for (float scale : {1.0f, 40.0f}) {
            const std::vector<float> x = make_input(n, static_cast<uint32_t>(n * 7 + 1), scale, data);
            std::vector<float> expected(x.size());
            entry.call(ref, n, x.data(), expected.data());
            for (Layout layout : kLayouts) {
              INFO(level->isa_name << " " << entry.name << " n=" << n << " scale=" << scale << " "
                                   << (data == Data::Special ? "specials " : "") << layout_name(layout));
              const std::vector<float> actual =
                  run_layout(x, layout, [&](const float* in, float* out) { entry.call(*level, n, in, out); });
              int64_t bad = -1;
              for (int64_t i = 0; i < n && bad < 0; ++i) {
                if (!entry.close(actual[i], expected[i], x[i])) bad = i;
              }
              if (bad >= 0) INFO("x[" << bad << "]=" << x[bad] << ": got " << actual[bad] << ", reference " << expected[bad]);
              CHECK(bad < 0);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("add and mul match the reference bit for bit, in place on either operand too", "[kernels]") {
  const kernels::KernelTable& ref = kernels::reference();
  for (const kernels::KernelTable* level : simd_levels()) {
    for (bool multiply : {false, true}) {
      auto call = [multiply](const kernels::KernelTable& k, int64_t n, const float* a, const float* b, float* y) {
        multiply ? k.mul(n, a, b, y) : k.add(n, a, b, y);
      };
      for (int64_t n : kLengths) {
        for (Data data : {Data::Random, Data::Special}) {
          const std::vector<float> a = make_input(n, static_cast<uint32_t>(n + 3), 10.0f, data);
          const std::vector<float> b = make_input(n, static_cast<uint32_t>(n + 4), 10.0f, data);
          std::vector<float> expected(a.size());
          call(ref, n, a.data(), b.data(), expected.data());
          // 0: separate, a and b at +0 and y at +1; 1: all at +1; 2: y == a; 3: y == b.
          for (int variant = 0; variant < 4; ++variant) {
            INFO(level->isa_name << (multiply ? " mul" : " add") << " n=" << n << " variant " << variant
                                 << (data == Data::Special ? " specials" : ""));
            Guarded<float> ga(a, variant == 0 ? 0 : 1), gb(b, variant == 0 ? 0 : 1), gy(n, 1);
            float* out = variant == 2 ? ga.data() : variant == 3 ? gb.data() : gy.data();
            call(*level, n, ga.data(), gb.data(), out);
            CHECK(ga.guards_intact());
            CHECK(gb.guards_intact());
            CHECK(gy.guards_intact());
            std::vector<float> actual(out, out + n);
            bool same = true;
            for (int64_t i = 0; i < n; ++i) same = same && same_float(actual[i], expected[i]);
            CHECK(same);
          }
        }
      }
    }
  }
}

TEST_CASE("stream_copy copies every length at every alignment of y, and nothing outside", "[kernels]") {
  for (const kernels::KernelTable* level : all_levels()) {
    for (int64_t n : kLengths) {
      const std::vector<float> x = make_input(n, static_cast<uint32_t>(n + 5), 10.0f, Data::Special);
      // Offsets 0–16 floats of y and 0 or 3 of x: every position in a 64-byte line, aligned or not, head and tail.
      for (int y_offset = 0; y_offset <= 16; ++y_offset) {
        for (int x_offset : {0, 3}) {
          INFO(level->isa_name << " n=" << n << " y at +" << y_offset << " x at +" << x_offset);
          Guarded<float> gx(x, x_offset), gy(n, y_offset);
          level->stream_copy(n, gx.data(), gy.data());
          level->store_fence();
          CHECK(gy.guards_intact());
          CHECK((n == 0 || std::memcmp(gy.data(), x.data(), static_cast<size_t>(n) * sizeof(float)) == 0));
        }
      }
    }
  }
}

TEST_CASE("sum_f64 and sum_squared_deviation_f64 match the reference in double", "[kernels]") {
  const kernels::KernelTable& ref = kernels::reference();
  for (const kernels::KernelTable* level : simd_levels()) {
    for (int64_t n : kLengths) {
      for (Data data : {Data::Random, Data::Special}) {
        for (float scale : {1.0f, 1000.0f}) {
          std::vector<float> x = make_input(n, static_cast<uint32_t>(n * 5 + 2), scale, data);
          // An offset mean, as GroupNorm sees after a bias: the deviations then do not average to zero lane-wise.
          for (float& v : x) v += 3.0f * scale;
          Guarded<float> gx(x, 1);
          INFO(level->isa_name << " n=" << n << " scale=" << scale << (data == Data::Special ? " specials" : ""));
          double magnitude = 0.0;
          for (float v : x) magnitude += std::fabs(double(v));
          const double sum = level->sum_f64(n, gx.data());
          const double sum_ref = ref.sum_f64(n, x.data());
          CHECK(close_double(sum, sum_ref, kSumF64Relative * magnitude));
          const double mean = n > 0 ? sum_ref / double(n) : 0.0;
          const double deviation = level->sum_squared_deviation_f64(n, gx.data(), mean);
          const double deviation_ref = ref.sum_squared_deviation_f64(n, x.data(), mean);
          CHECK(close_double(deviation, deviation_ref, kSumF64Relative * std::fabs(deviation_ref)));
          CHECK(gx.guards_intact());
        }
      }
    }
  }
}

TEST_CASE("max matches the reference: NaN in x[0] wins, later NaNs are skipped", "[kernels]") {
  const kernels::KernelTable& ref = kernels::reference();
  // Same value; the sign of a zero maximum may differ (which element of equal value is kept depends on the lane
  // order), which no user of max can observe through x - max.
  auto same_max = [](float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; };
  for (const kernels::KernelTable* level : simd_levels()) {
    for (int64_t n : kLengths) {
      if (n == 0) continue;  // max requires n >= 1
      for (Data data : {Data::Random, Data::Special}) {
        for (uint32_t seed : {1u, 2u, 3u}) {
          std::vector<float> x = make_input(n, static_cast<uint32_t>(n * 11) + seed, 5.0f, data);
          // The maximum in the last element: the tail must be read.
          if (seed == 3 && n > 1) x[n - 1] = 1e6f;
          Guarded<float> gx(x, 1);
          INFO(level->isa_name << " n=" << n << " seed " << seed << (data == Data::Special ? " specials" : "")
                               << " x[0]=" << x[0]);
          CHECK(same_max(level->max(n, gx.data()), ref.max(n, x.data())));
          CHECK(gx.guards_intact());
        }
      }
      // All-negative rows (a zero-filled lane would win) and a NaN first element.
      std::vector<float> negative(static_cast<size_t>(n), -7.0f);
      negative[static_cast<size_t>(n) / 2] = -3.0f;
      CHECK(level->max(n, negative.data()) == -3.0f);
      negative[0] = NAN;
      CHECK(std::isnan(level->max(n, negative.data())));
      if (n > 1) {
        std::vector<float> later_nan(static_cast<size_t>(n), -INFINITY);
        later_nan[static_cast<size_t>(n) - 1] = NAN;
        CHECK(level->max(n, later_nan.data()) == -INFINITY);
      }
    }
  }
}

TEST_CASE("exp_shifted_sum matches the reference: every exp, and the f32 sum", "[kernels]") {
  const kernels::KernelTable& ref = kernels::reference();
  for (const kernels::KernelTable* level : simd_levels()) {
    for (int64_t n : kLengths) {
      for (Data data : {Data::Random, Data::Special}) {
        const std::vector<float> x = make_input(n, static_cast<uint32_t>(n * 13 + 5), 30.0f, data);
        // Softmax's shift (the row max: arguments <= 0, deep underflow included), none, and one that overflows.
        const float row_max = n > 0 ? ref.max(n, x.data()) : 0.0f;
        for (float shift : {row_max, 0.0f, -60.0f}) {
          std::vector<float> expected(x.size());
          const float sum_ref = ref.exp_shifted_sum(n, x.data(), shift, expected.data());
          double terms = 0.0;
          for (float v : expected) terms += v;
          for (Layout layout : kLayouts) {
            INFO(level->isa_name << " n=" << n << " shift=" << shift << (data == Data::Special ? " specials " : " ")
                                 << layout_name(layout));
            float sum = 0.0f;
            const std::vector<float> actual = run_layout(
                x, layout, [&](const float* in, float* out) { sum = level->exp_shifted_sum(n, in, shift, out); });
            int64_t bad = -1;
            for (int64_t i = 0; i < n && bad < 0; ++i) {
              if (ulp_distance(actual[i], expected[i]) > kExpUlp) bad = i;
            }
            if (bad >= 0) INFO("x[" << bad << "]=" << x[bad] << ": got " << actual[bad] << ", reference " << expected[bad]);
            CHECK(bad < 0);
            CHECK(close_double(sum, sum_ref, f32_sum_tolerance(n, terms)));
          }
        }
      }
    }
  }
}

TEST_CASE("vectorised exp and SiLU against double precision across the float range", "[kernels]") {
  // Every 4099th float pattern of [-104, 89] (about 540k values), plus the range ends.
  std::vector<float> x;
  for (uint32_t b = 0; b <= bits_of(89.0f); b += 4099) x.push_back(float_of(b));
  for (uint32_t b = 0x80000000u; b <= bits_of(-104.0f); b += 4099) x.push_back(float_of(b));
  for (float v : {89.0f, 88.72f, 88.7228f, -87.3365f, -103.28f, -104.0f}) x.push_back(v);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> e(x.size()), s(x.size());
  for (const kernels::KernelTable* level : simd_levels()) {
    INFO(level->isa_name);
    level->exp_shifted_sum(n, x.data(), 0.0f, e.data());
    level->silu(n, x.data(), s.data());
    int64_t worst_exp = 0, worst_silu = 0;
    float worst_exp_at = 0.0f, worst_silu_at = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t exp_error = ulp_distance(e[i], static_cast<float>(std::exp(double(x[i]))));
      if (exp_error > worst_exp) worst_exp = exp_error, worst_exp_at = x[i];
      // Below -88.7 the reference formula's exp(-x) overflows and SiLU is -0 by definition, not x·e^x.
      if (x[i] < -88.0f) continue;
      const double exact_silu = double(x[i]) / (1.0 + std::exp(-double(x[i])));
      const int64_t silu_error = ulp_distance(s[i], static_cast<float>(exact_silu));
      if (silu_error > worst_silu) worst_silu = silu_error, worst_silu_at = x[i];
    }
    INFO("worst exp error " << worst_exp << " ulp at " << worst_exp_at << ", worst SiLU error " << worst_silu
                            << " ulp at " << worst_silu_at);
    CHECK(worst_exp <= kExpUlpVsExact);
    CHECK(worst_silu <= kSiluUlp);
  }
}

TEST_CASE("silu and exp at the edges: no NaN from finite input, saturation like the reference", "[kernels]") {
  for (const kernels::KernelTable* level : simd_levels()) {
    INFO(level->isa_name);
    const std::vector<float> x = {-1e30f, -FLT_MAX, -1000.0f, -104.0f, -100.0f, -89.0f, -88.8f,
                                  88.8f,  89.0f,    100.0f,   1000.0f, 1e30f,   FLT_MAX};
    const int64_t n = static_cast<int64_t>(x.size());
    std::vector<float> y(x.size());
    level->silu(n, x.data(), y.data());
    for (size_t i = 0; i < x.size(); ++i) {
      INFO("silu(" << x[i] << ") = " << y[i]);
      if (x[i] < 0) CHECK((y[i] == 0.0f && std::signbit(y[i])));  // x / inf: -0, as the reference
      else CHECK(y[i] == x[i]);                                       // exp(-x) vanishes: x itself
    }
    const float special[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f};
    level->silu(5, special, y.data());
    CHECK(y[0] == INFINITY);
    CHECK(std::isnan(y[1]));  // -inf / inf, as the reference
    CHECK(std::isnan(y[2]));
    CHECK((y[3] == 0.0f && !std::signbit(y[3])));
    CHECK((y[4] == 0.0f && std::signbit(y[4])));
    // Overflow to inf, underflow to 0 below -103.97, and subnormal results in between rounded, not flushed
    // (exp(-100) = 3.78e-44 is 27 units of 2^-149).
    level->exp_shifted_sum(n, x.data(), 0.0f, y.data());
    for (size_t i = 0; i < x.size(); ++i) {
      INFO("exp(" << x[i] << ") = " << y[i]);
      if (x[i] <= -104.0f) CHECK(y[i] == 0.0f);
      else if (x[i] > 0.0f) CHECK(y[i] == INFINITY);
      else CHECK(ulp_distance(y[i], std::exp(x[i])) <= kExpUlp);
    }
  }
}

TEST_CASE("f16_to_f32 is bit-exact on every f16, every length and alignment", "[kernels]") {
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> expected(all.size());
  for (size_t i = 0; i < all.size(); ++i) expected[i] = f16_to_f32(all[i]);
  for (const kernels::KernelTable* level : all_levels()) {
    INFO(level->isa_name);
    for (int offset : {0, 1}) {
      Guarded<float> y(65536, offset);
      level->f16_to_f32(65536, all.data(), y.data());
      CHECK(same_bits(y.values(), expected));  // signalling NaNs keep their payload, unquieted
      CHECK(y.guards_intact());
    }
    for (int64_t n : kLengths) {
      // Slices through the NaN/infinity block and the subnormals, at an odd element offset.
      for (size_t wanted : {size_t(0x7bf0), size_t(0xfc01), size_t(1)}) {
        const size_t start = std::min(wanted, all.size() - static_cast<size_t>(n));
        const std::vector<uint16_t> slice(all.begin() + start, all.begin() + start + n);
        Guarded<uint16_t> x(slice, 1);
        Guarded<float> y(n, 1);
        level->f16_to_f32(n, x.data(), y.data());
        INFO("n=" << n << " from " << start);
        CHECK(same_bits(y.values(), std::vector<float>(expected.begin() + start, expected.begin() + start + n)));
        CHECK(y.guards_intact());
        CHECK(x.guards_intact());
      }
    }
  }
}

TEST_CASE("widen_block_scales gives the reference's bits on every level, with and without minima", "[kernels]") {
  // Scales and minima over every finite f16 class (zeros, subnormals, normals up to 65504, both signs) and the
  // infinities; sums over the whole range a block of 32 int8 values can have. Not NaN: quantisers never store one,
  // and which of two NaN operands an FMA passes on is the instruction form's choice.
  std::vector<uint16_t> halves;
  for (uint32_t h = 0; h < 0x10000; h += 7) {
    if ((h & 0x7c00) != 0x7c00 || (h & 0x3ff) == 0) halves.push_back(static_cast<uint16_t>(h));
  }
  for (uint16_t special : {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x7c00, 0xfc00})
    halves.push_back(special);
  uint32_t state = 12345;
  auto next = [&]() { return state = state * 1664525u + 1013904223u; };
  for (const kernels::KernelTable* level : all_levels()) {
    for (bool with_min : {false, true}) {
      for (int64_t n : kLengths) {
        INFO(level->isa_name << (with_min ? " with minima" : " without") << " n=" << n);
        std::vector<uint16_t> scales(static_cast<size_t>(n)), minima(static_cast<size_t>(n));
        std::vector<int16_t> sums(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          scales[i] = halves[next() % halves.size()];
          minima[i] = halves[next() % halves.size()];
          sums[i] = static_cast<int16_t>(static_cast<int32_t>(next() % 8193) - 4096);
        }
        const size_t count = static_cast<size_t>(n);
        std::vector<float> d_ref(count), min_ref(count), lo_ref(count);
        kernels::reference().widen_block_scales(n, scales.data(), with_min ? minima.data() : nullptr, sums.data(),
                                                d_ref.data(), min_ref.data(), lo_ref.data());
        Guarded<uint16_t> d16(scales, 1), min16(minima, 1);
        Guarded<int16_t> qsum(sums, 1);
        Guarded<float> d(n, 1), min(n, 1), lo(n, 0);
        level->widen_block_scales(n, d16.data(), with_min ? min16.data() : nullptr, qsum.data(), d.data(), min.data(),
                                  lo.data());
        CHECK(same_bits(d.values(), d_ref));
        CHECK(same_bits(lo.values(), lo_ref));
        if (with_min) CHECK(same_bits(min.values(), min_ref));
        CHECK(d.guards_intact());
        CHECK(lo.guards_intact());
        CHECK(min.guards_intact());
        if (!with_min) {  // never written: still Guarded's markers
          bool untouched = true;
          for (int64_t i = 0; i < n; ++i) untouched = untouched && bits_of(min.data()[i]) == 0x7fa5a5a5u;
          CHECK(untouched);
        }
        for (int64_t i = 0; i < n; ++i) {
          const float scale = f16_to_f32(scales[i]), block_min = f16_to_f32(minima[i]);
          const float product = scale * static_cast<float>(sums[i]);
          const float expected = with_min ? std::fma(32.0f, block_min, product) : product;  // one rounding of the sum
          if (!(std::isnan(expected) && std::isnan(lo_ref[i]))) CHECK(bits_of(lo_ref[i]) == bits_of(expected));
        }
      }
    }
  }
}

TEST_CASE("f32_to_f16 is bit-exact at every rounding boundary, every length and alignment", "[kernels]") {
  // For every finite f16 value v and its successor: v, the midpoint (an exact tie), and their neighbouring floats;
  // for both signs. Then NaNs with assorted payloads, and a stride through all 2^32 patterns.
  std::vector<float> x;
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float v = f16_to_f32(static_cast<uint16_t>(h)), next = f16_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((double(v) + double(next)) / 2.0);
    for (float p : {v, mid}) {
      for (int delta : {-1, 0, 1}) {
        const uint32_t b = bits_of(p) + static_cast<uint32_t>(delta);
        if (p == 0.0f && delta < 0) continue;
        x.push_back(float_of(b));
        x.push_back(float_of(b | 0x80000000u));
      }
    }
  }
  for (uint32_t payload : {1u, 0x1fffu, 0x2000u, 0x3fe000u, 0x400000u, 0x400001u, 0x7fffffu}) {
    x.push_back(float_of(0x7f800000u | payload));
    x.push_back(float_of(0xff800000u | payload));
  }
  for (uint64_t b = 0; b < (uint64_t(1) << 32); b += 65521) x.push_back(float_of(static_cast<uint32_t>(b)));
  std::vector<uint16_t> expected(x.size());
  for (size_t i = 0; i < x.size(); ++i) expected[i] = f32_to_f16(x[i]);
  const int64_t n_all = static_cast<int64_t>(x.size());
  for (const kernels::KernelTable* level : all_levels()) {
    INFO(level->isa_name);
    for (int offset : {0, 1}) {
      Guarded<uint16_t> y(n_all, offset);
      level->f32_to_f16(n_all, x.data(), y.data());
      const std::vector<uint16_t> actual = y.values();
      size_t bad = actual.size();
      for (size_t i = 0; i < actual.size() && bad == actual.size(); ++i) {
        if (actual[i] != expected[i]) bad = i;
      }
      if (bad < actual.size()) {
        INFO("x = " << x[bad] << " (bits " << bits_of(x[bad]) << "): got " << actual[bad] << ", reference "
                    << expected[bad]);
        CHECK(false);
      }
      CHECK(y.guards_intact());
    }
    for (int64_t n : kLengths) {
      const std::vector<float> slice(x.end() - n, x.end());
      Guarded<float> gx(slice, 1);
      Guarded<uint16_t> gy(n, 1);
      level->f32_to_f16(n, gx.data(), gy.data());
      INFO("n=" << n);
      CHECK(same_bits(gy.values(), std::vector<uint16_t>(expected.end() - n, expected.end())));
      CHECK(gy.guards_intact());
    }
  }
}

TEST_CASE("every level's GEMM micro-kernel matches the reference micro-kernel", "[kernels]") {
  const kernels::GemmMicroKernel& reference = kernels::reference().gemm;
  for (const kernels::KernelTable* level : simd_levels()) {
    const int mr = level->gemm.mr, nr = level->gemm.nr;
    const int64_t ldc = nr + 5;  // row padding that must stay untouched
    for (int64_t kc : {1, 2, 7, 255, 256, 257}) {
      for (bool accumulate : {false, true}) {
        INFO(level->isa_name << " " << mr << "x" << nr << " kc=" << kc << (accumulate ? " accumulate" : ""));
        const std::vector<float> a = random_vector(static_cast<size_t>(kc * mr), static_cast<uint32_t>(kc));
        const std::vector<float> b = random_vector(static_cast<size_t>(kc * nr), static_cast<uint32_t>(kc + 1));
        const std::vector<float> c0 = random_vector(static_cast<size_t>(mr * ldc), static_cast<uint32_t>(kc + 2));
        std::vector<float> c = c0;
        level->gemm.run(kc, a.data(), b.data(), c.data(), ldc, accumulate);

        // The reference micro-kernel has its own (smaller) tile: cover the level's tile with reference tiles,
        // repacking the panels and zero-padding past the level's edges.
        std::vector<float> expected = c0;
        const int rm = reference.mr, rn = reference.nr;
        for (int m0 = 0; m0 < mr; m0 += rm) {
          for (int n0 = 0; n0 < nr; n0 += rn) {
            std::vector<float> ra(static_cast<size_t>(kc * rm), 0.0f), rb(static_cast<size_t>(kc * rn), 0.0f);
            std::vector<float> rc(static_cast<size_t>(rm * rn), 0.0f);
            for (int64_t k = 0; k < kc; ++k) {
              for (int m = 0; m < rm && m0 + m < mr; ++m) ra[k * rm + m] = a[k * mr + m0 + m];
              for (int j = 0; j < rn && n0 + j < nr; ++j) rb[k * rn + j] = b[k * nr + n0 + j];
            }
            for (int m = 0; m < rm && m0 + m < mr; ++m) {
              for (int j = 0; j < rn && n0 + j < nr; ++j) rc[m * rn + j] = c0[(m0 + m) * ldc + n0 + j];
            }
            reference.run(kc, ra.data(), rb.data(), rc.data(), rn, accumulate);
            for (int m = 0; m < rm && m0 + m < mr; ++m) {
              for (int j = 0; j < rn && n0 + j < nr; ++j) expected[(m0 + m) * ldc + n0 + j] = rc[m * rn + j];
            }
          }
        }
        int64_t bad = -1;
        for (int m = 0; m < mr; ++m) {
          for (int64_t j = 0; j < ldc; ++j) {
            const size_t at = static_cast<size_t>(m * ldc + j);
            if (j >= nr) {
              if (bits_of(c[at]) != bits_of(c0[at])) bad = static_cast<int64_t>(at);  // padding written
              continue;
            }
            double magnitude = accumulate ? std::fabs(double(c0[at])) : 0.0;
            for (int64_t k = 0; k < kc; ++k) magnitude += std::fabs(double(a[k * mr + m]) * b[k * nr + j]);
            if (!(std::fabs(double(c[at]) - expected[at]) <= kGemmRelative * magnitude)) bad = static_cast<int64_t>(at);
          }
        }
        if (bad >= 0) INFO("element " << bad << ": got " << c[bad] << ", reference " << expected[bad]);
        CHECK(bad < 0);
      }
    }
  }
}

TEST_CASE("every level's direct convolution matches the reference on tail shapes", "[kernels][conv]") {
  const kernels::KernelTable& reference = kernels::reference();
  struct Geometry {
    int64_t kh, kw, stride;
  };
  for (const kernels::KernelTable* level : simd_levels()) {
    REQUIRE(level->conv_direct);
    for (const Geometry geo : {Geometry{3, 3, 1}, Geometry{3, 3, 2}, Geometry{1, 1, 1}, Geometry{2, 3, 2}}) {
      for (int64_t width : {1, 4, 5, 15, 16, 17, 24, 25, 28, 31, 33, 48, 49}) {
        for (int64_t ci : {1, 2, 3, 4}) {
          for (int64_t co : {1, 3, 4, 5, 8, 9, 13}) {
            const bool bias = (width + co) % 2 == 0, residual = (width + ci) % 3 != 0;
            INFO(level->isa_name << " k" << geo.kh << "x" << geo.kw << " stride " << geo.stride << " width " << width
                                 << " ci " << ci << " co " << co << (bias ? " bias" : "") << (residual ? " residual" : ""));
            const int64_t rows = 3, k_total = ci * geo.kh * geo.kw;
            const int64_t lanes = ((width + 15) / 16 * 16 + (geo.kw - 1) / geo.stride + 15) / 16 * 16;
            const int64_t staged_rows = (rows - 1) * geo.stride + geo.kh;
            // Random everywhere, the slack past each row's last read lane included: only discarded lanes see it.
            const std::vector<float> x =
                random_vector(static_cast<size_t>(ci * staged_rows * geo.stride * lanes), static_cast<uint32_t>(width));
            const std::vector<float> w = random_vector(static_cast<size_t>(co * k_total), static_cast<uint32_t>(co), 0.3f);
            const std::vector<float> b = random_vector(static_cast<size_t>(co), 5);
            // Output and residual rows padded by 3 floats, channels by 5 more: padding must stay untouched.
            const int64_t row_stride = width + 3, channel_stride = rows * row_stride + 5;
            const std::vector<float> res = random_vector(static_cast<size_t>(co * channel_stride), 6);
            const std::vector<float> y0 = random_vector(static_cast<size_t>(co * channel_stride), 7);
            kernels::DirectConv c;
            c.x = x.data();
            c.x_phase_stride = lanes;
            c.x_row_stride = geo.stride * lanes;
            c.x_channel_stride = staged_rows * c.x_row_stride;
            std::vector<int64_t> taps;
            for (int64_t k = 0; k < k_total; ++k) {
              const int64_t channel = k / (geo.kh * geo.kw), u = k / geo.kw % geo.kh, v = k % geo.kw;
              taps.push_back(channel * c.x_channel_stride + u * c.x_row_stride + (v % geo.stride) * c.x_phase_stride +
                             v / geo.stride);
            }
            c.taps = taps.data();
            c.w = w.data();
            c.bias = bias ? b.data() : nullptr;
            if (residual) {
              c.residual = res.data();
              c.residual_channel_stride = channel_stride;
              c.residual_row_stride = row_stride;
            }
            c.y_channel_stride = channel_stride;
            c.y_row_stride = row_stride;
            c.in_channels = ci;
            c.kernel_h = geo.kh;
            c.kernel_w = geo.kw;
            c.stride = geo.stride;
            c.out_channels = co;
            c.rows = rows;
            c.out_width = width;
            std::vector<float> expected = y0, actual = y0;
            c.y = expected.data();
            reference.conv_direct(c);
            c.y = actual.data();
            level->conv_direct(c);
            int64_t bad = -1;
            for (int64_t o = 0; o < co; ++o) {
              for (int64_t i = 0; i < channel_stride; ++i) {
                const int64_t at = o * channel_stride + i, r = i / row_stride, j = i % row_stride;
                if (r >= rows || j >= width) {
                  if (bits_of(actual[at]) != bits_of(y0[at])) bad = at;  // padding written
                  continue;
                }
                double magnitude = (bias ? std::fabs(double(b[o])) : 0.0) + (residual ? std::fabs(double(res[at])) : 0.0);
                const float* x_rj = x.data() + r * geo.stride * c.x_row_stride + j;
                for (int64_t k = 0; k < k_total; ++k) magnitude += std::fabs(double(w[o * k_total + k]) * x_rj[taps[k]]);
                if (!(std::fabs(double(actual[at]) - expected[at]) <= kGemmRelative * magnitude)) bad = at;
              }
            }
            if (bad >= 0) INFO("element " << bad << ": got " << actual[bad] << ", reference " << expected[bad]);
            CHECK(bad < 0);
          }
        }
      }
    }
  }
}
