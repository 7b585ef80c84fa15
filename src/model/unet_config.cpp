#include "model/unet_config.h"

namespace ddpm {
namespace {

// Readers for one key each: absent keys keep the default; present keys must have the right type.
Status read_int(const JsonValue& json, const char* key, int64_t* out) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  if (v->as_integral(out)) return Status();
  return errorf("config key '%s' must be an integer", key);
}

Status read_optional_int(const JsonValue& json, const char* key, std::optional<int64_t>* out) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  if (v->is_null()) {
    out->reset();
    return Status();
  }
  int64_t value = 0;
  DDPM_TRY(read_int(json, key, &value));
  *out = value;
  return Status();
}

Status read_double(const JsonValue& json, const char* key, double* out) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  if (!v->as_double(out)) return errorf("config key '%s' must be a number", key);
  return Status();
}

Status read_bool(const JsonValue& json, const char* key, bool* out) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  if (!v->as_bool(out)) return errorf("config key '%s' must be true or false", key);
  return Status();
}

Status read_string(const JsonValue& json, const char* key, std::string* out, bool nullable) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  if (nullable && v->is_null()) {
    out->clear();
    return Status();
  }
  if (!v->as_string(out)) return errorf("config key '%s' must be a string", key);
  return Status();
}

Status read_string_list(const JsonValue& json, const char* key, std::vector<std::string>* out) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  if (!v->is_array()) return errorf("config key '%s' must be a list of strings", key);
  out->clear();
  for (const JsonValue& item : v->items()) {
    std::string s;
    if (!item.as_string(&s)) return errorf("config key '%s' must be a list of strings", key);
    out->push_back(s);
  }
  return Status();
}

Status read_int_list(const JsonValue& json, const char* key, std::vector<int64_t>* out, bool allow_scalar) {
  const JsonValue* v = json.find(key);
  if (!v) return Status();
  out->clear();
  if (v->is_null()) return Status();
  int64_t scalar;
  if (allow_scalar && v->as_int64(&scalar)) {
    out->push_back(scalar);
    return Status();
  }
  if (!v->is_array()) return errorf("config key '%s' must be a list of integers", key);
  for (const JsonValue& item : v->items()) {
    int64_t n;
    if (!item.as_int64(&n)) return errorf("config key '%s' must be a list of integers", key);
    out->push_back(n);
  }
  return Status();
}

JsonValue int_list(const std::vector<int64_t>& values) {
  JsonValue a = JsonValue::make_array();
  for (int64_t v : values) a.push_back(JsonValue::make_int(v));
  return a;
}

JsonValue string_list(const std::vector<std::string>& values) {
  JsonValue a = JsonValue::make_array();
  for (const std::string& v : values) a.push_back(JsonValue::make_string(v));
  return a;
}

JsonValue optional_int(const std::optional<int64_t>& v) { return v ? JsonValue::make_int(*v) : JsonValue(); }
JsonValue nullable_string(const std::string& s) { return s.empty() ? JsonValue() : JsonValue::make_string(s); }

}  // namespace

