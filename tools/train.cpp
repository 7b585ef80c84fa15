// `ddpm train`: trains a U-Net on IDX or PNG-folder data and exports the EMA weights as .ddpm, with checkpoints that
// resume exactly, validation losses, sample grids and a loss-curve PNG along the way. (Also the tests' toy MLP:
// --preset toy-mlp, unlisted, see net_preset.)
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <set>
#include <sstream>

#include "io/atomic_file.h"
#include "io/json.h"
#include "io/png.h"
#include "model/pipeline.h"
#include "model/scheduler_json.h"
#include "train/plot.h"
#include "train/trainer.h"
#include "tools/options.h"
#include "tools/subcommands.h"

namespace ddpm::tools {
namespace {

volatile std::sig_atomic_t g_stop = 0;  // the signal that asked the run to stop, 0 while none has
void on_signal(int sig) { g_stop = sig; }

// "out/model.ddpm" → "out/model": where the default side outputs go.
std::string stem(const std::string& path) {
  const size_t dot = path.find_last_of('.'), slash = path.find_last_of('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return path;
  return path.substr(0, dot);
}

std::string duration_text(double seconds) {
  char buffer[32];
  const long long s = static_cast<long long>(seconds + 0.5);
  if (s >= 3600) std::snprintf(buffer, sizeof buffer, "%lldh%02lldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buffer, sizeof buffer, "%lldm%02llds", s / 60, s % 60);
  else std::snprintf(buffer, sizeof buffer, "%llds", s);
  return buffer;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) items.push_back(item);
  if (!text.empty() && text.back() == ',') items.push_back("");  // "a,b," names three classes, the last one empty
  return items;
}

struct Settings {
  std::string data, labels, class_names, config, scheduler_config, preset, out, checkpoint, resume, samples, loss_curve;
  std::string resize = "auto", lr_schedule, prediction;
  long long checkpoint_every = 1000, sample_every = 0, val_every = 500, log_every = 50, per_class = 4;
  long long val = -1;  // −1: default
  double guidance = 2.0;
  bool export_only = false;
};

// A sample grid's layout: one column per class (rows = samples per class), or a square of unconditional samples;
// small images are scaled up to about 64 pixels.
struct SampleGrid {
  std::vector<int32_t> labels;  // empty: unconditional
  int count = 0, columns = 0, scale = 1;
};

SampleGrid sample_grid(const Trainer& trainer, const Settings& st) {
  const NetSpec& net = trainer.net();
  SampleGrid grid;
  const int64_t classes = net.class_embeds() > 0 ? static_cast<int64_t>(trainer.class_names().size()) : 0;
  if (classes > 0) {
    for (long long row = 0; row < st.per_class; ++row) {
      for (int64_t k = 0; k < classes; ++k) grid.labels.push_back(static_cast<int32_t>(k));
    }
    grid.count = static_cast<int>(grid.labels.size());
    grid.columns = static_cast<int>(classes);
  } else {
    grid.count = static_cast<int>(st.per_class * st.per_class);
  }
  grid.scale = std::max<int>(1, 64 / static_cast<int>(std::max(net.height, net.width)));
  return grid;
}

// Checked before training: a grid too large for a PNG would otherwise fail at the first --sample-every step.
Status check_sample_grid_size(const Trainer& trainer, const Settings& st) {
  const NetSpec& net = trainer.net();
  const SampleGrid grid = sample_grid(trainer, st);
  int64_t width = 0, height = 0;
  grid_size(grid.count, static_cast<int>(net.height), static_cast<int>(net.width), grid.columns, 2, grid.scale,
            &width, &height);
  if (width > kPngMaxSide || height > kPngMaxSide || width * height > kPngMaxPixels) {
    return errorf("--sample-every: a grid of %d samples would be %lldx%lld pixels, more than a PNG written here may "
                  "have (%d per side); lower --samples-per-class or leave out --sample-every",
                  grid.count, (long long)width, (long long)height, kPngMaxSide);
  }
  return Status();
}

// A sample grid from the EMA weights, DDIM-50, written as PNG with its parameters in a tEXt chunk.
Status write_sample_grid(Trainer& trainer, ThreadPool& pool, const Settings& st, const std::string& path) {
  const NetSpec& net = trainer.net();
  const SampleGrid layout = sample_grid(trainer, st);
  SampleRequest r;
  r.sampler.sampler = SamplerKind::DDIM;
  r.sampler.steps = 50;
  r.seed = trainer.options().seed + 1;  // the same noise at every grid of a run: progress is visible
  r.null_class = trainer.null_class();
  r.guidance_scale = static_cast<float>(st.guidance);
  r.max_batch = 32;
  r.labels = layout.labels;
  r.count = layout.count;
  const int64_t classes = static_cast<int64_t>(layout.labels.empty() ? 0 : layout.columns);
  std::vector<float> images;
  DDPM_TRY(trainer.sample(pool, r, &images));
  const int c = static_cast<int>(net.channels), h = static_cast<int>(net.height), w = static_cast<int>(net.width);
  std::vector<uint8_t> pixels, grid;
  images_to_u8(images.data(), r.count, c, h, w, -1.0f, 1.0f, &pixels);
  int gw = 0, gh = 0;
  make_grid(pixels.data(), r.count, c, h, w, layout.columns, 2, 255, layout.scale, &grid, &gw, &gh);
  std::ostringstream text;
  text << "ddpm.cpp train: step " << trainer.step_count() << ", EMA weights, DDIM 50 steps, seed " << r.seed;
  if (classes > 0) text << ", columns = classes 0.." << classes - 1 << ", cfg " << (r.null_class ? st.guidance : 1.0);
  return write_png(path, gw, gh, c, grid.data(), {{"parameters", text.str()}});
}

}  // namespace

int run_train(int argc, char** argv) {
  CommonSettings common;
  Settings st;
  TrainOptions o;
  o.steps = 10000;
  std::vector<Option> options;
  add_common_options(&options, &common);
  auto integer = [](const char* name, long long min, long long max, auto* target) {
    return [name, min, max, target](const std::string& v) {
      long long n;
      DDPM_TRY(parse_int(std::string("--") + name, v, min, max, &n));
      *target = static_cast<std::remove_pointer_t<decltype(target)>>(n);
      return Status();
    };
  };
  auto number = [](const char* name, double min, double max, double* target) {
    return [name, min, max, target](const std::string& v) {
      return parse_float(std::string("--") + name, v, min, max, target);
    };
  };
  options.push_back({"data", 0, "PATH", "IDX images file (raw or .gz) or folder of PNGs (class sub-folders)", text(&st.data)});
  options.push_back({"labels", 0, "FILE", "IDX labels for --data (IDX only)", text(&st.labels)});
  options.push_back({"class-names", 0, "LIST", "comma-separated class names in label order (default: sub-folder names, "
                     "Fashion-MNIST's with that preset, else the ids)", text(&st.class_names)});
  options.push_back({"preset", 0, "NAME", std::string("network preset: ") + net_preset_names(), text(&st.preset)});
  options.push_back({"config", 0, "JSON", "diffusers UNet2DModel config.json (sample_size sets the image size)", text(&st.config)});
  options.push_back({"scheduler-config", 0, "JSON", "diffusers scheduler_config.json (default: linear betas, T=1000)",
                     text(&st.scheduler_config)});
  options.push_back({"resize", 0, "MODE", "fit images to the model: scale until they cover it (auto|area|bilinear; default auto) then centre-crop, or off: crop only", text(&st.resize)});
  options.push_back({"hflip", 0, "", "random horizontal flips", [&](const std::string&) {
                       o.hflip = true;
                       return Status();
                     }});
  options.push_back({"steps", 0, "N", "total optimiser steps (default 10000)", integer("steps", 1, 1ll << 40, &o.steps)});
  options.push_back({"batch", 'b', "N", "images per step (default 64)", integer("batch", 1, 65536, &o.batch)});
  options.push_back({"lr", 0, "X", "peak learning rate (default 2e-4)", number("lr", 1e-12, 10, &o.lr)});
  options.push_back({"lr-schedule", 0, "S", "constant or cosine after the warm-up (default constant)", text(&st.lr_schedule)});
  options.push_back({"min-lr-ratio", 0, "X", "cosine floor as a fraction of --lr (default 0)",
                     number("min-lr-ratio", 0, 1, &o.min_lr_ratio)});
  options.push_back({"warmup", 0, "N", "linear warm-up steps (default 500)", integer("warmup", 0, 1ll << 40, &o.warmup)});
  options.push_back({"weight-decay", 0, "X", "AdamW decoupled weight decay on weight matrices (default 0)",
                     number("weight-decay", 0, 10, &o.adamw.weight_decay)});
  options.push_back({"grad-clip", 0, "X", "max global gradient norm, 0 = off (default 1)", number("grad-clip", 0, 1e9, &o.grad_clip)});
  options.push_back({"ema", 0, "X", "max EMA decay of the exported weights (default 0.999)", number("ema", 0, 0.999999, &o.ema)});
  options.push_back({"prediction", 0, "P", "epsilon|v_prediction|sample (default epsilon)", text(&st.prediction)});
  options.push_back({"cond-drop", 0, "P", "probability of the null class per sample, for guidance (default 0.1)",
                     number("cond-drop", 0, 1, &o.cond_drop)});
  options.push_back({"guidance", 0, "S", "default guidance scale stored in the model and used for grids (default 2)",
                     [&](const std::string& v) { return parse_float("--guidance", v, -100, 100, &st.guidance); }});
  options.push_back({"seed", 0, "N", "seed of initialisation, data order and noise (default 0)",
                     integer("seed", 0, 1ll << 53, &o.seed)});
  options.push_back({"val", 0, "N", "held-out validation images (default min(1000, 10%); 0 = none)",
                     integer("val", 0, (1ll << 32) - 1, &st.val)});
  options.push_back({"val-every", 0, "K", "validation loss every K steps (default 500; 0 = off)", [&](const std::string& v) {
                       return parse_int("--val-every", v, 0, 1ll << 40, &st.val_every);
                     }});
  options.push_back({"out", 'o', "FILE", "output model (.ddpm, EMA weights)", text(&st.out)});
  options.push_back({"checkpoint", 0, "FILE", "checkpoint path (default: <out stem>.ckpt)", text(&st.checkpoint)});
  options.push_back({"checkpoint-every", 0, "K",
                     "checkpoint every K steps and at the end (default 1000; 0 = only when interrupted)",
                     [&](const std::string& v) { return parse_int("--checkpoint-every", v, 0, 1ll << 40, &st.checkpoint_every); }});
  options.push_back({"resume", 0, "FILE", "continue the run saved in a checkpoint", text(&st.resume)});
  options.push_back({"export-only", 0, "",
                     "with --resume: write the checkpoint's EMA weights to -o now, without training (--data not needed; "
                     "training options are refused)",
                     [&](const std::string&) {
                       st.export_only = true;
                       return Status();
                     }});
  options.push_back({"sample-every", 0, "K", "sample grid (DDIM-50, EMA) every K steps and at the end (default 0 = off)",
                     [&](const std::string& v) { return parse_int("--sample-every", v, 0, 1ll << 40, &st.sample_every); }});
  options.push_back({"samples-per-class", 0, "N", "grid rows (default 4)", [&](const std::string& v) {
                       return parse_int("--samples-per-class", v, 1, 64, &st.per_class);
                     }});
  options.push_back({"samples", 0, "PREFIX", "grid files <PREFIX>-<step>.png (default: <out stem>-samples)", text(&st.samples)});
  options.push_back({"loss-curve", 0, "FILE", "loss-curve PNG (default: <out stem>-loss.png)", text(&st.loss_curve)});
  options.push_back({"log-every", 0, "K", "progress line every K steps when stderr is not a terminal (default 50)",
                     [&](const std::string& v) { return parse_int("--log-every", v, 1, 1ll << 40, &st.log_every); }});
  // The options set on the command line, by long name: a resumed run takes these over its checkpoint's, and
  // --export-only refuses the ones it would ignore.
  std::set<std::string> given;
  for (Option& option : options) {
    option.apply = [&given, name = option.long_name, apply = std::move(option.apply)](const std::string& v) {
      given.insert(name);
      return apply(v);
    };
  }
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout,
                "ddpm train (--preset NAME | --config JSON) --data PATH [--labels FILE] -o model.ddpm [options]\n"
                "       ddpm train --resume run.ckpt --data PATH [--labels FILE] -o model.ddpm [--steps N]\n"
                "       ddpm train --resume run.ckpt --export-only -o model.ddpm",
                options);
    return 0;
  }
  auto usage_error = [](const Status& e) {
    std::fprintf(stderr, "ddpm train: %s\n", e.message().c_str());
    return 2;
  };
  auto run_error = [](const Status& e) {
    std::fprintf(stderr, "ddpm train: %s\n", e.message().c_str());
    return 1;
  };
  if (s.ok() && !positional.empty()) s = errorf("unexpected argument '%s' (see --help)", positional[0].c_str());
  if (s.ok() && st.out.empty()) s = errorf("missing -o/--out MODEL.ddpm");
  if (s.ok() && st.export_only && st.resume.empty()) s = errorf("--export-only needs --resume CHECKPOINT");
  if (s.ok() && st.export_only) {
    // Refused rather than ignored, as a resume refuses a changed --batch: the network, schedule and options come
    // from the checkpoint, and nothing runs that would use the rest. (--data, --labels and --resize check that the
    // data is the run's.)
    static const std::set<std::string> used = {"threads", "isa",   "resume", "export-only", "out",
                                               "data",    "labels", "resize", "class-names", "guidance"};
    std::string ignored;
    for (const Option& option : options) {
      if (given.count(option.long_name) && !used.count(option.long_name)) {
        ignored += (ignored.empty() ? "--" : ", --") + option.long_name;
      }
    }
    if (!ignored.empty()) {
      s = errorf("%s: not used by --export-only, which writes the checkpoint's model without training",
                 ignored.c_str());
    }
  }
  if (s.ok() && st.resume.empty() && st.preset.empty() == st.config.empty()) {
    s = errorf("give exactly one of --preset NAME and --config JSON (or --resume a checkpoint)");
  }
  if (s.ok() && !st.preset.empty() && !st.config.empty()) s = errorf("--preset and --config exclude each other");
  if (s.ok() && !st.lr_schedule.empty()) {
    s = parse_lr_schedule(st.lr_schedule, &o.lr_schedule).with_context("--lr-schedule");
  }
  if (s.ok() && !st.prediction.empty()) {
    s = parse_prediction_type(st.prediction, &o.prediction).with_context("--prediction");
  }
  ResizeMode resize = ResizeMode::Auto;
  if (s.ok()) s = parse_resize_mode(st.resize, &resize).with_context("--resize");
  if (s.ok()) s = apply_common_settings(common);
  if (!s.ok()) return usage_error(s);

