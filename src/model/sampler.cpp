#include "model/sampler.h"

// Every product and sum below mirrors one torch kernel call, each rounded to float on its own; letting the compiler
// fuse a·b + c (GCC's default for C++ on ARM64) would move results away from diffusers by an ulp here and there.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ddpm {

Status StepShape::validate() const {
  if (batch < 1 || channels < 1 || spatial < 1)
    return errorf("step shape (batch %d, channels %d, H*W %lld): all sizes must be positive", batch, channels,
                  static_cast<long long>(spatial));
  const int mc = model_channels();
  if (mc != channels && mc != 2 * channels)
    return errorf("model output has %d channels; expected %d (C) or %d (2C, learned variance)", mc, channels,
                  2 * channels);
  const int64_t max = std::numeric_limits<int64_t>::max();
  if (spatial > max / (2 * static_cast<int64_t>(channels)) ||
      static_cast<int64_t>(batch) > max / (2 * static_cast<int64_t>(channels) * spatial))
    return errorf("step shape (batch %d, channels %d, H*W %lld) overflows", batch, channels,
                  static_cast<long long>(spatial));
  return Status();
}

namespace {

Status check_timestep(const Schedule& schedule, int64_t t, int64_t prev_t) {
  const int64_t T = schedule.num_train_timesteps();
  if (t < 0 || t >= T) return errorf("timestep %lld is outside 0..%lld", static_cast<long long>(t),
                                     static_cast<long long>(T - 1));
  if (prev_t >= T)
    return errorf("previous timestep %lld is outside -1..%lld", static_cast<long long>(prev_t),
                  static_cast<long long>(T - 1));
  return Status();
}

// The first C channels of sample b of the model output (the prediction; the variance half follows).
inline const float* model_sample(const StepShape& shape, const float* model_output, int b) {
  return model_output + static_cast<int64_t>(b) * shape.model_channels() * shape.spatial;
}

// torch.lerp for float: two formulas so that weight 0 and 1 both give an end point exactly.
inline float torch_lerp(float self, float end, float weight) {
  return std::fabs(weight) < 0.5f ? self + weight * (end - self) : end - (end - self) * (1.0f - weight);
}

void clip_or_threshold(const Schedule& schedule, const StepShape& shape, float* x0) {
  const SchedulerConfig& c = schedule.config;
  if (c.thresholding) {
    dynamic_threshold(x0, shape.batch, shape.per_sample(), static_cast<float>(c.dynamic_thresholding_ratio),
                      static_cast<float>(c.sample_max_value));
  } else if (c.clip_sample) {
    clip_sample(x0, shape.numel(), static_cast<float>(c.clip_sample_range));
  }
}

}  // namespace

void clip_sample(float* x0, int64_t n, float range) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x0[i];
    // Written so that NaN falls through both tests unchanged, like torch.clamp.
    x0[i] = v < -range ? -range : (v > range ? range : v);
  }
}

void dynamic_threshold(float* x0, int batch, int64_t per_sample, float ratio, float max_value) {
  if (per_sample < 1) return;
  ratio = ratio >= 0.0f ? std::min(ratio, 1.0f) : 0.0f;  // also maps NaN to 0, keeping the rank cast defined
  std::vector<float> magnitudes(static_cast<size_t>(per_sample));
  // torch.quantile(q, dim=1), interpolation "linear": rank = q·(n − 1) in float, lerp between floor and ceil.
  const float rank = ratio * static_cast<float>(per_sample - 1);
  const int64_t below = static_cast<int64_t>(rank);
  const int64_t above = std::min<int64_t>(static_cast<int64_t>(std::ceil(rank)), per_sample - 1);
  const float weight = rank - static_cast<float>(below);
  for (int b = 0; b < batch; ++b) {
    float* x = x0 + static_cast<int64_t>(b) * per_sample;
    bool has_nan = false;
    for (int64_t i = 0; i < per_sample; ++i) {
      magnitudes[static_cast<size_t>(i)] = std::fabs(x[i]);
      has_nan = has_nan || std::isnan(x[i]);
    }
    float s;
    if (has_nan) {
      s = std::numeric_limits<float>::quiet_NaN();  // torch.quantile returns NaN for rows with NaN
    } else {
      auto first = magnitudes.begin();
      std::nth_element(first, first + below, magnitudes.end());
      const float value_below = magnitudes[static_cast<size_t>(below)];
      float value_above = value_below;
      if (above > below) value_above = *std::min_element(first + below + 1, magnitudes.end());
      s = torch_lerp(value_below, value_above, weight);
    }
    // torch.clamp(s, min=1, max=sample_max_value): max() first, then min().
    s = std::min(std::max(s, 1.0f), max_value);
    if (std::isnan(s)) s = std::numeric_limits<float>::quiet_NaN();
    for (int64_t i = 0; i < per_sample; ++i) {
      const float v = x[i];
      const float clamped = v < -s ? -s : (v > s ? s : v);
      x[i] = clamped / s;
    }
  }
}

