// The one place that moves tensor bytes out of checkpoint files.
//
// Readers describe tensors as SourceTensor (io/tensor_source.h) without touching their data; these functions
// validate that description against the file and convert the elements into the runtime's types. Whatever a reader
// got wrong, or a hostile file claims, nothing outside [storage_offset, storage_offset + storage_bytes) is read.
#pragma once

#include <cstdint>
#include <vector>

#include "ddpm/status.h"
#include "io/mapped_file.h"
#include "io/tensor_source.h"

namespace ddpm {

// Element count of `shape`, false if a dimension is negative or the product overflows int64. Zero-sized
// dimensions count as 1 for the overflow check, so that SourceTensor::numel(), which multiplies left to right,
// cannot overflow on any shape that passes.
bool checked_numel(const std::vector<int64_t>& shape, int64_t* numel);

// Everything the loaders check before reading: shape and strides (non-negative, same rank), the storage lying inside
// a file of `file_size` bytes and holding whole elements, and every addressed element lying inside the storage.
// Errors read "tensor <name>: <problem>".
Status validate_source_tensor(const SourceTensor& tensor, uint64_t file_size);

// Writes numel() f32 values to dst in row-major order of tensor.shape. Every SourceDType converts: f16/bf16/ints
// exactly, f64 rounded to nearest, BOOL as 0/1. Errors read "<file path>: tensor <name>: <problem>".
Status load_tensor_f32(const MappedFile& file, const SourceTensor& tensor, float* dst);

// Writes numel() IEEE f16 bit patterns. F16 sources are copied bit for bit; every other dtype is rounded once to
// nearest-even (f64 too: it goes through f32 with round-to-odd, which makes the two roundings act as one).
Status load_tensor_raw_f16(const MappedFile& file, const SourceTensor& tensor, uint16_t* dst);

}  // namespace ddpm
