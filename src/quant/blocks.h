// Block-quantised weight formats, as data.
//
// A row of weights is cut into blocks of kQuantBlock = 32 consecutive values; each block stores an f16 scale `d`
// (and, for q4_1, an f16 minimum `m`) followed by small integers. Dequantised value i of a block:
//
//   q8_0   d · q[i]                      q[i] int8 in [-127, 127]
//   q4_0   d · (nibble[i] − 8)           nibble[i] in [0, 15]
//   q4_1   d · nibble[i] + m             nibble[i] in [0, 15]
//   q5_0   d · (five_bit[i] − 16)        five_bit[i] in [0, 31]
//
// Nibbles are packed two per byte: value i < 16 in the low nibble of qs[i], value i + 16 in its high nibble. q5_0
// keeps each value's fifth bit in qh, bit i of the little-endian 32-bit word qh[0..3]. The byte layout of every block
// is fixed by the structs below (no padding: each has a size static_assert) and documented in docs/FORMAT.md.
//
// The quantisers search a few scales per block around the one set by its extreme values and keep the one that
// stores the least squared error (docs/FORMAT.md §6.1, "How the scale is chosen"); every scale is rounded to f16
// first and the values quantised against the rounded scale, so a block dequantises to the nearest representable
// values for the scale it actually stores. Rounding of values is to nearest, ties to even (as std::nearbyint), as
// the SIMD activation quantisers also do.
//
// The integer GEMM never dequantises to float: unpack_blocks turns any of these into int8 values with a scale (and a
// minimum) per block, which is what its kernels multiply (src/ops/qgemm.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ddpm/dtype.h"

namespace ddpm::quant {

constexpr int kQuantBlock = 32;

struct BlockQ8_0 {
  uint16_t d;  // f16
  int8_t qs[kQuantBlock];
};
static_assert(sizeof(BlockQ8_0) == 34, "q8_0 block is 34 bytes");

struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "q4_0 block is 18 bytes");

struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ4_1) == 20, "q4_1 block is 20 bytes");

struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ5_0) == 22, "q5_0 block is 22 bytes");

// Reference row conversions; n is a multiple of kQuantBlock.
void quantize_row_q8_0(const float* x, void* blocks, int64_t n);
void quantize_row_q4_0(const float* x, void* blocks, int64_t n);
void quantize_row_q4_1(const float* x, void* blocks, int64_t n);
void quantize_row_q5_0(const float* x, void* blocks, int64_t n);
// q8_0 with the amax scale only (the block's extreme on level ±127), without quantize_row_q8_0's search for a
// better step: a sixteenth of its time, for conversions made at run time (Winograd-transformed filters).
void quantize_row_q8_0_amax(const float* x, void* blocks, int64_t n);
void dequantize_row_q8_0(const void* blocks, float* y, int64_t n);
void dequantize_row_q4_0(const void* blocks, float* y, int64_t n);
void dequantize_row_q4_1(const void* blocks, float* y, int64_t n);
void dequantize_row_q5_0(const void* blocks, float* y, int64_t n);

// For the integer GEMM: `block_count` blocks of a row of `type` as int8 values q[32·b + i], scales d[b] (f32, exactly
// the stored f16) and minima m[b] (0 for types without one). dequantised value = d[b]·q[32·b + i] + m[b], exactly.
void unpack_blocks(DType type, const void* row, int64_t block_count, int8_t* q, float* d, float* m);

// True for the block types above.
bool is_block_type(DType type);

// Conv weights that a file may store tap-major (docs/FORMAT.md §6.8, header flag bit 0): block types of rank 4
// [Co, Ci, kh, kw] with Ci a multiple of 32 and more than one tap. Their rows then hold values in (kh, kw, Ci)
// order instead of PyTorch's (Ci, kh, kw), so each 32-value block is one tap's weights for 32 input channels and
// conv2d can quantise every input pixel's activations once per op instead of once per tap.
bool tap_major_eligible(DType type, int rank, const int64_t* shape);

}  // namespace ddpm::quant
