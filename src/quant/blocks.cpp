#include "quant/blocks.h"

#include <cmath>
#include <cstring>

#include "core/half.h"
#include "ddpm/status.h"

namespace ddpm::quant {
namespace {

constexpr float kLargestF16 = 65504.0f;

// The scale as stored (f16, saturated rather than infinite), its value and the reciprocal used to quantise against it.
struct Scale {
  uint16_t bits;
  float stored;
  float inverse;
};

Scale make_scale(float d) {
  if (!(std::fabs(d) <= kLargestF16)) d = std::copysign(kLargestF16, d);  // also maps NaN to the largest
  const uint16_t bits = f32_to_f16(d);
  const float stored = f16_to_f32(bits);
  return {bits, stored, stored != 0.0f ? 1.0f / stored : 0.0f};
}

// Clamp, then round to nearest, ties to even. The comparisons send NaN (a NaN weight) to `lo`, never to a UB cast,
// and compile to min/max instructions where fminf/fmaxf would be library calls in the search's inner loops. Adding
// and subtracting 1.5·2^23 rounds a clamped value (|v| ≤ 128) to an integer in the current rounding mode, which is
// to nearest even (std::nearbyint's result, without its call).
inline float level(float v, float lo, float hi) {
  v = v >= lo ? v : lo;
  v = v <= hi ? v : hi;
  return (v + 12582912.0f) - 12582912.0f;
}

// The value of largest magnitude, with its sign (q4_0 and q5_0 map it to the most negative level, which the signed
// ranges [-8, 7] and [-16, 15] can represent exactly).
float signed_extreme(const float* x) {
  float amax = 0.0f, extreme = 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      extreme = x[i];
    }
  }
  return extreme;
}

// A block of a symmetric type (value = d·q, q in [lo, hi]) being chosen: levels, the stored scale and the squared
// error they give.
struct SymmetricBlock {
  int8_t q[kQuantBlock];
  uint16_t d;
  float error;
};

// Levels against the f16 rounding of `d`, and their squared error: what the block would really store.
void quantise_symmetric(const float* x, float d, float lo, float hi, SymmetricBlock* out) {
  const Scale s = make_scale(d);
  float error = 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) {
    const float v = level(x[i] * s.inverse, lo, hi);
    out->q[i] = static_cast<int8_t>(v);
    const float e = x[i] - s.stored * v;
    error += e * e;
  }
  out->d = s.bits;
  out->error = error;
}

// The scale search of q8_0, q4_0 and q5_0. Mapping the block's extreme onto the end level (the "amax" scale) wastes
// resolution on one value: a slightly larger step that clips it by a fraction of a step, or a smaller one, often
// fits the other 31 better. Candidates map `anchor` to the level `top`·f for `candidates` factors f evenly spaced in
// [f_lo, f_hi]; each candidate's levels get their least-squares scale Σxq/Σq², and the one leaving the least error
// (largest (Σxq)²/Σq²) is rounded to f16, re-quantised and refined once more the same way. The amax scale stays
// the fallback: the block keeps whichever of these really stores the least squared error, so the search never does
// worse than it (ties keep the amax scale, so blocks it reproduces exactly do not change).
struct SymmetricSearch {
  float lo, hi;     // level range
  float top;        // the level the amax scale maps `anchor` to
  float f_lo, f_hi;  // factor range of the candidates
  int candidates;
};
// Ranges tuned on Gaussian, uniform and Student-t blocks: q4/q5 gain from steps up to a third larger (f = 0.75);
// q8_0's extreme is worth more than a fraction of its 127 levels, so its range is narrow. More candidates than
// these change the errors by less than 0.5 % of themselves.
constexpr SymmetricSearch kSearchQ8_0 = {-127.0f, 127.0f, 127.0f, 0.90f, 1.01f, 16};
constexpr SymmetricSearch kSearchQ4_0 = {-8.0f, 7.0f, -8.0f, 0.75f, 1.06f, 10};
constexpr SymmetricSearch kSearchQ5_0 = {-16.0f, 15.0f, -16.0f, 0.75f, 1.06f, 10};

