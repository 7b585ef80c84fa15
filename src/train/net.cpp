#include "train/net.h"

#include "ddpm/ops.h"
#include "model/model.h"

namespace ddpm {
namespace {

Status read_positive(const JsonValue& json, const char* key, int64_t* out) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  if (!v->as_int64(out) || *out < 1) return errorf("mlp config key '%s' must be a positive integer", key);
  return Status();
}

// The MLP's parameters, in build order.
std::vector<ParamSpec> mlp_specs(const MlpConfig& c) {
  std::vector<ParamSpec> specs = {{"time_mlp.weight", {c.hidden, c.time_embed_dim}},
                                  {"time_mlp.bias", {c.hidden}},
                                  {"input.weight", {c.hidden, 1}},
                                  {"input.bias", {c.hidden}}};
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string p = "layers." + std::to_string(i);
    specs.push_back({p + ".weight", {c.hidden, c.hidden}});
    specs.push_back({p + ".bias", {c.hidden}});
  }
  specs.push_back({"output.weight", {1, c.hidden}});
  specs.push_back({"output.bias", {1}});
  return specs;
}

// Asks `lookup` for a weight and checks its shape, like the U-Net builder does.
Tensor* mlp_weight(Graph& g, const WeightLookup& lookup, const ParamSpec& spec, Status* error) {
  if (!error->ok()) return nullptr;
  WeightRef ref;
  Status found = lookup(spec.name, spec.shape, &ref);
  bool same = found.ok() && ref.rank == static_cast<int>(spec.shape.size()) && ref.dtype == DType::F32;
  for (int i = 0; same && i < ref.rank; ++i) same = ref.shape[i] == spec.shape[static_cast<size_t>(i)];
  if (!same) {
    *error = errorf("mlp weight '%s': %s", spec.name.c_str(),
                    found.ok() ? "wrong shape or type (expected f32)" : found.message().c_str());
    return nullptr;
  }
  return g.param(spec.name, DType::F32, ref.rank, ref.shape, ref.data);
}

Status build_mlp(Graph& g, const MlpConfig& c, const WeightLookup& lookup, int64_t batch, UNetGraphParts* out) {
  const std::vector<ParamSpec> specs = mlp_specs(c);
  Status error;
  size_t next = 0;
  auto linear = [&](Tensor* x) {  // the next weight/bias pair of `specs`
    Tensor* w = mlp_weight(g, lookup, specs[next], &error);
    Tensor* b = mlp_weight(g, lookup, specs[next + 1], &error);
    next += 2;
    return ddpm::linear(g, x, w, b);
  };
  UNetGraphParts parts;
  parts.sample = g.input("sample", DType::F32, {batch, 1, 1, 1});
  parts.timesteps = g.input("timesteps", DType::F32, {batch});
  Tensor* sinusoid = timestep_embedding(g, parts.timesteps, static_cast<int>(c.time_embed_dim), true, 0.0f);  // [B, D]
  Tensor* e = silu(g, linear(sinusoid));                                    // [B, hidden]
  Tensor* h = linear(reshape(g, parts.sample, {batch, 1}));                 // [B, hidden]
  for (int64_t i = 0; i < c.layers; ++i) h = silu(g, linear(add(g, h, e)));  // [B, hidden]
  Tensor* y = linear(h);                                                    // [B, 1]
  parts.output = reshape(g, y, {batch, 1, 1, 1});
  DDPM_TRY(error);
  DDPM_TRY(g.status());
  g.set_output(parts.output);
  *out = parts;
  return Status();
}

}  // namespace

JsonValue MlpConfig::to_json() const {
  JsonValue j = JsonValue::make_object();
  j.set("hidden", JsonValue::make_int(hidden));
  j.set("layers", JsonValue::make_int(layers));
  j.set("time_embed_dim", JsonValue::make_int(time_embed_dim));
  return j;
}

Status MlpConfig::from_json(const JsonValue& json, MlpConfig* out) {
  if (!json.is_object()) return errorf("mlp config must be a JSON object");
  MlpConfig c;
  DDPM_TRY(read_positive(json, "hidden", &c.hidden));
  DDPM_TRY(read_positive(json, "layers", &c.layers));
  DDPM_TRY(read_positive(json, "time_embed_dim", &c.time_embed_dim));
  DDPM_TRY(c.validate());
  *out = c;
  return Status();
}

Status MlpConfig::validate() const {
  if (hidden < 1 || hidden > 65536) return errorf("mlp hidden width %lld is outside 1..65536", (long long)hidden);
  if (layers < 1 || layers > 64) return errorf("mlp layer count %lld is outside 1..64", (long long)layers);
  if (time_embed_dim < 4 || time_embed_dim % 2 != 0 || time_embed_dim > 65536) {
    return errorf("mlp time_embed_dim %lld must be even and at least 4", (long long)time_embed_dim);
  }
  return Status();
}

int64_t NetSpec::class_embeds() const {
  return kind == NetKind::UNet2D && unet.has_class_table() ? *unet.num_class_embeds : 0;
}