float ddpm_variance(const Schedule& schedule, int64_t t, int64_t prev_t) {
  const float ab_t = schedule.alphas_cumprod[static_cast<size_t>(t)];
  const float ab_prev = prev_t >= 0 ? schedule.alphas_cumprod[static_cast<size_t>(prev_t)] : 1.0f;
  const float current_beta = 1.0f - ab_t / ab_prev;
  // β̃_t = (1 − ᾱ_{t'})/(1 − ᾱ_t)·β_t (Ho et al. eq. 7), clamped so that its log stays finite at t = 0.
  const float variance = (1.0f - ab_prev) / (1.0f - ab_t) * current_beta;
  return std::max(variance, 1e-20f);
}

float ddim_variance(const Schedule& schedule, int64_t t, int64_t prev_t) {
  const float ab_t = schedule.alphas_cumprod[static_cast<size_t>(t)];
  const float ab_prev = prev_t >= 0 ? schedule.alphas_cumprod[static_cast<size_t>(prev_t)] : schedule.final_alpha_cumprod;
  const float beta_t = 1.0f - ab_t;
  const float beta_prev = 1.0f - ab_prev;
  return (beta_prev / beta_t) * (1.0f - ab_t / ab_prev);
}

Status ddpm_step(const Schedule& schedule, int64_t t, int64_t prev_t, const StepShape& shape, const float* x,
                 const float* model_output, const float* noise, float* x_prev, float* pred_x0) {
  DDPM_TRY(shape.validate());
  DDPM_TRY(check_timestep(schedule, t, prev_t));
  const VarianceType variance_type = schedule.config.variance_type;
  const bool learned = variance_type == VarianceType::Learned || variance_type == VarianceType::LearnedRange;
  const bool split = shape.model_channels() == 2 * shape.channels;
  if (learned && !split)
    return errorf("variance_type %s needs a model output of 2C = %d channels (prediction, then variance), got %d",
                  to_string(variance_type), 2 * shape.channels, shape.model_channels());
  if (!learned && split)
    return errorf("model output has 2C = %d channels but variance_type is %s (use learned or learned_range)",
                  shape.model_channels(), to_string(variance_type));
  const bool add_noise_here = ddpm_step_uses_noise(t);
  if (add_noise_here && noise == nullptr) return errorf("ddpm step at t = %lld needs noise", static_cast<long long>(t));

  // Scalars as diffusers forms them, each a float32 0-dim tensor op.
  const float ab_t = schedule.alphas_cumprod[static_cast<size_t>(t)];
  const float ab_prev = prev_t >= 0 ? schedule.alphas_cumprod[static_cast<size_t>(prev_t)] : 1.0f;
  const float beta_t = 1.0f - ab_t;
  const float beta_prev = 1.0f - ab_prev;
  const float current_alpha = ab_t / ab_prev;
  const float current_beta = 1.0f - current_alpha;
  const float sqrt_ab_t = std::sqrt(ab_t);
  const float sqrt_beta_t = std::sqrt(beta_t);
  // Posterior mean μ̃ = (√ᾱ_{t'}·β_t/β̄_t)·x̂0 + (√α_t·β̄_{t'}/β̄_t)·x_t (Ho et al. eq. 7).
  const float x0_coeff = (std::sqrt(ab_prev) * current_beta) / beta_t;
  const float xt_coeff = std::sqrt(current_alpha) * beta_prev / beta_t;

  const int64_t per_sample = shape.per_sample();
  const int64_t n = shape.numel();
  std::vector<float> scratch;
  float* x0 = pred_x0;
  if (x0 == nullptr) {
    scratch.resize(static_cast<size_t>(n));
    x0 = scratch.data();
  }
  const PredictionType prediction = schedule.config.prediction_type;
  for (int b = 0; b < shape.batch; ++b) {
    const float* out = model_sample(shape, model_output, b);
    const float* xb = x + static_cast<int64_t>(b) * per_sample;
    float* x0b = x0 + static_cast<int64_t>(b) * per_sample;
    for (int64_t i = 0; i < per_sample; ++i) {
      switch (prediction) {
        case PredictionType::Epsilon: x0b[i] = (xb[i] - sqrt_beta_t * out[i]) / sqrt_ab_t; break;
        case PredictionType::Sample: x0b[i] = out[i]; break;
        case PredictionType::VPrediction: x0b[i] = sqrt_ab_t * xb[i] - sqrt_beta_t * out[i]; break;
      }
    }
  }
  clip_or_threshold(schedule, shape, x0);

  // The variance term, for t > 0 only. Fixed types give one σ for the whole batch; learned ones one per element.
  const float variance = ddpm_variance(schedule, t, prev_t);
  float fixed_std = 0.0f;
  if (add_noise_here) {
    switch (variance_type) {
      case VarianceType::FixedSmall: fixed_std = std::sqrt(variance); break;
      case VarianceType::FixedSmallLog: fixed_std = std::exp(0.5f * std::log(variance)); break;
      case VarianceType::FixedLarge: fixed_std = std::sqrt(current_beta); break;
      case VarianceType::Learned:
      case VarianceType::LearnedRange: break;
    }
  }
  const float min_log = std::log(variance);
  const float max_log = std::log(current_beta);
  for (int b = 0; b < shape.batch; ++b) {
    const float* predicted_variance = model_sample(shape, model_output, b) + per_sample;
    const int64_t base = static_cast<int64_t>(b) * per_sample;
    for (int64_t i = 0; i < per_sample; ++i) {
      const int64_t k = base + i;
      float value = x0_coeff * x0[k] + xt_coeff * x[k];
      if (add_noise_here) {
        float std_dev = fixed_std;
        if (variance_type == VarianceType::Learned) {
          std_dev = std::sqrt(predicted_variance[i]);
        } else if (variance_type == VarianceType::LearnedRange) {
          // Improved DDPM (Nichol & Dhariwal 2021): interpolate log σ² between β̃_t and β_t.
          const float frac = (predicted_variance[i] + 1.0f) / 2.0f;
          const float log_variance = frac * max_log + (1.0f - frac) * min_log;
          std_dev = std::exp(0.5f * log_variance);
        }
        value = value + std_dev * noise[k];
      }
      x_prev[k] = value;
    }
  }
  return Status();
}

