// Scalar reference kernels: the oracle every SIMD variant is tested against. Plain loops, no tricks.
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "kernels/ref/ref.h"
#include "kernels/registry.h"

namespace ddpm::kernels::ref {

void stream_copy(int64_t n, const float* x, float* y) {
  if (n > 0) std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
}

void store_fence() {}

void silu(int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void add(int64_t n, const float* a, const float* b, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void mul(int64_t n, const float* a, const float* b, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}

void add_scalar(int64_t n, const float* a, float b, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b;
}

void mul_scalar(int64_t n, const float* a, float b, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b;
}

void affine(int64_t n, const float* x, float scale, float shift, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift;
}

void affine_silu(int64_t n, const float* x, float scale, float shift, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] * scale + shift;
    y[i] = v / (1.0f + std::exp(-v));
  }
}

double sum_f64(int64_t n, const float* x) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  return sum;
}

double sum_squared_deviation_f64(int64_t n, const float* x, double mean) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = x[i] - mean;
    sum += d * d;
  }
  return sum;
}

float max(int64_t n, const float* x) {
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

float exp_shifted_sum(int64_t n, const float* x, float shift, float* y) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    y[i] = std::exp(x[i] - shift);
    sum += y[i];
  }
  return sum;
}

void f16_to_f32(int64_t n, const uint16_t* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = ddpm::f16_to_f32(x[i]);
}

void f32_to_f16(int64_t n, const float* x, uint16_t* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = ddpm::f32_to_f16(x[i]);
}

void widen_block_scales(int64_t n, const uint16_t* d16, const uint16_t* min16, const int16_t* qsum, float* d,
                        float* min, float* lo_coef) {
  for (int64_t i = 0; i < n; ++i) {
    d[i] = ddpm::f16_to_f32(d16[i]);
    const float block_min = min16 ? ddpm::f16_to_f32(min16[i]) : 0.0f;
    if (min16) min[i] = block_min;
    lo_coef[i] = block_lo_coefficient(d[i], qsum[i], block_min, min16 != nullptr);
  }
}

}  // namespace ddpm::kernels::ref
