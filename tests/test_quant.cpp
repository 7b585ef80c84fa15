// Block-quantised weights: byte layouts against hand-computed blocks, round-trip error budgets (stated below, each
// with the reason it holds) on synthetic and real weight distributions, non-finite inputs, the per-tensor policy,
// and `ddpm quantize`'s whole-model pass.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/half.h"
#include "model/calibrate.h"
#include "model/convert.h"
#include "model/model.h"
#include "model/ddpm_file.h"
#include "quant/blocks.h"
#include "quant/policy.h"
#include "quant/retype.h"
#include "test_util.h"

using namespace ddpm;
using namespace ddpm::quant;

namespace {

const DType kBlockTypes[] = {DType::Q8_0, DType::Q5_0, DType::Q4_1, DType::Q4_0};

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

// A decoder written from docs/FORMAT.md's byte tables alone (offsets, not the structs), so a struct whose layout
// drifted from the documented one fails here.
void decode_block_from_doc(DType type, const uint8_t* b, float* y) {
  const float d = f16_to_f32(le16(b));
  switch (type) {
    case DType::Q8_0:
      for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(static_cast<int8_t>(b[2 + i]));
      break;
    case DType::Q4_0:
      for (int i = 0; i < 16; ++i) {
        y[i] = d * static_cast<float>((b[2 + i] & 15) - 8);
        y[i + 16] = d * static_cast<float>((b[2 + i] >> 4) - 8);
      }
      break;
    case DType::Q4_1: {
      const float m = f16_to_f32(le16(b + 2));
      for (int i = 0; i < 16; ++i) {
        y[i] = d * static_cast<float>(b[4 + i] & 15) + m;
        y[i + 16] = d * static_cast<float>(b[4 + i] >> 4) + m;
      }
      break;
    }
    case DType::Q5_0: {
      const uint32_t qh = b[2] | b[3] << 8 | b[4] << 16 | static_cast<uint32_t>(b[5]) << 24;
      for (int i = 0; i < 16; ++i) {
        const int lo = (b[6 + i] & 15) | ((qh >> i) & 1) << 4;
        const int hi = (b[6 + i] >> 4) | ((qh >> (i + 16)) & 1) << 4;
        y[i] = d * static_cast<float>(lo - 16);
        y[i + 16] = d * static_cast<float>(hi - 16);
      }
      break;
    }
    default:
      FAIL("not a block type");
  }
}

std::vector<uint8_t> quantize(DType type, const std::vector<float>& x) {
  std::vector<uint8_t> blocks(dtype_row_bytes(type, static_cast<int64_t>(x.size())));
  dtype_traits(type).from_f32(x.data(), blocks.data(), static_cast<int64_t>(x.size()));
  return blocks;
}

std::vector<float> dequantize(DType type, const std::vector<uint8_t>& blocks, size_t n) {
  std::vector<float> y(n);
  dtype_traits(type).to_f32(blocks.data(), y.data(), static_cast<int64_t>(n));
  return y;
}

// The largest error a block may have, from the values it was given and the scale (and minimum) it stored, whatever
// scale the search picked. With d_s = (what the f16 field holds) and d = (the amax scale below):
//   q8_0       a value that is not clamped is off by at most d_s/2 (round to nearest); one clamped at ±127 by at
//              most amax − 127·d_s = 127·(d − d_s), d = amax/127.
//   q4_0/q5_0  levels run from −L to L−1 (L = 8 or 16): a value is off by d_s/2, or, beyond the top level,
//              |x| − (L−1)·|d_s|, or, beyond the bottom one, |x| − L·|d_s| ≤ L·(|d| − |d_s|), d = x_e/−L.
//   q4_1       off by d_s/2, or m_s − min below the lowest level, or max − m_s − 15·d_s above the highest.
// slop covers the f32 arithmetic (x·(1/d_s) may round a value that sits on a .5 boundary the other way, and d·q is
// rounded once): a thousandth of a step plus a few ulps of the block's magnitude.
double block_error_bound(DType type, const float* x, const uint8_t* block, int i) {
  int8_t q[32];
  float d_s, m_s;
  unpack_blocks(type, block, 1, q, &d_s, &m_s);
  double amax = 0, lo = x[0], hi = x[0], extreme = 0;
  for (int k = 0; k < 32; ++k) {
    if (std::fabs(x[k]) > amax) {
      amax = std::fabs(x[k]);
      extreme = x[k];
    }
    lo = std::min<double>(lo, x[k]);
    hi = std::max<double>(hi, x[k]);
  }
  const double step = std::fabs(d_s);
  const double slop = 1e-3 * step + 4 * std::ldexp(std::max(amax, std::fabs(static_cast<double>(m_s))), -24);
  switch (type) {
    case DType::Q8_0:
      return std::max(step / 2, 127 * std::fabs(amax / 127 - step)) + slop;
    case DType::Q4_0:
    case DType::Q5_0: {
      const double L = type == DType::Q4_0 ? 8 : 16;
      const double d = std::fabs(extreme / -L);
      return std::max({step / 2, std::fabs(x[i]) - (L - 1) * step, L * (d - step)}) + slop;
    }
    case DType::Q4_1:
      return std::max({step / 2, m_s - lo, hi - m_s - 15 * step}) + slop;
    default:
      return 0;
  }
}

// The squared error of a block quantised with the "amax" scale, written from docs/FORMAT.md's description of it
// alone: q8_0 d = f16(amax/127); q4_0/q5_0 d = f16(x_e/−L) (x_e the first value of largest magnitude, with its
// sign); q4_1 d = f16((max − min)/15), m = f16(min); levels rounded to nearest, ties to even, and clamped. The
// search starts from this scale and keeps it unless another stores less error.
double amax_block_error(DType type, const float* x) {
  float amax = 0, extreme = 0, lo = x[0], hi = x[0];
  for (int i = 0; i < 32; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      extreme = x[i];
    }
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  float d = 0, m = 0, q_lo = 0, q_hi = 0;
  switch (type) {
    case DType::Q8_0: d = amax / 127, q_lo = -127, q_hi = 127; break;
    case DType::Q4_0: d = extreme / -8, q_lo = -8, q_hi = 7; break;
    case DType::Q5_0: d = extreme / -16, q_lo = -16, q_hi = 15; break;
    case DType::Q4_1: d = (hi - lo) / 15, m = f16_to_f32(f32_to_f16(lo)), q_hi = 15; break;
    default: FAIL("not a block type");
  }
  const float d_s = f16_to_f32(f32_to_f16(d));
  double error = 0;
  for (int i = 0; i < 32; ++i) {
    const float q = d_s == 0 ? 0 : std::min(q_hi, std::max(q_lo, std::nearbyint((x[i] - m) * (1 / d_s))));
    const double e = static_cast<double>(x[i]) - (d_s * q + m);
    error += e * e;
  }
  return error;
}

// Checks every value of a row against its block's bound and every block's squared error against the amax scale's
// (the search may only improve on it; 1e-5 of slack for the quantiser's f32 sums); returns the relative L2 error of
// the row.
double check_row(DType type, const std::vector<float>& x) {
  const std::vector<uint8_t> blocks = quantize(type, x);
  const std::vector<float> y = dequantize(type, blocks, x.size());
  const size_t block_bytes = dtype_traits(type).block_bytes;
  int failures = 0, worse_blocks = 0;
  for (size_t b = 0; b < x.size() / 32; ++b) {
    double error = 0;
    for (int i = 0; i < 32; ++i) {
      const size_t k = b * 32 + i;
      const double bound = block_error_bound(type, &x[b * 32], &blocks[b * block_bytes], i);
      const double e = static_cast<double>(y[k]) - x[k];
      error += e * e;
      if (!(std::fabs(e) <= bound) && failures++ < 3) {
        FAIL_CHECK(dtype_name(type) << " value " << k << ": " << x[k] << " -> " << y[k] << ", bound " << bound);
      }
    }
    const double amax_error = amax_block_error(type, &x[b * 32]);
    if (!(error <= amax_error * (1 + 1e-5)) && worse_blocks++ < 3) {
      FAIL_CHECK(dtype_name(type) << " block " << b << ": squared error " << error << ", amax scale " << amax_error);
    }
  }
  CHECK(failures == 0);
  CHECK(worse_blocks == 0);
  return relative_l2(x.data(), y.data(), static_cast<int64_t>(x.size()));
}

std::vector<float> generate(const std::string& kind, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> x(n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::student_t_distribution<float> heavy(2.0f);  // infinite variance: outliers in most blocks
  for (size_t i = 0; i < n; ++i) {
    if (kind == "uniform") x[i] = uniform(rng);
    else if (kind == "gaussian") x[i] = normal(rng);
    else if (kind == "heavy") x[i] = std::fmax(-1e4f, std::fmin(1e4f, heavy(rng)));
    else if (kind == "equal") x[i] = 0.3f;
    else if (kind == "negative-equal") x[i] = -2.5f;
    else if (kind == "zeros") x[i] = 0.0f;
    else if (kind == "tiny") x[i] = 1e-6f * normal(rng);   // scales in f16's subnormal range (d < 6.1e-5)
    else if (kind == "tinier") x[i] = 1e-9f * normal(rng); // scales that round to 0
    else if (kind == "huge") x[i] = 3e4f * uniform(rng);   // the largest values q4_1's f16 minimum can hold
    else if (kind == "outlier") x[i] = (i == n / 2 + 5) ? 100.0f : 0.01f * normal(rng);
  }
  return x;
}

// Relative L2 budgets for the reference checkpoints' weights. They are diffusers' initialisations: uniform-like
// within each tensor, on small fan-ins, so the errors sit near the synthetic uniform and gaussian ones. Measured
// worst tensors of micro and tiny with the scale search: q8_0 0.50 %, q5_0 4.1 %, q4_1 7.4 %, q4_0 8.6 % (the amax
// scale alone: 0.57, 4.4, 8.1, 9.1 %); budgets ~15 % above.
double real_weight_budget(DType type) {
  switch (type) {
    case DType::Q8_0: return 0.0058;
    case DType::Q5_0: return 0.048;
    case DType::Q4_1: return 0.085;
    case DType::Q4_0: return 0.099;
    default: return 0.0;
  }
}

// A scratch directory removed when the test ends.
struct TempDir {
  std::string path;
  TempDir() {
    char pattern[] = "/tmp/ddpm_quant_XXXXXX";
    REQUIRE(mkdtemp(pattern));
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  bool has_temporary_files() const {
    for (const auto& entry : std::filesystem::directory_iterator(path)) {
      if (entry.path().filename().string().find(".tmp") != std::string::npos) return true;
    }
    return false;
  }
};

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A reference checkpoint converted to an f32 .ddpm (the fp16-only `tiny` is widened exactly).
std::string converted(const std::string& dir, const std::string& name) {
  ConvertOptions o;
  o.input = "data/unet/" + name;
  o.output = dir + "/" + name + ".ddpm";
  ConvertReport report;
  const Status s = convert_checkpoint(o, &report);
  INFO(s.message());
  REQUIRE(s.ok());
  return o.output;
}

}  // namespace

TEST_CASE("block layouts match hand-computed blocks", "[quant]") {
  SECTION("q8_0: f16 scale, then 32 int8 in order") {
    std::vector<float> x(32);
    for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i * 8 - 127);  // amax 127: d = 1 exactly
    const std::vector<uint8_t> b = quantize(DType::Q8_0, x);
    const std::vector<uint8_t> expected = {0x00, 0x3C, 0x81, 0x89, 0x91, 0x99, 0xA1, 0xA9, 0xB1, 0xB9, 0xC1, 0xC9,
                                           0xD1, 0xD9, 0xE1, 0xE9, 0xF1, 0xF9, 0x01, 0x09, 0x11, 0x19, 0x21, 0x29,
                                           0x31, 0x39, 0x41, 0x49, 0x51, 0x59, 0x61, 0x69, 0x71, 0x79};
    CHECK(b == expected);
    // The stored scale is amax/127 rounded to f16 (0.7/127 is not representable; the quants use the rounded one).
    std::vector<float> y(32, 0.0f);
    y[3] = 0.7f;
    CHECK(le16(quantize(DType::Q8_0, y).data()) == f32_to_f16(0.7f / 127.0f));
  }
  SECTION("q4_0: value i in the low nibble of byte i, value i+16 in its high nibble") {
    std::vector<float> x(32);
    for (int i = 0; i < 16; ++i) {
      x[i] = static_cast<float>(i - 8);       // levels 0..15 (nibble = level + 8)
      x[16 + i] = static_cast<float>(7 - i);  // levels 15..0
    }
    std::vector<uint8_t> expected = {0x00, 0x3C};  // d = −8/−8 = 1
    for (int i = 0; i < 16; ++i) expected.push_back(static_cast<uint8_t>(i | (15 - i) << 4));
    CHECK(quantize(DType::Q4_0, x) == expected);
    // The value of largest magnitude sets the scale's sign: +8 gives d = −1 (0xBC00), and the same nibbles.
    for (float& v : x) v = -v;
    expected[1] = 0xBC;
    CHECK(quantize(DType::Q4_0, x) == expected);
  }
  SECTION("q4_1: f16 scale, f16 minimum, nibbles as q4_0") {
    std::vector<float> x(32);
    for (int i = 0; i < 16; ++i) {
      x[i] = 1.0f + 0.5f * static_cast<float>(i);
      x[16 + i] = 1.0f + 0.5f * static_cast<float>(15 - i);
    }
    std::vector<uint8_t> expected = {0x00, 0x38, 0x00, 0x3C};  // d = 7.5/15 = 0.5, m = 1
    for (int i = 0; i < 16; ++i) expected.push_back(static_cast<uint8_t>(i | (15 - i) << 4));
    CHECK(quantize(DType::Q4_1, x) == expected);
  }
  SECTION("q5_0: bit 4 of value i is bit i of the little-endian qh word") {
    std::vector<float> x(32);
    for (int i = 0; i < 32; ++i) x[i] = static_cast<float>((i * 7) % 32 - 16);  // levels (7i mod 32); x[0] = −16
    const std::vector<uint8_t> expected = {0x00, 0x3C,                                             // d = 1
                                           0x98, 0x33, 0x67, 0xCC,                                 // qh
                                           0x00, 0x77, 0xEE, 0x55, 0xCC, 0x33, 0xAA, 0x11,         // qs
                                           0x88, 0xFF, 0x66, 0xDD, 0x44, 0xBB, 0x22, 0x99};
    CHECK(quantize(DType::Q5_0, x) == expected);
  }
  SECTION("block sizes and dtype codes") {
    CHECK(sizeof(BlockQ8_0) == 34);
    CHECK(sizeof(BlockQ4_0) == 18);
    CHECK(sizeof(BlockQ4_1) == 20);
    CHECK(sizeof(BlockQ5_0) == 22);
    CHECK(static_cast<int>(DType::Q8_0) == 3);
    CHECK(static_cast<int>(DType::Q4_0) == 4);
    CHECK(static_cast<int>(DType::Q4_1) == 5);
    CHECK(static_cast<int>(DType::Q5_0) == 6);
    for (DType t : kBlockTypes) CHECK(dtype_traits(t).block_size == 32);
  }
}

TEST_CASE("dequantise, unpack_blocks and the documented layout agree bit for bit", "[quant]") {
  const std::vector<float> x = generate("gaussian", 32 * 64, 7);
  for (DType type : kBlockTypes) {
    INFO(dtype_name(type));
    const std::vector<uint8_t> blocks = quantize(type, x);
    const std::vector<float> y = dequantize(type, blocks, x.size());
    std::vector<int8_t> q(x.size());
    std::vector<float> d(x.size() / 32), m(x.size() / 32);
    unpack_blocks(type, blocks.data(), static_cast<int64_t>(d.size()), q.data(), d.data(), m.data());
    const size_t block_bytes = dtype_traits(type).block_bytes;
    int mismatches = 0;
    for (size_t b = 0; b < d.size(); ++b) {
      float doc[32];
      decode_block_from_doc(type, &blocks[b * block_bytes], doc);
      CHECK(d[b] == f16_to_f32(le16(&blocks[b * block_bytes])));
      if (type != DType::Q4_1) CHECK(m[b] == 0.0f);
      for (int i = 0; i < 32; ++i) {
        const float unpacked = d[b] * static_cast<float>(q[b * 32 + i]) + m[b];
        // Bit for bit with unpack (the same arithmetic); by value with the layout decoder, which leaves out the
        // "+ m" that turns a −0 (negative scale times level 0) into +0.
        mismatches += std::memcmp(&unpacked, &y[b * 32 + i], 4) != 0 || doc[i] != y[b * 32 + i];
      }
    }
    CHECK(mismatches == 0);
    // Quantising the dequantised values again gives the same blocks: each value is exactly on a level of the
    // stored scale, and the search finds that scale again with zero error (the candidate whose step is nearest
    // recovers every level, since q8_0's extreme sits at level 114 or above, and its least-squares scale is the
    // stored one), which nothing can beat.
    if (type == DType::Q8_0) CHECK(quantize(type, y) == blocks);
  }
}

TEST_CASE("round-trip error budgets on synthetic distributions", "[quant]") {
  // Every value of every block stays within block_error_bound, and every block's error within the amax scale's
  // (above). On top of that, the relative L2 error of smooth distributions has a budget from the step size:
  // quantisation noise is about uniform over a step, RMS step/√12, and the amax step is amax/127 (q8_0),
  // |extreme|/16 (q5_0), range/15 (q4_1), |extreme|/8 (q4_0). Uniform values on [−1, 1] (σ = 0.577, amax ≈ 0.97 per
  // block of 32) give 0.38 %, 3.0 %, 6.5 % and 6.1 % (measured with the amax scale 0.37, 3.1, 6.0, 6.5: q4_1's range
  // is a little under 2, and q4_0 also clamps the side opposite its extreme at 7 steps); Gaussian blocks have a
  // larger amax/σ, hence larger errors (measured 0.54, 4.3, 7.9, 8.7 %). The scale search fits each block's step
  // to its other values: measured 0.33, 2.8, 5.3, 5.8 % (uniform) and 0.48, 4.1, 7.0, 8.2 % (Gaussian). Each budget
  // is the search's measurement plus about 15 %.
  struct Budget {
    DType type;
    double gaussian, uniform;
  };
  const Budget budgets[] = {{DType::Q8_0, 0.0055, 0.0038}, {DType::Q5_0, 0.047, 0.032}, {DType::Q4_1, 0.080, 0.061},
                            {DType::Q4_0, 0.094, 0.067}};
  const size_t n = 32 * 512;
  for (const Budget& budget : budgets) {
    INFO(dtype_name(budget.type));
    CHECK(check_row(budget.type, generate("gaussian", n, 1)) <= budget.gaussian);
    CHECK(check_row(budget.type, generate("uniform", n, 2)) <= budget.uniform);
    // Heavy tails, tiny scales (f16 subnormal or zero), huge values: the per-value bounds only.
    for (const char* kind : {"heavy", "tiny", "tinier", "huge", "outlier"}) {
      INFO(kind);
      check_row(budget.type, generate(kind, n, 3));
    }
    // Blocks of one value and of zeros come back exactly: the value is the extreme, which maps to a level (and
    // its scale is exact when it is 127, 8 or 16 times an f16). Zeros have d = 0 and every level 0.
    CHECK(check_row(budget.type, generate("zeros", n, 4)) == 0.0);
    const std::vector<float> equal = {-4.0f, 0.5f, 127.0f};
    for (float v : equal) {
      std::vector<float> x(64, v);
      const std::vector<float> y = dequantize(budget.type, quantize(budget.type, x), x.size());
      for (float yi : y) CHECK(std::fabs(yi - v) <= std::fabs(v) * 1e-3f);
    }
    check_row(budget.type, generate("equal", n, 5));
    check_row(budget.type, generate("negative-equal", n, 5));
  }
}

TEST_CASE("an outlier costs only its own block", "[quant]") {
  for (DType type : kBlockTypes) {
    INFO(dtype_name(type));
    std::vector<float> x = generate("gaussian", 32 * 8, 11);
    const std::vector<uint8_t> before = quantize(type, x);
    x[3 * 32 + 17] = 500.0f;
    const std::vector<uint8_t> after = quantize(type, x);
    const size_t block_bytes = dtype_traits(type).block_bytes;
    for (size_t b = 0; b < 8; ++b) {
      const bool same = std::memcmp(&before[b * block_bytes], &after[b * block_bytes], block_bytes) == 0;
      CHECK(same == (b != 3));
    }
    check_row(type, x);  // and the outlier's block is still within its bound
  }
}

TEST_CASE("round-trip budgets on the reference checkpoints' weights", "[quant]") {
  // Every conv and linear weight of the micro (f32) and tiny (f16) reference U-Nets, row by row as the files store
  // them: every value within its block bound, and each tensor's relative L2 error within real_weight_budget.
  TempDir scratch;
  const std::string& dir = scratch.path;
  const DType types[] = {DType::Q8_0, DType::Q5_0, DType::Q4_1, DType::Q4_0};
  int checked = 0;
  for (const char* name : {"micro", "tiny"}) {
    DdpmFile file;
    REQUIRE(DdpmFile::open(converted(dir, name), &file).ok());
    for (const DdpmTensorInfo& t : file.tensors()) {
      if (t.rank < 2) continue;
      INFO(name << ": " << t.name);
      const std::vector<float> values(static_cast<const float*>(t.data), static_cast<const float*>(t.data) + t.numel());
      for (DType type : types) {
        INFO(dtype_name(type));
        const double budget = real_weight_budget(type);
        std::vector<uint8_t> stored(dtype_tensor_bytes(type, t.rank, t.shape));
        REQUIRE(encode_tensor(t.name, type, t.rank, t.shape, values.data(), stored.data()).ok());
        std::vector<float> back(values.size());
        decode_tensor(type, t.rank, t.shape, stored.data(), back.data());
        CHECK(relative_l2(values.data(), back.data(), t.numel()) <= budget);
        // Rows whose length is a multiple of 32 are whole blocks: check every value against its block's bound.
        const int64_t row = t.numel() / t.shape[0];
        if (row % 32 == 0) check_row(type, values);
        ++checked;
      }
    }
  }
  CHECK(checked > 100);
}

TEST_CASE("rows are padded with zeros to whole blocks", "[quant]") {
  // A conv_in-like [4, 3, 3, 3] weight: rows of 27 values, stored as one 32-value block each.
  const int64_t shape[4] = {4, 3, 3, 3};
  const std::vector<float> x = generate("gaussian", 4 * 27, 21);
  for (DType type : kBlockTypes) {
    INFO(dtype_name(type));
    const size_t bytes = dtype_tensor_bytes(type, 4, shape);
    REQUIRE(bytes == 4 * dtype_traits(type).block_bytes);
    std::vector<uint8_t> stored(bytes);
    REQUIRE(encode_tensor("w", type, 4, shape, x.data(), stored.data()).ok());
    for (int r = 0; r < 4; ++r) {
      std::vector<float> row(32, 0.0f);
      std::copy(x.begin() + r * 27, x.begin() + (r + 1) * 27, row.begin());
      const std::vector<uint8_t> block = quantize(type, row);
      CHECK(std::memcmp(block.data(), &stored[r * block.size()], block.size()) == 0);
      // The padding dequantises to 0 for the symmetric types (level 0 exists); q4_1 puts it on its nearest level.
      const std::vector<float> back = dequantize(type, block, 32);
      if (type != DType::Q4_1) {
        for (int i = 27; i < 32; ++i) CHECK(back[i] == 0.0f);
      }
    }
    std::vector<float> back(x.size());
    decode_tensor(type, 4, shape, stored.data(), back.data());
    CHECK(relative_l2(x.data(), back.data(), static_cast<int64_t>(x.size())) < 0.1);
  }
}

TEST_CASE("non-finite weights: no UB in the quantisers, refused by the tools", "[quant]") {
  const float specials[] = {NAN, INFINITY, -INFINITY};
  for (DType type : kBlockTypes) {
    INFO(dtype_name(type));
    for (float special : specials) {
      for (int position : {0, 5, 31}) {
        std::vector<float> x = generate("gaussian", 64, 31);
        x[position] = special;
        x[40] = special;
        // The reference quantisers saturate the scale (NaN and inf scales become ±65504) and send NaN levels to
        // the lowest: whatever comes out is finite and every code is in range (the UBSan build checks the casts).
        const std::vector<float> y = dequantize(type, quantize(type, x), x.size());
        for (float v : y) CHECK(std::isfinite(v));
        // An all-special block.
        std::vector<float> all(32, special);
        for (float v : dequantize(type, quantize(type, all), 32)) CHECK(std::isfinite(v));
        // The tools refuse such weights instead, naming the tensor and the first bad value.
        const int64_t shape[2] = {2, 32};
        std::vector<uint8_t> stored(dtype_tensor_bytes(type, 2, shape));
        const Status s = encode_tensor("down.weight", type, 2, shape, x.data(), stored.data());
        REQUIRE(!s.ok());
        CHECK(s.message().find("tensor 'down.weight': value " + std::to_string(position) + " (row 0) is " +
                               (std::isnan(special) ? "nan" : "inf")) != std::string::npos);
        CHECK(s.message().find("finite") != std::string::npos);
      }
    }
    // Finite values past what the f16 scale can reach would be silently clamped: refused too.
    const int64_t shape[1] = {32};
    std::vector<float> x(32, 1.0f);
    x[9] = 3e9f;
    std::vector<uint8_t> stored(dtype_tensor_bytes(type, 1, shape));
    const Status s = encode_tensor("big", type, 1, shape, x.data(), stored.data());
    REQUIRE(!s.ok());
    CHECK(s.message().find("value 9 (row 0) is 3e+09, beyond what") != std::string::npos);
  }
  // Plain types keep any value, as the converter always has.
  const int64_t shape[1] = {2};
  const float x[2] = {NAN, INFINITY};
  float y[2];
  CHECK(encode_tensor("b", DType::F32, 1, shape, x, y).ok());
}

TEST_CASE("a tensor with zero rows cannot be quantised", "[quant]") {
  const int64_t shape[4] = {0, 8, 3, 3};
  for (DType type : kBlockTypes) {
    const Status s = check_encodable("conv.weight", type, 4, shape, nullptr);
    REQUIRE(!s.ok());
    CHECK(s.message() == std::string("tensor 'conv.weight' [0, 8, 3, 3]: row count is zero, nothing to quantise as ") +
                             dtype_name(type));
    CHECK(!encode_tensor("conv.weight", type, 4, shape, nullptr, nullptr).ok());
  }
  const int64_t empty_row[2] = {4, 0};
  CHECK(!check_encodable("w", DType::Q8_0, 2, empty_row, nullptr).ok());
  CHECK(check_encodable("w", DType::F16, 4, shape, nullptr).ok());
}

TEST_CASE("type names and the per-tensor policy", "[quant]") {
  DType t;
  CHECK(parse_weight_type("--type", "q4_1", &t).ok());
  CHECK(t == DType::Q4_1);
  Status s = parse_weight_type("--type", "q3_k", &t);
  CHECK(s.message() == "--type: unknown type 'q3_k' (valid: f32, f16, q8_0, q5_0, q4_1, q4_0)");
  CHECK(!parse_weight_type("--type", "i32", &t).ok());  // not a weight type

  TypePolicy policy(DType::Q4_0);
  auto decide = [&](const std::string& name, std::vector<int64_t> shape, DType stored = DType::F32) {
    return policy.decide(name, static_cast<int>(shape.size()), shape.data(), stored).type;
  };
  CHECK(decide("down_blocks.1.resnets.0.conv1.weight", {256, 128, 3, 3}) == DType::Q4_0);
  // Under 4/5-bit types the resnet shortcuts and the full-resolution resnet convs (down_blocks.0 and, once the
  // policy knows the tensor names, the last up block) get q8_0; resampling convs and attention projections one
  // step up (q5_0 here); time projections nothing.
  CHECK(decide("down_blocks.1.attentions.0.to_q.weight", {256, 256}) == DType::Q5_0);
  CHECK(decide("mid_block.attentions.0.to_out.0.weight", {256, 256}) == DType::Q5_0);
  CHECK(decide("down_blocks.0.resnets.0.conv1.weight", {128, 128, 3, 3}) == DType::Q8_0);
  CHECK(decide("down_blocks.0.resnets.1.conv2.weight", {128, 128, 3, 3}) == DType::Q8_0);
  CHECK(decide("down_blocks.0.downsamplers.0.conv.weight", {128, 128, 3, 3}) == DType::Q5_0);
  CHECK(decide("up_blocks.1.upsamplers.0.conv.weight", {256, 256, 3, 3}) == DType::Q5_0);
  CHECK(policy.decide("up_blocks.1.upsamplers.0.conv.weight", 4, std::vector<int64_t>{256, 256, 3, 3}.data(),
                      DType::F32).reason == "resampling conv (q5_0 under q4_0)");
  CHECK(decide("down_blocks.0.resnets.0.time_emb_proj.weight", {128, 512}) == DType::Q4_0);
  CHECK(decide("up_blocks.2.resnets.1.conv_shortcut.weight", {256, 512, 1, 1}) == DType::Q8_0);
  CHECK(decide("up_blocks.3.resnets.0.conv1.weight", {128, 384, 3, 3}) == DType::Q4_0);  // last? not known yet
  policy.set_tensor_names({"conv_in.weight", "up_blocks.0.resnets.0.conv1.weight", "up_blocks.3.resnets.0.conv1.weight",
                           "up_blocks.10x.weight", "conv_out.weight"});
  CHECK(decide("up_blocks.3.resnets.0.conv1.weight", {128, 384, 3, 3}) == DType::Q8_0);
  CHECK(decide("up_blocks.3.resnets.2.conv2.weight", {128, 128, 3, 3}) == DType::Q8_0);
  CHECK(decide("up_blocks.3.attentions.0.to_q.weight", {128, 128}) == DType::Q5_0);
  CHECK(decide("up_blocks.0.resnets.0.conv1.weight", {256, 512, 3, 3}) == DType::Q4_0);
  CHECK(decide("up_blocks.3.resnets.0.conv1.weight", {128, 384, 3, 3}, DType::Q4_0) == DType::Q4_0);  // not larger
  CHECK(policy.decide("down_blocks.0.resnets.0.conv1.weight", 4, std::vector<int64_t>{128, 128, 3, 3}.data(),
                      DType::F32).reason == "full-resolution conv (q8_0 under 4/5-bit types)");
  for (DType low : {DType::Q4_1, DType::Q5_0}) {
    TypePolicy other(low);
    const int64_t w[4] = {128, 384, 1, 1};
    CHECK(other.decide("up_blocks.3.resnets.0.conv_shortcut.weight", 4, w, DType::F32).type == DType::Q8_0);
    const int64_t a[2] = {256, 256};
    CHECK(other.decide("mid_block.attentions.0.to_v.weight", 2, a, DType::F32).type ==
          (low == DType::Q5_0 ? DType::Q8_0 : DType::Q5_0));
  }
  {
    TypePolicy q8(DType::Q8_0);
    const int64_t w[4] = {128, 128, 3, 3};
    CHECK(q8.decide("down_blocks.0.resnets.0.conv1.weight", 4, w, DType::F32).type == DType::Q8_0);
    CHECK(q8.decide("down_blocks.0.resnets.0.conv1.weight", 4, w, DType::F32).reason == "conv weight");
    CHECK(q8.decide("down_blocks.0.downsamplers.0.conv.weight", 4, w, DType::F32).type == DType::Q8_0);
    // Under q8_0 only the last up block's resnet shortcuts and conv2 go up, to f16, once that block is known.
    CHECK(q8.decide("up_blocks.3.resnets.2.conv2.weight", 4, w, DType::F32).type == DType::Q8_0);
    q8.set_tensor_names({"up_blocks.3.resnets.2.conv2.weight", "up_blocks.2.resnets.0.conv2.weight"});
    const auto conv2 = q8.decide("up_blocks.3.resnets.2.conv2.weight", 4, w, DType::F32);
    CHECK(conv2.type == DType::F16);
    CHECK(conv2.reason == "last up block's shortcut or conv2 (f16 under q8_0)");
    CHECK(q8.decide("up_blocks.3.resnets.2.conv2.weight", 4, w, DType::F16).type == DType::F16);
    CHECK(q8.decide("up_blocks.3.resnets.2.conv2.weight", 4, w, DType::F16).reason == conv2.reason);
    CHECK(q8.decide("up_blocks.3.resnets.2.conv2.weight", 4, w, DType::Q8_0).type == DType::Q8_0);  // not larger
    const int64_t s[4] = {128, 256, 1, 1};
    CHECK(q8.decide("up_blocks.3.resnets.0.conv_shortcut.weight", 4, s, DType::F32).type == DType::F16);
    CHECK(q8.decide("up_blocks.3.resnets.0.conv1.weight", 4, w, DType::F32).type == DType::Q8_0);
    CHECK(q8.decide("up_blocks.2.resnets.0.conv2.weight", 4, w, DType::F32).type == DType::Q8_0);
    CHECK(q8.decide("up_blocks.2.resnets.0.conv_shortcut.weight", 4, s, DType::F32).type == DType::Q8_0);
    CHECK(q8.decide("up_blocks.3.upsamplers.0.conv.weight", 4, w, DType::F32).type == DType::Q8_0);
  }
  CHECK(decide("time_embedding.linear_1.weight", {512, 128}) == DType::Q4_0);
  CHECK(decide("class_embedding.linear_1.weight", {512, 128}) == DType::Q4_0);  // a timestep-style class MLP
  CHECK(decide("class_embedding.weight", {10, 512}) == DType::F32);             // an embedding table
  CHECK(decide("conv_in.weight", {128, 3, 3, 3}) == DType::F32);
  CHECK(decide("conv_out.weight", {3, 128, 3, 3}, DType::F16) == DType::F16);   // kept as it is
  CHECK(decide("down_blocks.0.resnets.0.norm1.weight", {128}) == DType::F32);
  CHECK(decide("down_blocks.0.resnets.0.conv1.bias", {128}, DType::F16) == DType::F16);
  CHECK(decide("mid.to_q.weight", {16, 8}, DType::F16) == DType::F16);  // 8 f16 (16 bytes) < one 18-byte block
  CHECK(policy.recipe() ==
        "q4_0 (conv and linear weights; norms, biases, embeddings, conv_in and conv_out keep their type; q8_0: resnet "
        "shortcuts and the full-resolution resnet convs; q5_0: resampling convs and attention projections)");
  CHECK(TypePolicy(DType::Q8_0).recipe() ==
        "q8_0 (conv and linear weights; norms, biases, embeddings, conv_in and conv_out keep their type; f16: the last "
        "up block's resnet shortcuts and conv2)");

  SECTION("overrides come first, then --keep; block types never go to rank-1 tensors") {
    REQUIRE(policy.add_override("attentions=q8_0").ok());
    REQUIRE(policy.add_override("attentions\\.0=q5_0").ok());  // later: shadowed by the first
    REQUIRE(policy.add_override("^conv_in=f16").ok());
    REQUIRE(policy.add_override("^conv_out\\.=q8_0").ok());
    REQUIRE(policy.add_keep("to_q|mid_block").ok());
    REQUIRE(policy.add_keep("nothing-matches-this").ok());
    CHECK(decide("down_blocks.1.attentions.0.to_q.weight", {256, 256}) == DType::Q8_0);
    CHECK(decide("down_blocks.1.attentions.0.to_q.bias", {256}) == DType::F32);  // keep (rank 1 skips q8_0)
    CHECK(decide("mid_block.resnets.0.conv1.weight", {256, 256, 3, 3}) == DType::F32);
    CHECK(decide("conv_in.weight", {128, 3, 3, 3}) == DType::F16);
    CHECK(decide("conv_in.bias", {128}) == DType::F16);  // plain types may go to biases
    CHECK(decide("conv_out.weight", {3, 128, 3, 3}) == DType::Q8_0);
    CHECK(decide("conv_out.bias", {3}) == DType::F32);
    const std::vector<std::string> unmatched = policy.unmatched_patterns();
    REQUIRE(unmatched.size() == 2);
    CHECK(unmatched[0] == "--tensor-type 'attentions\\.0=q5_0'");
    CHECK(unmatched[1] == "--keep 'nothing-matches-this'");
    CHECK(policy.recipe().find("; --tensor-type 'attentions=q8_0'; --tensor-type 'attentions\\.0=q5_0'; "
                               "--tensor-type '^conv_in=f16'; --tensor-type '^conv_out\\.=q8_0'; "
                               "--keep 'to_q|mid_block'") != std::string::npos);
  }
  SECTION("a block-type override passes embedding tables, norms and biases by, and says so") {
    REQUIRE(policy.add_override("class_emb=q4_0").ok());
    REQUIRE(policy.add_override("norm1=q8_0").ok());
    REQUIRE(policy.add_override("nowhere=q8_0").ok());
    CHECK(decide("class_embedding.weight", {10, 512}) == DType::F32);  // read by get_rows, never a GEMM
    CHECK(decide("class_embedding.linear_1.weight", {512, 128}) == DType::Q4_0);
    CHECK(decide("down_blocks.0.resnets.0.norm1.weight", {128}) == DType::F32);
    const std::vector<std::string> warnings = policy.unmatched_warnings("m.ddpm");
    REQUIRE(warnings.size() == 2);
    CHECK(warnings[0] == "--tensor-type 'norm1=q8_0' matches only norms, biases or embedding tables in m.ddpm, which "
                         "keep their type (block types apply to conv and linear weights)");
    CHECK(warnings[1] == "--tensor-type 'nowhere=q8_0' matches no tensor in m.ddpm");
  }
  SECTION("bad patterns and types") {
    s = policy.add_keep("down_blocks.[0");
    CHECK(s.message().find("--keep 'down_blocks.[0': not a valid regular expression") == 0);
    s = policy.add_override("(conv=q8_0");
    CHECK(s.message().find("--tensor-type '(conv': not a valid regular expression") == 0);
    s = policy.add_override("conv=q9_9");
    CHECK(s.message() == "--tensor-type 'conv=q9_9': unknown type 'q9_9' (valid: f32, f16, q8_0, q5_0, q4_1, q4_0)");
    s = policy.add_override("conv");
    CHECK(s.message().find("expected REGEX=TYPE") != std::string::npos);
    CHECK(!policy.add_keep("").ok());
  }
  SECTION("plain types apply to every matrix, as the converter always did") {
    TypePolicy f16(DType::F16);
    const int64_t w[4] = {128, 3, 3, 3}, b[1] = {128};
    CHECK(f16.decide("conv_in.weight", 4, w, DType::F32).type == DType::F16);
    CHECK(f16.decide("conv_in.bias", 1, b, DType::F32).type == DType::F32);
    CHECK(f16.recipe() == "f16 (norms and biases f32)");
    TypePolicy f32(DType::F32);
    CHECK(f32.decide("conv_in.weight", 4, w, DType::Q8_0).type == DType::F32);
    CHECK(f32.decide("conv_in.bias", 1, b, DType::Q8_0).type == DType::F32);  // dequantised back
    CHECK(f32.recipe() == "f32");
  }
}

TEST_CASE("ddpm quantize: policy applied, everything else kept, same bytes every time", "[quant]") {
  TempDir scratch;
  const std::string& dir = scratch.path;
  const std::string source = converted(dir, "tiny");
  DdpmFile in;
  REQUIRE(DdpmFile::open(source, &in).ok());

  TypePolicy policy(DType::Q8_0);
  REQUIRE(policy.add_keep("attentions.*to_v").ok());
  REQUIRE(policy.add_override("up_blocks=q4_0").ok());
  REQUIRE(policy.add_keep("never-matches").ok());
  RetypeReport report;
  Status s = retype_model(source, dir + "/a.ddpm", policy, &report);
  INFO(s.message());
  REQUIRE(s.ok());
  REQUIRE(report.warnings.size() == 1);
  CHECK(report.warnings[0] == "--keep 'never-matches' matches no tensor in " + source);
  CHECK(report.input_bytes == in.file_size());
  CHECK(report.output_bytes < report.input_bytes / 3);

  DdpmFile out;
  REQUIRE(DdpmFile::open(dir + "/a.ddpm", &out).ok());
  CHECK(out.file_size() == report.output_bytes);
  // Metadata: all kept but the recipe and the writer.
  for (const auto& [key, value] : in.metadata().entries()) {
    INFO(key);
    const MetadataValue* kept = out.metadata().find(key);
    REQUIRE(kept);
    if (key != "provenance.dtype_recipe" && key != "provenance.tool") CHECK(*kept == value);
  }
  CHECK(out.metadata().size() == in.metadata().size());
  std::string recipe;
  REQUIRE(out.metadata().get_string("provenance.dtype_recipe", &recipe).ok());
  CHECK(recipe == policy.recipe());
  // Tensors: same order, names and shapes; kept ones bit for bit; the others within the q8_0/q4_0 budgets.
  REQUIRE(out.tensors().size() == in.tensors().size());
  int quantised = 0;
  for (size_t i = 0; i < in.tensors().size(); ++i) {
    const DdpmTensorInfo& a = in.tensors()[i];
    const DdpmTensorInfo& b = out.tensors()[i];
    const TensorRetype& r = report.tensors[i];
    INFO(a.name << ": " << r.reason);
    REQUIRE(a.name == b.name);
    CHECK(r.name == a.name);
    CHECK(std::equal(a.shape, a.shape + 4, b.shape));
    CHECK(b.dtype == r.to);
    CHECK(r.from == a.dtype);
    CHECK(r.bytes_to == b.bytes);
    if (a.rank == 1 || a.name.rfind("conv_in.", 0) == 0 || a.name.rfind("conv_out.", 0) == 0) {
      CHECK(b.dtype == a.dtype);
    } else if (a.name.rfind("up_blocks", 0) == 0) {
      CHECK(b.dtype == DType::Q4_0);  // the override comes before --keep
    } else if (a.name.find("to_v") != std::string::npos) {
      CHECK(b.dtype == a.dtype);
    } else {
      CHECK(b.dtype == DType::Q8_0);
    }
    if (b.dtype == a.dtype) {
      CHECK(std::memcmp(a.data, b.data, a.bytes) == 0);
      CHECK(r.relative_error == 0.0);
      continue;
    }
    ++quantised;
    // Block-typed 3×3 convs are stored tap-major, everything else as its shape says.
    CHECK(b.tap_major == (b.rank == 4 && b.shape[2] == 3));
    std::vector<float> back(static_cast<size_t>(a.numel()));
    decode_tensor(b.dtype, b.rank, b.shape, b.data, back.data(),
                  b.tap_major ? ConvRows::kTapMajor : ConvRows::kNatural);
    const double error = relative_l2(static_cast<const float*>(a.data), back.data(), a.numel());
    CHECK(error == Approx(r.relative_error).epsilon(1e-12));
    CHECK(error <= real_weight_budget(b.dtype));
  }
  CHECK(quantised > 10);
  // The report lists each tensor with its types and error, then totals.
  const std::string text = format_retype_report(report);
  CHECK(text.find("down_blocks.0.resnets.0.conv1.weight") != std::string::npos);
  CHECK(text.find("f32 -> q8_0") != std::string::npos);
  CHECK(text.find("file size: ") != std::string::npos);
  CHECK(format_retype_report(report, false).find("conv1.weight") == std::string::npos);

  // Determinism: the same input and options give the same bytes; and re-typing to f32 reads back the dequantised
  // weights (rank-1 tensors untouched).
  TypePolicy again(DType::Q8_0);
  REQUIRE(again.add_keep("attentions.*to_v").ok());
  REQUIRE(again.add_override("up_blocks=q4_0").ok());
  REQUIRE(again.add_keep("never-matches").ok());
  REQUIRE(retype_model(source, dir + "/b.ddpm", again, &report).ok());
  CHECK(read_bytes(dir + "/a.ddpm") == read_bytes(dir + "/b.ddpm"));
  TypePolicy back_to_f32(DType::F32);
  REQUIRE(retype_model(dir + "/a.ddpm", dir + "/c.ddpm", back_to_f32, &report).ok());
  DdpmFile widened;
  REQUIRE(DdpmFile::open(dir + "/c.ddpm", &widened).ok());
  for (const DdpmTensorInfo& t : widened.tensors()) CHECK(t.dtype == DType::F32);
}

TEST_CASE("ddpm quantize refuses bad input without writing anything", "[quant]") {
  TempDir scratch;
  const std::string& dir = scratch.path;
  TypePolicy policy(DType::Q8_0);
  RetypeReport report;
  // Not a .ddpm.
  Status s = retype_model("data/unet/micro/diffusion_pytorch_model.safetensors", dir + "/x.ddpm", policy, &report);
  CHECK(s.message().find("data/unet/micro/diffusion_pytorch_model.safetensors: not a ddpm.cpp model file") == 0);
  CHECK(!exists(dir + "/x.ddpm"));
  // An output that cannot be written: the message names it, nothing is created.
  const std::string source = converted(dir, "micro");
  s = retype_model(source, dir + "/no-such-dir/x.ddpm", policy, &report);
  CHECK(!s.ok());
  CHECK(s.message().find(dir + "/no-such-dir/x.ddpm") != std::string::npos);
  // A NaN weight: named with the file and the tensor; no output, no temporary file left behind.
  DdpmWriter writer;
  REQUIRE(writer.set_metadata("ddpm.architecture", MetadataValue::string("unet2d")).ok());
  std::vector<float> w(4 * 64, 0.25f);
  w[70] = NAN;
  const int64_t shape[2] = {4, 64};
  REQUIRE(writer.add_tensor("blocks.0.proj.weight", DType::F32, 2, shape, w.data()).ok());
  REQUIRE(writer.finish(dir + "/nan.ddpm").ok());
  s = retype_model(dir + "/nan.ddpm", dir + "/nan_q8.ddpm", policy, &report);
  CHECK(s.message() == dir + "/nan.ddpm: tensor 'blocks.0.proj.weight': value 70 (row 1) is nan: quantised types "
                             "need finite weights");
  CHECK(!exists(dir + "/nan_q8.ddpm"));
  CHECK(!scratch.has_temporary_files());
}

TEST_CASE("convert --type T stores the same tensors as convert + retype_model (quantize without its calibration)",
          "[quant]") {
  TempDir scratch;
  const std::string& dir = scratch.path;
  const std::string f32 = converted(dir, "micro");
  for (DType type : kBlockTypes) {
    INFO(dtype_name(type));
    ConvertOptions o;
    o.input = "data/unet/micro";
    o.output = dir + "/direct.ddpm";
    o.type = type;
    o.keep = {"attentions\\.0\\.to_k"};
    o.tensor_types = {"^up_blocks\\.1\\..*conv2=q8_0"};
    ConvertReport direct_report;
    REQUIRE(convert_checkpoint(o, &direct_report).ok());
    TypePolicy policy(type);
    REQUIRE(policy.add_keep("attentions\\.0\\.to_k").ok());
    REQUIRE(policy.add_override("^up_blocks\\.1\\..*conv2=q8_0").ok());
    RetypeReport two_step_report;
    REQUIRE(retype_model(f32, dir + "/two_step.ddpm", policy, &two_step_report).ok());
    CHECK(direct_report.recipe == policy.recipe());
    DdpmFile direct, two_step;
    REQUIRE(DdpmFile::open(dir + "/direct.ddpm", &direct).ok());
    REQUIRE(DdpmFile::open(dir + "/two_step.ddpm", &two_step).ok());
    REQUIRE(direct.tensors().size() == two_step.tensors().size());
    int quantised = 0;
    for (size_t i = 0; i < direct.tensors().size(); ++i) {
      const DdpmTensorInfo& a = direct.tensors()[i];
      const DdpmTensorInfo& b = two_step.tensors()[i];
      INFO(a.name);
      CHECK(a.name == b.name);
      CHECK(a.dtype == b.dtype);
      REQUIRE(a.bytes == b.bytes);
      CHECK(std::memcmp(a.data, b.data, a.bytes) == 0);
      CHECK(direct_report.retype.tensors[i].to == a.dtype);
      // Both paths know the whole model, so both find micro's last up block (up_blocks.1) for the 4/5-bit types.
      if (a.name == "up_blocks.1.resnets.0.conv1.weight") CHECK(a.dtype == DType::Q8_0);
      CHECK(direct_report.retype.tensors[i].relative_error == Approx(two_step_report.tensors[i].relative_error));
      quantised += dtype_traits(a.dtype).is_quantized;
    }
    CHECK(quantised > 10);
  }
}

TEST_CASE("quantize's calibration: each configuration measured on the model, the fastest within budget kept",
          "[quant][calibrate]") {
  TempDir scratch;
  const std::string& dir = scratch.path;
  // 128 channels at 16×16: 8-bit Winograd applies to some convs.
  const std::string source = dir + "/wide.ddpm";
  REQUIRE(test::write_wide_unet(source).ok());
  TypePolicy q8(DType::Q8_0);
  ThreadPool one(1), two(2);
  CalibrationResult result, again;
  Status s = calibrate_quantization(source, q8, 0.01, one, &result);
  INFO(s.message());
  REQUIRE(s.ok());
  CHECK(result.type == DType::Q8_0);
  CHECK(result.inputs == 3 * kCalibrationImages);
  REQUIRE(result.candidates.size() == 4);
  // Ordered by estimated conv time; each choice made for speed is estimated faster than its alternative.
  auto find = [&](const CalibrationResult& r, bool winograd, bool tier) -> const CalibrationCandidate& {
    for (const CalibrationCandidate& c : r.candidates) {
      if (c.int8_winograd == winograd && c.f16_tier == tier) return c;
    }
    FAIL("no candidate winograd " << winograd << " tier " << tier);
    return r.candidates[0];
  };
  for (size_t i = 0; i < 4; ++i) {
    const CalibrationCandidate& c = result.candidates[i];
    INFO(i << ": " << c.describe(DType::Q8_0) << " " << c.error << " cost " << c.estimated_cost);
    if (i > 0) CHECK(result.candidates[i - 1].estimated_cost <= c.estimated_cost);
    CHECK(c.error > 0.0);
    CHECK(c.error < 0.1);
  }
  for (bool tier : {false, true}) CHECK(find(result, true, tier).estimated_cost < find(result, false, tier).estimated_cost);
  for (bool winograd : {false, true})
    CHECK(find(result, winograd, false).estimated_cost < find(result, winograd, true).estimated_cost);
  CHECK(result.candidates[0].int8_winograd);
  CHECK(!result.candidates[0].f16_tier);
  // Both choices change the outputs (the flag reaches the convs; the tier changes weights).
  CHECK(find(result, true, false).error != find(result, false, false).error);
  CHECK(find(result, true, false).error != find(result, true, true).error);
  // The choice is the first within the budget: with the third candidate's error as the budget, one of the first
  // three, every faster one over it.
  CalibrationResult third;
  const double budget = result.candidates[2].error;
  REQUIRE(calibrate_quantization(source, q8, budget, one, &third).ok());
  CHECK(third.within_budget);
  REQUIRE(third.chosen <= 2);
  CHECK(third.choice().error <= budget);
  for (int i = 0; i < third.chosen; ++i) CHECK(third.candidates[static_cast<size_t>(i)].error > budget);
  // Same numbers whatever the thread count.
  REQUIRE(calibrate_quantization(source, q8, 1.0, two, &again).ok());
  REQUIRE(again.candidates.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(again.candidates[i].error == result.candidates[i].error);
  CHECK(again.chosen == 0);
  CHECK(again.within_budget);
  CHECK(again.summary().find("q8_0, 6 inputs, budget 100%: int8 Winograd, no f16 tier ") == 0);
  CHECK(again.summary().find("(chosen)") != std::string::npos);
  // Nothing within the budget: the type's usual configuration (f16 tier, direct convs for q8_0), not a slower one.
  REQUIRE(calibrate_quantization(source, q8, 0.0, one, &again).ok());
  CHECK(!again.within_budget);
  CHECK(!again.choice().int8_winograd);
  CHECK(again.choice().f16_tier);
  CHECK(again.summary().find("(chosen: none within the budget; the type's default)") != std::string::npos);

  // A policy that already leaves no f16 tier: its two settings give the same weights, measured once.
  TypePolicy no_tier(DType::Q8_0);
  REQUIRE(no_tier.add_override("resnets=q8_0").ok());
  REQUIRE(calibrate_quantization(source, no_tier, 0.01, one, &again).ok());
  REQUIRE(again.candidates.size() == 2);
  CHECK(again.candidates[0].error == result.candidates[0].error);
  CHECK(again.candidates[1].error == result.candidates[2].error);
  // Other block types: Winograd or not.
  TypePolicy q4(DType::Q4_0);
  REQUIRE(calibrate_quantization(source, q4, 0.06, one, &again).ok());
  REQUIRE(again.candidates.size() == 2);
  CHECK(again.candidates[0].int8_winograd);
  CHECK(!again.candidates[1].int8_winograd);
  CHECK(again.summary().find("tier") == std::string::npos);
  REQUIRE(calibrate_quantization(source, q4, 0.0, one, &again).ok());
  CHECK(again.chosen == 0);  // q4_0 models run Winograd without a calibration
  // Plain types have nothing to calibrate; files that are not U-Nets cannot be run.
  TypePolicy f16(DType::F16);
  CHECK(calibrate_quantization(source, f16, 0.01, one, &again).message().find("nothing to calibrate for f16") !=
        std::string::npos);
  CHECK(!calibrate_quantization("data/unet/micro/diffusion_pytorch_model.safetensors", q8, 0.01, one, &again).ok());
  // A calibrated file re-quantised: the reference runs without 8-bit Winograd whatever the file says, so the
  // Winograd candidate is measured against the exact outputs (against its own, its error would be 0).
  RetypeOptions winograd_on;
  winograd_on.int8_winograd = true;
  RetypeReport report;
  REQUIRE(retype_model(source, dir + "/wide_q8.ddpm", q8, &report, winograd_on).ok());
  REQUIRE(calibrate_quantization(dir + "/wide_q8.ddpm", q8, 0.01, one, &again).ok());
  CHECK(find(again, true, false).error > find(again, false, false).error);
  // A class-conditional model (labels cycle through the classes but the null one) calibrates too.
  ModelInfo cond = test::two_level_unet(16, 1, 32, 8);
  cond.unet.num_class_embeds = 3;
  cond.null_class = 2;
  REQUIRE(test::write_random_unet(cond, dir + "/cond.ddpm", 3).ok());
  CalibrationInputs inputs;
  std::unique_ptr<Model> cond_model;
  REQUIRE(Model::load(dir + "/cond.ddpm", &cond_model).ok());
  REQUIRE(make_calibration_inputs(*cond_model, one, &inputs).ok());
  CHECK(inputs.labels == std::vector<int32_t>{0, 1, 0, 1, 0, 1});
  CHECK(inputs.timesteps == std::vector<float>{950, 950, 500, 500, 50, 50});
  s = calibrate_quantization(dir + "/cond.ddpm", q8, 0.01, one, &again);
  INFO(s.message());
  REQUIRE(s.ok());
  CHECK(again.candidates.size() == 2);
  // A model too narrow for 8-bit Winograd (tiny: 32 and 64 channels): only the direct configurations are listed.
  const std::string tiny = converted(dir, "tiny");
  REQUIRE(calibrate_quantization(tiny, q8, 0.01, one, &again).ok());
  REQUIRE(again.candidates.size() == 2);
  for (const CalibrationCandidate& c : again.candidates) CHECK(!c.int8_winograd);
  // … and for a 4-bit type, whose usual configuration (Winograd) is not among them, a budget nothing meets
  // chooses the one measured.
  REQUIRE(calibrate_quantization(tiny, q4, 0.0, one, &again).ok());
  REQUIRE(again.candidates.size() == 1);
  CHECK(again.chosen == 0);
  CHECK(!again.choice().int8_winograd);
}

TEST_CASE("the calibration's choice travels in the file and decides the loader's default", "[quant][calibrate]") {
  TempDir scratch;
  const std::string& dir = scratch.path;
  const std::string source = converted(dir, "tiny");
  TypePolicy q8(DType::Q8_0);
  q8.set_q8_0_f16_tier(false);
  CHECK(q8.recipe().find("f16:") == std::string::npos);
  RetypeOptions options;
  options.int8_winograd = true;
  options.calibration = "q8_0, 6 inputs, budget 1%: test";
  RetypeReport report;
  REQUIRE(retype_model(source, dir + "/q8.ddpm", q8, &report, options).ok());
  for (const TensorRetype& t : report.tensors) {
    if (t.name.find("up_blocks.1.resnets.0.conv2.weight") != std::string::npos) CHECK(t.to == DType::Q8_0);
  }
  // In memory: the same bytes as the file.
  std::vector<uint8_t> bytes;
  REQUIRE(retype_model_to_bytes(source, q8, &bytes, &report, options).ok());
  CHECK(bytes == read_bytes(dir + "/q8.ddpm"));
  CHECK(report.output_bytes == bytes.size());
  std::unique_ptr<Model> model;
  REQUIRE(Model::from_bytes("q8 in memory", bytes, &model).ok());
  CHECK(model->int8_winograd());  // a q8_0 model, Winograd because the file says so
  DdpmFile file;
  REQUIRE(DdpmFile::open(dir + "/q8.ddpm", &file).ok());
  std::string text;
  REQUIRE(file.metadata().get_string("quant.calibration", &text).ok());
  CHECK(text == options.calibration);
  CHECK(Model::prefers_int8_winograd(file));
  // Re-typing without a calibration drops both keys: they described other weights. The type's rule is back.
  TypePolicy q4(DType::Q4_0), q8_again(DType::Q8_0);
  REQUIRE(retype_model(dir + "/q8.ddpm", dir + "/q8b.ddpm", q8_again, &report).ok());
  DdpmFile plain;
  REQUIRE(DdpmFile::open(dir + "/q8b.ddpm", &plain).ok());
  CHECK(!plain.metadata().has("quant.int8_winograd"));
  CHECK(!plain.metadata().has("quant.calibration"));
  CHECK(!Model::prefers_int8_winograd(plain));
  options.int8_winograd = false;
  options.calibration.clear();
  REQUIRE(retype_model(source, dir + "/q4.ddpm", q4, &report, options).ok());
  DdpmFile q4_file;
  REQUIRE(DdpmFile::open(dir + "/q4.ddpm", &q4_file).ok());
  CHECK(!Model::prefers_int8_winograd(q4_file));  // measured off, although q4_0 models default to on
  CHECK(!q4_file.metadata().has("quant.calibration"));
}