  // Exporting needs only the checkpoint: its EMA weights, history and class names (the data is for training).
  if (st.export_only && st.data.empty()) {
    std::unique_ptr<Trainer> trainer;
    s = check_distinct_paths(st.out, st.resume, "the checkpoint resumed from");
    if (s.ok()) s = check_can_write(st.out);
    if (s.ok()) s = Trainer::open_for_export(st.resume, &trainer);
    if (s.ok() && !st.class_names.empty()) {
      s = trainer->set_class_names(split_list(st.class_names)).with_context("--class-names");
    }
    ExportOptions export_options;
    export_options.default_guidance_scale = static_cast<float>(st.guidance);
    if (s.ok()) s = trainer->export_model(st.out, export_options);
    if (!s.ok()) return run_error(s);
    std::printf("wrote %s (EMA weights of %s, step %lld; %s of training)\n", st.out.c_str(), st.resume.c_str(),
                (long long)trainer->step_count(), duration_text(trainer->wall_seconds()).c_str());
    return 0;
  }

  // The network and the noise schedule: from the flags, or from the checkpoint being resumed.
  NetSpec net;
  SchedulerConfig scheduler;
  bool adapt_classes = false;  // presets follow the data's class count; explicit configs are taken as they are
  if (!st.resume.empty()) {
    TrainOptions saved;
    s = Trainer::read_checkpoint_setup(st.resume, &net, &scheduler, &saved);
    if (!s.ok()) return run_error(s);
    // The checkpoint's options, with the flags given now on top (a differing one is reported by the resume).
    const TrainOptions flags = o;
    o = saved;
    if (given.count("steps")) o.steps = flags.steps;
    if (given.count("batch")) o.batch = flags.batch;
    if (given.count("lr")) o.lr = flags.lr;
    if (given.count("lr-schedule")) o.lr_schedule = flags.lr_schedule;
    if (given.count("min-lr-ratio")) o.min_lr_ratio = flags.min_lr_ratio;
    if (given.count("warmup")) o.warmup = flags.warmup;
    if (given.count("weight-decay")) o.adamw.weight_decay = flags.adamw.weight_decay;
    if (given.count("grad-clip")) o.grad_clip = flags.grad_clip;
    if (given.count("ema")) o.ema = flags.ema;
    if (given.count("prediction")) o.prediction = flags.prediction;
    if (given.count("cond-drop")) o.cond_drop = flags.cond_drop;
    if (given.count("hflip")) o.hflip = flags.hflip;
    if (given.count("seed")) o.seed = flags.seed;
    if (given.count("val")) o.validation = st.val;
  }
  if (!st.preset.empty() || !st.config.empty()) {
    NetSpec chosen;
    SchedulerConfig chosen_scheduler;
    if (!st.preset.empty()) {
      s = net_preset(st.preset, &chosen, &chosen_scheduler).with_context("--preset");
      adapt_classes = true;
    } else {
      JsonValue json;
      s = read_json_file(st.config, &json);
      if (s.ok()) s = UNetConfig::from_json(json, &chosen.unet);
      if (s.ok() && chosen.unet.sample_size.empty()) s = errorf("sample_size is missing: it sets the image size");
      if (s.ok()) {
        chosen.height = chosen.unet.sample_size[0];
        chosen.width = chosen.unet.sample_size.back();
        chosen.channels = chosen.unet.in_channels;
        s = chosen.validate();
      }
      s.with_context("--config " + st.config);
    }
    if (!s.ok()) return usage_error(s);
    net = chosen;  // when resuming, the checkpoint's network is compared with it (the first difference is named)
    if (st.resume.empty()) scheduler = chosen_scheduler;
  }
  if (!st.scheduler_config.empty()) {
    JsonValue json;
    s = read_json_file(st.scheduler_config, &json);
    if (s.ok()) s = scheduler_config_from_json(json, &scheduler).with_context(st.scheduler_config);
    if (!s.ok()) return usage_error(s.with_context("--scheduler-config"));
  }

