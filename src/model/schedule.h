// Noise schedules as diffusers' DDPMScheduler / DDIMScheduler build them, to the bit where torch CPU allows.
//
// Notation (Ho et al. 2020, Song et al. 2021): β_t the betas, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s, T the number of
// training timesteps, N the number of inference steps.
//
// Everything a step uses is float32 and formed the way torch forms it: linspace with torch's two-sided formula and
// its 8-wide vector layout, ᾱ as a running product in double rounded to float at every prefix. Timesteps follow
// numpy (linspace, arange with its length rule, round half to even).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

enum class BetaSchedule { Linear, ScaledLinear, SquaredCosCapV2, Sigmoid };
enum class PredictionType { Epsilon, Sample, VPrediction };
// fixed_large_log is not here: diffusers computes its std as √(ln β), which is NaN; parsing rejects it.
enum class VarianceType { FixedSmall, FixedSmallLog, FixedLarge, Learned, LearnedRange };
enum class TimestepSpacing { Leading, Trailing, Linspace };

const char* to_string(BetaSchedule value);
const char* to_string(PredictionType value);
const char* to_string(VarianceType value);
const char* to_string(TimestepSpacing value);

// Parse the diffusers config spellings. Errors name the key, the bad value and every accepted value.
Status parse_beta_schedule(const std::string& text, BetaSchedule* out);
Status parse_prediction_type(const std::string& text, PredictionType* out);
Status parse_variance_type(const std::string& text, VarianceType* out);
Status parse_timestep_spacing(const std::string& text, TimestepSpacing* out);

// The union of DDPMScheduler's and DDIMScheduler's config keys, with diffusers' defaults. Keys that only one
// scheduler reads are marked; the other ignores them.
struct SchedulerConfig {
  int num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  BetaSchedule beta_schedule = BetaSchedule::Linear;
  std::vector<float> trained_betas;  // non-empty: used as the betas, beta_schedule ignored (diffusers' order)
  PredictionType prediction_type = PredictionType::Epsilon;
  VarianceType variance_type = VarianceType::FixedSmall;  // DDPM only
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  TimestepSpacing timestep_spacing = TimestepSpacing::Leading;
  int steps_offset = 0;
  bool set_alpha_to_one = true;  // DDIM only (a DDPM config converted by DDIMPipeline gets this default)
  bool rescale_betas_zero_snr = false;

  // Checks ranges and consistency; says which key is wrong and why.
  Status validate() const;
};

// torch.linspace(start, end, steps) in float32 on the CPU, element for element (start and end rounded to float
// first, step in float, the first half counted from start and the second from end, in 8-wide vector chunks).
std::vector<float> torch_linspace_f32(double start, double end, int64_t steps);

// torch.cumprod over float32: running product in double, each prefix rounded to float.
std::vector<float> torch_cumprod_f32(const std::vector<float>& values);

// diffusers' rescale_zero_terminal_snr: rescales β so that ᾱ_{T−1} = 0 (Lin et al. 2024), in float32.
std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas);

// The tables of one config. Immutable after create(); timesteps are computed separately (compute_timesteps) so
// that one Schedule can serve any number of samplers.
struct Schedule {
  SchedulerConfig config;
  std::vector<float> betas;           // β_t, t = 0 … T−1
  std::vector<float> alphas;          // α_t = 1 − β_t
  std::vector<float> alphas_cumprod;  // ᾱ_t
  float final_alpha_cumprod = 1.0f;   // DDIM's ᾱ for "before t = 0": 1 with set_alpha_to_one, else ᾱ_0

  int num_train_timesteps() const { return config.num_train_timesteps; }

  // Validates the config and builds the tables.
  static Status create(const SchedulerConfig& config, Schedule* out);
};

// Inference timesteps, descending, as diffusers' set_timesteps(N) with the given spacing. N must be in 1..T.
//
// numpy's arange (used by "trailing") computes its length as ceil(T / (T/N)) in double, which for some N
// (T = 1000: N = 61, 103, 121, …) yields N+1 values whose last one becomes −1. diffusers then runs an extra step
// at t = −1 that indexes ᾱ[−1] = ᾱ_{T−1} and wrecks the sample. We drop that entry and say so in *warning (left
// empty otherwise; may be null).
Status compute_timesteps(const SchedulerConfig& config, int num_inference_steps, TimestepSpacing spacing,
                         std::vector<int64_t>* out, std::string* warning);

// diffusers' set_timesteps(timesteps=[…]) for DDPM: strictly descending, first < T, last ≥ 0.
Status check_custom_timesteps(const SchedulerConfig& config, const std::vector<int64_t>& timesteps);

// DDPM's previous_timestep once timesteps are set: the next entry of the list, −1 after the last one.
// (Without set_timesteps, diffusers uses t − 1: just pass t − 1 to ddpm_step.)
int64_t ddpm_previous_timestep(const std::vector<int64_t>& timesteps, size_t index);

// DDIM's previous timestep: t − ⌊T/N⌋ whatever the spacing (so with trailing/linspace it is not the next entry).
int64_t ddim_previous_timestep(const SchedulerConfig& config, int num_inference_steps, int64_t t);

}  // namespace ddpm
