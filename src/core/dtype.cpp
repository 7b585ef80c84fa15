#include "ddpm/dtype.h"

#include <cstring>

#include "ddpm/status.h"
#include "kernels/registry.h"
#include "quant/blocks.h"

namespace ddpm {
namespace {

void f32_to_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }
void f32_from_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }
void f16_row_to_f32(const void* src, float* dst, int64_t n) {
  kernels::active().f16_to_f32(n, static_cast<const uint16_t*>(src), dst);
}
void f16_row_from_f32(const float* src, void* dst, int64_t n) {
  kernels::active().f32_to_f16(n, src, static_cast<uint16_t*>(dst));
}

// Indexed by DType: name, values per block, bytes per block, quantised, row converters.
const DTypeTraits kTraits[] = {
    {"f32", 1, 4, false, f32_to_f32, f32_from_f32},
    {"f16", 1, 2, false, f16_row_to_f32, f16_row_from_f32},
    {"i32", 1, 4, false, nullptr, nullptr},
    {"q8_0", quant::kQuantBlock, sizeof(quant::BlockQ8_0), true, quant::dequantize_row_q8_0, quant::quantize_row_q8_0},
    {"q4_0", quant::kQuantBlock, sizeof(quant::BlockQ4_0), true, quant::dequantize_row_q4_0, quant::quantize_row_q4_0},
    {"q4_1", quant::kQuantBlock, sizeof(quant::BlockQ4_1), true, quant::dequantize_row_q4_1, quant::quantize_row_q4_1},
    {"q5_0", quant::kQuantBlock, sizeof(quant::BlockQ5_0), true, quant::dequantize_row_q5_0, quant::quantize_row_q5_0},
};
static_assert(sizeof(kTraits) / sizeof(kTraits[0]) == static_cast<size_t>(DType::kCount),
              "every DType needs a traits row");

}  // namespace

const DTypeTraits& dtype_traits(DType type) {
  DDPM_ASSERT(type < DType::kCount);
  return kTraits[static_cast<int>(type)];
}

bool dtype_from_name(const char* name, DType* out) {
  for (int i = 0; i < static_cast<int>(DType::kCount); ++i) {
    if (std::strcmp(name, kTraits[i].name) == 0) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

size_t dtype_row_bytes(DType type, int64_t n) {
  const DTypeTraits& traits = dtype_traits(type);
  DDPM_ASSERT(n % traits.block_size == 0);
  return static_cast<size_t>(n / traits.block_size) * traits.block_bytes;
}

int64_t dtype_padded_row(DType type, int64_t row_values) {
  const int64_t block = dtype_traits(type).block_size;
  return (row_values + block - 1) / block * block;
}

size_t dtype_tensor_bytes(DType type, int rank, const int64_t* shape) {
  int64_t numel = 1;
  for (int i = 0; i < rank; ++i) numel *= shape[i];
  if (!dtype_traits(type).is_quantized) return dtype_row_bytes(type, numel);
  const int64_t rows = rank >= 2 ? shape[0] : 1;
  if (rows == 0) return 0;
  return static_cast<size_t>(rows) * dtype_row_bytes(type, dtype_padded_row(type, numel / rows));
}

}  // namespace ddpm
