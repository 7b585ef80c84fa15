#include "quant/policy.h"

// GCC 12 at -O2 with -fsanitize=address (the `make check` sanitizer build) reports -Wmaybe-uninitialized inside
// libstdc++'s regex compiler, on its own temporaries; the warning is about the library, not this file.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <regex>
#pragma GCC diagnostic pop

#include <algorithm>

namespace ddpm::quant {

class CompiledPattern {
 public:
  explicit CompiledPattern(std::regex regex) : regex_(std::move(regex)) {}
  bool found_in(const std::string& name) const { return std::regex_search(name, regex_); }

 private:
  std::regex regex_;
};

namespace {

// std::regex reports syntax errors by exception; this is the one place they are caught and turned into a Status.
Status compile_regex(const std::string& what, const std::string& pattern, std::shared_ptr<const CompiledPattern>* out) {
  if (pattern.empty()) return errorf("%s: empty regular expression", what.c_str());
  try {
    *out = std::make_shared<const CompiledPattern>(std::regex(pattern, std::regex::ECMAScript));
  } catch (const std::regex_error& e) {
    return errorf("%s '%s': not a valid regular expression (%s)", what.c_str(), pattern.c_str(), e.what());
  }
  return Status();
}

bool ends_with(const std::string& s, const char* suffix) {
  const std::string tail(suffix);
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// An nn.Embedding table: the module's own name ends in "embedding(s)" ("class_embedding.weight"). The linear
// layers inside an embedding MLP ("time_embedding.linear_1.weight") are ordinary linear weights.
bool is_embedding_table(const std::string& name) {
  if (!ends_with(name, ".weight")) return false;
  const std::string module = name.substr(0, name.size() - 7);
  return ends_with(module, "embedding") || ends_with(module, "embeddings");
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// N for a name starting "PREFIX.N." (e.g. "up_blocks.3.resnets.0.conv1.weight" with "up_blocks"), else -1.
int block_index(const std::string& name, const char* prefix) {
  const std::string head = std::string(prefix) + ".";
  if (name.compare(0, head.size(), head) != 0) return -1;
  size_t i = head.size();
  int n = 0;
  bool digits = false;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9' && n < 100000; ++i, digits = true) n = n * 10 + (name[i] - '0');
  return digits && i < name.size() && name[i] == '.' ? n : -1;
}

bool is_low_bit(DType type) { return type == DType::Q4_0 || type == DType::Q4_1 || type == DType::Q5_0; }

// A resnet conv ("....resnets.N.conv1.weight" / "conv2.weight"): not the attention, sampler or shortcut weights.
bool is_resnet_conv(const std::string& name) {
  return name.find(".resnets.") != std::string::npos &&
         (ends_with(name, ".conv1.weight") || ends_with(name, ".conv2.weight"));
}

}  // namespace

const std::vector<DType>& weight_types() {
  static const std::vector<DType> types = {DType::F32, DType::F16, DType::Q8_0, DType::Q5_0, DType::Q4_1, DType::Q4_0};
  return types;
}

std::string weight_type_list(const char* separator) {
  std::string s;
  for (DType t : weight_types()) s += (s.empty() ? "" : separator) + std::string(dtype_name(t));
  return s;
}

Status parse_weight_type(const std::string& what, const std::string& name, DType* out) {
  for (DType t : weight_types()) {
    if (name == dtype_name(t)) {
      *out = t;
      return Status();
    }
  }
  return errorf("%s: unknown type '%s' (valid: %s)", what.c_str(), name.c_str(), weight_type_list(", ").c_str());
}

Status TypePolicy::add_keep(const std::string& pattern) {
  Rule rule;
  rule.pattern = pattern;
  DDPM_TRY(compile_regex("--keep", pattern, &rule.regex));
  keep_.push_back(std::move(rule));
  return Status();
}

Status TypePolicy::add_override(const std::string& spec) {
  const size_t eq = spec.rfind('=');
  if (eq == std::string::npos) {
    return errorf("--tensor-type '%s': expected REGEX=TYPE (TYPE one of %s)", spec.c_str(), weight_type_list(", ").c_str());
  }
  Rule rule;
  rule.pattern = spec.substr(0, eq);
  DDPM_TRY(parse_weight_type("--tensor-type " + quoted(spec), spec.substr(eq + 1), &rule.type));
  DDPM_TRY(compile_regex("--tensor-type", rule.pattern, &rule.regex));
  overrides_.push_back(std::move(rule));
  return Status();
}

void TypePolicy::set_tensor_names(const std::vector<std::string>& names) {
  last_up_block_ = -1;
  for (const std::string& name : names) last_up_block_ = std::max(last_up_block_, block_index(name, "up_blocks"));
}

TypePolicy::Decision TypePolicy::sensitive_type(const std::string& name) const {
  if (default_type_ == DType::Q8_0) {
    // The last up block's shortcuts and second resnet convs: the path into conv_out with the least averaging
    // after it. As f16 they take q8_0's output error from 1.16 % to 0.91 % on the cifar10-size U-Net for 0.4 %
    // of f32 in size and ~7 % in speed (docs/QUANT.md).
    const bool last_up = last_up_block_ >= 0 && block_index(name, "up_blocks") == last_up_block_;
    if (q8_0_f16_tier_ && last_up && name.find(".resnets.") != std::string::npos &&
        (ends_with(name, ".conv_shortcut.weight") || ends_with(name, ".conv2.weight"))) {
      return {DType::F16, "last up block's shortcut or conv2 (f16 under q8_0)"};
    }
    return {default_type_, ""};
  }
  if (!is_low_bit(default_type_)) return {default_type_, ""};
  if (ends_with(name, ".conv_shortcut.weight")) return {DType::Q8_0, "resnet shortcut (q8_0 under 4/5-bit types)"};
  if (is_resnet_conv(name)) {
    if (block_index(name, "down_blocks") == 0) return {DType::Q8_0, "full-resolution conv (q8_0 under 4/5-bit types)"};
    if (last_up_block_ >= 0 && block_index(name, "up_blocks") == last_up_block_) {
      return {DType::Q8_0, "full-resolution conv (q8_0 under 4/5-bit types)"};
    }
  }
  // The second tier: a few percent of the weights with the next largest error per byte, one step up.
  const bool resampler = name.find(".downsamplers.") != std::string::npos ||
                         name.find(".upsamplers.") != std::string::npos;
  const bool attention = name.find(".attentions.") != std::string::npos;
  if (resampler || attention) {
    const DType up = default_type_ == DType::Q5_0 ? DType::Q8_0 : DType::Q5_0;
    return {up, std::string(resampler ? "resampling conv" : "attention projection") + " (" + dtype_name(up) +
                    " under " + dtype_name(default_type_) + ")"};
  }
  return {default_type_, ""};
}

std::string TypePolicy::describe(const Rule& rule, bool is_override) const {
  return is_override ? "--tensor-type " + quoted(rule.pattern + "=" + dtype_name(rule.type)) : "--keep " + quoted(rule.pattern);
}

TypePolicy::Decision TypePolicy::decide(const std::string& name, int rank, const int64_t* shape, DType stored) {
  if (stored == DType::I32) return {stored, "integer tensor"};
  for (Rule& rule : overrides_) {
    // Norms and biases are added and scaled in f32, never multiplied by the integer GEMM: a block-type override
    // that matches one ("conv_in=q8_0" also matches conv_in.bias) passes it by.
    // Nor an embedding table, which the U-Net reads by rows (get_rows), not through a GEMM.
    if (dtype_traits(rule.type).is_quantized && (rank < 2 || is_embedding_table(name))) {
      if (rule.regex->found_in(name)) rule.passed_by = true;
      continue;
    }
    if (rule.regex->found_in(name)) {
      rule.used = true;
      return {rule.type, describe(rule, true)};
    }
  }
  for (Rule& rule : keep_) {
    if (rule.regex->found_in(name)) {
      rule.used = true;
      return {stored, describe(rule, false)};
    }
  }
  const bool block_target = dtype_traits(default_type_).is_quantized;
  if (rank < 2) {
    // Plain targets also bring back a bias an earlier --tensor-type had quantised.
    if (!block_target && dtype_traits(stored).is_quantized) return {default_type_, "dequantised"};
    return {stored, "norm or bias (rank 1)"};
  }
  // f32/f16 apply to every matrix, as the converter always did: only the block types need the exceptions below.
  if (!block_target) return {default_type_, "weight (rank >= 2)"};
  if (name == "conv_in.weight") return {stored, "first conv"};
  if (name == "conv_out.weight") return {stored, "last conv"};
  if (is_embedding_table(name)) return {stored, "embedding table"};
  if (!ends_with(name, ".weight")) return {stored, "not a conv/linear weight"};
  DType target = default_type_;
  std::string reason = rank == 2 ? "linear weight" : "conv weight";
  const Decision sensitive = sensitive_type(name);
  if (!sensitive.reason.empty()) {
    target = sensitive.type;
    reason = sensitive.reason;
  }
  if (target != stored && dtype_tensor_bytes(target, rank, shape) >= dtype_tensor_bytes(stored, rank, shape)) {
    int64_t row = 1;
    for (int i = 1; i < rank; ++i) row *= shape[i];
    return {stored, std::string(dtype_name(target)) + " would not be smaller (rows of " + std::to_string(row) +
                        " values)"};
  }
  return {target, reason};
}

std::vector<std::string> TypePolicy::unmatched_patterns() const {
  std::vector<std::string> unmatched;
  for (const Rule& rule : overrides_) {
    if (!rule.used) unmatched.push_back(describe(rule, true));
  }
  for (const Rule& rule : keep_) {
    if (!rule.used) unmatched.push_back(describe(rule, false));
  }
  return unmatched;
}

std::vector<std::string> TypePolicy::unmatched_warnings(const std::string& model) const {
  std::vector<std::string> warnings;
  for (const Rule& rule : overrides_) {
    if (rule.used) continue;
    if (rule.passed_by) {
      warnings.push_back(describe(rule, true) + " matches only norms, biases or embedding tables in " + model +
                         ", which keep their type (block types apply to conv and linear weights)");
    } else {
      warnings.push_back(describe(rule, true) + " matches no tensor in " + model);
    }
  }
  for (const Rule& rule : keep_) {
    if (!rule.used) warnings.push_back(describe(rule, false) + " matches no tensor in " + model);
  }
  return warnings;
}

std::string TypePolicy::recipe() const {
  std::string r = dtype_name(default_type_);
  if (dtype_traits(default_type_).is_quantized) {
    r += " (conv and linear weights; norms, biases, embeddings, conv_in and conv_out keep their type";
    if (default_type_ == DType::Q8_0 && q8_0_f16_tier_) r += "; f16: the last up block's resnet shortcuts and conv2";
    if (is_low_bit(default_type_)) {
      r += "; q8_0: resnet shortcuts and the full-resolution resnet convs; ";
      r += default_type_ == DType::Q5_0 ? "q8_0" : "q5_0";
      r += ": resampling convs and attention projections";
    }
    r += ")";
  } else if (default_type_ == DType::F16) {
    r += " (norms and biases f32)";
  }
  for (const Rule& rule : overrides_) r += "; " + describe(rule, true);
  for (const Rule& rule : keep_) r += "; " + describe(rule, false);
  return r;
}

}  // namespace ddpm::quant
