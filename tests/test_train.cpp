// Trainer tests: the optimiser pieces against hand-computed values, data loading and its errors, determinism
// (thread counts, resume from a checkpoint), and the toy experiment — a small MLP trained on a 1-D two-mode mixture
// must give samples (DDPM-1000 and DDIM-50) that recover both modes.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "io/png.h"
#include "model/ddpm_file.h"
#include "model/model.h"
#include "model/pipeline.h"
#include "train/dataset.h"
#include "train/optim.h"
#include "train/plot.h"
#include "train/evaluate.h"
#include "train/trainer.h"
#include "test_util.h"

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

// A fresh directory under /tmp, removed with its contents when the test ends.
struct TempDir {
  std::string path;
  TempDir() {
    char pattern[] = "/tmp/ddpm_train_XXXXXX";
    REQUIRE(mkdtemp(pattern));
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  operator const std::string&() const { return path; }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// A two-level class-conditional U-Net on 8×8 gray images (attention at 4×4), small enough to train in milliseconds.
NetSpec tiny_unet() {
  NetSpec n;
  n.kind = NetKind::UNet2D;
  UNetConfig& c = n.unet;
  c.sample_size = {8};
  c.in_channels = c.out_channels = 1;
  c.block_out_channels = {8, 16};
  c.layers_per_block = 1;
  c.down_block_types = {"DownBlock2D", "AttnDownBlock2D"};
  c.up_block_types = {"AttnUpBlock2D", "UpBlock2D"};
  c.attention_head_dim = 8;
  c.norm_num_groups = 4;
  c.num_class_embeds = 3;  // classes "a", "b" and the null class
  n.channels = 1;
  n.height = n.width = 8;
  return n;
}

// 12 labelled 8×8 images: class 0 a horizontal ramp, class 1 a vertical one, each with its own offset.
Dataset tiny_images() {
  Dataset d;
  d.source = "tiny";
  d.count = 12;
  d.channels = 1;
  d.height = d.width = 8;
  d.class_names = {"a", "b"};
  for (int i = 0; i < 12; ++i) {
    d.labels.push_back(i % 2);
    for (int y = 0; y < 8; ++y) {
      for (int x = 0; x < 8; ++x) d.pixels.push_back(static_cast<uint8_t>(((i % 2 ? y : x) * 30 + i * 7) % 256));
    }
  }
  return d;
}

TrainOptions tiny_options() {
  TrainOptions o;
  o.steps = 6;
  o.batch = 4;
  o.lr = 1e-3;
  o.warmup = 2;
  o.hflip = true;
  o.cond_drop = 0.5;
  o.prediction = PredictionType::VPrediction;
  o.adamw.weight_decay = 0.01;
  o.validation = 4;
  o.seed = 3;
  return o;
}

std::unique_ptr<Trainer> make_trainer(const NetSpec& net, const TrainOptions& o, const Dataset& data) {
  std::unique_ptr<Trainer> t;
  Status s = Trainer::create(net, SchedulerConfig(), o, data, &t);
  INFO(s.message());
  REQUIRE(s.ok());
  return t;
}

void run_steps(Trainer& t, ThreadPool& pool, int64_t until) {
  Status s;
  while (s.ok() && t.step_count() < until) s = t.step(pool);
  INFO(s.message());
  REQUIRE(s.ok());
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
  ThreadPool pool(1);  // a 64-wide MLP's ops are too small to be worth splitting over threads
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < o.steps && s.ok(); ++i) s = trainer->step(pool);
  REQUIRE(s.ok());
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

// ---------------------------------------------------------------------------------------------------------------
// Optimiser pieces

TEST_CASE("AdamW matches PyTorch's formula step by step; decay only on matrices; clipping and norms", "[train]") {
  ParamLayout layout({{"w", {2, 2}}, {"b", {2}}, {"unused", {3}}});
  std::vector<float> w = {0.5f, -0.25f, 1.0f, 2.0f, 0.1f, -0.1f, 7.0f, 7.0f, 7.0f};
  std::vector<float> m(w.size(), 0.0f), v(w.size(), 0.0f);
  std::vector<double> rw(w.begin(), w.end()), rm(w.size(), 0.0), rv(w.size(), 0.0);
  AdamWConfig c;
  c.weight_decay = 0.1;
  const double lr = 0.01;
  ThreadPool pool(2);
  const std::vector<std::vector<float>> steps = {{0.3f, -0.2f, 0.0f, 1.5f, -0.7f, 0.05f}, {0.1f, 0.4f, -2.0f, 0.5f, 0.2f, -0.3f}};
  for (size_t t = 0; t < steps.size(); ++t) {
    const std::vector<float>& g = steps[t];
    GradientList grads = {g.data(), g.data() + 4, nullptr};
    const float scale = 0.5f;
    adamw_update(pool, layout, grads, scale, lr, static_cast<int64_t>(t + 1), c, w.data(), m.data(), v.data());
    // torch.optim.AdamW: p *= 1 − lr·λ; m, v moments; p −= lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)
    for (size_t i = 0; i < rw.size(); ++i) {
      const double gi = i < 6 ? scale * g[i] : 0.0;
      const double decay = i < 4 ? 1 - lr * c.weight_decay : 1.0;
      rm[i] = c.beta1 * rm[i] + (1 - c.beta1) * gi;
      rv[i] = c.beta2 * rv[i] + (1 - c.beta2) * gi * gi;
      const double c1 = 1 - std::pow(c.beta1, t + 1.0), c2 = 1 - std::pow(c.beta2, t + 1.0);
      rw[i] = rw[i] * decay - lr / c1 * rm[i] / (std::sqrt(rv[i]) / std::sqrt(c2) + c.eps);
    }
    for (size_t i = 0; i < rw.size(); ++i) CHECK(w[i] == Approx(rw[i]).epsilon(1e-6).margin(1e-7));
  }
  CHECK(w[6] == 7.0f);  // no gradient, no decay (rank 1): untouched

  const std::vector<float> g = {3.0f, 0.0f, 0.0f, 4.0f, 0.0f, 0.0f};
  const double norm = gradient_norm(pool, layout, {g.data(), g.data() + 4, nullptr});
  CHECK(norm == 5.0);
  CHECK(clip_factor(norm, 1.0) == Approx(1.0 / (5.0 + 1e-6)));
  CHECK(clip_factor(norm, 10.0) == 1.0f);
  CHECK(clip_factor(norm, 0.0) == 1.0f);
}

TEST_CASE("learning-rate warm-up, constant and cosine schedules; EMA warm-up; EMA update", "[train]") {
  LrConfig c;
  c.peak = 1.0;
  c.warmup = 10;
  CHECK(learning_rate(c, 0) == Approx(0.1));
  CHECK(learning_rate(c, 9) == Approx(1.0));
  CHECK(learning_rate(c, 500) == 1.0);
  c.schedule = LrSchedule::Cosine;
  c.total_steps = 110;
  CHECK(learning_rate(c, 10) == Approx(1.0));
  CHECK(learning_rate(c, 60) == Approx(0.5));
  CHECK(learning_rate(c, 110) == Approx(0.0).margin(1e-12));
  c.min_ratio = 0.1;
  CHECK(learning_rate(c, 110) == Approx(0.1));
  CHECK(learning_rate(c, 1000) == Approx(0.1));
  CHECK(ema_decay(0.999, 0) == Approx(0.1));
  CHECK(ema_decay(0.999, 90) == Approx(0.91));
  CHECK(ema_decay(0.999, 1000000) == 0.999);
  ParamLayout layout({{"x", {2}}});
  std::vector<float> ema = {1.0f, 2.0f}, w = {3.0f, 4.0f};
  ThreadPool pool(1);
  ema_update(pool, layout, 0.75, w.data(), ema.data());
  CHECK(ema[0] == 1.5f);
  CHECK(ema[1] == 2.5f);
}

TEST_CASE("initialisation follows PyTorch's layer defaults; Philox permutations and the validation split", "[train]") {
  std::vector<ParamSpec> specs;
  REQUIRE(tiny_unet().parameter_specs(&specs).ok());
  ParamLayout layout(specs);
  std::vector<float> w(static_cast<size_t>(layout.total()));
  init_parameters(layout, 5, w.data());
  auto param = [&](const std::string& name) {
    const int i = layout.find(name);
    REQUIRE(i >= 0);
    return std::vector<float>(w.begin() + layout.offset(i), w.begin() + layout.offset(i) + layout.numel(i));
  };
  for (float x : param("down_blocks.0.resnets.0.norm1.weight")) CHECK(x == 1.0f);
  for (float x : param("down_blocks.0.resnets.0.norm1.bias")) CHECK(x == 0.0f);
  const float bound = 1.0f / std::sqrt(8.0f * 9.0f);  // conv1 of level 0: fan-in 8·3·3
  double largest = 0;
  for (float x : param("down_blocks.0.resnets.0.conv1.weight")) largest = std::max(largest, std::fabs(double(x)));
  for (float x : param("down_blocks.0.resnets.0.conv1.bias")) largest = std::max(largest, std::fabs(double(x)));
  CHECK(largest <= bound);
  CHECK(largest > 0.8 * bound);
  double sq = 0;
  for (float x : param("class_embedding.weight")) sq += double(x) * x;
  CHECK(sq / param("class_embedding.weight").size() > 0.4);  // N(0, 1), not U(±1/√fan_in)

  const std::vector<uint32_t> p = philox_permutation(9, train_stream(TrainStream::Order, 2), 1000);
  std::vector<uint32_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t i = 0; i < 1000; ++i) REQUIRE(sorted[i] == i);
  CHECK(p != philox_permutation(9, train_stream(TrainStream::Order, 3), 1000));
  DataSplit a, b;
  REQUIRE(split_dataset(100, 10, &a).ok());
  REQUIRE(split_dataset(100, 10, &b).ok());
  CHECK(a.validation == b.validation);
  CHECK(a.validation.size() == 10);
  CHECK(a.train.size() == 90);
  std::vector<uint32_t> all = a.train;
  all.insert(all.end(), a.validation.begin(), a.validation.end());
  std::sort(all.begin(), all.end());
  for (uint32_t i = 0; i < 100; ++i) REQUIRE(all[i] == i);
  CHECK(!split_dataset(10, 10, &a).ok());
}

// ---------------------------------------------------------------------------------------------------------------
// Data

TEST_CASE("PNG folders: class sub-folders become labels; resize, crop and channel conversion", "[train][data]") {
  ImageFit fit;
  fit.channels = 1;
  fit.height = fit.width = 8;
  Dataset d;
  Status s = load_image_dataset("data/train/png", "", fit, &d);
  INFO(s.message());
  REQUIRE(s.ok());
  REQUIRE(d.count == 3);
  CHECK(d.class_names == std::vector<std::string>{"boot", "shirt"});
  CHECK(d.labels == std::vector<int32_t>{0, 0, 1});
  for (int i = 0; i < 64; ++i) CHECK(d.pixels[i] == 4 * i);        // boot/a.png: 8x8 gray, unchanged
  for (int i = 0; i < 64; ++i) CHECK(d.pixels[64 + i] == 124);     // boot/b.png: RGB (200,100,50) → BT.601 luma
  for (int x = 0; x < 8; ++x) CHECK(d.pixels[128 + 8 * 3 + x] == (x < 4 ? 0 : 255));  // shirt/c.png 16x8: middle
  float sample[64];
  d.sample(0, true, sample);  // mirrored: row 0 reads 28, 24, …, 0
  CHECK(sample[0] == Approx(28 * 2.0 / 255 - 1));
  CHECK(sample[7] == -1.0f);

  // Area shrinking averages 2×2 blocks exactly: 4·(16Y + 2X + 4.5).
  fit.height = fit.width = 4;
  fit.resize = ResizeMode::Area;
  REQUIRE(load_png_folder("data/train/png", fit, &d).ok());
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) CHECK(d.pixels[y * 4 + x] == 64 * y + 8 * x + 18);
  }
  // RGB output replicates gray; bilinear enlarging keeps a flat image flat.
  fit.channels = 3;
  fit.height = fit.width = 12;
  fit.resize = ResizeMode::Auto;
  REQUIRE(load_png_folder("data/train/png", fit, &d).ok());
  CHECK(d.pixels[0] == 0);
  for (int i = 0; i < 3 * 144; ++i) CHECK(d.pixels[3 * 144 + i] == (i < 144 ? 200 : i < 288 ? 100 : 50));
}

