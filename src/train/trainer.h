// The training loop: one graph built once (forward + MSE + backward at a fixed batch) and run every step, AdamW on
// f32 master weights, the EMA that gets exported, checkpoints that resume bit-exactly.
//
// One step s (0-based), batch B, T training timesteps:
//   samples     global examples s·B … s·B + B − 1 in the order of a per-epoch permutation of the training split
//   x0          the samples in [−1, 1], mirrored left-right on a coin flip with --hflip
//   labels      the samples' classes, each replaced by the null class with probability cond_drop
//   t           uniform in {0 … T−1};  ε ~ N(0, I);  x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε
//   target      ε (epsilon), v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0 (v_prediction) or x0 (sample)
//   loss        mean((net(x_t, t, labels) − target)²); backward; clip the global gradient norm; AdamW; EMA
// Every draw is a pure function of (seed, step) (train/params.h), so the state after step s is fully described by
// the buffers (weights, EMA, AdamW moments) and s: that is all a checkpoint holds, and a resumed run continues the
// very same trajectory. Results are also the same for any thread count.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ddpm/threadpool.h"
#include "model/schedule.h"
#include "train/dataset.h"
#include "train/net.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/sampling.h"

namespace ddpm {

// Validation draws its timesteps and noise from a fixed key, like the split: values of different runs compare, and
// `ddpm eval --seed` with this key on the validation samples reproduces the trainer's figure.
constexpr uint64_t kValidationSeed = 0x5EED5EED;

// Everything that decides the trajectory (stored in checkpoints and compared on resume).
struct TrainOptions {
  int64_t steps = 1000;  // total optimiser steps of the run (the cosine schedule spans them)
  int64_t batch = 64;
  double lr = 2e-4;
  int64_t warmup = 500;
  LrSchedule lr_schedule = LrSchedule::Constant;
  double min_lr_ratio = 0.0;  // cosine floor as a fraction of lr
  AdamWConfig adamw;
  double grad_clip = 1.0;  // max global gradient norm; ≤ 0 disables clipping
  double ema = 0.999;      // maximum EMA decay
  PredictionType prediction = PredictionType::Epsilon;
  double cond_drop = 0.1;  // probability of training a sample with the null class
  bool hflip = false;
  uint64_t seed = 0;
  int64_t validation = 0;  // held-out samples (0: none)

  Status validate() const;
  JsonValue to_json() const;
  static Status from_json(const JsonValue& json, TrainOptions* out);
};

struct StepStats {
  float loss = 0;
  double grad_norm = 0;  // before clipping
  double lr = 0;
};

struct ExportOptions {
  float default_guidance_scale = 1.0f;  // stored for `ddpm generate` (models with a null class)
};

class Trainer {
 public:
  // Checks that the data fits the network (sample shape; labels and class table: K classes need K rows, or K + 1
  // with the null class, which cond_drop > 0 requires), splits off the validation samples, initialises the
  // weights from the seed and builds the training graph. `data` must outlive the trainer.
  static Status create(const NetSpec& net, const SchedulerConfig& scheduler, const TrainOptions& options,
                       const Dataset& data, std::unique_ptr<Trainer>* out);

  // One optimisation step (see the top of this file). Fails, leaving the weights untouched, if the loss or the
  // gradient is not finite.
  Status step(ThreadPool& pool, StepStats* stats = nullptr);
  // Mean loss of the EMA weights over the held-out samples, with timesteps and noise fixed for the whole run so
  // successive values compare. Fails when the run has no validation samples.
  Status validation_loss(ThreadPool& pool, double* loss);

  // Atomic (temporary file + rename): weights, EMA, AdamW moments, step, losses and the setup that decides the
  // trajectory; the data order and every random draw follow from (seed, step).
  Status save_checkpoint(const std::string& path) const;
  // Restores a checkpoint saved by a trainer created with the same network, scheduler, options (the step count may
  // grow unless the schedule is cosine) and data; any difference is an error naming it.
  Status load_checkpoint(const std::string& path);
  // The network, scheduler and options a checkpoint was saved with (to resume without restating them).
  static Status read_checkpoint_setup(const std::string& path, NetSpec* net, SchedulerConfig* scheduler,
                                      TrainOptions* options);
  // What a checkpoint holds for export_model() (EMA weights, history, class names), without its training data:
  // no training graph and no optimiser state, so such a trainer exports, and nothing else (step(), validation,
  // sampling and saving are for trainers made by create()).
  static Status open_for_export(const std::string& checkpoint, std::unique_ptr<Trainer>* out);