Status UNetConfig::from_json(const JsonValue& json, UNetConfig* out) {
  if (!json.is_object()) return errorf("config must be a JSON object");
  UNetConfig c;
  std::string class_name;
  DDPM_TRY(read_string(json, "_class_name", &class_name, true));
  if (!class_name.empty() && class_name != "UNet2DModel") {
    return errorf("config is for %s; only UNet2DModel is supported", class_name.c_str());
  }
  DDPM_TRY(read_int_list(json, "sample_size", &c.sample_size, true));
  DDPM_TRY(read_int(json, "in_channels", &c.in_channels));
  DDPM_TRY(read_int(json, "out_channels", &c.out_channels));
  DDPM_TRY(read_bool(json, "center_input_sample", &c.center_input_sample));
  DDPM_TRY(read_string(json, "time_embedding_type", &c.time_embedding_type, false));
  DDPM_TRY(read_optional_int(json, "time_embedding_dim", &c.time_embedding_dim));
  DDPM_TRY(read_double(json, "freq_shift", &c.freq_shift));
  DDPM_TRY(read_bool(json, "flip_sin_to_cos", &c.flip_sin_to_cos));
  DDPM_TRY(read_string_list(json, "down_block_types", &c.down_block_types));
  DDPM_TRY(read_string(json, "mid_block_type", &c.mid_block_type, true));
  DDPM_TRY(read_string_list(json, "up_block_types", &c.up_block_types));
  DDPM_TRY(read_int_list(json, "block_out_channels", &c.block_out_channels, false));
  DDPM_TRY(read_int(json, "layers_per_block", &c.layers_per_block));
  DDPM_TRY(read_double(json, "mid_block_scale_factor", &c.mid_block_scale_factor));
  DDPM_TRY(read_int(json, "downsample_padding", &c.downsample_padding));
  DDPM_TRY(read_string(json, "downsample_type", &c.downsample_type, false));
  DDPM_TRY(read_string(json, "upsample_type", &c.upsample_type, false));
  DDPM_TRY(read_double(json, "dropout", &c.dropout));
  DDPM_TRY(read_string(json, "act_fn", &c.act_fn, false));
  DDPM_TRY(read_optional_int(json, "attention_head_dim", &c.attention_head_dim));
  DDPM_TRY(read_optional_int(json, "norm_num_groups", &c.norm_num_groups));
  DDPM_TRY(read_optional_int(json, "attn_norm_num_groups", &c.attn_norm_num_groups));
  DDPM_TRY(read_double(json, "norm_eps", &c.norm_eps));
  DDPM_TRY(read_string(json, "resnet_time_scale_shift", &c.resnet_time_scale_shift, false));
  DDPM_TRY(read_bool(json, "add_attention", &c.add_attention));
  DDPM_TRY(read_string(json, "class_embed_type", &c.class_embed_type, true));
  DDPM_TRY(read_optional_int(json, "num_class_embeds", &c.num_class_embeds));
  DDPM_TRY(read_optional_int(json, "num_train_timesteps", &c.num_train_timesteps));
  if (c.act_fn == "swish") c.act_fn = "silu";
  *out = c;
  return Status();
}

JsonValue UNetConfig::to_json() const {
  JsonValue j = JsonValue::make_object();
  j.set("_class_name", JsonValue::make_string("UNet2DModel"));
  if (sample_size.empty()) j.set("sample_size", JsonValue());
  else if (sample_size.size() == 1) j.set("sample_size", JsonValue::make_int(sample_size[0]));
  else j.set("sample_size", int_list(sample_size));
  j.set("in_channels", JsonValue::make_int(in_channels));
  j.set("out_channels", JsonValue::make_int(out_channels));
  j.set("center_input_sample", JsonValue::make_bool(center_input_sample));
  j.set("time_embedding_type", JsonValue::make_string(time_embedding_type));
  j.set("time_embedding_dim", optional_int(time_embedding_dim));
  j.set("freq_shift", JsonValue::make_number(freq_shift));
  j.set("flip_sin_to_cos", JsonValue::make_bool(flip_sin_to_cos));
  j.set("down_block_types", string_list(down_block_types));
  j.set("mid_block_type", nullable_string(mid_block_type));
  j.set("up_block_types", string_list(up_block_types));
  j.set("block_out_channels", int_list(block_out_channels));
  j.set("layers_per_block", JsonValue::make_int(layers_per_block));
  j.set("mid_block_scale_factor", JsonValue::make_number(mid_block_scale_factor));
  j.set("downsample_padding", JsonValue::make_int(downsample_padding));
  j.set("downsample_type", JsonValue::make_string(downsample_type));
  j.set("upsample_type", JsonValue::make_string(upsample_type));
  j.set("dropout", JsonValue::make_number(dropout));
  j.set("act_fn", JsonValue::make_string(act_fn));
  j.set("attention_head_dim", optional_int(attention_head_dim));
  j.set("norm_num_groups", optional_int(norm_num_groups));
  j.set("attn_norm_num_groups", optional_int(attn_norm_num_groups));
  j.set("norm_eps", JsonValue::make_number(norm_eps));
  j.set("resnet_time_scale_shift", JsonValue::make_string(resnet_time_scale_shift));
  j.set("add_attention", JsonValue::make_bool(add_attention));
  j.set("class_embed_type", nullable_string(class_embed_type));
  j.set("num_class_embeds", optional_int(num_class_embeds));
  j.set("num_train_timesteps", optional_int(num_train_timesteps));
  return j;
}