TEST_CASE("data errors: mixed sizes without resizing, label counts, missing files, ambiguous folders", "[train][data]") {
  ImageFit fit;
  fit.channels = 1;
  fit.height = fit.width = 6;
  Dataset d;
  fit.resize = ResizeMode::Off;
  Status s = load_image_dataset("data/train/mixed", "", fit, &d);
  INFO(s.message());
  CHECK(contains(s.message(), "sizes differ and resizing is off"));
  INFO(s.message());
  CHECK(contains(s.message(), "mixed/b.png"));
  fit.resize = ResizeMode::Auto;
  REQUIRE(load_image_dataset("data/train/mixed", "", fit, &d).ok());
  CHECK(!d.labelled());
  for (int i = 0; i < 36; ++i) CHECK(d.pixels[36 + i] == 20);
  fit.height = fit.width = 8;
  fit.resize = ResizeMode::Off;
  s = load_image_dataset("data/train/images.idx", "", fit, &d);  // 4x4 cannot be cropped to 8x8
  INFO(s.message());
  CHECK(contains(s.message(), "smaller than the model's 8x8"));
  s = load_image_dataset("data/train/both", "", fit, &d);
  INFO(s.message());
  CHECK(contains(s.message(), "both PNG files"));
  s = load_image_dataset("data/train/png", "data/train/labels5.idx", fit, &d);
  INFO(s.message());
  CHECK(contains(s.message(), "sub-folder names"));

  fit.height = fit.width = 4;
  REQUIRE(load_image_dataset("data/train/images.idx.gz", "data/train/labels5.idx", fit, &d).ok());
  CHECK(d.count == 5);
  CHECK(d.class_names == std::vector<std::string>{"0", "1", "2"});
  CHECK(d.labels == std::vector<int32_t>{0, 2, 1, 2, 0});
  CHECK(d.pixels[16 * 3 + 5] == (17 * 3 + 5) % 256);
  Dataset raw;
  REQUIRE(load_image_dataset("data/train/images.idx", "", fit, &raw).ok());
  CHECK(raw.pixels == d.pixels);
  CHECK(!raw.labelled());
  s = load_image_dataset("data/train/images.idx", "data/train/labels4.idx", fit, &d);
  INFO(s.message());
  CHECK(contains(s.message(), "holds 4 labels but data/train/images.idx holds 5 images"));
  s = load_image_dataset("data/train/no-such-file.idx", "", fit, &d);
  INFO(s.message());
  CHECK(contains(s.message(), "no-such-file.idx"));
  s = load_image_dataset("data/train/images.idx", "data/train/missing-labels.idx", fit, &d);
  INFO(s.message());
  CHECK(contains(s.message(), "missing-labels.idx"));
}