  // The EMA weights as a model file: a .ddpm that `ddpm generate` runs (U-Nets), with class names, the null
  // class, the default guidance scale, the scheduler config with the trained prediction type, and provenance
  // including training.* keys (steps, batch, lr, final losses, wall time, …).
  Status export_model(const std::string& path, const ExportOptions& options) const;

  // Images from the EMA weights (see sampling.h).
  Status sample(ThreadPool& pool, const SampleRequest& request, std::vector<float>* out);

  int64_t step_count() const { return step_; }
  const NetSpec& net() const { return net_; }
  const Schedule& schedule() const { return schedule_; }
  const TrainOptions& options() const { return options_; }
  const Dataset& data() const { return data_; }
  const DataSplit& split() const { return split_; }
  const ParamLayout& layout() const { return layout_; }
  const std::vector<float>& weights() const { return weights_; }
  const std::vector<float>& ema() const { return ema_; }
  const std::vector<float>& adam_m() const { return m_; }
  const std::vector<float>& adam_v() const { return v_; }
  const std::vector<float>& losses() const { return losses_; }  // one per step
  // The model file's training.final_loss: the mean of the last kFinalLossSteps step losses (fewer in a shorter run;
  // 0 before the first step). A mean over a window, so one noisy batch does not decide it.
  static constexpr size_t kFinalLossSteps = 100;
  double final_loss() const;
  const std::vector<std::pair<int64_t, float>>& validation_history() const { return validation_; }
  // Names of the data's classes (exported with the model); a checkpoint restores those of its run.
  const std::vector<std::string>& class_names() const { return class_names_; }
  Status set_class_names(std::vector<std::string> names);
  // The null class index, when the class table has one.
  std::optional<int32_t> null_class() const;
  double wall_seconds() const { return wall_seconds_; }
  size_t training_arena_bytes() const { return graph_.planned_arena_bytes(); }

 private:
  explicit Trainer(const Dataset& data) : data_(data) {}
  Trainer() : data_(checkpoint_data_) {}  // open_for_export's
  bool export_only() const { return &data_ == &checkpoint_data_; }
  void fill_batch(int64_t step);
  const std::vector<uint32_t>& epoch_order(uint64_t epoch);
  LrConfig lr_config() const;

  Dataset checkpoint_data_;  // open_for_export: the data's count, source and class names, no samples
  const Dataset& data_;
  NetSpec net_;
  Schedule schedule_;
  TrainOptions options_;
  DataSplit split_;
  std::vector<std::string> class_names_;
  ParamLayout layout_;
  std::vector<float> weights_, ema_, m_, v_;

  // The training graph, built once.
  Graph graph_;
  UNetGraphParts io_;
  Tensor* target_ = nullptr;
  Tensor* loss_ = nullptr;
  std::vector<Tensor*> grads_;  // per parameter (null: the loss does not reach it)

  // Validation graph over the EMA weights (built on first use).
  std::unique_ptr<Graph> val_graph_;
  UNetGraphParts val_io_;
  Tensor* val_target_ = nullptr;
  Tensor* val_loss_ = nullptr;

  std::unique_ptr<ForwardNet> sampler_net_;

  int64_t step_ = 0;
  std::vector<float> losses_;
  std::vector<std::pair<int64_t, float>> validation_;
  double wall_seconds_ = 0;
  uint64_t order_epoch_ = ~uint64_t{0};
  std::vector<uint32_t> order_;
  std::vector<float> x0_, noise_;  // [B, C, H, W] scratch
  std::vector<int64_t> timesteps_;
};

}  // namespace ddpm
