#include "quant/retype.h"

#include <sys/stat.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <map>

#include "io/atomic_file.h"
#include "model/ddpm_file.h"
#include "quant/blocks.h"

#ifndef DDPM_VERSION
#define DDPM_VERSION "0.1.0"
#endif

namespace ddpm::quant {
namespace {

constexpr double kLargestF16 = 65504.0;

// Rows of a tensor as dtype.h defines them for block types: shape[0] rows of the other dims' product; a rank-1
// tensor is one row. Plain types use the same split (the numbers only serve messages and loops there).
void rows_of(int rank, const int64_t* shape, int64_t* rows, int64_t* row_values) {
  *rows = rank >= 2 ? shape[0] : 1;
  *row_values = 1;
  for (int i = rank >= 2 ? 1 : 0; i < rank; ++i) *row_values *= shape[i];
}

std::string shape_text(int rank, const int64_t* shape) {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The largest |x| a block of `type` reproduces without saturating: the f16 scale's maximum times the largest
// level (q4_0 and q5_0 reach it on their negative side, with the scale's sign chosen to match). q4_1 stores its
// minimum as an f16, so its values themselves must be f16-sized.
double representable_limit(DType type) {
  switch (type) {
    case DType::Q8_0: return 127 * kLargestF16;
    case DType::Q4_0: return 8 * kLargestF16;
    case DType::Q5_0: return 16 * kLargestF16;
    case DType::Q4_1: return kLargestF16;
    default: return INFINITY;
  }
}

std::string file_size_text(uint64_t bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f MB", static_cast<double>(bytes) / 1e6);
  return buffer;
}

}  // namespace

Status check_encodable(const std::string& name, DType type, int rank, const int64_t* shape, const float* values) {
  const DTypeTraits& traits = dtype_traits(type);
  if (!traits.from_f32) return errorf("tensor '%s': %s is not a weight type", name.c_str(), traits.name);
  if (!traits.is_quantized) return Status();
  if (rank < 1 || rank > 4) return errorf("tensor '%s': rank %d cannot be stored as %s", name.c_str(), rank, traits.name);
  int64_t rows, row_values;
  rows_of(rank, shape, &rows, &row_values);
  if (rows <= 0 || row_values <= 0) {
    return errorf("tensor '%s' %s: row count is zero, nothing to quantise as %s", name.c_str(),
                  shape_text(rank, shape).c_str(), traits.name);
  }
  if (!values) return Status();
  const double limit = representable_limit(type);
  const int64_t n = rows * row_values;
  for (int64_t i = 0; i < n; ++i) {
    const float x = values[i];
    if (!std::isfinite(x)) {
      return errorf("tensor '%s': value %" PRId64 " (row %" PRId64 ") is %s: quantised types need finite weights",
                    name.c_str(), i, i / row_values, std::isnan(x) ? "nan" : "inf");
    }
    if (std::fabs(x) > limit) {
      return errorf("tensor '%s': value %" PRId64 " (row %" PRId64 ") is %g, beyond what %s can represent (|x| <= %g)",
                    name.c_str(), i, i / row_values, x, traits.name, limit);
    }
  }
  return Status();
}

namespace {

// Row r's values in (kh, kw, Ci) order from (Ci, kh, kw) (to_tap_major) or back.
void reorder_row(const int64_t* shape, const float* src, float* dst, bool to_tap_major) {
  const int64_t channels = shape[1], taps = shape[2] * shape[3];
  for (int64_t ci = 0; ci < channels; ++ci) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t natural = ci * taps + tap, tap_major = tap * channels + ci;
      if (to_tap_major) {
        dst[tap_major] = src[natural];
      } else {
        dst[natural] = src[tap_major];
      }
    }
  }
}

}  // namespace

Status encode_tensor(const std::string& name, DType type, int rank, const int64_t* shape, const float* values,
                     void* dst, ConvRows rows) {
  DDPM_TRY(check_encodable(name, type, rank, shape, values));
  const DTypeTraits& traits = dtype_traits(type);
  int64_t row_count, row_values;
  rows_of(rank, shape, &row_count, &row_values);
  if (!traits.is_quantized) {
    traits.from_f32(values, dst, row_count * row_values);
    return Status();
  }
  const int64_t padded = dtype_padded_row(type, row_values);
  const size_t row_bytes = dtype_row_bytes(type, padded);
  const bool tap_major = rows == ConvRows::kTapMajor && tap_major_eligible(type, rank, shape);
  std::vector<float> row(static_cast<size_t>(padded), 0.0f);  // the zeros past row_values are the padding
  for (int64_t r = 0; r < row_count; ++r) {
    if (tap_major) {
      reorder_row(shape, values + r * row_values, row.data(), true);
    } else {
      std::copy(values + r * row_values, values + (r + 1) * row_values, row.begin());
    }
    traits.from_f32(row.data(), static_cast<uint8_t*>(dst) + r * row_bytes, padded);
  }
  return Status();
}