Status ddim_step(const Schedule& schedule, int64_t t, int64_t prev_t, float eta, bool use_clipped_model_output,
                 const StepShape& shape, const float* x, const float* model_output, const float* noise, float* x_prev,
                 float* pred_x0) {
  DDPM_TRY(shape.validate());
  DDPM_TRY(check_timestep(schedule, t, prev_t));
  if (!(eta >= 0.0f) || !std::isfinite(eta)) return errorf("eta %g must be a finite number >= 0", static_cast<double>(eta));
  const bool add_noise_here = eta > 0.0f;
  if (add_noise_here && noise == nullptr) return errorf("ddim step with eta %g needs noise", static_cast<double>(eta));

  const float ab_t = schedule.alphas_cumprod[static_cast<size_t>(t)];
  const float ab_prev =
      prev_t >= 0 ? schedule.alphas_cumprod[static_cast<size_t>(prev_t)] : schedule.final_alpha_cumprod;
  const float beta_t = 1.0f - ab_t;
  const float sqrt_ab_t = std::sqrt(ab_t);
  const float sqrt_beta_t = std::sqrt(beta_t);
  // σ_t = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'}) (Song et al. eq. 16).
  const float std_dev = eta * std::sqrt(ddim_variance(schedule, t, prev_t));
  const float direction_sq = 1.0f - ab_prev - std_dev * std_dev;
  const float direction_coeff = std::sqrt(std::max(direction_sq, 0.0f));
  const float sqrt_ab_prev = std::sqrt(ab_prev);

  const int64_t per_sample = shape.per_sample();
  const int64_t n = shape.numel();
  const PredictionType prediction = schedule.config.prediction_type;
  // ε̂ is needed after clipping, from the unclipped x̂0 (unless use_clipped_model_output), so keep both.
  std::vector<float> eps(static_cast<size_t>(n));
  std::vector<float> scratch;
  float* x0 = pred_x0;
  if (x0 == nullptr) {
    scratch.resize(static_cast<size_t>(n));
    x0 = scratch.data();
  }
  for (int b = 0; b < shape.batch; ++b) {
    const float* out = model_sample(shape, model_output, b);
    const int64_t base = static_cast<int64_t>(b) * per_sample;
    for (int64_t i = 0; i < per_sample; ++i) {
      const int64_t k = base + i;
      switch (prediction) {
        case PredictionType::Epsilon:
          x0[k] = (x[k] - sqrt_beta_t * out[i]) / sqrt_ab_t;
          eps[static_cast<size_t>(k)] = out[i];
          break;
        case PredictionType::Sample:
          x0[k] = out[i];
          eps[static_cast<size_t>(k)] = (x[k] - sqrt_ab_t * x0[k]) / sqrt_beta_t;
          break;
        case PredictionType::VPrediction:
          x0[k] = sqrt_ab_t * x[k] - sqrt_beta_t * out[i];
          eps[static_cast<size_t>(k)] = sqrt_ab_t * out[i] + sqrt_beta_t * x[k];
          break;
      }
    }
  }
  clip_or_threshold(schedule, shape, x0);
  for (int64_t k = 0; k < n; ++k) {
    float e = eps[static_cast<size_t>(k)];
    if (use_clipped_model_output) e = (x[k] - sqrt_ab_t * x0[k]) / sqrt_beta_t;
    const float direction = direction_coeff * e;
    float value = sqrt_ab_prev * x0[k] + direction;
    if (add_noise_here) value = value + std_dev * noise[k];
    x_prev[k] = value;
  }
  return Status();
}