TEST_CASE("network/data mismatches are errors that say what to change", "[train][data]") {
  NetSpec net = tiny_unet();
  Dataset data = tiny_images();
  std::unique_ptr<Trainer> t;
  NetSpec groups = net;
  groups.unet.norm_num_groups = 3;
  Status s = Trainer::create(groups, SchedulerConfig(), tiny_options(), data, &t);
  INFO(s.message());
  CHECK(contains(s.message(), "does not divide into norm_num_groups 3"));
  NetSpec rgb = net;
  rgb.unet.in_channels = rgb.unet.out_channels = 3;
  rgb.channels = 3;
  s = Trainer::create(rgb, SchedulerConfig(), tiny_options(), data, &t);
  INFO(s.message());
  CHECK(contains(s.message(), "samples are [1, 8, 8] but the network takes [3, 8, 8]"));
  NetSpec no_null = net;
  no_null.unet.num_class_embeds = 2;
  s = Trainer::create(no_null, SchedulerConfig(), tiny_options(), data, &t);
  INFO(s.message());
  CHECK(contains(s.message(), "--cond-drop needs a null class"));
  Dataset unlabelled = data;
  unlabelled.labels.clear();
  unlabelled.class_names.clear();
  s = Trainer::create(net, SchedulerConfig(), tiny_options(), unlabelled, &t);
  INFO(s.message());
  CHECK(contains(s.message(), "has no labels"));
}