void search_symmetric(const float* x, float anchor, const SymmetricSearch& p, SymmetricBlock* best) {
  quantise_symmetric(x, anchor / p.top, p.lo, p.hi, best);
  if (!(best->error > 0.0f)) return;  // exact (all zeros, or on the levels), or NaN weights: keep the amax scale
  float best_score = -1.0f, best_d = 0.0f;
  for (int k = 0; k < p.candidates; ++k) {
    const float f = p.f_lo + (p.f_hi - p.f_lo) * static_cast<float>(k) / static_cast<float>(p.candidates - 1);
    const float inverse = p.top * f / anchor;
    float sxq = 0.0f, sqq = 0.0f;
    for (int i = 0; i < kQuantBlock; ++i) {
      const float v = level(x[i] * inverse, p.lo, p.hi);
      sxq += x[i] * v;
      sqq += v * v;
    }
    if (!(sqq > 0.0f)) continue;
    const float score = sxq * sxq / sqq;
    if (score > best_score) {
      best_score = score;
      best_d = sxq / sqq;
    }
  }
  if (best_score < 0.0f) return;
  SymmetricBlock candidate;
  quantise_symmetric(x, best_d, p.lo, p.hi, &candidate);
  for (int refit = 0; candidate.error < best->error; ++refit) {
    *best = candidate;
    if (refit == 1) break;
    float sxq = 0.0f, sqq = 0.0f;
    for (int i = 0; i < kQuantBlock; ++i) {
      sxq += x[i] * static_cast<float>(best->q[i]);
      sqq += static_cast<float>(best->q[i] * best->q[i]);
    }
    if (!(sqq > 0.0f)) break;
    quantise_symmetric(x, sxq / sqq, p.lo, p.hi, &candidate);
  }
}

// q4_1's counterpart: value = d·q + m, q in [0, 15].
struct AsymmetricBlock {
  int8_t q[kQuantBlock];
  uint16_t d, m;
  float error;
};

void quantise_asymmetric(const float* x, float d, float m, AsymmetricBlock* out) {
  const Scale s = make_scale(d);
  const Scale min = make_scale(m);
  float error = 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) {
    const float v = level((x[i] - min.stored) * s.inverse, 0.0f, 15.0f);
    out->q[i] = static_cast<int8_t>(v);
    const float e = x[i] - (s.stored * v + min.stored);
    error += e * e;
  }
  out->d = s.bits;
  out->m = min.bits;
  out->error = error;
}

// The least-squares (d, m) for fixed levels q: the 2×2 normal equations. `explained` = d·Σxq + m·Σx is what the fit
// removes from Σx² (larger is better). False when every level is the same (no unique fit).
bool fit_asymmetric(const float* x, const float* q, float sx, float* d, float* m, float* explained) {
  float sq = 0.0f, sqq = 0.0f, sxq = 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) {
    sq += q[i];
    sqq += q[i] * q[i];
    sxq += x[i] * q[i];
  }
  const float n = static_cast<float>(kQuantBlock);
  const float det = n * sqq - sq * sq;
  if (!(det > 0.0f)) return false;
  *d = (n * sxq - sq * sx) / det;
  *m = (sx - *d * sq) / n;
  *explained = *d * sxq + *m * sx;
  return true;
}

// q4_1's search: the min/max fit, and candidates that pull either end of the range in by 0 or 1/30 of it (four
// ranges: clipping a lone outlier by a little buys a finer step for the rest), each range's levels refitted
// by least squares for both d and m. The best fit is rounded to f16, re-quantised and refined twice more; the
// min/max fit stays the fallback, as for the symmetric types.
constexpr int kAsymmetricShrinks = 2;
constexpr float kAsymmetricShrinkStep = 1.0f / 30.0f;

