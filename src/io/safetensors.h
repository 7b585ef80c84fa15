// safetensors: reader (metadata only; bytes are moved by io/tensor_loader.h) and writer.
//
// The reader enforces everything the reference implementation does (docs/diffusers-reference.md §7.1): header
// length at most 100,000,000 bytes and inside the file, a JSON object without duplicate keys, known dtypes, shapes
// whose element count times the dtype size equals data_offsets' span, and data sections that tile the rest of the
// file exactly (no holes, no overlaps, no trailing bytes). A file that passes can be loaded without further checks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ddpm/status.h"
#include "io/mapped_file.h"
#include "io/tensor_source.h"

namespace ddpm {

constexpr uint64_t kSafetensorsMaxHeaderBytes = 100000000;

// Tensors come back in header order with row-major strides, element_offset 0, storage_offset absolute in the file
// and storage_bytes = the tensor's bytes. `metadata` (the __metadata__ map, in file order) may be null.
// `path` only names the file in error messages.
Status read_safetensors(const std::string& path, const MappedFile& file, std::vector<SourceTensor>* tensors,
                        std::vector<std::pair<std::string, std::string>>* metadata);

// Cheap sniff for format detection: plausible header length and a JSON object after it. Not a validation.
bool looks_like_safetensors(const MappedFile& file);

// Maps "F32", "BF16", ... to the dtypes the loader supports; false for anything else (F8_*, U16, C64, ...).
bool safetensors_dtype_from_name(std::string_view name, SourceDType* out);

struct SafetensorsWriteEntry {
  std::string name;
  SourceDType dtype = SourceDType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel * source_dtype_size(dtype) bytes, already little-endian; may be null if empty
};

// Writes through AtomicFile, in the reference writer's layout: tensors ordered by element size (largest first) then
// name, header padded with spaces to a multiple of 8 so that every tensor is naturally aligned.
Status write_safetensors(const std::string& path, const std::vector<SafetensorsWriteEntry>& entries,
                         const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace ddpm