  // Data.
  Dataset data;
  const auto t_load = std::chrono::steady_clock::now();
  if (net.kind == NetKind::Mlp1D) {
    if (!st.data.empty()) return usage_error(errorf("--data: the toy-mlp preset trains on its built-in 1-D mixture"));
    make_mixture_1d(800, 0, &data);
  } else {
    if (st.data.empty()) return usage_error(errorf("missing --data PATH (IDX images or a PNG folder)"));
    ImageFit fit;
    fit.channels = static_cast<int>(net.channels);
    fit.height = static_cast<int>(net.height);
    fit.width = static_cast<int>(net.width);
    fit.resize = resize;
    s = load_image_dataset(st.data, st.labels, fit, &data);
    if (!s.ok()) return run_error(s);
    if (st.preset == "fashion-mnist" && !st.labels.empty() && data.class_names.size() == 10) {
      data.class_names = fashion_mnist_class_names();  // IDX labels are bare ids
    }
  }
  if (adapt_classes && net.kind == NetKind::UNet2D) {
    const int64_t wanted = data.labelled() ? static_cast<int64_t>(data.class_names.size()) + 1 : 0;
    if (net.class_embeds() != wanted) {
      std::fprintf(stderr, "note: preset %s adapted to %s\n", st.preset.c_str(),
                   wanted ? (std::to_string(wanted - 1) + " classes + the null class").c_str() : "unlabelled data");
      if (wanted) net.unet.num_class_embeds = wanted;
      else net.unet.num_class_embeds.reset();
    }
  }
  if (net.class_embeds() == 0 && given.count("cond-drop") == 0) o.cond_drop = 0;  // nothing to drop
  if (st.resume.empty()) {
    o.validation = st.val >= 0 ? st.val : (net.kind == NetKind::Mlp1D ? 0 : std::min<int64_t>(1000, data.count / 10));
  }

