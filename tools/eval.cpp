// `ddpm eval`: the held-out denoising loss of a model file (see src/train/evaluate.h), to compare a trained model's
// f32, f16 and quantised files on equal terms, or check a model on new data.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "ddpm/threadpool.h"
#include "model/model.h"
#include "tools/options.h"
#include "tools/subcommands.h"
#include "train/dataset.h"
#include "train/evaluate.h"

namespace ddpm::tools {

int run_eval(int argc, char** argv) {
  CommonSettings common;
  std::string int8_winograd = "auto";
  std::string model_path, data_path, labels_path, resize = "auto";
  long long count = 1000, batch = 50, seed = 0;
  std::vector<Option> options;
  add_common_options(&options, &common);
  add_int8_winograd_option(&options, &int8_winograd);
  options.push_back({"model", 'm', "FILE", "model file (.ddpm)", text(&model_path)});
  options.push_back({"data", 0, "PATH", "IDX images (raw or .gz) or a folder of PNGs (class sub-folders)", text(&data_path)});
  options.push_back({"labels", 0, "FILE", "IDX labels for --data (IDX only)", text(&labels_path)});
  options.push_back({"resize", 0, "MODE", "fit images to the model as train does: auto|area|bilinear|off (default auto)",
                     text(&resize)});
  options.push_back({"count", 'n', "N", "samples, the first N of the data (default 1000)",
                     [&](const std::string& v) { return parse_int("--count", v, 1, 1ll << 40, &count); }});
  options.push_back({"batch", 'b', "N", "samples per forward pass (default 50)",
                     [&](const std::string& v) { return parse_int("--batch", v, 1, 4096, &batch); }});
  options.push_back({"seed", 0, "N", "seed of the timestep and noise draw (default 0)",
                     [&](const std::string& v) { return parse_int("--seed", v, 0, (1ll << 62), &seed); }});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout, "ddpm eval -m MODEL.ddpm --data PATH [--labels FILE] [-n 1000]", options);
    return 0;
  }
  if (s.ok() && !positional.empty()) s = errorf("unexpected argument '%s' (see --help)", positional[0].c_str());
  if (s.ok() && model_path.empty()) s = errorf("missing -m MODEL.ddpm");
  if (s.ok() && data_path.empty()) s = errorf("missing --data PATH");
  if (s.ok()) s = apply_common_settings(common);
  ResizeMode resize_mode = ResizeMode::Auto;
  if (s.ok()) s = parse_resize_mode(resize, &resize_mode).with_context("--resize");
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm eval: %s\n", s.message().c_str());
    return 2;
  }
  std::unique_ptr<Model> model;
  s = Model::load(model_path, &model);
  if (s.ok()) apply_int8_winograd(int8_winograd, model.get());
  Dataset data;
  if (s.ok()) {
    ImageFit fit;
    fit.channels = static_cast<int>(model->info().channels);
    fit.height = static_cast<int>(model->info().height);
    fit.width = static_cast<int>(model->info().width);
    fit.resize = resize_mode;
    s = load_image_dataset(data_path, labels_path, fit, &data);
  }
  // What the loss is of, when it is not simply "these images under their labels": each choice made for the user.
  if (s.ok() && !data.adapted.empty()) {
    std::fprintf(stderr, "note: %s: %s to fit %s (--resize %s)\n", data_path.c_str(), data.adapted.c_str(),
                 model_path.c_str(), to_string(resize_mode));
  }
  const bool conditional = s.ok() && model->info().unet.has_class_table();
  if (s.ok() && !conditional && !labels_path.empty()) {
    std::fprintf(stderr, "note: --labels ignored: %s is unconditional\n", model_path.c_str());
  }
  if (conditional && !data.labelled() && model->info().null_class) {
    std::fprintf(stderr, "note: %s has no labels: every image is scored under the null class %d (unconditional); "
                         "--labels FILE or class sub-folders give each image its class\n",
                 data_path.c_str(), static_cast<int>(*model->info().null_class));
  }
  EvalResult result;
  const auto start = std::chrono::steady_clock::now();
  if (s.ok() && count > data.count) {
    std::fprintf(stderr, "note: -n %lld: %s has %lld images; all of them are used\n", count, data_path.c_str(),
                 (long long)data.count);
  }
  if (s.ok()) {
    ThreadPool pool(common.threads);
    EvalOptions o;
    o.count = count;
    o.batch = batch;
    o.seed = static_cast<uint64_t>(seed);
    s = evaluate_denoising_loss(*model, data, o, pool, &result);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm eval: %s\n", s.message().c_str());
    return 1;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // One sample has no spread to estimate a standard error from.
  char spread[32] = "";
  if (result.samples > 1) std::snprintf(spread, sizeof spread, " ± %.5f", result.loss_stderr);
  std::printf("%s: loss %.5f%s (%s objective, %lld samples of %s, seed %lld; %.1f s)\n", model_path.c_str(),
              result.loss, spread, to_string(model->info().scheduler.prediction_type),
              (long long)result.samples, data_path.c_str(), seed, seconds);
  return 0;
}

}  // namespace ddpm::tools