// ---------------------------------------------------------------------------------------------------------------
// Determinism and checkpoints

TEST_CASE("training is bit-identical for 1 and 3 threads", "[train]") {
  const Dataset data = tiny_images();
  TrainOptions o = tiny_options();
  o.steps = 3;
  std::vector<float> weights[2], ema[2];
  double val[2];
  for (int k = 0; k < 2; ++k) {
    ThreadPool pool(k == 0 ? 1 : 3);
    std::unique_ptr<Trainer> t = make_trainer(tiny_unet(), o, data);
    run_steps(*t, pool, o.steps);
    REQUIRE(t->validation_loss(pool, &val[k]).ok());
    weights[k] = t->weights();
    ema[k] = t->ema();
  }
  CHECK(same_bits(weights[0], weights[1]));
  CHECK(same_bits(ema[0], ema[1]));
  CHECK(val[0] == val[1]);
}

TEST_CASE("a run resumed from a checkpoint ends with exactly the weights of an uninterrupted run", "[train]") {
  const TempDir temp;
  const std::string& dir = temp;
  const std::string checkpoint = dir + "/run.ckpt";
  const TrainOptions o = tiny_options();
  ThreadPool pool(2);
  const Dataset data = tiny_images();
  std::unique_ptr<Trainer> straight = make_trainer(tiny_unet(), o, data);
  run_steps(*straight, pool, 3);
  double val = 0, val_again = 0;
  REQUIRE(straight->validation_loss(pool, &val).ok());
  REQUIRE(straight->validation_loss(pool, &val_again).ok());
  CHECK(val == val_again);  // fixed validation draws
  run_steps(*straight, pool, o.steps);
  {
    std::unique_ptr<Trainer> first = make_trainer(tiny_unet(), o, data);
    run_steps(*first, pool, 3);
    REQUIRE(first->validation_loss(pool, &val).ok());
    REQUIRE(first->validation_loss(pool, &val).ok());
    Status s = first->save_checkpoint(checkpoint);
    INFO(s.message());
    REQUIRE(s.ok());
  }
  // As a new process would: fresh data, fresh trainer, the checkpoint.
  const Dataset reloaded = tiny_images();
  std::unique_ptr<Trainer> resumed = make_trainer(tiny_unet(), o, reloaded);
  Status s = resumed->load_checkpoint(checkpoint);
  INFO(s.message());
  REQUIRE(s.ok());
  CHECK(resumed->step_count() == 3);
  run_steps(*resumed, pool, o.steps);
  CHECK(same_bits(resumed->weights(), straight->weights()));
  CHECK(same_bits(resumed->ema(), straight->ema()));
  CHECK(same_bits(resumed->adam_m(), straight->adam_m()));
  CHECK(same_bits(resumed->adam_v(), straight->adam_v()));
  CHECK(same_bits(resumed->losses(), straight->losses()));
  CHECK(resumed->validation_history() == straight->validation_history());
  CHECK(access((checkpoint + ".tmp." + std::to_string(getpid())).c_str(), F_OK) != 0);

  // A constant schedule may run longer than planned; a checkpoint of another setup is refused, naming the change.
  TrainOptions longer = o;
  longer.steps = 20;
  CHECK(make_trainer(tiny_unet(), longer, data)->load_checkpoint(checkpoint).ok());
  NetSpec wider = tiny_unet();
  wider.unet.block_out_channels = {8, 32};
  s = make_trainer(wider, o, data)->load_checkpoint(checkpoint);
  INFO(s.message());
  CHECK(contains(s.message(), "different architecture"));
  INFO(s.message());
  CHECK(contains(s.message(), "block_out_channels is [8,16] there, [8,32] here"));
  TrainOptions other = o;
  other.lr = 5e-4;
  s = make_trainer(tiny_unet(), other, data)->load_checkpoint(checkpoint);
  INFO(s.message());
  CHECK(contains(s.message(), "lr is 0.001 there, 5e-04 here"));
  TrainOptions cosine = o;
  cosine.lr_schedule = LrSchedule::Cosine;
  s = make_trainer(tiny_unet(), cosine, data)->load_checkpoint(checkpoint);
  INFO(s.message());
  CHECK(contains(s.message(), "lr_schedule"));
  Dataset changed = tiny_images();
  changed.pixels[5] ^= 1;
  s = make_trainer(tiny_unet(), o, changed)->load_checkpoint(checkpoint);
  INFO(s.message());
  CHECK(contains(s.message(), "other data"));
  s = make_trainer(tiny_unet(), o, data)->load_checkpoint("data/train/images.idx");
  CHECK(!s.ok());

  // Export from the checkpoint alone (train --export-only without --data): what a trainer that loads it holds.
  std::unique_ptr<Trainer> exporter;
  s = Trainer::open_for_export(checkpoint, &exporter);
  INFO(s.message());
  REQUIRE(s.ok());
  std::unique_ptr<Trainer> loaded = make_trainer(tiny_unet(), o, data);
  REQUIRE(loaded->load_checkpoint(checkpoint).ok());
  CHECK(exporter->step_count() == 3);
  CHECK(same_bits(exporter->ema(), loaded->ema()));
  CHECK(same_bits(exporter->losses(), loaded->losses()));
  CHECK(exporter->validation_history() == loaded->validation_history());
  CHECK(exporter->class_names() == loaded->class_names());
  CHECK(exporter->null_class() == loaded->null_class());
  CHECK(exporter->split().train.size() == loaded->split().train.size());
  // Cut short anywhere, or not a checkpoint: a message naming the file, never a crash.
  std::ifstream in(checkpoint, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 1000);
  for (size_t cut : {size_t{0}, size_t{7}, size_t{64}, size_t{200}, bytes.size() / 3, bytes.size() / 2,
                     bytes.size() - 4, bytes.size() - 1}) {
    const std::string path = dir + "/cut.ckpt";
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(cut));
    std::unique_ptr<Trainer> broken;
    s = Trainer::open_for_export(path, &broken);
    INFO("cut at " << cut << ": " << s.message());
    CHECK(!s.ok());
    CHECK(contains(s.message(), "cut.ckpt"));
  }
  CHECK(!Trainer::open_for_export("data/train/images.idx", &exporter).ok());
}