  std::unique_ptr<Trainer> trainer;
  s = Trainer::create(net, scheduler, o, data, &trainer);
  if (!s.ok()) return run_error(s);
  if (!st.resume.empty()) {
    s = trainer->load_checkpoint(st.resume);
    if (!s.ok()) return run_error(s);
    std::fprintf(stderr, "resumed %s at step %lld\n", st.resume.c_str(), (long long)trainer->step_count());
    if (given.count("steps") && o.steps < trainer->step_count()) {
      std::fprintf(stderr, "note: --steps %lld: the checkpoint is past it; the model is exported as of step %lld\n",
                   (long long)o.steps, (long long)trainer->step_count());
    }
  }
  if (net.kind == NetKind::UNet2D && net.unet.dropout > 0) {
    std::fprintf(stderr, "note: dropout %g of the config is not applied: this trainer trains without dropout\n",
                 net.unet.dropout);
  }
  if (net.class_embeds() == 0 && data.labelled()) {
    std::fprintf(stderr, "note: the network has no class embeddings (num_class_embeds): the %zu classes of %s are "
                         "not used, the model will be unconditional\n",
                 data.class_names.size(), data.source.c_str());
  }
  if (!st.class_names.empty()) {
    s = trainer->set_class_names(split_list(st.class_names));
    if (!s.ok()) return usage_error(s.with_context("--class-names"));
  }

