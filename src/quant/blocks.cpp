#include "quant/blocks.h"

#include <cmath>
#include <cstring>

#include "core/half.h"
#include "ddpm/status.h"

namespace ddpm::quant {
namespace {

constexpr float kLargestF16 = 65504.0f;

// The scale as stored (f16, saturated rather than infinite) and the reciprocal used to quantise against it.
struct Scale {
  uint16_t bits;
  float inverse;
};

Scale make_scale(float d) {
  if (!(std::fabs(d) <= kLargestF16)) d = std::copysign(kLargestF16, d);  // also maps NaN to the largest
  const uint16_t bits = f32_to_f16(d);
  const float stored = f16_to_f32(bits);
  return {bits, stored != 0.0f ? 1.0f / stored : 0.0f};
}

// Round to nearest even and clamp; fmaxf/fminf also send a NaN product (a NaN weight) to `lo`, never to a UB cast.
int quantize_value(float scaled, float lo, float hi) {
  return static_cast<int>(std::fminf(std::fmaxf(std::nearbyint(scaled), lo), hi));
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

}  // namespace

void quantize_row_q8_0(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ8_0*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    float amax = 0.0f;
    for (int i = 0; i < kQuantBlock; ++i) amax = std::fmaxf(amax, std::fabs(x[i]));
    const Scale s = make_scale(amax / 127.0f);
    out[b].d = s.bits;
    for (int i = 0; i < kQuantBlock; ++i) out[b].qs[i] = static_cast<int8_t>(quantize_value(x[i] * s.inverse, -127, 127));
  }
}

void quantize_row_q4_0(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ4_0*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    const Scale s = make_scale(signed_extreme(x) / -8.0f);
    out[b].d = s.bits;
    for (int i = 0; i < kQuantBlock / 2; ++i) {
      const int lo = quantize_value(x[i] * s.inverse, -8, 7) + 8;
      const int hi = quantize_value(x[i + kQuantBlock / 2] * s.inverse, -8, 7) + 8;
      out[b].qs[i] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void quantize_row_q4_1(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ4_1*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < kQuantBlock; ++i) {
      lo = std::fminf(lo, x[i]);
      hi = std::fmaxf(hi, x[i]);
    }
    const Scale s = make_scale((hi - lo) / 15.0f);
    const Scale m = make_scale(lo);
    const float min_stored = f16_to_f32(m.bits);
    out[b].d = s.bits;
    out[b].m = m.bits;
    for (int i = 0; i < kQuantBlock / 2; ++i) {
      const int q0 = quantize_value((x[i] - min_stored) * s.inverse, 0, 15);
      const int q1 = quantize_value((x[i + kQuantBlock / 2] - min_stored) * s.inverse, 0, 15);
      out[b].qs[i] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q5_0(const float* x, void* blocks, int64_t n) {
  DDPM_ASSERT(n % kQuantBlock == 0);
  auto* out = static_cast<BlockQ5_0*>(blocks);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, x += kQuantBlock) {
    const Scale s = make_scale(signed_extreme(x) / -16.0f);
    out[b].d = s.bits;
    uint32_t high_bits = 0;
    for (int i = 0; i < kQuantBlock / 2; ++i) {
      const int q0 = quantize_value(x[i] * s.inverse, -16, 15) + 16;
      const int q1 = quantize_value(x[i + kQuantBlock / 2] * s.inverse, -16, 15) + 16;
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

}  // namespace ddpm::quant