void search_asymmetric(const float* x, AsymmetricBlock* best) {
  float lo = x[0], hi = x[0], sx = 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) {
    lo = std::fminf(lo, x[i]);
    hi = std::fmaxf(hi, x[i]);
    sx += x[i];
  }
  quantise_asymmetric(x, (hi - lo) / 15.0f, lo, best);
  if (!(best->error > 0.0f)) return;
  const float range = hi - lo;
  float q[kQuantBlock];
  float best_explained = -INFINITY, best_d = 0.0f, best_m = 0.0f;
  for (int a = 0; a < kAsymmetricShrinks; ++a) {
    for (int b = 0; b < kAsymmetricShrinks; ++b) {
      const float low = lo + range * kAsymmetricShrinkStep * static_cast<float>(a);
      const float high = hi - range * kAsymmetricShrinkStep * static_cast<float>(b);
      const float inverse = 15.0f / (high - low);
      for (int i = 0; i < kQuantBlock; ++i) q[i] = level((x[i] - low) * inverse, 0.0f, 15.0f);
      float d, m, explained;
      if (fit_asymmetric(x, q, sx, &d, &m, &explained) && explained > best_explained) {
        best_explained = explained;
        best_d = d;
        best_m = m;
      }
    }
  }
  if (best_explained == -INFINITY) return;
  AsymmetricBlock candidate;
  quantise_asymmetric(x, best_d, best_m, &candidate);
  for (int refit = 0; candidate.error < best->error; ++refit) {
    *best = candidate;
    if (refit == 2) break;
    for (int i = 0; i < kQuantBlock; ++i) q[i] = best->q[i];
    float d, m, explained;
    if (!fit_asymmetric(x, q, sx, &d, &m, &explained)) break;
    quantise_asymmetric(x, d, m, &candidate);
  }
}

}  // namespace

void quantize_row_q8_0(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ8_0*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    float amax = 0.0f;
    for (int i = 0; i < kQuantBlock; ++i) amax = std::fmaxf(amax, std::fabs(x[i]));
    SymmetricBlock best;
    search_symmetric(x, amax, kSearchQ8_0, &best);
    out[b].d = best.d;
    std::memcpy(out[b].qs, best.q, kQuantBlock);
  }
}

void quantize_row_q8_0_amax(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ8_0*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    float amax = 0.0f;
    for (int i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(x[i]));  // (NaNs ignored, as by fmaxf)
    SymmetricBlock block;
    quantise_symmetric(x, amax / kSearchQ8_0.top, kSearchQ8_0.lo, kSearchQ8_0.hi, &block);
    out[b].d = block.d;
    std::memcpy(out[b].qs, block.q, kQuantBlock);
  }
}

void quantize_row_q4_0(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ4_0*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    SymmetricBlock best;
    search_symmetric(x, signed_extreme(x), kSearchQ4_0, &best);
    out[b].d = best.d;
    for (int i = 0; i < kQuantBlock / 2; ++i) {
      out[b].qs[i] = static_cast<uint8_t>((best.q[i] + 8) | (best.q[i + kQuantBlock / 2] + 8) << 4);
    }
  }
}

void quantize_row_q4_1(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ4_1*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    AsymmetricBlock best;
    search_asymmetric(x, &best);
    out[b].d = best.d;
    out[b].m = best.m;
    for (int i = 0; i < kQuantBlock / 2; ++i) {
      out[b].qs[i] = static_cast<uint8_t>(best.q[i] | best.q[i + kQuantBlock / 2] << 4);
    }
  }
}

void quantize_row_q5_0(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ5_0*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    SymmetricBlock best;
    search_symmetric(x, signed_extreme(x), kSearchQ5_0, &best);
    out[b].d = best.d;
    uint32_t high_bits = 0;
    for (int i = 0; i < kQuantBlock / 2; ++i) {
      const int q0 = best.q[i] + 16;
      const int q1 = best.q[i + kQuantBlock / 2] + 16;
      out[b].qs[i] = static_cast<uint8_t>((q0 & 15) | ((q1 & 15) << 4));
      high_bits |= static_cast<uint32_t>(q0 >> 4) << i;
      high_bits |= static_cast<uint32_t>(q1 >> 4) << (i + kQuantBlock / 2);
    }
    for (int j = 0; j < 4; ++j) out[b].qh[j] = static_cast<uint8_t>(high_bits >> (8 * j));
  }
}

