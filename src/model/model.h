// A model ready to run: a .ddpm file opened (weights mmapped; a graph keeps block-typed ones decoded for the integer
// GEMM and hands their file pages back, see PackedWeights) and its metadata decoded into the
// U-Net config, the scheduler config and the data conventions.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/ddpm_file.h"
#include "model/sampler.h"
#include "model/schedule.h"
#include "model/unet.h"
#include "model/unet_config.h"

namespace ddpm {

struct ModelInfo {
  UNetConfig unet;
  SchedulerConfig scheduler;
  int64_t height = 0, width = 0, channels = 0;
  float value_low = -1.0f, value_high = 1.0f;
  std::vector<std::string> class_names;  // may be empty even for class-conditional models (then classes are ids)
  std::optional<int32_t> null_class;     // the unconditional class used for classifier-free guidance
  float default_guidance_scale = 1.0f;   // 1 = no guidance
  std::string default_sampler;           // "" = tool default
  int default_steps = 0;                 // 0 = sampler default

  int64_t class_count() const { return unet.num_class_embeds.value_or(0); }
  // The class ids an unconditioned request cycles through: every class but the null one (the "unconditional" row
  // that guidance uses), so image k of a run gets sampled_classes()[k mod K].
  std::vector<int32_t> sampled_classes() const {
    std::vector<int32_t> ids;
    for (int64_t id = 0; id < class_count(); ++id) {
      if (!null_class || id != *null_class) ids.push_back(static_cast<int32_t>(id));
    }
    if (ids.empty() && null_class) ids.push_back(*null_class);  // a model whose only class is the null one
    return ids;
  }
};

// The image sizes a model file may declare: positive multiples of the U-Net's downsampling factor, up to
// kMaxImageSide on a side (the loader refuses others, so the writers check the same before writing).
constexpr int64_t kMaxImageSide = 4096;
Status check_image_size(const UNetConfig& unet, int64_t height, int64_t width);

// The sampler and step count of a run (`ddpm generate`; `ddpm schedule` lists what generate visits): `sampler` ""
// means the model's default sampler (DDIM when it names none), `steps` 0 the default count. The model's default
// count belongs to its default sampler: naming another sampler gets that sampler's pipeline default (a model trained
// for DDIM-50 asked for DDPM runs every training timestep, as diffusers' DDPMPipeline would). Sets out->sampler and
// out->steps (> 0).
Status resolve_sampler(const ModelInfo& info, const std::string& sampler, int steps, SamplerSpec* out);

// Decodes / encodes the metadata keys documented in docs/FORMAT.md.
Status model_info_from_metadata(const DdpmMetadata& metadata, const std::string& path, ModelInfo* out);
Status model_info_to_metadata(const ModelInfo& info, DdpmMetadata* out);

class Model {
 public:
  static Status load(const std::string& path, std::unique_ptr<Model>* out, bool verify_checksums = true);
  // The same over a whole .ddpm image in memory (copied); `name` stands in for the path in messages.
  static Status from_bytes(const std::string& name, const std::vector<uint8_t>& bytes, std::unique_ptr<Model>* out);

  const ModelInfo& info() const { return info_; }
  const DdpmFile& file() const { return file_; }
  // Weights straight from the mapping (f32 or f16).
  WeightLookup weights() const;
  int64_t parameter_count() const;

  // Whether the model's block-typed 3×3 convs run by Winograd with 8-bit transformed filters (kFlagInt8Winograd;
  // src/ops/conv_winograd.cpp) in the graphs built from weights() after this is set: on the cifar10-size U-Net
  // ~1.2× faster, at +0.2–0.3 points of relative output error for q4_0/q4_1 models and +0.85 for q8_0 (docs/
  // QUANT.md). Load chooses prefers_int8_winograd().
  void set_int8_winograd(bool on) { int8_winograd_ = on; }
  bool int8_winograd() const { return int8_winograd_; }
  // The default: what the file's `quant.int8_winograd` says (`ddpm quantize` measured it on the model, see
  // model/calibrate.h); without that key, on for models whose block-typed conv weights are mostly 4-bit (q4_0,
  // q4_1), whose own error (~5 %) the extra hardly moves, and off for q8_0 and q5_0 models, whose error it nearly
  // doubles on a random-weight U-Net.
  static bool prefers_int8_winograd(const DdpmFile& file);
  // The same rule for a model whose 3×3 conv weights are mostly `type`.
  static bool prefers_int8_winograd(DType type) { return type == DType::Q4_0 || type == DType::Q4_1; }

 private:
  static Status adopt(std::unique_ptr<Model> model, std::unique_ptr<Model>* out);

  DdpmFile file_;
  ModelInfo info_;
  bool int8_winograd_ = false;
};

}  // namespace ddpm