TEST_CASE("export: a .ddpm that the sampling pipeline runs, with classes, guidance, schedule and training provenance",
          "[train]") {
  const TempDir temp;
  const std::string& dir = temp;
  const Dataset data = tiny_images();
  const TrainOptions o = tiny_options();
  ThreadPool pool(2);
  std::unique_ptr<Trainer> t = make_trainer(tiny_unet(), o, data);
  // --class-names that `generate --class` could not tell apart, or could not reach, are refused.
  CHECK(t->set_class_names({"a", ""}).message() == "class 1 has an empty name");
  CHECK(t->set_class_names({"a", "a"}).message() == "classes 0 and 1 are both named 'a'");
  CHECK(t->set_class_names({"uncond", "b"}).message() == "'uncond' names the null class, not class 0");
  CHECK(t->set_class_names({"1", "0"}).message() == "class 0 is named '1', a number other than its own id");
  CHECK(t->set_class_names({"0", "b"}).ok());  // its own id: no ambiguity
  REQUIRE(t->set_class_names({"a", "b"}).ok());
  run_steps(*t, pool, 2);
  double val = 0;
  REQUIRE(t->validation_loss(pool, &val).ok());
  ExportOptions e;
  e.default_guidance_scale = 3.0f;
  const std::string path = dir + "/tiny.ddpm";
  Status s = t->export_model(path, e);
  INFO(s.message());
  REQUIRE(s.ok());
  std::unique_ptr<Model> model;
  s = Model::load(path, &model);
  INFO(s.message());
  REQUIRE(s.ok());
  const ModelInfo& info = model->info();
  CHECK(info.class_names == std::vector<std::string>{"a", "b"});
  REQUIRE(info.null_class);
  CHECK(*info.null_class == 2);
  CHECK(info.default_guidance_scale == 3.0f);
  CHECK(info.scheduler.prediction_type == PredictionType::VPrediction);
  CHECK(info.height == 8);
  const DdpmMetadata& m = model->file().metadata();
  uint64_t steps = 0;
  float final_loss = 0, final_val = 0;
  double wall = 0;
  std::string weights;
  CHECK(m.get_u64("training.steps", &steps).ok());
  CHECK(steps == 2);
  CHECK(m.get_f32("training.final_loss", &final_loss).ok());
  CHECK(final_loss == Approx((t->losses()[0] + t->losses()[1]) / 2.0));
  CHECK(m.get_f32("training.final_validation_loss", &final_val).ok());
  CHECK(final_val == static_cast<float>(val));
  CHECK(m.get_f64("training.wall_seconds", &wall).ok());
  CHECK(wall > 0);
  CHECK(m.get_string("training.weights", &weights).ok());
  CHECK(weights == "ema");
  const DdpmTensorInfo* conv = model->file().find("conv_in.weight");
  REQUIRE(conv);
  const int i = t->layout().find("conv_in.weight");
  CHECK(std::memcmp(conv->data, t->ema().data() + t->layout().offset(i), conv->bytes) == 0);

  // The trainer's sampler and `ddpm generate`'s pipeline draw the same images from the same seed and batch.
  SampleRequest r;
  r.sampler.sampler = SamplerKind::DDIM;
  r.sampler.steps = 3;
  r.count = 3;
  r.labels = {0, 1, 1};
  r.null_class = 2;
  r.guidance_scale = 3.0f;
  r.seed = 5;
  r.max_batch = 2;
  std::vector<float> mine, theirs;
  REQUIRE(t->sample(pool, r, &mine).ok());
  GenerateOptions g;
  g.count = 3;
  g.batch = 2;
  g.sampler = r.sampler;
  g.seed = 5;
  g.classes = r.labels;
  g.guidance_scale = 3.0f;
  REQUIRE(generate_images(*model, g, pool, &theirs).ok());
  CHECK(same_bits(mine, theirs));

  // `ddpm eval` on the validation samples with the trainer's validation key measures what the trainer measured
  // (it sums per sample in double, the trainer per batch in float: equal to float rounding).
  Dataset held_out;
  held_out.source = "held-out";
  held_out.channels = data.channels;
  held_out.height = data.height;
  held_out.width = data.width;
  held_out.class_names = data.class_names;
  for (uint32_t index : t->split().validation) {
    const size_t numel = static_cast<size_t>(data.sample_numel());
    held_out.pixels.insert(held_out.pixels.end(), data.pixels.begin() + index * numel,
                           data.pixels.begin() + (index + 1) * numel);
    held_out.labels.push_back(data.labels[index]);
    ++held_out.count;
  }
  EvalOptions eo;
  eo.seed = kValidationSeed;
  eo.batch = o.batch;
  eo.count = held_out.count;
  EvalResult result;
  s = evaluate_denoising_loss(*model, held_out, eo, pool, &result);
  INFO(s.message());
  REQUIRE(s.ok());
  CHECK(result.samples == 4);
  CHECK(result.loss == Approx(val).epsilon(1e-5));
  // Another batch size (a padded last batch) changes nothing but rounding.
  eo.batch = 3;
  EvalResult rebatched;
  REQUIRE(evaluate_denoising_loss(*model, held_out, eo, pool, &rebatched).ok());
  CHECK(rebatched.loss == Approx(result.loss).epsilon(1e-6));

  // Class folders are matched to the model's classes by name, whatever their order: the same images under the same
  // names, listed in reverse, score the same bits. A name the model lacks, and an id past its table, are errors.
  Dataset reversed = held_out;
  std::reverse(reversed.class_names.begin(), reversed.class_names.end());
  const int32_t last = static_cast<int32_t>(held_out.class_names.size()) - 1;
  for (int32_t& label : reversed.labels) label = last - label;
  EvalResult same;
  eo.batch = o.batch;
  REQUIRE(evaluate_denoising_loss(*model, reversed, eo, pool, &same).ok());
  CHECK(same.loss == result.loss);
  Dataset renamed = held_out;
  renamed.class_names[0] = "no-such-class";
  s = evaluate_denoising_loss(*model, renamed, eo, pool, &same);
  CHECK(s.message().find("held-out: class 'no-such-class' is none of the model's classes") == 0);
  renamed.class_names[0] = "17";
  s = evaluate_denoising_loss(*model, renamed, eo, pool, &same);
  CHECK(s.message() == "held-out: class 17 is not one of the model's 2 classes (ids 0..1)");
  renamed.class_names[0] = "2";  // the null class's id: no data's label
  s = evaluate_denoising_loss(*model, renamed, eo, pool, &same);
  CHECK(s.message() == "held-out: class 2 is not one of the model's 2 classes (ids 0..1)");
  // No folder names a class (a model trained with --class-names on them): their sorted order, as before.
  renamed.class_names = {"x", "y"};
  REQUIRE(evaluate_denoising_loss(*model, renamed, eo, pool, &same).ok());
  CHECK(same.loss == result.loss);
}

