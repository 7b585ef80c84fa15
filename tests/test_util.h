// Helpers shared by the tests: random data, relative L2 error, and running a graph under every kernel level.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ddpm/graph.h"
#include "ddpm/ops.h"
#include "ddpm/threadpool.h"
#include "kernels/registry.h"

namespace ddpm::test {

// f32 results against a double-precision reference: sums of up to a few thousand products keep a relative L2
// error near 1e-7; 1e-5 leaves room for FMA-vs-separate rounding and long reductions, and still catches any
// indexing mistake (those give errors of order 1).
constexpr double kF32RelativeL2 = 1e-5;

inline std::vector<float> random_vector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline double relative_l2(const float* actual, const double* expected, size_t n) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = actual[i] - expected[i];
    diff += d * d;
    norm += expected[i] * expected[i];
  }
  return norm == 0.0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

inline double relative_l2(const float* actual, const float* expected, size_t n) {
  std::vector<double> e(expected, expected + n);
  return relative_l2(actual, e.data(), n);
}

// Restores the kernel level chosen before the test when it goes out of scope.
struct IsaGuard {
  const kernels::KernelTable* saved = &kernels::active();
  ~IsaGuard() { (void)kernels::select(saved->isa_name); }
};

// Every kernel table this CPU can run (reference first).
inline std::vector<const kernels::KernelTable*> all_levels() {
  const kernels::KernelTable* tables[8];
  const int n = kernels::available_tables(tables, 8);
  return std::vector<const kernels::KernelTable*>(tables, tables + n);
}

}  // namespace ddpm::test
