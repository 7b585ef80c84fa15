// Which type each tensor of a model gets when it is converted or re-quantised.
//
// Quantisation pays off only for the weights the integer GEMM multiplies: conv and linear weights (rank ≥ 2). The
// default policy therefore leaves alone what is small or sensitive: norms and biases (rank 1), embedding tables
// (class_embedding.weight, read row by row, never multiplied), and the first and last conv (conv_in and conv_out:
// a few thousand weights that touch the pixels directly, where 3-channel rows would also be mostly padding).
// A tensor a block type would not make smaller (short rows padded to a whole block) keeps its type too.
// Under the 4- and 5-bit types (q4_0, q4_1, q5_0) a few weights that carry most of the output error are given q8_0
// instead (measured one group at a time on the cifar10-size U-Net, docs/QUANT.md): the 1×1 shortcut convs of the
// resnets (a direct path from a block's input to its output) and the resnet convs of the full-resolution level,
// down_blocks.0 and the last up block, whose errors reach conv_out with the least averaging. They are about a tenth
// of the cifar10 U-Net's weights and, as q4_0, four fifths of its output error (squared). A second tier, the
// resampling convs (downsamplers, upsamplers) and the attention projections, 9 % of the weights, goes one step up
// (q5_0 under q4_0/q4_1, q8_0 under q5_0): the next largest error per byte. Under q8_0 the last up block's
// shortcuts and second resnet convs stay f16 (1.6 % of the cifar10 U-Net's weights; its q8_0 output error 1.16 →
// 0.91 %).
// Users adjust the default with --keep REGEX (keep the type) and --tensor-type REGEX=TYPE (force a type; the first
// matching override wins, and overrides are consulted before --keep). A block-type override never applies to a
// rank-1 tensor (norm or bias): "conv_in=q8_0" quantises conv_in.weight and leaves conv_in.bias alone. Regexes are
// ECMAScript, searched anywhere in the tensor name (anchor with ^ and $).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ddpm/dtype.h"
#include "ddpm/status.h"

namespace ddpm::quant {

// The weight types a model can be converted to, in the order --help lists them: "f32|f16|q8_0|q5_0|q4_1|q4_0".
const std::vector<DType>& weight_types();
std::string weight_type_list(const char* separator = "|");
// Parses a weight type name; the error names `what` (e.g. "--type") and lists the valid names.
Status parse_weight_type(const std::string& what, const std::string& name, DType* out);

class CompiledPattern;  // a std::regex; <regex> stays inside policy.cpp

class TypePolicy {
 public:
  TypePolicy() = default;
  explicit TypePolicy(DType default_type) : default_type_(default_type) {}

  void set_default_type(DType type) { default_type_ = type; }
  DType default_type() const { return default_type_; }
  // Under q8_0, whether the last up block's shortcuts and conv2 stay f16 (the default): they hold q8_0's error on
  // a random-weight U-Net under 1 %, but a trained model may not need them (`ddpm quantize`'s calibration asks).
  void set_q8_0_f16_tier(bool on) { q8_0_f16_tier_ = on; }
  bool q8_0_f16_tier() const { return q8_0_f16_tier_; }
  // --keep REGEX: fails when the regex does not compile.
  Status add_keep(const std::string& pattern);
  // --tensor-type REGEX=TYPE: fails on a missing '=', a bad regex or an unknown TYPE. The last '=' splits, so a
  // regex may itself contain '='.
  Status add_override(const std::string& spec);

  struct Decision {
    DType type;
    std::string reason;  // "conv/linear weight", "norm or bias (rank 1)", "--keep 'attn'", …
  };
  // The type for tensor `name` of `shape` currently stored as `stored`. Records which patterns matched, for
  // unmatched_patterns(). Integer tensors (i32) always keep their type.
  Decision decide(const std::string& name, int rank, const int64_t* shape, DType stored);

  // The names of every tensor of the model about to be decided: lets decide() tell which up block is the last
  // (the highest N of "up_blocks.N."). Without it no up block counts as the last.
  void set_tensor_names(const std::vector<std::string>& names);

  // Patterns that matched no tensor in any decide() call so far, as "--keep 'x'" / "--tensor-type 'x=q4_0'".
  std::vector<std::string> unmatched_patterns() const;
  // The same as warnings for a user, naming `model`: "… matches no tensor in M", or, for a block-type override
  // that matched only tensors block types never apply to, that it did and why they kept their type.
  std::vector<std::string> unmatched_warnings(const std::string& model) const;
  // For provenance.dtype_recipe: the default type and what it applies to, then every --keep and --tensor-type in
  // order, e.g. "q8_0 (conv and linear weights; norms, biases, embeddings, conv_in and conv_out keep their type; f16:
  // the last up block's resnet shortcuts and conv2); --keep 'attentions'; --tensor-type 'up_blocks\.3=q4_0'". The 4/5-bit types also name the q8_0 weights:
  // "q4_0 (conv and linear weights; ...; q8_0: resnet shortcuts and the full-resolution resnet convs; q5_0:
  // resampling convs and attention projections)". Plain types
  // read as the converter always wrote them: "f32", "f16 (norms and biases f32)".
  std::string recipe() const;

 private:
  struct Rule {
    std::string pattern;
    std::shared_ptr<const CompiledPattern> regex;
    DType type = DType::F32;  // overrides only
    bool used = false;
    bool passed_by = false;  // a block-type override that matched only norms, biases or embedding tables
  };
  std::string describe(const Rule& rule, bool is_override) const;

  // The type and reason decide() gives a weight that carries more than its share of the output error under a 4/5-bit
  // default (full-resolution resnet convs and shortcuts: q8_0; resampling convs and attention projections: one step
  // up), or an empty reason for the others.
  Decision sensitive_type(const std::string& name) const;

  bool q8_0_f16_tier_ = true;
  DType default_type_ = DType::F32;
  int last_up_block_ = -1;
  std::vector<Rule> keep_;
  std::vector<Rule> overrides_;
};

}  // namespace ddpm::quant
