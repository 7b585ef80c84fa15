// Trainer tests: the optimiser pieces against hand-computed values, data loading and its errors, determinism
// (thread counts, resume from a checkpoint), and the toy experiment — a small MLP trained on a 1-D two-mode mixture
// must give samples (DDPM-1000 and DDIM-50) that recover both modes.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "io/png.h"
#include "model/ddpm_file.h"
#include "model/model.h"
#include "train/dataset.h"
#include "train/optim.h"
#include "train/plot.h"
#include "train/trainer.h"

using namespace ddpm;

namespace {

struct ModeStats {
  double mean[2] = {0, 0}, std[2] = {0, 0}, weight[2] = {0, 0};
};

// Splits samples at 0 into the left and right mode.
ModeStats mode_stats(const std::vector<float>& x) {
  ModeStats s;
  double sum[2] = {0, 0}, sq[2] = {0, 0}, n[2] = {0, 0};
  for (float v : x) {
    const int m = v < 0 ? 0 : 1;
    sum[m] += v;
    sq[m] += static_cast<double>(v) * v;
    n[m] += 1;
  }
  for (int m = 0; m < 2; ++m) {
    s.mean[m] = n[m] ? sum[m] / n[m] : 0;
    s.std[m] = n[m] > 1 ? std::sqrt(std::max(0.0, sq[m] / n[m] - s.mean[m] * s.mean[m])) : 0;
    s.weight[m] = n[m] / static_cast<double>(x.size());
  }
  return s;
}

void check_modes(const char* what, const std::vector<float>& x) {
  const ModeStats s = mode_stats(x);
  std::printf("%s: left mode mean %.3f std %.3f weight %.3f; right mode mean %.3f std %.3f weight %.3f\n", what,
              s.mean[0], s.std[0], s.weight[0], s.mean[1], s.std[1], s.weight[1]);
  INFO(what);
  CHECK(std::fabs(s.mean[0] + 2.0) <= 0.15);
  CHECK(std::fabs(s.mean[1] - 2.0) <= 0.15);
  for (int m = 0; m < 2; ++m) {
    CHECK(s.weight[m] >= 0.4);
    CHECK(s.weight[m] <= 0.6);
    CHECK(std::fabs(s.std[m] - 0.5) <= 0.25 * 0.5);
  }
}

}  // namespace

TEST_CASE("toy experiment: an MLP learns a 1-D two-mode mixture; DDPM and DDIM sampling recover both modes",
          "[train][toy]") {
  NetSpec net;
  SchedulerConfig scheduler;
  REQUIRE(net_preset("toy-mlp", &net, &scheduler).ok());
  REQUIRE(scheduler.num_train_timesteps == 1000);
  Dataset data;
  make_mixture_1d(800, 7, &data);
  TrainOptions o;
  o.steps = 2000;
  o.batch = 128;
  o.lr = 2e-3;
  o.warmup = 100;
  o.lr_schedule = LrSchedule::Cosine;
  o.ema = 0.995;
  o.cond_drop = 0;
  o.seed = 1;
  std::unique_ptr<Trainer> trainer;
  Status s = Trainer::create(net, scheduler, o, data, &trainer);
  INFO(s.message());
  REQUIRE(s.ok());
  ThreadPool pool(1);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < o.steps; ++i) REQUIRE(trainer->step(pool).ok());
  const double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::vector<double> smooth = smooth_losses(trainer->losses(), 0.99);
  std::printf("toy: %lld steps in %.2f s, smoothed loss %.4f\n", (long long)o.steps, train_s, smooth.back());

  SampleRequest request;
  request.count = 1000;
  request.max_batch = 1000;
  request.seed = 11;
  request.sampler.sampler = SamplerKind::DDPM;
  request.sampler.steps = 1000;
  std::vector<float> x;
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(trainer->sample(pool, request, &x).ok());
  std::printf("toy: DDPM-1000 sampling %.2f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  check_modes("DDPM 1000 steps", x);
  request.sampler.sampler = SamplerKind::DDIM;
  request.sampler.steps = 50;
  REQUIRE(trainer->sample(pool, request, &x).ok());
  check_modes("DDIM 50 steps", x);
}
