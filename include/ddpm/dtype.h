// Element types and their traits.
//
// Activations are always f32. Weights may be f32, f16 or (later) block-quantised: a block type stores
// `block_size` consecutive values of a row in `block_bytes` bytes (e.g. q8_0: 32 values in 34 bytes). The traits
// table below is the single place that knows those numbers; everything else (file format, loaders, packers) asks it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ddpm {

enum class DType : uint8_t {
  F32 = 0,
  F16 = 1,
  I32 = 2,  // labels, timesteps as integers
  // Block-quantised weights (src/quant/blocks.h, docs/FORMAT.md): 32 values per block, f16 scale.
  Q8_0 = 3,  // int8 · d
  Q4_0 = 4,  // (nibble − 8) · d
  Q4_1 = 5,  // nibble · d + m
  Q5_0 = 6,  // (5-bit − 16) · d
  kCount
};

struct DTypeTraits {
  const char* name;
  int64_t block_size;   // values per block (1 for plain types)
  size_t block_bytes;   // bytes per block
  bool is_quantized;
  // Row conversions of n values (n a multiple of block_size). Null for types that are not numeric weights (I32).
  void (*to_f32)(const void* src, float* dst, int64_t n);
  void (*from_f32)(const float* src, void* dst, int64_t n);
};

const DTypeTraits& dtype_traits(DType type);
inline const char* dtype_name(DType type) { return dtype_traits(type).name; }
// Parses "f32", "f16", …; returns false for unknown names.
bool dtype_from_name(const char* name, DType* out);
// Bytes for n values of `type` (n must be a multiple of the block size).
size_t dtype_row_bytes(DType type, int64_t n);

// Tensors of a block type are rows: shape[0] rows of all the other dimensions' product (a conv weight
// [Co, Ci, kh, kw] is Co rows of Ci·kh·kw; a rank-1 tensor is one row), each padded with zeros to a whole number of
// blocks. For plain types the padding is none and this is dtype_row_bytes(type, numel).
int64_t dtype_padded_row(DType type, int64_t row_values);
size_t dtype_tensor_bytes(DType type, int rank, const int64_t* shape);

}  // namespace ddpm