TEST_CASE("loss curve: axes, ticks, curves on a log scale, written as PNG", "[train]") {
  std::vector<float> losses;
  for (int i = 0; i < 300; ++i) losses.push_back(static_cast<float>(1.0 / (1 + i * 0.05) + 0.02 * ((i * 7) % 5)));
  const std::vector<std::pair<int64_t, float>> validation = {{100, 0.3f}, {200, 0.2f}, {300, 0.15f}};
  const Canvas c = plot_losses(losses, validation, 640, 400);
  auto pixel = [&](int x, int y) {
    const uint8_t* p = c.pixels().data() + (static_cast<size_t>(y) * c.width() + x) * 3;
    return (uint32_t(p[0]) << 16) | (uint32_t(p[1]) << 8) | p[2];
  };
  CHECK(pixel(0, 399) == 0xFFFFFF);
  CHECK(pixel(64, 200) == 0x202020);  // y axis
  int curve = 0, text = 0;
  for (int y = 36; y < 360; ++y) {
    for (int x = 65; x < 624; ++x) curve += pixel(x, y) == 0x1F4E9A;
  }
  for (int y = 360; y < 400; ++y) {
    for (int x = 0; x < 640; ++x) text += pixel(x, y) == 0x202020;
  }
  CHECK(curve > 300);  // the smoothed curve crosses the plot
  CHECK(text > 50);    // step tick labels
  CHECK(Canvas::text_width("0.5") == 17);
  const TempDir temp;
  const std::string path = temp.path + "/loss.png";
  REQUIRE(write_loss_curve(path, losses, validation).ok());
  Image image;
  REQUIRE(read_png(path, &image).ok());
  CHECK(image.width == 800);
  CHECK(image.channels == 3);
}

// ---------------------------------------------------------------------------------------------------------------
// The `ddpm train` command (needs DDPM_BIN, as test_cli.cpp)

