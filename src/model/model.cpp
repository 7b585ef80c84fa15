#include "model/model.h"

#include "io/json.h"
#include "model/scheduler_json.h"

namespace ddpm {

Status check_image_size(const UNetConfig& unet, int64_t height, int64_t width) {
  const int64_t multiple = unet.spatial_multiple();
  if (height < 1 || width < 1 || height > kMaxImageSide || width > kMaxImageSide || height % multiple ||
      width % multiple) {
    return errorf("image size %lldx%lld does not fit the U-Net (positive multiples of %lld up to %lld)",
                  (long long)height, (long long)width, (long long)multiple, (long long)kMaxImageSide);
  }
  return Status();
}

Status resolve_sampler(const ModelInfo& info, const std::string& sampler, int steps, SamplerSpec* out) {
  const std::string model_sampler = info.default_sampler.empty() ? "ddim" : info.default_sampler;
  const std::string name = sampler.empty() ? model_sampler : sampler;
  DDPM_TRY(parse_sampler_kind(name, &out->sampler));
  if (steps == 0 && name == model_sampler) steps = info.default_steps;
  out->steps = steps > 0 ? steps : pipeline_default_steps(out->sampler, info.scheduler.num_train_timesteps);
  return Status();
}

Status model_info_from_metadata(const DdpmMetadata& m, const std::string& path, ModelInfo* out) {
  ModelInfo info;
  // The metadata's own errors already name the file when it was read from `path`.
  auto fail = [&](const Status& s) {
    if (s.message().compare(0, path.size() + 1, path + ":") == 0) return s;
    return errorf("%s: %s", path.c_str(), s.message().c_str());
  };
  std::string architecture;
  Status s = m.get_string("ddpm.architecture", &architecture);
  if (!s.ok()) return fail(s);
  if (architecture == kTrainingCheckpointArchitecture) {
    return training_checkpoint_error(path);
  }
  if (architecture != "unet2d") {
    return errorf("%s: holds a '%s' network (ddpm.architecture), not a U-Net ('unet2d'), the only kind this loads",
                  path.c_str(), architecture.c_str());
  }
  std::string text;
  JsonValue json;
  if (!(s = m.get_string("unet.config", &text)).ok()) return fail(s);
  if (!(s = parse_json(text, &json)).ok()) return errorf("%s: unet.config: %s", path.c_str(), s.message().c_str());
  if (!(s = UNetConfig::from_json(json, &info.unet)).ok()) return errorf("%s: unet.config: %s", path.c_str(), s.message().c_str());
  if (!(s = info.unet.validate()).ok()) return errorf("%s: unet.config: %s", path.c_str(), s.message().c_str());
  if (!(s = m.get_string("scheduler.config", &text)).ok()) return fail(s);
  if (!(s = parse_json(text, &json)).ok()) return errorf("%s: scheduler.config: %s", path.c_str(), s.message().c_str());
  if (!(s = scheduler_config_from_json(json, &info.scheduler)).ok()) {
    return errorf("%s: scheduler.config: %s", path.c_str(), s.message().c_str());
  }
  std::vector<uint32_t> size;
  if (m.has("data.image_size")) {
    if (!(s = m.get_u32_array("data.image_size", &size)).ok()) return fail(s);
    if (size.size() != 2) return errorf("%s: data.image_size must hold [height, width]", path.c_str());
    info.height = size[0];
    info.width = size[1];
  } else if (!info.unet.sample_size.empty()) {
    info.height = info.unet.sample_size[0];
    info.width = info.unet.sample_size.back();
  } else {
    return errorf("%s: the image size is unknown (no data.image_size and no sample_size)", path.c_str());
  }
  Status size_ok = check_image_size(info.unet, info.height, info.width);
  if (!size_ok.ok()) return errorf("%s: %s", path.c_str(), size_ok.message().c_str());
  info.channels = info.unet.in_channels;
  if (m.has("data.channels")) {
    uint32_t channels;
    if (!(s = m.get_u32("data.channels", &channels)).ok()) return fail(s);
    if (channels != info.unet.in_channels) return errorf("%s: data.channels disagrees with the U-Net's in_channels", path.c_str());
  }
  if (m.has("data.value_range")) {
    std::vector<float> range;
    if (!(s = m.get_f32_array("data.value_range", &range)).ok()) return fail(s);
    if (range.size() != 2 || !(range[0] < range[1])) return errorf("%s: data.value_range must be [low, high]", path.c_str());
    info.value_low = range[0];
    info.value_high = range[1];
  }
  if (m.has("classes.names") && !(s = m.get_string_array("classes.names", &info.class_names)).ok()) return fail(s);
  if (m.has("classes.null_index")) {
    int32_t null_index;
    if (!(s = m.get_i32("classes.null_index", &null_index)).ok()) return fail(s);
    if (null_index < 0 || null_index >= info.class_count()) {
      return errorf("%s: classes.null_index %d is outside the %lld class embeddings", path.c_str(), null_index,
                    (long long)info.class_count());
    }
    info.null_class = null_index;
  }
  if (!info.class_names.empty() && static_cast<int64_t>(info.class_names.size()) > info.class_count()) {
    return errorf("%s: %zu class names for %lld class embeddings", path.c_str(), info.class_names.size(),
                  (long long)info.class_count());
  }
  if (m.has("sampling.default_guidance_scale")) {
    if (!(s = m.get_f32("sampling.default_guidance_scale", &info.default_guidance_scale)).ok()) return fail(s);
  }
  if (m.has("sampling.default_sampler") && !(s = m.get_string("sampling.default_sampler", &info.default_sampler)).ok()) {
    return fail(s);
  }
  if (m.has("sampling.default_steps")) {
    uint32_t steps;
    if (!(s = m.get_u32("sampling.default_steps", &steps)).ok()) return fail(s);
    info.default_steps = static_cast<int>(std::min<uint32_t>(steps, 1000000));
  }
  *out = std::move(info);
  return Status();
}

Status model_info_to_metadata(const ModelInfo& info, DdpmMetadata* m) {
  // What model_info_from_metadata would refuse is refused here, so that no tool writes a file it cannot load.
  DDPM_TRY(check_image_size(info.unet, info.height, info.width));
  if (info.null_class && (*info.null_class < 0 || *info.null_class >= info.class_count())) {
    return errorf("null class %d is outside the model's %lld class embeddings", *info.null_class,
                  (long long)info.class_count());
  }
  if (static_cast<int64_t>(info.class_names.size()) > info.class_count()) {
    return errorf("%zu class names for the model's %lld class embeddings", info.class_names.size(),
                  (long long)info.class_count());
  }
  DDPM_TRY(m->set("ddpm.architecture", MetadataValue::string("unet2d")));
  DDPM_TRY(m->set("unet.config", MetadataValue::string(to_json(info.unet.to_json(), true))));
  DDPM_TRY(m->set("scheduler.config", MetadataValue::string(to_json(scheduler_config_to_json(info.scheduler), true))));
  DDPM_TRY(m->set("data.image_size", MetadataValue::u32_array({static_cast<uint32_t>(info.height),
                                                               static_cast<uint32_t>(info.width)})));
  DDPM_TRY(m->set("data.channels", MetadataValue::u32(static_cast<uint32_t>(info.channels))));
  DDPM_TRY(m->set("data.value_range", MetadataValue::f32_array({info.value_low, info.value_high})));
  if (!info.class_names.empty()) DDPM_TRY(m->set("classes.names", MetadataValue::string_array(info.class_names)));
  if (info.null_class) DDPM_TRY(m->set("classes.null_index", MetadataValue::i32(*info.null_class)));
  if (info.default_guidance_scale != 1.0f) {
    DDPM_TRY(m->set("sampling.default_guidance_scale", MetadataValue::f32(info.default_guidance_scale)));
  }
  if (!info.default_sampler.empty()) DDPM_TRY(m->set("sampling.default_sampler", MetadataValue::string(info.default_sampler)));
  if (info.default_steps > 0) DDPM_TRY(m->set("sampling.default_steps", MetadataValue::u32(info.default_steps)));
  return Status();
}

Status Model::load(const std::string& path, std::unique_ptr<Model>* out, bool verify_checksums) {
  std::unique_ptr<Model> model(new Model());
  DDPM_TRY(DdpmFile::open(path, &model->file_, verify_checksums));
  return adopt(std::move(model), out);
}

Status Model::from_bytes(const std::string& name, const std::vector<uint8_t>& bytes, std::unique_ptr<Model>* out) {
  std::unique_ptr<Model> model(new Model());
  DDPM_TRY(DdpmFile::from_bytes(name, bytes, &model->file_));
  return adopt(std::move(model), out);
}

Status Model::adopt(std::unique_ptr<Model> model, std::unique_ptr<Model>* out) {
  const std::string& path = model->file_.path();
  DDPM_TRY(model_info_from_metadata(model->file_.metadata(), path, &model->info_));
  // Every tensor the network needs must be present with the right shape: check now, with names, rather than at
  // the first forward.
  std::vector<ParamSpec> specs;
  DDPM_TRY(unet_parameter_specs(model->info_.unet, &specs));
  for (const ParamSpec& spec : specs) {
    const DdpmTensorInfo* t = model->file_.find(spec.name);
    if (!t) return errorf("%s: tensor '%s' is missing", path.c_str(), spec.name.c_str());
    bool same = t->rank == static_cast<int>(spec.shape.size());
    for (int i = 0; same && i < t->rank; ++i) same = t->shape[i] == spec.shape[i];
    if (!same) {
      std::string expected = "[", found = "[";
      for (size_t i = 0; i < spec.shape.size(); ++i) expected += (i ? ", " : "") + std::to_string(spec.shape[i]);
      for (int i = 0; i < t->rank; ++i) found += (i ? ", " : "") + std::to_string(t->shape[i]);
      return errorf("%s: tensor '%s' has shape %s], expected %s]", path.c_str(), spec.name.c_str(), found.c_str(),
                    expected.c_str());
    }
  }
  model->int8_winograd_ = prefers_int8_winograd(model->file_);
  *out = std::move(model);
  return Status();
}

bool Model::prefers_int8_winograd(const DdpmFile& file) {
  bool measured = false;
  if (file.metadata().get_bool("quant.int8_winograd", &measured).ok()) return measured;
  // Values of 3×3 conv weights by block type: the type most of them have decides.
  int64_t values[static_cast<int>(DType::kCount)] = {};
  for (const DdpmTensorInfo& t : file.tensors()) {
    if (t.rank == 4 && t.shape[2] == 3 && t.shape[3] == 3 && dtype_traits(t.dtype).is_quantized)
      values[static_cast<int>(t.dtype)] += t.numel();
  }
  int best = -1;
  for (int type = 0; type < static_cast<int>(DType::kCount); ++type) {
    if (values[type] > 0 && (best < 0 || values[type] > values[best])) best = type;
  }
  return best >= 0 && prefers_int8_winograd(static_cast<DType>(best));
}

WeightLookup Model::weights() const {
  return [this](const std::string& name, const std::vector<int64_t>&, WeightRef* out) {
    const DdpmTensorInfo* t = file_.find(name);
    if (!t) return errorf("not in %s", file_.path().c_str());
    out->dtype = t->dtype;
    out->rank = t->rank;
    for (int i = 0; i < t->rank; ++i) out->shape[i] = t->shape[i];
    out->data = t->data;
    out->mapped = file_.is_mapped();
    out->frozen = true;  // the model's bytes are read-only for its lifetime
    out->tap_major = t->tap_major;
    out->int8_winograd = int8_winograd_;
    return Status();
  };
}

int64_t Model::parameter_count() const {
  int64_t n = 0;
  for (const DdpmTensorInfo& t : file_.tensors()) n += t.numel();
  return n;
}

}  // namespace ddpm
