// The optimiser side of a training step, over the flat buffers of params.h: global gradient-norm clipping, AdamW
// with decoupled weight decay and bias correction (Loshchilov & Hutter 2019, in PyTorch's formulation), the
// learning-rate schedule, and the EMA of the weights.
//
// Every pass splits the buffer into the layout's fixed pieces. Updates are elementwise, and the one reduction (the
// gradient norm) sums each piece in double and then the pieces in buffer order, so the result is the same for
// any thread count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/threadpool.h"
#include "train/params.h"

namespace ddpm {

enum class LrSchedule { Constant, Cosine };
const char* to_string(LrSchedule schedule);
Status parse_lr_schedule(const std::string& text, LrSchedule* out);

struct LrConfig {
  double peak = 2e-4;
  int64_t warmup = 0;  // steps of linear warm-up from peak/warmup to peak
  LrSchedule schedule = LrSchedule::Constant;
  int64_t total_steps = 1;  // cosine: decays from peak at the end of warm-up to min_ratio·peak at total_steps
  double min_ratio = 0.0;
};

// Learning rate of step `step` (0-based: the first update is step 0).
double learning_rate(const LrConfig& config, int64_t step);

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  // Decoupled decay w ← w·(1 − lr·λ), applied to weight matrices and kernels (rank ≥ 2) only: biases and
  // normalisation scales are not pulled toward zero.
  double weight_decay = 0.0;
};

// Gradients of one step: per parameter, its gradient (numel floats) or null when the loss does not reach it.
using GradientList = std::vector<const float*>;

// √(Σ g²) over every gradient, in double.
double gradient_norm(ThreadPool& pool, const ParamLayout& layout, const GradientList& grads);

// PyTorch's clip_grad_norm_ factor: max_norm / (norm + 1e-6) when that is below 1, else 1 (max_norm ≤ 0: off).
float clip_factor(double norm, double max_norm);

// One AdamW update, step t (1-based, for the bias correction), with every gradient multiplied by grad_scale:
//   m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
//   w ← w·(1 − lr·λ) − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
void adamw_update(ThreadPool& pool, const ParamLayout& layout, const GradientList& grads, float grad_scale, double lr,
                  int64_t t, const AdamWConfig& config, float* weights, float* m, float* v);

// EMA decay after `updates` optimiser steps with diffusers' EMAModel warm-up: min(max_decay, (1 + u)/(10 + u)),
// so early averages are not dominated by the random initialisation.
double ema_decay(double max_decay, int64_t updates);
// ema ← decay·ema + (1 − decay)·w.
void ema_update(ThreadPool& pool, const ParamLayout& layout, double decay, const float* weights, float* ema);

}  // namespace ddpm
