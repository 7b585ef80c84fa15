// Scalar reference of the quantised GEMM micro-kernel (semantics in kernels/registry.h, QGemmMicroKernel). Written
// for reading, not speed: the SIMD variants are tested against it.
#include <cmath>
#include <cstring>

#include "kernels/registry.h"

namespace ddpm::kernels {
namespace {

constexpr int kMR = 4, kNR = 8, kBlock = 32;

// One block of 32 values of one column -> int8 q = u - 127, scale d, scaled sum s and minimum lo.
void quantize_column_block(const float* x, int64_t stride, int8_t* q, float* d_out, float* s_out, float* lo_out) {
  float lo = INFINITY, hi = -INFINITY;
  for (int i = 0; i < kBlock; ++i) {
    const float v = x[i * stride];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  const float d = (hi - lo) / 254.0f;
  const float id = d > 0.0f ? 1.0f / d : 0.0f;
  int32_t sum = 0;
  for (int i = 0; i < kBlock; ++i) {
    // fmax sends NaN (a NaN activation, or inf - inf) to 0 rather than to an undefined cast.
    const float u = std::fmin(std::fmax(std::nearbyint((x[i * stride] - lo) * id), 0.0f), 254.0f);
    q[i] = static_cast<int8_t>(static_cast<int32_t>(u) - 127);
    sum += static_cast<int32_t>(u);
  }
  *d_out = d;
  *s_out = d * static_cast<float>(sum);
  *lo_out = lo;
}

void quantize_b(int64_t kc, const float* b_panel, uint8_t* q_panel) {
  const int64_t blocks = kc / kBlock;
  auto* values = reinterpret_cast<int8_t*>(q_panel);           // [kc/4][NR][4]
  float* scales = reinterpret_cast<float*>(q_panel + kc * kNR);  // [kc/32][NR]
  float* sums = scales + blocks * kNR;                          // [kc/32][NR]
  float* minima = sums + blocks * kNR;                          // [kc/32][NR]
  for (int64_t b = 0; b < blocks; ++b) {
    for (int n = 0; n < kNR; ++n) {
      int8_t q[kBlock];
      quantize_column_block(b_panel + b * kBlock * kNR + n, kNR, q, &scales[b * kNR + n], &sums[b * kNR + n],
                            &minima[b * kNR + n]);
      for (int i = 0; i < kBlock; ++i) {
        const int64_t k = b * kBlock + i;
        values[(k / 4) * kNR * 4 + n * 4 + k % 4] = q[i];
      }
    }
  }
}

void run(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
         const GemmEpilogue* epilogue) {
  const int64_t blocks = kc / kBlock;
  const auto* bq = reinterpret_cast<const int8_t*>(q_panel);
  const float* bd = reinterpret_cast<const float*>(q_panel + kc * kNR);
  const float* bs = bd + blocks * kNR;
  const float* blo = bs + blocks * kNR;
  for (int m = 0; m < kMR; ++m) {
    for (int n = 0; n < kNR; ++n) {
      float acc = accumulate ? c[m * ldc + n] : 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t dot = 0;  // Σ wq·u, u = q + 127
        for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) {
          const int64_t quad = (k / 4) * 4, lane = k % 4;
          dot += static_cast<int32_t>(a.q[quad * kMR + m * 4 + lane]) *
                 (static_cast<int32_t>(bq[quad * kNR + n * 4 + lane]) + 127);
        }
        acc = acc + static_cast<float>(dot) * (a.d[b * kMR + m] * bd[b * kNR + n]);
        acc = acc + a.lo_coef[b * kMR + m] * blo[b * kNR + n];
        if (a.min) acc = acc + a.min[b * kMR + m] * bs[b * kNR + n];
      }
      if (epilogue) {
        if (epilogue->row_bias) acc = acc + epilogue->row_bias[m];
        if (epilogue->col_bias) acc = acc + epilogue->col_bias[n];
        if (epilogue->residual) acc = acc + epilogue->residual[m * epilogue->residual_ld + n];
      }
      c[m * ldc + n] = acc;
    }
  }
}

}  // namespace

QGemmMicroKernel reference_qgemm() {
  QGemmMicroKernel k;
  k.name = "scalar";
  k.mr = kMR;
  k.nr = kNR;
  k.b_biased = false;
  k.quantize_b = quantize_b;
  k.run = run;
  return k;
}

}  // namespace ddpm::kernels