void decode_tensor(DType type, int rank, const int64_t* shape, const void* src, float* values, ConvRows rows) {
  const DTypeTraits& traits = dtype_traits(type);
  DDPM_ASSERT(traits.to_f32 != nullptr);
  int64_t row_count, row_values;
  rows_of(rank, shape, &row_count, &row_values);
  if (!traits.is_quantized) {
    traits.to_f32(src, values, row_count * row_values);
    return;
  }
  const int64_t padded = dtype_padded_row(type, row_values);
  const size_t row_bytes = dtype_row_bytes(type, padded);
  const bool tap_major = rows == ConvRows::kTapMajor && tap_major_eligible(type, rank, shape);
  std::vector<float> row(static_cast<size_t>(padded));
  for (int64_t r = 0; r < row_count; ++r) {
    traits.to_f32(static_cast<const uint8_t*>(src) + r * row_bytes, row.data(), padded);
    if (tap_major) {
      reorder_row(shape, row.data(), values + r * row_values, false);
    } else {
      std::copy(row.begin(), row.begin() + row_values, values + r * row_values);
    }
  }
}

double relative_l2(const float* ref, const float* approx, int64_t n) {
  double diff = 0.0, norm = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(approx[i]) - ref[i];
    diff += d * d;
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  return norm == 0.0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

namespace {

// Writes to the file `output` when `bytes` is null, else into `bytes`.
Status retype(const std::string& input, const std::string& output, std::vector<uint8_t>* bytes, TypePolicy& policy,
              RetypeReport* report, const RetypeOptions& options) {
  *report = RetypeReport();
  DdpmFile in;
  DDPM_TRY(DdpmFile::open(input, &in, true));
  std::string architecture;
  if (in.metadata().get_string("ddpm.architecture", &architecture).ok() &&
      architecture == kTrainingCheckpointArchitecture) {
    return training_checkpoint_error(input);  // its weights are the raw ones next to the EMA's and the moments
  }
  if (!bytes) {
    DDPM_TRY(check_distinct_paths(output, input, "the input model"));  // rounding weights cannot be undone
    DDPM_TRY(check_can_write(output));
  }
  report->input_bytes = in.file_size();

  DdpmMetadata metadata = in.metadata();
  DDPM_TRY(metadata.set("provenance.tool", MetadataValue::string(std::string("ddpm.cpp ") + DDPM_VERSION)));
  DDPM_TRY(metadata.set("provenance.dtype_recipe", MetadataValue::string(policy.recipe())));
  metadata.erase("quant.int8_winograd");
  metadata.erase("quant.calibration");
  if (options.int8_winograd) DDPM_TRY(metadata.set("quant.int8_winograd", MetadataValue::boolean(*options.int8_winograd)));
  if (!options.calibration.empty()) DDPM_TRY(metadata.set("quant.calibration", MetadataValue::string(options.calibration)));
  DdpmWriter writer;
  writer.set_metadata(std::move(metadata));

  const std::vector<DdpmTensorInfo>& tensors = in.tensors();
  std::vector<std::string> names;
  for (const DdpmTensorInfo& t : tensors) names.push_back(t.name);
  policy.set_tensor_names(names);
  report->tensors.resize(tensors.size());
  // The writer calls each producer twice (checksums, then bytes); the error is measured on the first call only.
  std::vector<bool> measured(tensors.size(), false);
  std::vector<float> source, check;
  std::vector<TypePolicy::Decision> decisions;
  // Eligible conv weights are written tap-major (ConvRows), unless one is copied unchanged from a file that stores
  // them in PyTorch's order: a file has one row order for all of them, and copies keep their bytes.
  bool tap_major = true;
  for (const DdpmTensorInfo& t : tensors) {
    decisions.push_back(policy.decide(t.name, t.rank, t.shape, t.dtype));
    const bool copied = decisions.back().type == t.dtype;
    if (copied && tap_major_eligible(t.dtype, t.rank, t.shape) && !t.tap_major) tap_major = false;
  }
  const ConvRows rows_out = tap_major ? ConvRows::kTapMajor : ConvRows::kNatural;
  writer.set_tap_major_conv_rows(tap_major);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const DdpmTensorInfo& t = tensors[i];
    const TypePolicy::Decision& decision = decisions[i];
    TensorRetype& entry = report->tensors[i];
    entry.name = t.name;
    entry.rank = t.rank;
    std::copy(t.shape, t.shape + kDdpmMaxRank, entry.shape);
    entry.from = t.dtype;
    entry.to = decision.type;
    entry.reason = decision.reason;
    entry.bytes_from = t.bytes;
    entry.bytes_to = dtype_tensor_bytes(decision.type, t.rank, t.shape);
    if (decision.type == t.dtype) {
      DDPM_TRY(writer.add_tensor(t.name, t.dtype, t.rank, t.shape, t.data, t.bytes));
      continue;
    }
    if (!dtype_traits(t.dtype).to_f32) {
      return errorf("%s: tensor '%s' is %s, which cannot be re-typed", input.c_str(), t.name.c_str(), dtype_name(t.dtype));
    }
    Status shape_ok = check_encodable(t.name, decision.type, t.rank, t.shape, nullptr);
    if (!shape_ok.ok()) return shape_ok.with_context(input);
    DdpmTensorProducer produce = [&, i](void* dst, uint64_t) -> Status {
      const DdpmTensorInfo& src = tensors[i];
      TensorRetype& e = report->tensors[i];
      const size_t n = static_cast<size_t>(src.numel());
      source.resize(n);
      decode_tensor(src.dtype, src.rank, src.shape, src.data, source.data(),
                    src.tap_major ? ConvRows::kTapMajor : ConvRows::kNatural);
      Status s = encode_tensor(src.name, e.to, src.rank, src.shape, source.data(), dst, rows_out);
      if (!s.ok()) return s.with_context(input);
      if (!measured[i]) {
        check.resize(n);
        decode_tensor(e.to, src.rank, src.shape, dst, check.data(), rows_out);
        e.relative_error = relative_l2(source.data(), check.data(), src.numel());
        measured[i] = true;
      }
      return Status();
    };
    DDPM_TRY(writer.add_tensor(t.name, decision.type, t.rank, t.shape, std::move(produce)));
  }
  report->warnings = policy.unmatched_warnings(input);
  // Weights already in a block type smaller than the one asked for keep it (the policy's "would not be smaller"):
  // re-typing q4_0 as q8_0 cannot bring back what rounding took. Said even under -q, since the file will not be
  // what its recipe names.
  const DType wanted = policy.default_type();
  auto bits_per_value = [](DType type) {
    const DTypeTraits& traits = dtype_traits(type);
    return 8.0 * static_cast<double>(traits.block_bytes) / static_cast<double>(traits.block_size);
  };
  std::map<std::string, int> already_smaller;
  for (const TensorRetype& entry : report->tensors) {
    if (entry.from == entry.to && entry.from != wanted && dtype_traits(entry.from).is_quantized &&
        dtype_traits(wanted).is_quantized && bits_per_value(entry.from) < bits_per_value(wanted)) {
      already_smaller[dtype_name(entry.from)]++;
    }
  }
  if (!already_smaller.empty()) {
    std::string types;
    int count = 0;
    for (const auto& [name, n] : already_smaller) {
      types += (types.empty() ? "" : ", ") + name;
      count += n;
    }
    report->warnings.push_back(errorf("%s: %d weight%s already %s, smaller than %s, and keep %s type: re-typing "
                                      "cannot restore what quantising rounded away (quantise the f32 or f16 model "
                                      "instead)",
                                      input.c_str(), count, count == 1 ? " is" : "s are", types.c_str(),
                                      dtype_name(wanted), count == 1 ? "its" : "their")
                                   .message());
  }
  if (bytes) {
    DDPM_TRY(writer.finish_to_bytes(bytes));
    report->output_bytes = bytes->size();
    return Status();
  }
  DDPM_TRY(writer.finish(output));
  struct stat st;
  if (stat(output.c_str(), &st) == 0) report->output_bytes = static_cast<uint64_t>(st.st_size);
  return Status();
}

}  // namespace