Status UNetConfig::validate() const {
  const size_t levels = block_out_channels.size();
  if (levels == 0 || levels > 8) return errorf("block_out_channels must list 1 to 8 levels");
  if (down_block_types.size() != levels || up_block_types.size() != levels) {
    return errorf("down_block_types (%zu), up_block_types (%zu) and block_out_channels (%zu) must have equal lengths",
                  down_block_types.size(), up_block_types.size(), levels);
  }
  for (int64_t c : block_out_channels) {
    if (c < 1 || c > 65536) return errorf("block_out_channels has an invalid width %lld", (long long)c);
  }
  if (in_channels < 1 || in_channels > 4096 || out_channels < 1 || out_channels > 4096) {
    return errorf("in_channels/out_channels must be in 1..4096");
  }
  if (layers_per_block < 1 || layers_per_block > 16) return errorf("layers_per_block must be in 1..16");
  if (!norm_num_groups) return errorf("norm_num_groups null is only used by Skip blocks, which are not supported");
  const int64_t groups = *norm_num_groups;
  for (int64_t c : block_out_channels) {
    if (groups < 1 || c % groups != 0) {
      return errorf("block width %lld does not divide into norm_num_groups %lld", (long long)c, (long long)groups);
    }
  }
  if (attn_norm_num_groups && (*attn_norm_num_groups < 1 || block_out_channels.back() % *attn_norm_num_groups != 0)) {
    return errorf("attn_norm_num_groups %lld does not divide the mid block width", (long long)*attn_norm_num_groups);
  }
  if (!(norm_eps > 0)) return errorf("norm_eps must be positive");
  if (time_embedding_type != "positional") {
    return errorf("time_embedding_type '%s' is not supported (only 'positional')", time_embedding_type.c_str());
  }
  if (time_embedding_dim && (*time_embedding_dim < 1 || *time_embedding_dim > 65536)) {
    return errorf("time_embedding_dim is out of range");
  }
  if (block_out_channels[0] < 2 || static_cast<double>(block_out_channels[0] / 2) == freq_shift) {
    return errorf("freq_shift %g makes the sinusoidal embedding divide by zero", freq_shift);
  }
  if (act_fn != "silu") return errorf("act_fn '%s' is not supported (only silu/swish)", act_fn.c_str());
  for (const std::string& t : down_block_types) {
    if (t != "DownBlock2D" && t != "AttnDownBlock2D") return errorf("down block type '%s' is not supported", t.c_str());
  }
  for (const std::string& t : up_block_types) {
    if (t != "UpBlock2D" && t != "AttnUpBlock2D") return errorf("up block type '%s' is not supported", t.c_str());
  }
  if (!mid_block_type.empty() && mid_block_type != "UNetMidBlock2D") {
    return errorf("mid_block_type '%s' is not supported", mid_block_type.c_str());
  }
  if (downsample_padding != 0 && downsample_padding != 1) return errorf("downsample_padding must be 0 or 1");
  if (downsample_type != "conv" && downsample_type != "resnet") return errorf("downsample_type must be conv or resnet");
  if (upsample_type != "conv" && upsample_type != "resnet") return errorf("upsample_type must be conv or resnet");
  if (resnet_time_scale_shift != "default" && resnet_time_scale_shift != "scale_shift") {
    return errorf("resnet_time_scale_shift '%s' is not supported", resnet_time_scale_shift.c_str());
  }
  if (attention_head_dim && *attention_head_dim < 1) return errorf("attention_head_dim must be positive");
  for (int64_t c : block_out_channels) {
    if (attention_head_dim && c / *attention_head_dim < 1) {
      return errorf("attention_head_dim %lld is wider than the block width %lld", (long long)*attention_head_dim,
                    (long long)c);
    }
  }
  if (!class_embed_type.empty() && class_embed_type != "timestep" && class_embed_type != "identity") {
    return errorf("class_embed_type '%s' is not supported", class_embed_type.c_str());
  }
  if (num_class_embeds && (*num_class_embeds < 1 || *num_class_embeds > 1000000)) {
    return errorf("num_class_embeds is out of range");
  }
  if (!(mid_block_scale_factor > 0)) return errorf("mid_block_scale_factor must be positive");
  return Status();
}

}  // namespace ddpm
