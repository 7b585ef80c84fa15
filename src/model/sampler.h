// DDPM and DDIM steps exactly as diffusers computes them, and the sampling loop of its pipelines.
//
// A step is a free function over float arrays holding one whole batch (NCHW, batch·C·H·W values). The noise a
// step needs is an input filled by the caller, so the arithmetic never touches a generator and the RNG order is
// decided in one place (sample()). Scalars (√ᾱ_t and friends) are float32 and formed in torch's order, so a step
// reproduces diffusers' float32 result to the bit where torch's own kernels are plain IEEE arithmetic.
//
// Notation: ᾱ_t = alphas_cumprod[t], β̄_t = 1 − ᾱ_t, x̂0 the predicted clean sample, ε̂ the predicted noise,
// t' the previous (less noisy) timestep.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "core/rng.h"
#include "ddpm/status.h"
#include "model/schedule.h"

namespace ddpm {

// Shape of the arrays one step works on. The model output has out_channels channels: C, or 2C when the model
// also predicts its variance (learned / learned_range), the variance being the last C channels of each sample.
struct StepShape {
  int batch = 1;
  int channels = 1;      // C of x
  int64_t spatial = 1;   // H·W
  int out_channels = 0;  // 0 means "same as channels"

  int model_channels() const { return out_channels == 0 ? channels : out_channels; }
  int64_t per_sample() const { return static_cast<int64_t>(channels) * spatial; }
  int64_t numel() const { return static_cast<int64_t>(batch) * per_sample(); }
  int64_t model_numel() const { return static_cast<int64_t>(batch) * model_channels() * spatial; }
  Status validate() const;
};

// DDPM posterior variance σ² = max((β̄_{t'}/β̄_t)·(1 − ᾱ_t/ᾱ_{t'}), 1e−20) (diffusers' _get_variance for
// fixed_small), with ᾱ_{t'} = 1 when t' < 0.
float ddpm_variance(const Schedule& schedule, int64_t t, int64_t prev_t);

// DDIM σ² = (β̄_{t'}/β̄_t)·(1 − ᾱ_t/ᾱ_{t'}) with ᾱ_{t'} = final_alpha_cumprod when t' < 0 (_get_variance).
float ddim_variance(const Schedule& schedule, int64_t t, int64_t prev_t);

// Whether ddpm_step at timestep t consumes noise: diffusers adds (and draws) it only when t > 0.
inline bool ddpm_step_uses_noise(int64_t t) { return t > 0; }

// One DDPMScheduler.step from t to prev_t (pass the next entry of the timesteps, −1 after the last; or t − 1 when
// driving all T timesteps). noise: batch·C·H·W standard normals, read only if t > 0 (may be null otherwise).
// pred_x0 (optional, batch·C·H·W) receives x̂0 after clipping/thresholding. x_prev may alias x.
Status ddpm_step(const Schedule& schedule, int64_t t, int64_t prev_t, const StepShape& shape, const float* x,
                 const float* model_output, const float* noise, float* x_prev, float* pred_x0 = nullptr);

// One DDIMScheduler.step from t to prev_t = t − ⌊T/N⌋ (ddim_previous_timestep). noise is read only if eta > 0
// (diffusers draws it then on every step, t = 0 included). A model output with 2C channels is accepted and its
// variance half ignored (diffusers' DDIM would fail on the shape). The direction term √(1 − ᾱ_{t'} − σ_t²) is
// clamped at 0 where torch would return NaN (rounding with η = 1, or η > 1). x_prev may alias x.
Status ddim_step(const Schedule& schedule, int64_t t, int64_t prev_t, float eta, bool use_clipped_model_output,
                 const StepShape& shape, const float* x, const float* model_output, const float* noise, float* x_prev,
                 float* pred_x0 = nullptr);

// diffusers' _threshold_sample (Saharia et al. 2022) in place, per sample of per_sample values:
// s = quantile(|x̂0|, ratio) with torch's linear interpolation, s = clamp(s, 1, max_value), x̂0 = clamp(x̂0, −s, s)/s.
void dynamic_threshold(float* x0, int batch, int64_t per_sample, float ratio, float max_value);

// Clamp to [−range, range] (NaN stays NaN, as in torch.clamp).
void clip_sample(float* x0, int64_t n, float range);

// Forward process for training: x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε, with one timestep per sample.
Status add_noise(const Schedule& schedule, const int64_t* timesteps, int batch, int64_t per_sample, const float* x0,
                 const float* noise, float* x_t);

// v-prediction target (Salimans & Ho 2022): v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0, with one timestep per sample.
Status get_velocity(const Schedule& schedule, const int64_t* timesteps, int batch, int64_t per_sample,
                    const float* x0, const float* noise, float* v);

// ---------------------------------------------------------------------------------------------------------------
// The sampling loop

enum class SamplerKind { DDPM, DDIM };
const char* to_string(SamplerKind kind);
Status parse_sampler_kind(const std::string& text, SamplerKind* out);
// The pipelines' default step count: DDPM every training timestep (at most 1000, diffusers' default), DDIM 50.
int pipeline_default_steps(SamplerKind kind, int num_train_timesteps);

struct SamplerSpec {
  SamplerKind sampler = SamplerKind::DDPM;
  int steps = 0;   // 0: the pipeline's default, 1000 for DDPM and 50 for DDIM
  float eta = 0.0f;  // DDIM only; ≥ 0
  std::optional<TimestepSpacing> spacing;  // overrides the config's timestep_spacing
  bool use_clipped_model_output = false;   // DDIM only
  int out_channels = 0;  // channels the model writes: 0 = C, or 2C for a learned variance (DDPM)
};

// Runs the model on the whole batch at one timestep: x is batch·C·H·W, model_output batch·out_channels·H·W.
// Classifier-free guidance, class labels and the like live inside this function.
using DenoiseFn = std::function<Status(const float* x, int64_t timestep, float* model_output)>;

// Called after each step (step_index from 0, of num_steps, at timestep t). A failed Status stops sampling and is
// returned (that is how a caller cancels). May be empty.
using ProgressFn = std::function<Status(int step_index, int num_steps, int64_t timestep)>;

// The timesteps sample() will visit for this spec, and the warning compute_timesteps may give (see there).
Status sampler_timesteps(const SamplerSpec& spec, const Schedule& schedule, std::vector<int64_t>* out,
                         std::string* warning);

// DDPMPipeline / DDIMPipeline: x_T from one draw of shape (batch, C, H, W), then for each t: model, step. The RNG
// order is diffusers': DDPM draws one (batch, C, H, W) tensor per step with t > 0, DDIM one per step (every
// step) only if eta > 0. x_out receives the final x_0 (batch·C·H·W, in model space, not yet scaled to [0, 1]).
Status sample(const SamplerSpec& spec, const Schedule& schedule, int batch, int C, int H, int W, NoiseSource& noise,
              const DenoiseFn& model, float* x_out, ProgressFn progress = nullptr);

}  // namespace ddpm
