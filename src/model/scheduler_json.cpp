#include "model/scheduler_json.h"

namespace ddpm {
namespace {

template <typename T, typename Parse>
Status read_enum(const JsonValue& json, const char* key, T* out, Parse parse) {
  const JsonValue* v = json.find(key);
  if (!v || v->is_null()) return Status();
  std::string text;
  if (!v->as_string(&text)) return errorf("scheduler config key '%s' must be a string", key);
  return parse(text, out).with_context(std::string("scheduler config key '") + key + "'");
}

Status read_number(const JsonValue& json, const char* key, double* out) {
  const JsonValue* v = json.find(key);
  if (!v || v->is_null()) return Status();
  if (!v->as_double(out)) return errorf("scheduler config key '%s' must be a number", key);
  return Status();
}

Status read_int(const JsonValue& json, const char* key, int* out) {
  const JsonValue* v = json.find(key);
  if (!v || v->is_null()) return Status();
  int64_t n = 0;
  if (!v->as_integral(&n)) return errorf("scheduler config key '%s' must be an integer", key);
  if (n < -1000000000 || n > 1000000000) return errorf("scheduler config key '%s' is out of range", key);
  *out = static_cast<int>(n);
  return Status();
}

Status read_bool(const JsonValue& json, const char* key, bool* out) {
  const JsonValue* v = json.find(key);
  if (!v || v->is_null()) return Status();
  if (!v->as_bool(out)) return errorf("scheduler config key '%s' must be true or false", key);
  return Status();
}

}  // namespace

Status scheduler_config_from_json(const JsonValue& json, SchedulerConfig* out) {
  if (!json.is_object()) return errorf("scheduler config must be a JSON object");
  SchedulerConfig c;
  std::string class_name;
  if (const JsonValue* v = json.find("_class_name")) v->as_string(&class_name);
  // DDIMScheduler's own default for set_alpha_to_one is true as well; DDPM configs never carry it.
  DDPM_TRY(read_int(json, "num_train_timesteps", &c.num_train_timesteps));
  DDPM_TRY(read_number(json, "beta_start", &c.beta_start));
  DDPM_TRY(read_number(json, "beta_end", &c.beta_end));
  DDPM_TRY(read_enum(json, "beta_schedule", &c.beta_schedule, parse_beta_schedule));
  if (const JsonValue* v = json.find("trained_betas"); v && !v->is_null()) {
    if (!v->is_array()) return errorf("scheduler config key 'trained_betas' must be a list of numbers");
    for (const JsonValue& item : v->items()) {
      double d;
      if (!item.as_double(&d)) return errorf("scheduler config key 'trained_betas' must be a list of numbers");
      c.trained_betas.push_back(static_cast<float>(d));
    }
  }
  DDPM_TRY(read_enum(json, "prediction_type", &c.prediction_type, parse_prediction_type));
  DDPM_TRY(read_enum(json, "variance_type", &c.variance_type, parse_variance_type));
  DDPM_TRY(read_bool(json, "clip_sample", &c.clip_sample));
  DDPM_TRY(read_number(json, "clip_sample_range", &c.clip_sample_range));
  DDPM_TRY(read_bool(json, "thresholding", &c.thresholding));
  DDPM_TRY(read_number(json, "dynamic_thresholding_ratio", &c.dynamic_thresholding_ratio));
  DDPM_TRY(read_number(json, "sample_max_value", &c.sample_max_value));
  DDPM_TRY(read_enum(json, "timestep_spacing", &c.timestep_spacing, parse_timestep_spacing));
  DDPM_TRY(read_int(json, "steps_offset", &c.steps_offset));
  DDPM_TRY(read_bool(json, "set_alpha_to_one", &c.set_alpha_to_one));
  DDPM_TRY(read_bool(json, "rescale_betas_zero_snr", &c.rescale_betas_zero_snr));
  DDPM_TRY(c.validate());
  *out = c;
  return Status();
}

JsonValue scheduler_config_to_json(const SchedulerConfig& c) {
  JsonValue j = JsonValue::make_object();
  j.set("num_train_timesteps", JsonValue::make_int(c.num_train_timesteps));
  j.set("beta_start", JsonValue::make_number(c.beta_start));
  j.set("beta_end", JsonValue::make_number(c.beta_end));
  j.set("beta_schedule", JsonValue::make_string(to_string(c.beta_schedule)));
  if (c.trained_betas.empty()) {
    j.set("trained_betas", JsonValue());
  } else {
    JsonValue betas = JsonValue::make_array();
    for (float b : c.trained_betas) betas.push_back(JsonValue::make_number(b));
    j.set("trained_betas", betas);
  }
  j.set("prediction_type", JsonValue::make_string(to_string(c.prediction_type)));
  j.set("variance_type", JsonValue::make_string(to_string(c.variance_type)));
  j.set("clip_sample", JsonValue::make_bool(c.clip_sample));
  j.set("clip_sample_range", JsonValue::make_number(c.clip_sample_range));
  j.set("thresholding", JsonValue::make_bool(c.thresholding));
  j.set("dynamic_thresholding_ratio", JsonValue::make_number(c.dynamic_thresholding_ratio));
  j.set("sample_max_value", JsonValue::make_number(c.sample_max_value));
  j.set("timestep_spacing", JsonValue::make_string(to_string(c.timestep_spacing)));
  j.set("steps_offset", JsonValue::make_int(c.steps_offset));
  j.set("set_alpha_to_one", JsonValue::make_bool(c.set_alpha_to_one));
  j.set("rescale_betas_zero_snr", JsonValue::make_bool(c.rescale_betas_zero_snr));
  return j;
}

}  // namespace ddpm