namespace {

Status check_per_sample_timesteps(const Schedule& schedule, const int64_t* timesteps, int batch, int64_t per_sample,
                                  const char* what) {
  if (batch < 1 || per_sample < 1)
    return errorf("%s: batch %d and per-sample size %lld must be positive", what, batch,
                  static_cast<long long>(per_sample));
  for (int b = 0; b < batch; ++b) {
    if (timesteps[b] < 0 || timesteps[b] >= schedule.num_train_timesteps())
      return errorf("%s: timestep %lld of sample %d is outside 0..%d", what, static_cast<long long>(timesteps[b]), b,
                    schedule.num_train_timesteps() - 1);
  }
  return Status();
}

}  // namespace

Status add_noise(const Schedule& schedule, const int64_t* timesteps, int batch, int64_t per_sample, const float* x0,
                 const float* noise, float* x_t) {
  DDPM_TRY(check_per_sample_timesteps(schedule, timesteps, batch, per_sample, "add_noise"));
  for (int b = 0; b < batch; ++b) {
    const float ab = schedule.alphas_cumprod[static_cast<size_t>(timesteps[b])];
    const float sqrt_ab = std::sqrt(ab);
    const float sqrt_one_minus_ab = std::sqrt(1.0f - ab);
    const int64_t base = static_cast<int64_t>(b) * per_sample;
    for (int64_t i = base; i < base + per_sample; ++i) x_t[i] = sqrt_ab * x0[i] + sqrt_one_minus_ab * noise[i];
  }
  return Status();
}

Status get_velocity(const Schedule& schedule, const int64_t* timesteps, int batch, int64_t per_sample,
                    const float* x0, const float* noise, float* v) {
  DDPM_TRY(check_per_sample_timesteps(schedule, timesteps, batch, per_sample, "get_velocity"));
  for (int b = 0; b < batch; ++b) {
    const float ab = schedule.alphas_cumprod[static_cast<size_t>(timesteps[b])];
    const float sqrt_ab = std::sqrt(ab);
    const float sqrt_one_minus_ab = std::sqrt(1.0f - ab);
    const int64_t base = static_cast<int64_t>(b) * per_sample;
    for (int64_t i = base; i < base + per_sample; ++i) v[i] = sqrt_ab * noise[i] - sqrt_one_minus_ab * x0[i];
  }
  return Status();
}

// ---------------------------------------------------------------------------------------------------------------
// Sampling loop

const char* to_string(SamplerKind kind) { return kind == SamplerKind::DDPM ? "ddpm" : "ddim"; }

Status parse_sampler_kind(const std::string& text, SamplerKind* out) {
  if (text == "ddpm") {
    *out = SamplerKind::DDPM;
  } else if (text == "ddim") {
    *out = SamplerKind::DDIM;
  } else {
    return errorf("sampler \"%s\" is not supported (accepted: ddpm, ddim)", text.c_str());
  }
  return Status();
}

