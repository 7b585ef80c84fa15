// Scalar conversions between f32 and the two 16-bit float formats found in checkpoints.
//
// IEEE binary16 ("f16") and bfloat16 ("bf16") are stored as raw uint16_t bit patterns. Narrowing conversions round
// to nearest, ties to even, exactly as hardware converters (F16C, ARMv8 FCVT) do in their default mode, so a value
// converted here matches what a SIMD kernel produces. Widening conversions are exact. NaNs stay NaNs (quiet, sign
// and the top payload bits kept); infinities and subnormals are handled in both directions.
//
// These are the portable reference; kernels may use vector instructions but must agree with them bit for bit.
#pragma once

#include <cstdint>
#include <cstring>

namespace ddpm {

namespace half_detail {

inline uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace half_detail

inline float f16_to_f32(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  const uint32_t exponent = (half >> 10) & 0x1fu;
  const uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in f32, so let the FPU normalise it.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1f) {
    // Infinity keeps a zero mantissa; a NaN's payload moves to the top of the f32 payload and so stays non-zero.
    return half_detail::bits_float(sign | 0x7f800000u | (mantissa << 13));
  }
  return half_detail::bits_float(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

inline uint16_t f32_to_f16(float value) {
  const uint32_t bits = half_detail::float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;

  if (magnitude >= 0x7f800000u) {
    if (magnitude == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    // Quiet bit forced so that a signalling NaN whose payload lives only in the low bits cannot become infinity.
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  // 65520 is the midpoint between the largest f16 (65504, odd mantissa) and 65536; the tie goes to the even side,
  // which is the overflow to infinity.
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);

  const uint32_t exponent = magnitude >> 23;
  if (exponent >= 127 - 14) {
    // Normal f16. Rebias, drop 13 mantissa bits, round; a carry out of the mantissa correctly bumps the exponent.
    uint32_t result = ((exponent - (127 - 15)) << 10) | ((magnitude >> 13) & 0x3ffu);
    const uint32_t dropped = magnitude & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (result & 1u))) ++result;
    return static_cast<uint16_t>(sign | result);
  }

  // Subnormal f16 (or zero): the result counts units of 2^-24. An f32 with biased exponent e and full significand m
  // (24 bits) is m * 2^(e-150), i.e. m >> (126 - e) units. Below half a unit everything rounds to zero.
  if (exponent < 126 - 24) return sign;
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // 14..24
  uint32_t result = significand >> shift;
  const uint32_t dropped = significand & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (dropped > halfway || (dropped == halfway && (result & 1u))) ++result;  // may carry into the smallest normal
  return static_cast<uint16_t>(sign | result);
}

inline float bf16_to_f32(uint16_t bfloat) { return half_detail::bits_float(static_cast<uint32_t>(bfloat) << 16); }

inline uint16_t f32_to_bf16(float value) {
  const uint32_t bits = half_detail::float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // Rounding could carry a low-payload NaN into infinity; force the quiet bit instead.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Adding 0x7fff (+1 when the kept part is odd) carries exactly when the dropped half is above, or at and odd,
  // the midpoint. Finite values near the top correctly overflow to infinity.
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

}  // namespace ddpm
