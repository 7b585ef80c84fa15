// Held-out denoising loss of a trained model file: the objective the trainer minimises, measured on data the model
// never saw, with the same (timestep, noise) draw for every model so that files (f32, f16, each quantised type) can
// be compared number against number.
#pragma once

#include <cstdint>

#include "ddpm/status.h"
#include "ddpm/threadpool.h"
#include "model/model.h"
#include "train/dataset.h"

namespace ddpm {

struct EvalOptions {
  int64_t count = 1000;  // the first `count` samples of the data set (all when larger)
  uint64_t seed = 0;     // timesteps and noise; the same seed gives the same draw for every model
  int64_t batch = 50;
};

struct EvalResult {
  int64_t samples = 0;
  double loss = 0.0;       // mean squared error of the model's prediction against its target, over every value
  double loss_stderr = 0;  // standard error of that mean over the samples (per-sample losses vary a lot with t)
};

// Conditional models see each sample's label; unlabelled data on a class-conditional model uses the null class.
Status evaluate_denoising_loss(const Model& model, const Dataset& data, const EvalOptions& options, ThreadPool& pool,
                               EvalResult* out);

}  // namespace ddpm