Status retype_model(const std::string& input, const std::string& output, TypePolicy& policy, RetypeReport* report,
                    const RetypeOptions& options) {
  return retype(input, output, nullptr, policy, report, options);
}

Status retype_model_to_bytes(const std::string& input, TypePolicy& policy, std::vector<uint8_t>* bytes,
                             RetypeReport* report, const RetypeOptions& options) {
  return retype(input, input, bytes, policy, report, options);
}

std::string format_retype_report(const RetypeReport& report, bool per_tensor) {
  std::string text;
  char line[512];
  std::map<std::string, std::pair<int, uint64_t>> by_type;
  for (const TensorRetype& t : report.tensors) {
    const bool changed = t.from != t.to;
    char error[32] = "-";
    if (changed) std::snprintf(error, sizeof error, "%.3f%%", 100.0 * t.relative_error);
    std::snprintf(line, sizeof line, "  %-52s %-18s %4s -> %-4s %8s  %s\n", t.name.c_str(),
                  shape_text(t.rank, t.shape).c_str(), dtype_name(t.from), dtype_name(t.to), error, t.reason.c_str());
    if (per_tensor) text += line;
    by_type[dtype_name(t.to)].first++;
    by_type[dtype_name(t.to)].second += t.bytes_to;
  }
  for (const auto& [type, count_bytes] : by_type) {
    std::snprintf(line, sizeof line, "  %-5s %5d tensors, %s of data\n", type.c_str(), count_bytes.first,
                  file_size_text(count_bytes.second).c_str());
    text += line;
  }
  if (report.input_bytes && report.output_bytes) {
    std::snprintf(line, sizeof line, "  file size: %s -> %s (%.1f%%)\n", file_size_text(report.input_bytes).c_str(),
                  file_size_text(report.output_bytes).c_str(),
                  100.0 * static_cast<double>(report.output_bytes) / static_cast<double>(report.input_bytes));
    text += line;
  }
  return text;
}

}  // namespace ddpm::quant
