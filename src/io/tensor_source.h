// What every checkpoint reader returns: where each tensor's bytes are and how to read them.
//
// Readers (safetensors, torch zip, legacy torch) only parse metadata and validate it against the file size; they
// never copy tensor data. One loader (load_tensor_as_f32 and friends) then moves the bytes, honouring the source
// dtype, byte order, storage offset and strides. This keeps every format's parser small and fuzzable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ddpm {

// Element types found in checkpoints (a superset of what the runtime computes with).
enum class SourceDType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

const char* source_dtype_name(SourceDType dtype);
int source_dtype_size(SourceDType dtype);  // bytes per element

struct SourceTensor {
  std::string name;
  SourceDType dtype = SourceDType::F32;
  std::vector<int64_t> shape;    // outermost first, PyTorch order
  std::vector<int64_t> strides;  // in elements, same length as shape; row-major contiguous for safetensors
  uint64_t storage_offset = 0;   // absolute byte offset in the file of element 0 of the storage
  uint64_t storage_bytes = 0;    // bytes of the whole storage (validated to lie inside the file)
  int64_t element_offset = 0;    // offset of this tensor's first element inside the storage, in elements
  bool big_endian = false;       // torch legacy files may declare it

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace ddpm