// DDPM's 1000 means "every training timestep", so a shorter schedule gets all of its own.
int pipeline_default_steps(SamplerKind kind, int num_train_timesteps) {
  return kind == SamplerKind::DDPM ? std::min(1000, num_train_timesteps) : 50;
}

namespace {

int default_steps(const SamplerSpec& spec, const Schedule& schedule) {
  return spec.steps != 0 ? spec.steps : pipeline_default_steps(spec.sampler, schedule.num_train_timesteps());
}

Status check_spec(const SamplerSpec& spec, const Schedule& schedule) {
  if (spec.steps < 0) return errorf("steps %d must be positive (or 0 for the default)", spec.steps);
  if (spec.sampler == SamplerKind::DDPM) {
    if (spec.eta != 0.0f) return errorf("eta applies to the DDIM sampler only (got %g with ddpm)",
                                        static_cast<double>(spec.eta));
    if (spec.use_clipped_model_output) return errorf("use_clipped_model_output applies to the DDIM sampler only");
  } else {
    if (!(spec.eta >= 0.0f) || !std::isfinite(spec.eta))
      return errorf("eta %g must be a finite number >= 0", static_cast<double>(spec.eta));
    if (schedule.config.trained_betas.empty() && schedule.config.beta_schedule == BetaSchedule::Sigmoid)
      return errorf("beta_schedule sigmoid is DDPM-only (diffusers' DDIMScheduler rejects it)");
  }
  return Status();
}

}  // namespace

Status sampler_timesteps(const SamplerSpec& spec, const Schedule& schedule, std::vector<int64_t>* out,
                         std::string* warning) {
  DDPM_TRY(check_spec(spec, schedule));
  const TimestepSpacing spacing = spec.spacing ? *spec.spacing : schedule.config.timestep_spacing;
  return compute_timesteps(schedule.config, default_steps(spec, schedule), spacing, out, warning);
}

Status sample(const SamplerSpec& spec, const Schedule& schedule, int batch, int C, int H, int W, NoiseSource& noise,
              const DenoiseFn& model, float* x_out, ProgressFn progress) {
  if (H < 1 || W < 1 || static_cast<int64_t>(H) > std::numeric_limits<int64_t>::max() / W)
    return errorf("sample: image size %dx%d is invalid", H, W);
  StepShape shape;
  shape.batch = batch;
  shape.channels = C;
  shape.spatial = static_cast<int64_t>(H) * W;
  shape.out_channels = spec.out_channels;
  DDPM_TRY(shape.validate());
  if (!model) return errorf("sample: no model function");
  std::vector<int64_t> timesteps;
  DDPM_TRY(sampler_timesteps(spec, schedule, &timesteps, nullptr));
  const int num_steps = static_cast<int>(timesteps.size());

  const int64_t per_sample = shape.per_sample();
  float* x = x_out;
  DDPM_TRY(noise.normal(x, batch, per_sample).with_context("drawing x_T"));
  std::vector<float> model_output(static_cast<size_t>(shape.model_numel()));
  std::vector<float> step_noise;
  for (int i = 0; i < num_steps; ++i) {
    const int64_t t = timesteps[static_cast<size_t>(i)];
    Status status = model(x, t, model_output.data());
    if (!status.ok()) return status.with_context("model at timestep " + std::to_string(t));
    const float* z = nullptr;
    // diffusers draws the step's noise after the model call; the model itself consumes no RNG.
    const bool needs_noise =
        spec.sampler == SamplerKind::DDPM ? ddpm_step_uses_noise(t) : spec.eta > 0.0f;
    if (needs_noise) {
      step_noise.resize(static_cast<size_t>(shape.numel()));
      DDPM_TRY(noise.normal(step_noise.data(), batch, per_sample).with_context("drawing step noise"));
      z = step_noise.data();
    }
    if (spec.sampler == SamplerKind::DDPM) {
      const int64_t prev = ddpm_previous_timestep(timesteps, static_cast<size_t>(i));
      DDPM_TRY(ddpm_step(schedule, t, prev, shape, x, model_output.data(), z, x));
    } else {
      const int64_t prev = ddim_previous_timestep(schedule.config, num_steps, t);
      DDPM_TRY(ddim_step(schedule, t, prev, spec.eta, spec.use_clipped_model_output, shape, x, model_output.data(), z,
                         x));
    }
    if (progress) DDPM_TRY(progress(i, num_steps, t));
  }
  return Status();
}

}  // namespace ddpm