void unpack_blocks(DType type, const void* row, int64_t block_count, int8_t* q, float* d, float* m) {
  for (int64_t b = 0; b < block_count; ++b, q += kQuantBlock) {
    switch (type) {
      case DType::Q8_0: {
        const BlockQ8_0& block = static_cast<const BlockQ8_0*>(row)[b];
        d[b] = f16_to_f32(block.d);
        m[b] = 0.0f;
        std::memcpy(q, block.qs, kQuantBlock);
        break;
      }
      case DType::Q4_0: {
        const BlockQ4_0& block = static_cast<const BlockQ4_0*>(row)[b];
        d[b] = f16_to_f32(block.d);
        m[b] = 0.0f;
        for (int i = 0; i < kQuantBlock / 2; ++i) {
          q[i] = static_cast<int8_t>((block.qs[i] & 15) - 8);
          q[i + kQuantBlock / 2] = static_cast<int8_t>((block.qs[i] >> 4) - 8);
        }
        break;
      }
      case DType::Q4_1: {
        const BlockQ4_1& block = static_cast<const BlockQ4_1*>(row)[b];
        d[b] = f16_to_f32(block.d);
        m[b] = f16_to_f32(block.m);
        for (int i = 0; i < kQuantBlock / 2; ++i) {
          q[i] = static_cast<int8_t>(block.qs[i] & 15);
          q[i + kQuantBlock / 2] = static_cast<int8_t>(block.qs[i] >> 4);
        }
        break;
      }
      case DType::Q5_0: {
        const BlockQ5_0& block = static_cast<const BlockQ5_0*>(row)[b];
        d[b] = f16_to_f32(block.d);
        m[b] = 0.0f;
        const uint32_t high_bits = static_cast<uint32_t>(block.qh[0]) | static_cast<uint32_t>(block.qh[1]) << 8 |
                                   static_cast<uint32_t>(block.qh[2]) << 16 | static_cast<uint32_t>(block.qh[3]) << 24;
        for (int i = 0; i < kQuantBlock / 2; ++i) {
          const int lo = (block.qs[i] & 15) | static_cast<int>((high_bits >> i) & 1) << 4;
          const int hi = (block.qs[i] >> 4) | static_cast<int>((high_bits >> (i + kQuantBlock / 2)) & 1) << 4;
          q[i] = static_cast<int8_t>(lo - 16);
          q[i + kQuantBlock / 2] = static_cast<int8_t>(hi - 16);
        }
        break;
      }
      default:
        DDPM_ASSERT(false && "unpack_blocks: not a block type");
    }
  }
}

namespace {

void dequantize_row(DType type, const void* blocks, float* y, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  int8_t q[kQuantBlock];
  float d, m;
  for (int64_t b = 0; b < n / kQuantBlock; ++b, y += kQuantBlock) {
    const size_t block_bytes = dtype_traits(type).block_bytes;
    unpack_blocks(type, static_cast<const uint8_t*>(blocks) + b * block_bytes, 1, q, &d, &m);
    for (int i = 0; i < kQuantBlock; ++i) y[i] = d * static_cast<float>(q[i]) + m;
  }
}

}  // namespace

void dequantize_row_q8_0(const void* blocks, float* y, int64_t n) { dequantize_row(DType::Q8_0, blocks, y, n); }
void dequantize_row_q4_0(const void* blocks, float* y, int64_t n) { dequantize_row(DType::Q4_0, blocks, y, n); }
void dequantize_row_q4_1(const void* blocks, float* y, int64_t n) { dequantize_row(DType::Q4_1, blocks, y, n); }
void dequantize_row_q5_0(const void* blocks, float* y, int64_t n) { dequantize_row(DType::Q5_0, blocks, y, n); }

bool is_block_type(DType type) {
  return type == DType::Q8_0 || type == DType::Q4_0 || type == DType::Q4_1 || type == DType::Q5_0;
}

bool tap_major_eligible(DType type, int rank, const int64_t* shape) {
  return is_block_type(type) && rank == 4 && shape[1] % kQuantBlock == 0 && shape[2] * shape[3] > 1;
}

}  // namespace ddpm::quant
