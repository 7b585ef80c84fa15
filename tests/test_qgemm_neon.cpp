// ARM64 specifics of the quantised GEMM that tests/test_qgemm.cpp (every variant against the reference, on every
// tail, type, epilogue and split) does not reach: that a CPU is handed only the NEON kernels it can run (the sdot
// one only with HWCAP_ASIMDDP; CI runs this under qemu -cpu cortex-a72 and cortex-a76, tests/check.sh), that every
// activation quantiser (NEON, and on x86 AVX2 / AVX-512) matches the reference on special values (NaN, infinity, a
// subnormal scale, signed zeros, wide magnitudes), and that the widening multiplies of the kernel without dotprod,
// whose adjacent products are summed in int16, do not overflow at the extreme ±127·±127. On other architectures
// there is no NEON kernel: the selection and the quantisers there are checked.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/registry.h"

namespace ddpm {
namespace {

constexpr int64_t kBlock = 32;

// Tolerance of a kernel's output element against the reference's. Both compute the same chain of n = 3·blocks + 3
// adds onto the initial C from identical integer sums and scale products; the kernel fuses each product into its
// add (FMA) where the reference rounds it first. Each of the two chains is within (n + 1)·2^-24·Σ|terms| of the
// exact value (terms: C, every block's isum·(wd·ad), lo_coef·lo and wmin·as, the epilogue's), so they differ by at most twice
// that. An indexing mistake is off by a whole term.
double chain_tolerance(int64_t blocks, double sum_of_abs_terms) {
  return 2.0 * static_cast<double>(3 * blocks + 4) * 0x1p-24 * sum_of_abs_terms;
}

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

// Every NEON kernel this CPU runs ("neon", and "neon-dotprod" where the CPU has it).
std::vector<kernels::QGemmMicroKernel> neon_kernels() {
  kernels::QGemmMicroKernel all[16];
  const int n = kernels::available_qgemm_kernels(all, 16);
  std::vector<kernels::QGemmMicroKernel> out;
  for (int i = 0; i < n; ++i) {
    if (std::string(all[i].name).rfind("neon", 0) == 0) out.push_back(all[i]);
  }
  return out;
}

// One column's quantised activations as the interface defines them, decoded from any kernel's B panel.
struct QuantColumn {
  std::vector<int32_t> q;      // kc values (u - 127)
  std::vector<float> d, s, lo;  // per block
};

// kc × n_total f32 values (x[k*n_total + n]) quantised by `kernel`, panel by panel as the driver feeds it (columns
// past n_total zero), decoded per column.
std::vector<QuantColumn> quantize_columns(const kernels::QGemmMicroKernel& kernel, const std::vector<float>& x,
                                          int64_t kc, int64_t n_total) {
  const int nr = kernel.nr;
  const int64_t blocks = kc / kBlock;
  std::vector<QuantColumn> cols(static_cast<size_t>(n_total));
  std::vector<float> panel(static_cast<size_t>(kc * nr));
  std::vector<uint8_t> q(kernels::qgemm_b_panel_bytes(kc, nr));
  for (int64_t n0 = 0; n0 < n_total; n0 += nr) {
    for (int64_t k = 0; k < kc; ++k) {
      for (int j = 0; j < nr; ++j) panel[k * nr + j] = n0 + j < n_total ? x[k * n_total + n0 + j] : 0.0f;
    }
    kernel.quantize_b(kc, panel.data(), q.data());
    const float* d = reinterpret_cast<const float*>(q.data() + kc * nr);
    const float* s = d + blocks * nr;
    const float* lo = s + blocks * nr;
    for (int j = 0; j < nr && n0 + j < n_total; ++j) {
      QuantColumn& col = cols[static_cast<size_t>(n0 + j)];
      for (int64_t k = 0; k < kc; ++k) {
        const uint8_t byte = q[(k / 4) * nr * 4 + j * 4 + k % 4];
        col.q.push_back(kernel.b_biased ? int32_t(byte) - 128 : int32_t(int8_t(byte)));
      }
      for (int64_t b = 0; b < blocks; ++b) {
        col.d.push_back(d[b * nr + j]);
        col.s.push_back(s[b * nr + j]);
        col.lo.push_back(lo[b * nr + j]);
      }
    }
  }
  return cols;
}

}  // namespace

TEST_CASE("NEON qgemm kernels are the ones this CPU may run", "[qgemm]") {
  const std::vector<kernels::QGemmMicroKernel> neon = neon_kernels();
  const kernels::CpuFeatures& cpu = kernels::cpu_features();
  bool plain = false, dotprod = false;
  for (const auto& k : neon) {
    plain |= std::string(k.name) == "neon";
    dotprod |= std::string(k.name) == "neon-dotprod";
  }
  CHECK(plain == (kernels::table_for(kernels::Isa::Neon) != nullptr));
  // A CPU without HWCAP_ASIMDDP (Cortex-A72) must never be handed the sdot kernel.
  CHECK(dotprod == (plain && cpu.neon_dotprod));
  if (const kernels::KernelTable* table = kernels::table_for(kernels::Isa::Neon)) {
    CHECK(std::string(table->qgemm.name) == (cpu.neon_dotprod ? "neon-dotprod" : "neon"));
  }
  // tests/check.sh says which kernel the emulated CPU must get, so a detection that never finds dotprod (and would
  // leave the sdot kernel untested) fails too.
  if (const char* expected = std::getenv("DDPM_EXPECT_QGEMM")) {
    CHECK(std::string(kernels::active().qgemm.name) == expected);
  }
}

// Every SIMD quantiser this CPU runs (NEON here, AVX2 / AVX-512 on x86), not only NEON's.
TEST_CASE("every quantize_b matches the reference bit for bit on NaN, infinity, subnormal scales, ties", "[qgemm]") {
  const kernels::QGemmMicroKernel& reference = kernels::reference().qgemm;
  kernels::QGemmMicroKernel all[16];
  const int count = kernels::available_qgemm_kernels(all, 16);
  for (int i = 0; i < count; ++i) {
    const kernels::QGemmMicroKernel& kernel = all[i];
    if (kernel.quantize_b == reference.quantize_b) continue;
    for (int64_t kc : {32, 64, 288}) {
      for (int64_t n_total : {int64_t(kernel.nr) - 1, int64_t(kernel.nr), int64_t(2 * kernel.nr + 1)}) {
        INFO(kernel.name << " kc=" << kc << " columns=" << n_total);
        std::mt19937 rng(static_cast<uint32_t>(kc * 131 + n_total));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::vector<float> x(static_cast<size_t>(kc * n_total));
        for (float& v : x) v = normal(rng);
        // Values at rounding ties of (x - lo)·id (minimum 0 and maximum 254 give id 1: k + 0.5 must round to
        // even), NaN (skipped by the minimum and maximum, quantised to u = 0), infinity (d = inf, id = 0),
        // a range of FLT_MIN (d subnormal: id = inf, 0·inf = NaN), signed zeros (the order of -0 and +0), and
        // magnitudes from 2^-32 to 2^31.
        for (int64_t k = 0; k < kc; ++k) {
          x[k * n_total + 0] = k % 32 == 0 ? 0.0f : k % 32 == 1 ? 254.0f : static_cast<float>(k % 32) + 0.5f;
          if (n_total > 1) x[k * n_total + 1] = k % 7 == 3 ? std::numeric_limits<float>::quiet_NaN() : normal(rng);
          if (n_total > 2) x[k * n_total + 2] = k == 5 ? std::numeric_limits<float>::infinity() : normal(rng);
          if (n_total > 3) x[k * n_total + 3] = std::numeric_limits<float>::min() * 0.5f * float(k % 5 - 2);
          if (n_total > 4) x[k * n_total + 4] = k % 3 == 0 ? -0.0f : 0.0f;
          if (n_total > 5) x[k * n_total + 5] = normal(rng) * std::ldexp(1.0f, int(k % 64) - 32);
        }
        const std::vector<QuantColumn> want = quantize_columns(reference, x, kc, n_total);
        const std::vector<QuantColumn> got = quantize_columns(kernel, x, kc, n_total);
        int64_t bad = -1;
        for (int64_t n = 0; n < n_total && bad < 0; ++n) {
          const QuantColumn &w = want[static_cast<size_t>(n)], &g = got[static_cast<size_t>(n)];
          bool same = w.q == g.q;
          for (size_t b = 0; b < w.d.size(); ++b) {
            // Biased kernels describe the same grid by the stored u + 1: d·Σ(u + 1) and lo − d (b_biased).
            float want_s = w.s[b], want_lo = w.lo[b];
            if (kernel.b_biased) {
              int32_t u_sum = 0;
              for (int64_t i = 0; i < kBlock; ++i) u_sum += w.q[b * kBlock + static_cast<size_t>(i)] + 127;
              want_s = w.d[b] * static_cast<float>(u_sum + static_cast<int32_t>(kBlock));
              want_lo = w.lo[b] - w.d[b];
            }
            same &= bits_of(w.d[b]) == bits_of(g.d[b]) && bits_of(want_s) == bits_of(g.s[b]) &&
                    bits_of(want_lo) == bits_of(g.lo[b]);
          }
          if (!same) bad = n;
        }
        INFO("first column that differs: " << bad);
        CHECK(bad < 0);
      }
    }
  }
}

TEST_CASE("NEON qgemm kernels: products at ±127·±127 do not overflow the int16 pair sums", "[qgemm]") {
  for (const kernels::QGemmMicroKernel& kernel : neon_kernels()) {
    const int mr = kernel.mr, nr = kernel.nr;
    const int64_t kc = 64, blocks = kc / kBlock;
    for (int sign : {1, -1}) {
      INFO(kernel.name << " sign=" << sign);
      // B = ±1 per column and block (minimum -1, maximum 1) quantises to q = ±127; weights ±127 in the same pattern
      // (or its opposite) make every product +16129 (or −16129), the largest adjacent-pair sums the widening
      // multiplies can produce, and every block's Σ w·q ±32·16129.
      std::vector<float> b(static_cast<size_t>(kc * nr));
      std::vector<int8_t> q(static_cast<size_t>(kc * mr));
      for (int64_t k = 0; k < kc; ++k) {
        const int pattern = (k * 5 + k / 3) % 2 ? 1 : -1;
        for (int n = 0; n < nr; ++n) b[k * nr + n] = float(pattern);
        for (int m = 0; m < mr; ++m) q[(k / 4) * mr * 4 + m * 4 + k % 4] = static_cast<int8_t>(127 * pattern * sign);
      }
      std::vector<float> d(static_cast<size_t>(blocks * mr), 1.0f);
      std::vector<int16_t> qsum(d.size(), 0);
      for (int64_t k = 0; k < kc; ++k) {
        for (int m = 0; m < mr; ++m) qsum[(k / kBlock) * mr + m] += q[(k / 4) * mr * 4 + m * 4 + k % 4];
      }
      std::vector<float> lo_coef(d.size());
      for (size_t i = 0; i < d.size(); ++i) lo_coef[i] = d[i] * static_cast<float>(qsum[i]);
      const kernels::QGemmPanelA a{q.data(), d.data(), nullptr, qsum.data(), lo_coef.data()};
      std::vector<uint8_t> bq(kernels::qgemm_b_panel_bytes(kc, nr));
      kernel.quantize_b(kc, b.data(), bq.data());
      // Column 0's scales and minima; every column has the same.
      const float* ad = reinterpret_cast<const float*>(bq.data() + kc * nr);
      const float* alo = ad + 2 * blocks * nr;
      std::vector<float> c(static_cast<size_t>(mr * nr));
      kernel.run(kc, a, bq.data(), c.data(), nr, false, nullptr);
      // The contract's chain in f32 (mul + add); the kernel may fuse each pair. The same for every element (every
      // row has the same weights): Σ w·u = Σ w·q + 127·Σ w per block.
      float expected = 0.0f;
      double sum_of_abs_terms = 0.0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const float dot = float(sign * 32 * 16129 + 127 * qsum[blk * mr]);
        expected = expected + dot * (1.0f * ad[blk * nr]);
        expected = expected + lo_coef[blk * mr] * alo[blk * nr];
        sum_of_abs_terms += std::fabs(double(dot) * ad[blk * nr]) + std::fabs(double(lo_coef[blk * mr]) * alo[blk * nr]);
      }
      const double tol = chain_tolerance(blocks, sum_of_abs_terms);
      int bad = -1;
      for (int i = 0; i < mr * nr; ++i) {
        if (!(std::fabs(double(c[i]) - expected) <= tol)) bad = i;
      }
      INFO("element " << bad << " of the tile, expected " << expected);
      CHECK(bad < 0);
    }
  }
}

}  // namespace ddpm
