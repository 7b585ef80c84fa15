// Re-typing tensors and whole models: f32 values to any weight type and back (block types as padded rows, see
// dtype.h), the error each conversion costs, and `ddpm quantize`'s whole-model pass.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ddpm/dtype.h"
#include "ddpm/status.h"
#include "quant/policy.h"

namespace ddpm::quant {

// Checks that a tensor of `shape` can be stored as `type`: block types need at least one row of at least one value
// (a row count of zero has nothing to quantise) and every value finite and within the range the f16 scale can
// reach (|x| ≤ 127·65504 for q8_0, 8·65504 for q4_0, 16·65504 for q5_0, 65504 for q4_1, whose minimum is an f16).
// Plain types take any shape and value. `values` may be null to check the shape only. Errors name the tensor:
// "tensor 'x': value 17 (row 0) is nan: quantised types need finite weights".
Status check_encodable(const std::string& name, DType type, int rank, const int64_t* shape, const float* values);

// How a stored tensor's rows order their values: as the shape says, or, for tensors tap_major_eligible accepts
// (block-typed conv weights), tap-major — (kh, kw, Ci) within each row (docs/FORMAT.md §6.8). kTapMajor leaves
// every other tensor as it is, so a whole file is written and read with one setting.
enum class ConvRows : uint8_t { kNatural, kTapMajor };

// Writes the numel(shape) row-major `values` as `type` into `dst` (dtype_tensor_bytes(type, rank, shape) bytes),
// zero-padding each row of a block type to whole blocks. Runs check_encodable first. `values` are always in the
// shape's order; `rows` says how `dst` stores them.
Status encode_tensor(const std::string& name, DType type, int rank, const int64_t* shape, const float* values,
                     void* dst, ConvRows rows = ConvRows::kNatural);
// The inverse: numel(shape) f32 values (row padding dropped) in the shape's order. `type` is f32, f16 or a block
// type.
void decode_tensor(DType type, int rank, const int64_t* shape, const void* src, float* values,
                   ConvRows rows = ConvRows::kNatural);

// ‖approx − ref‖₂ / ‖ref‖₂ in double precision; the absolute norm ‖approx‖₂ when ref is all zeros.
double relative_l2(const float* ref, const float* approx, int64_t n);

struct TensorRetype {
  std::string name;
  int rank = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  DType from = DType::F32, to = DType::F32;
  std::string reason;         // the policy's reason
  double relative_error = 0;  // of the stored result against the source values (0 when copied)
  uint64_t bytes_from = 0, bytes_to = 0;
};

struct RetypeReport {
  std::vector<TensorRetype> tensors;
  std::vector<std::string> warnings;  // patterns that matched nothing
  uint64_t input_bytes = 0, output_bytes = 0;  // file sizes
};

// `ddpm quantize`: reads the .ddpm at `input`, gives each tensor the type `policy` decides, and writes `output`
// atomically. Everything else is kept as it was (metadata, tensor order, names, shapes); provenance.dtype_recipe
// becomes the policy's recipe and provenance.tool this writer, so the same input and options always give the same
// bytes (the calibration `ddpm quantize` runs first measures on the CPU's own kernels, so its choice is the
// caller's). Tensors whose type does not change are copied bit for bit; the others go through f32.
// Errors name the file: "in.ddpm: tensor 'x': value 3 (row 0) is inf: quantised types need finite weights".
// `options` sets or drops the two keys of the calibration (docs/FORMAT.md §11); by default an input's keys are
// dropped, since they described other weights.
struct RetypeOptions {
  std::optional<bool> int8_winograd;  // quant.int8_winograd; nullopt: the loader goes by the weights' types
  std::string calibration;            // quant.calibration, "" for none
};
Status retype_model(const std::string& input, const std::string& output, TypePolicy& policy, RetypeReport* report,
                    const RetypeOptions& options = RetypeOptions());
// The same into memory (the calibration's candidates); report->output_bytes is the size of `bytes`.
Status retype_model_to_bytes(const std::string& input, TypePolicy& policy, std::vector<uint8_t>* bytes,
                             RetypeReport* report, const RetypeOptions& options = RetypeOptions());

// The per-tensor table and the totals, as `ddpm quantize` and `ddpm convert --type` print them:
//   name  shape  from -> to  rel.error  (reason)
// then a line per output type (tensors, MB) and the size before/after. per_tensor = false: the totals only.
std::string format_retype_report(const RetypeReport& report, bool per_tensor = true);

}  // namespace ddpm::quant
