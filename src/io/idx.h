// IDX arrays, the format of MNIST and Fashion-MNIST: magic 00 00 <type> <ndims>, ndims big-endian uint32
// dimensions, then the elements in row-major order. Files may be gzip-compressed, as they are distributed; this is
// detected from the content, not the file name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

constexpr uint8_t kIdxTypeUnsignedByte = 0x08;

struct IdxArray {
  std::vector<int64_t> dims;  // outermost first
  uint8_t type_code = 0;      // only kIdxTypeUnsignedByte is supported
  std::vector<uint8_t> data;  // product(dims) elements
};

// bytes may be raw IDX or gzip; name is used only in error messages.
Status decode_idx(const uint8_t* bytes, size_t size, const std::string& name, IdxArray* out);
Status read_idx(const std::string& path, IdxArray* out);

}  // namespace ddpm