std::string NetSpec::fingerprint() const {
  JsonValue j = JsonValue::make_object();
  j.set("architecture", JsonValue::make_string(architecture()));
  j.set("config", kind == NetKind::UNet2D ? unet.to_json() : mlp.to_json());
  JsonValue shape = JsonValue::make_array();
  for (int64_t d : {channels, height, width}) shape.push_back(JsonValue::make_int(d));
  j.set("sample_shape", shape);
  return to_json(j, false);
}

Status NetSpec::from_fingerprint(const std::string& text, NetSpec* out) {
  JsonValue j;
  DDPM_TRY(parse_json(text, &j));
  NetSpec spec;
  std::string architecture;
  const JsonValue* a = j.find("architecture");
  const JsonValue* config = j.find("config");
  const JsonValue* shape = j.find("sample_shape");
  if (!a || !a->as_string(&architecture) || !config || !shape || !shape->is_array() || shape->size() != 3) {
    return errorf("network description lacks architecture, config or sample_shape");
  }
  if (architecture == "unet2d") {
    spec.kind = NetKind::UNet2D;
    DDPM_TRY(UNetConfig::from_json(*config, &spec.unet));
  } else if (architecture == "mlp1d") {
    spec.kind = NetKind::Mlp1D;
    DDPM_TRY(MlpConfig::from_json(*config, &spec.mlp));
  } else {
    return errorf("architecture '%s' is not trainable", architecture.c_str());
  }
  int64_t* dims[3] = {&spec.channels, &spec.height, &spec.width};
  for (int i = 0; i < 3; ++i) {
    if (!shape->items()[static_cast<size_t>(i)].as_int64(dims[i])) return errorf("sample_shape must hold integers");
  }
  DDPM_TRY(spec.validate());
  *out = std::move(spec);
  return Status();
}

Status NetSpec::validate() const {
  if (channels < 1 || height < 1 || width < 1 || channels > 64 || height > 4096 || width > 4096) {
    return errorf("sample shape [%lld, %lld, %lld] is out of range", (long long)channels, (long long)height,
                  (long long)width);
  }
  if (kind == NetKind::Mlp1D) {
    if (channels != 1 || height != 1 || width != 1) return errorf("the 1-D MLP trains on scalars (shape [1, 1, 1])");
    return mlp.validate();
  }
  DDPM_TRY(unet.validate());
  if (unet.in_channels != channels) {
    return errorf("the U-Net has in_channels %lld but the data has %lld channel(s)", (long long)unet.in_channels,
                  (long long)channels);
  }
  if (unet.out_channels != unet.in_channels) {
    return errorf("out_channels %lld != in_channels %lld: training a learned variance is not supported",
                  (long long)unet.out_channels, (long long)unet.in_channels);
  }
  if (!unet.class_embed_type.empty()) {
    return errorf("class_embed_type '%s' cannot be trained here (use num_class_embeds: a class table)",
                  unet.class_embed_type.c_str());
  }
  return check_image_size(unet, height, width);  // what the model file it exports must hold
}

Status NetSpec::parameter_specs(std::vector<ParamSpec>* out) const {
  if (kind == NetKind::Mlp1D) {
    *out = mlp_specs(mlp);
    return Status();
  }
  return unet_parameter_specs(unet, out);
}

Status NetSpec::build(Graph& g, const WeightLookup& lookup, int64_t batch, UNetGraphParts* out) const {
  if (kind == NetKind::Mlp1D) return build_mlp(g, mlp, lookup, batch, out);
  return build_unet_graph(g, unet, lookup, batch, height, width, out);
}

Status net_preset(const std::string& name, NetSpec* spec, SchedulerConfig* scheduler) {
  NetSpec s;
  SchedulerConfig sc;  // diffusers' DDPMScheduler defaults: linear 1e-4..0.02, T = 1000
  if (name == "fashion-mnist") {
    s.kind = NetKind::UNet2D;
    UNetConfig& c = s.unet;
    c.sample_size = {28};
    c.in_channels = c.out_channels = 1;
    c.block_out_channels = {32, 64, 128};
    c.layers_per_block = 2;
    // 28 → 14 → 7: attention only at 7×7 (49 positions), where it is cheap; the mid block attends there too.
    c.down_block_types = {"DownBlock2D", "DownBlock2D", "AttnDownBlock2D"};
    c.up_block_types = {"AttnUpBlock2D", "UpBlock2D", "UpBlock2D"};
    c.attention_head_dim = 32;
    c.norm_num_groups = 8;
    c.num_class_embeds = 11;  // 10 classes + the null class (index 10) for classifier-free guidance
    s.channels = 1;
    s.height = s.width = 28;
  } else if (name == "toy-mlp") {
    s.kind = NetKind::Mlp1D;
    sc.clip_sample = false;
  } else {
    return errorf("unknown preset '%s' (known: %s)", name.c_str(), net_preset_names());
  }
  DDPM_TRY(s.validate());
  *spec = std::move(s);
  *scheduler = sc;
  return Status();
}

const char* net_preset_names() { return "fashion-mnist"; }

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

}  // namespace ddpm