namespace {

struct CliResult {
  int exit_code = -1;
  std::string output;
};

CliResult run_cli(const std::string& args) {
  const std::string command = std::string(std::getenv("DDPM_BIN")) + " " + args + " 2>&1";
  CliResult r;
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe);
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) r.output.append(buffer, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

void check_cli_error(const CliResult& r, int code, const std::string& needle) {
  INFO(r.output);
  CHECK(r.exit_code == code);
  CHECK(contains(r.output, needle));
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
}

bool file_exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// The optimiser state of a checkpoint: every tensor's bytes and the step.
std::string checkpoint_state(const std::string& path) {
  DdpmFile file;
  Status s = DdpmFile::open(path, &file);
  INFO(s.message());
  REQUIRE(s.ok());
  int64_t step = -1;
  REQUIRE(file.metadata().get_i64("train.step", &step).ok());
  std::string state = "step " + std::to_string(step) + "\n";
  for (const DdpmTensorInfo& t : file.tensors()) {
    state += t.name + ":";
    state.append(static_cast<const char*>(t.data), t.bytes);
  }
  return state;
}

const char* kTinyConfig = R"({"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
  "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8, "norm_num_groups": GROUPS,
  "num_class_embeds": 3})";

std::string write_config(const std::string& path, int groups) {
  std::string text = kTinyConfig;
  text.replace(text.find("GROUPS"), 6, std::to_string(groups));
  std::ofstream(path) << text;
  return path;
}

}  // namespace

TEST_CASE("ddpm train: killed at any moment and resumed, the run ends with the uninterrupted run's state",
          "[train][cli]") {
  if (!std::getenv("DDPM_BIN")) {
    WARN("DDPM_BIN is not set: skipped");
    return;
  }
  const TempDir temp;
  const std::string& dir = temp;
  const std::string common = "--preset toy-mlp --steps 1000 --batch 32 --lr 2e-3 --warmup 20 -t 1 --checkpoint-every 25";
  CliResult straight = run_cli("train " + common + " -o " + dir + "/a.ddpm");
  INFO(straight.output);
  REQUIRE(straight.exit_code == 0);

  // The same run, killed (SIGKILL: no chance to clean up) some time after its first checkpoint, then resumed.
  const std::string killed_out = dir + "/b.ddpm", checkpoint = dir + "/b.ckpt";
  const pid_t pid = test::spawn_ddpm("train " + common + " -o " + killed_out, "/dev/null");
  REQUIRE(pid >= 0);
  for (int i = 0; i < 20000 && !file_exists(checkpoint); ++i) std::this_thread::sleep_for(std::chrono::microseconds(500));
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  const bool was_killed = WIFSIGNALED(status);
  std::printf("ddpm train killed by SIGKILL: %s; checkpoint %s\n", was_killed ? "yes" : "no (it had finished)",
              file_exists(checkpoint) ? "present" : "absent");
  REQUIRE(file_exists(checkpoint));
  CHECK(!file_exists(killed_out));  // the model is written at the end only
  CliResult resumed = run_cli("train --resume " + checkpoint + " --steps 1000 -t 1 --checkpoint-every 25 -o " + killed_out);
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK(contains(resumed.output, "resumed"));
  CHECK(checkpoint_state(checkpoint) == checkpoint_state(dir + "/a.ckpt"));
  DdpmFile a, b;
  REQUIRE(DdpmFile::open(dir + "/a.ddpm", &a).ok());
  REQUIRE(DdpmFile::open(killed_out, &b).ok());
  REQUIRE(a.tensors().size() == b.tensors().size());
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    CHECK(std::memcmp(a.tensors()[i].data, b.tensors()[i].data, a.tensors()[i].bytes) == 0);
  }
  CHECK(file_exists(dir + "/a-loss.png"));
}