  std::fprintf(stderr, "data: %s, %lld samples [%lld, %lld, %lld]%s (setup %.1f s)\n", data.source.c_str(),
               (long long)data.count, (long long)data.channels, (long long)data.height, (long long)data.width,
               data.labelled() ? (", " + std::to_string(data.class_names.size()) + " classes").c_str() : ", unlabelled",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count());

  // Outputs are checked before training, which may take hours.
  const std::string base = stem(st.out);
  if (st.checkpoint.empty()) st.checkpoint = base + ".ckpt";
  if (st.samples.empty()) st.samples = base + "-samples";
  if (st.loss_curve.empty()) st.loss_curve = base + "-loss.png";
  auto grid_path = [&](int64_t step) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "-%06lld.png", (long long)step);
    return st.samples + buffer;
  };
  // The checkpoint may be the one resumed from (that is how a run continues); nothing else may overwrite an input.
  const std::vector<FileRole> inputs = {{st.data, "the training data"}, {st.labels, "the labels file"},
                                        {st.config, "the config"}, {st.scheduler_config, "the scheduler config"}};
  std::vector<FileRole> outputs = {{st.out, "the output model"}, {st.loss_curve, "the loss curve"},
                                   {st.checkpoint, "the checkpoint"},
                                   {st.sample_every > 0 ? grid_path(0) : "", "the sample grids"}};
  s = check_file_roles(outputs, inputs);
  for (size_t i = 0; s.ok() && i < outputs.size(); ++i) {
    if (i != 2) s = check_distinct_paths(outputs[i].path, st.resume, "the checkpoint resumed from");
  }
  if (s.ok()) s = check_can_write(st.out);
  if (s.ok() && !st.export_only) s = check_can_write(st.loss_curve);
  // Whatever --checkpoint-every says: SIGINT or SIGTERM may stop the run at any step, and it then saves one.
  if (s.ok() && !st.export_only) s = check_can_write(st.checkpoint);
  if (s.ok() && st.sample_every > 0) s = check_can_write(grid_path(0));
  if (!s.ok()) return run_error(s);
  if (st.sample_every > 0) {
    s = check_sample_grid_size(*trainer, st);
    if (!s.ok()) return usage_error(s);
  }

  int64_t parameters = trainer->layout().total();
  std::fprintf(stderr, "model: %s, %.2f M parameters, batch %lld, training graph %.0f MB; steps %lld → %lld\n",
               net.architecture(), parameters / 1e6, (long long)o.batch, trainer->training_arena_bytes() / 1e6,
               (long long)trainer->step_count(), (long long)o.steps);

  ThreadPool pool(common.threads);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const bool tty = isatty(STDERR_FILENO);
  const int64_t first_step = trainer->step_count();
  double step_seconds = 0;
  const double beta = 0.98;
  double smooth = 0, weight = 1;  // bias-corrected EMA of the loss, as smooth_losses()
  for (size_t i = 0; i < trainer->losses().size(); ++i) {
    smooth = beta * smooth + (1 - beta) * trainer->losses()[i];
    weight *= beta;
  }
  auto write_curve = [&]() {
    Status c = write_loss_curve(st.loss_curve, trainer->losses(), trainer->validation_history());
    if (!c.ok()) std::fprintf(stderr, "%swarning: %s\n", tty ? "\n" : "", c.message().c_str());
  };
  bool interrupted = false;
  // An interrupted run's model, as it stands (a cosine run stopped late has little left to gain).
  while (!st.export_only && trainer->step_count() < o.steps) {
    if (g_stop) {
      interrupted = true;
      break;
    }
    const auto t0 = std::chrono::steady_clock::now();
    StepStats stats;
    s = trainer->step(pool, &stats);
    if (!s.ok()) {
      if (tty) std::fprintf(stderr, "\n");
      return run_error(s);
    }
    step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    smooth = beta * smooth + (1 - beta) * stats.loss;
    weight *= beta;
    const int64_t step = trainer->step_count(), done = step - first_step;
    const double images_per_s = done * o.batch / std::max(step_seconds, 1e-9);
    const double eta = (o.steps - step) * (step_seconds / done);
    if (tty || step % st.log_every == 0 || step == o.steps) {
      std::fprintf(stderr, "%sstep %lld/%lld  loss %.4f  lr %.2e  %.1f img/s  ETA %s%s", tty ? "\r" : "",
                   (long long)step, (long long)o.steps, smooth / (1 - weight), stats.lr, images_per_s,
                   duration_text(eta).c_str(), tty ? "   " : "\n");
    }
    const bool last = step == o.steps;
    if (st.val_every > 0 && o.validation > 0 && (step % st.val_every == 0 || last)) {
      double val = 0;
      s = trainer->validation_loss(pool, &val);
      if (!s.ok()) return run_error(s);
      std::fprintf(stderr, "%sstep %lld: validation loss %.4f (EMA weights, %lld held-out samples)\n", tty ? "\n" : "",
                   (long long)step, val, (long long)o.validation);
      write_curve();
    }
    if (st.checkpoint_every > 0 && (step % st.checkpoint_every == 0 || last)) {
      s = trainer->save_checkpoint(st.checkpoint);
      if (!s.ok()) return run_error(s);
      write_curve();
    }
    if (st.sample_every > 0 && (step % st.sample_every == 0 || last) && net.kind == NetKind::UNet2D) {
      const std::string path = grid_path(step);
      s = write_sample_grid(*trainer, pool, st, path);
      if (!s.ok()) return run_error(s);
      std::fprintf(stderr, "%swrote %s\n", tty ? "\n" : "", path.c_str());
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  if (interrupted) {
    // Stopped by a signal between steps: save where we are, so --resume continues exactly (with --checkpoint-every 0
    // too: without it the steps done would be lost, since an interrupted run exports no model). The exit status is a
    // shell's for that signal, so a script sees how the run ended.
    s = trainer->save_checkpoint(st.checkpoint);
    if (!s.ok()) return run_error(s);
    write_curve();
    std::fprintf(stderr, "interrupted at step %lld; saved %s (continue with --resume %s)\n",
                 (long long)trainer->step_count(), st.checkpoint.c_str(), st.checkpoint.c_str());
    return 128 + g_stop;
  }
  ExportOptions export_options;
  export_options.default_guidance_scale = static_cast<float>(st.guidance);
  s = trainer->export_model(st.out, export_options);
  if (!s.ok()) return run_error(s);
  if (!st.export_only) write_curve();  // as without --data: an export writes the model only
  // The loss the model file records (training.final_loss), not the progress lines' smoothed one, and the validation
  // loss as the progress lines print it.
  char validation[48] = "";
  if (!trainer->validation_history().empty()) {
    std::snprintf(validation, sizeof validation, ", validation %.4f", trainer->validation_history().back().second);
  }
  std::printf("wrote %s (EMA weights, step %lld; loss %.4f, the mean of the last %zu steps%s; %s of training)\n",
              st.out.c_str(), (long long)trainer->step_count(), trainer->final_loss(),
              std::min(trainer->losses().size(), Trainer::kFinalLossSteps), validation,
              duration_text(trainer->wall_seconds()).c_str());
  return 0;
}

}  // namespace ddpm::tools