TEST_CASE("ddpm train: bad flags, bad data and a checkpoint of another architecture give one-line errors",
          "[train][cli]") {
  if (!std::getenv("DDPM_BIN")) {
    WARN("DDPM_BIN is not set: skipped");
    return;
  }
  const TempDir temp;
  const std::string& dir = temp;
  check_cli_error(run_cli("train --preset toy-mlp"), 2, "missing -o/--out");
  check_cli_error(run_cli("train --preset nope -o " + dir + "/x.ddpm"), 2, "unknown preset 'nope'");
  check_cli_error(run_cli("train --preset toy-mlp --steps 0 -o " + dir + "/x.ddpm"), 2, "--steps: 0 is outside");
  check_cli_error(run_cli("train --config " + write_config(dir + "/bad.json", 3) + " --data data/train/png -o " + dir +
                          "/x.ddpm"),
                  2, "does not divide into norm_num_groups 3");
  check_cli_error(run_cli("train --preset fashion-mnist --data data/train/images.idx --labels data/train/labels4.idx -o " +
                          dir + "/x.ddpm"),
                  1, "holds 4 labels but data/train/images.idx holds 5 images");
  check_cli_error(run_cli("train --preset fashion-mnist --data data/train/nothing-here -o " + dir + "/x.ddpm"), 1,
                  "nothing-here");

  const std::string tiny = write_config(dir + "/tiny.json", 4);
  CliResult trained = run_cli("train --config " + tiny + " --data data/train/png --steps 2 --batch 2 --val 1 --val-every 1 "
                              "--sample-every 2 --samples-per-class 1 -t 1 -o " + dir + "/tiny.ddpm");
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  CHECK(contains(trained.output, "validation loss"));
  Image grid;
  REQUIRE(read_png(dir + "/tiny-samples-000002.png", &grid).ok());
  CHECK(grid.width == 2 * 8 * 8 + 2);  // one column per class, 8x8 images shown 8x
  std::unique_ptr<Model> model;
  REQUIRE(Model::load(dir + "/tiny.ddpm", &model).ok());
  CHECK(model->info().class_names == std::vector<std::string>{"boot", "shirt"});

  CliResult evaluated = run_cli("eval -m " + dir + "/tiny.ddpm --data data/train/png -n 3 -b 2 -t 1");
  INFO(evaluated.output);
  CHECK(evaluated.exit_code == 0);
  CHECK(contains(evaluated.output, "epsilon objective, 3 samples of data/train/png"));
  check_cli_error(run_cli("eval -m " + dir + "/tiny.ddpm"), 2, "missing --data PATH");
  check_cli_error(run_cli("eval -m " + dir + "/tiny.ddpm --data data/train/nothing-here"), 1, "nothing-here");
  check_cli_error(run_cli("eval -m " + dir + "/tiny.ddpm --data data/train/png -n 0"), 2, "--count: 0 is outside");
  check_cli_error(run_cli("eval -m " + dir + "/tiny.ddpm --data data/train/png --resize sideways"), 2, "--resize");
  CliResult one = run_cli("eval -m " + dir + "/tiny.ddpm --data data/train/png -n 1 --resize area -t 1");
  CHECK(one.exit_code == 0);
  CHECK(!contains(one.output, "±"));  // no spread from one sample

  // --export-only writes the checkpoint's EMA weights as they stand: here the finished run's, so the same tensors.
  CliResult exported = run_cli("train --resume " + dir + "/tiny.ckpt --export-only --data data/train/png -t 1 -o " + dir +
                               "/exported.ddpm");
  INFO(exported.output);
  REQUIRE(exported.exit_code == 0);
  {
    DdpmFile a, b;
    REQUIRE(DdpmFile::open(dir + "/tiny.ddpm", &a).ok());
    REQUIRE(DdpmFile::open(dir + "/exported.ddpm", &b).ok());
    REQUIRE(a.tensors().size() == b.tensors().size());
    for (size_t i = 0; i < a.tensors().size(); ++i) {
      CHECK(std::memcmp(a.tensors()[i].data, b.tensors()[i].data, a.tensors()[i].bytes) == 0);
    }
  }
  // Without --data: everything the model file holds comes from the checkpoint, the same tensors and metadata (but
  // the creation time).
  CliResult no_data = run_cli("train --resume " + dir + "/tiny.ckpt --export-only -o " + dir + "/exported2.ddpm");
  INFO(no_data.output);
  REQUIRE(no_data.exit_code == 0);
  CHECK(contains(no_data.output, "step 2"));
  {
    DdpmFile a, b;
    REQUIRE(DdpmFile::open(dir + "/exported.ddpm", &a).ok());
    REQUIRE(DdpmFile::open(dir + "/exported2.ddpm", &b).ok());
    REQUIRE(a.tensors().size() == b.tensors().size());
    for (size_t i = 0; i < a.tensors().size(); ++i) {
      CHECK(a.tensors()[i].name == b.tensors()[i].name);
      CHECK(std::memcmp(a.tensors()[i].data, b.tensors()[i].data, a.tensors()[i].bytes) == 0);
    }
    for (const char* key : {"classes.names", "classes.null_index", "scheduler.config", "unet.config", "training.steps",
                            "training.data_samples", "training.final_loss", "training.final_validation_loss",
                            "training.wall_seconds", "provenance.source_file", "training.prediction_type"}) {
      INFO(key);
      const MetadataValue* va = a.metadata().find(key);
      const MetadataValue* vb = b.metadata().find(key);
      REQUIRE((va != nullptr) == (vb != nullptr));
      if (va) CHECK(*va == *vb);
    }
  }
  check_cli_error(run_cli("train --resume " + dir + "/no-such.ckpt --export-only -o " + dir + "/x.ddpm"), 1,
                  "no-such.ckpt");
  check_cli_error(run_cli("train --preset toy-mlp --export-only -o " + dir + "/x.ddpm"), 2,
                  "--export-only needs --resume CHECKPOINT");

  std::string other = kTinyConfig;
  other.replace(other.find("[8, 16]"), 7, "[8, 32]");
  other.replace(other.find("GROUPS"), 6, "4");
  std::ofstream(dir + "/other.json") << other;
  check_cli_error(run_cli("train --resume " + dir + "/tiny.ckpt --config " + dir + "/other.json --data data/train/png -o " +
                          dir + "/y.ddpm"),
                  1, "holds a different architecture (block_out_channels is [8,16] there, [8,32] here)");
  check_cli_error(run_cli("train --resume " + dir + "/tiny.ddpm --data data/train/png -o " + dir + "/y.ddpm"), 1,
                  "is not a training checkpoint");
  check_cli_error(run_cli("train --resume " + dir + "/tiny.ckpt --lr 0.5 --data data/train/png -o " + dir + "/y.ddpm"), 1,
                  "lr is 2e-04 there, 0.5 here");
}
