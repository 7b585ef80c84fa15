// `ddpm generate`: sample images from a .ddpm model and write them as PNG (a grid, or numbered files).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>

#include "io/atomic_file.h"
#include "io/png.h"
#include "model/pipeline.h"
#include "tools/options.h"
#include "tools/subcommands.h"

namespace ddpm::tools {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double peak_rss_mb() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

// Resolves one --class entry: a class name of the model, an id, or "uncond".
Status resolve_class(const std::string& text, const ModelInfo& info, int32_t* out) {
  if (text == "uncond") {
    if (!info.null_class) return errorf("--class uncond: the model has no null class (convert with --null-class)");
    *out = *info.null_class;
    return Status();
  }
  for (size_t i = 0; i < info.class_names.size(); ++i) {
    if (info.class_names[i] == text) {
      *out = static_cast<int32_t>(i);
      return Status();
    }
  }
  // "sandal" for "Sandal": case aside, when exactly one name matches.
  auto lower = [](std::string v) {
    for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return v;
  };
  int matches = 0;
  for (size_t i = 0; i < info.class_names.size(); ++i) {
    if (lower(info.class_names[i]) == lower(text)) {
      *out = static_cast<int32_t>(i);
      ++matches;
    }
  }
  if (matches == 1) return Status();
  long long id;
  Status s = parse_int("--class", text, 0, info.class_count() - 1, &id);
  if (!s.ok()) {
    std::string names;
    for (size_t i = 0; i < info.class_names.size(); ++i) names += (i ? ", " : "") + info.class_names[i];
    return errorf("--class: '%s' is not a class of this model (ids 0..%lld%s%s)", text.c_str(),
                  (long long)info.class_count() - 1, names.empty() ? "" : "; names: ", names.c_str());
  }
  *out = static_cast<int32_t>(id);
  return Status();
}

std::string numbered_path(const std::string& path, int index) {
  const size_t dot = path.find_last_of('.');
  const size_t slash = path.find_last_of('/');
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "_%03d", index);
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return path + suffix + ".png";
  return path.substr(0, dot) + suffix + path.substr(dot);
}

}  // namespace

int run_generate(int argc, char** argv) {
  CommonSettings common;
  std::string int8_winograd = "auto";
  std::string model_path, output = "output.png", sampler = "", spacing, rng = "philox", class_text, raw_path;
  long long count = 1, batch = 0, steps = 0, scale = 1, uncond_class = -1, grid_columns = 0;
  double eta = 0, cfg = std::nan("");
  bool seed_given = false, no_grid = false;
  uint64_t seed = 0;
  std::vector<Option> options;
  add_common_options(&options, &common);
  add_int8_winograd_option(&options, &int8_winograd);
  options.push_back({"model", 'm', "FILE", "model file (.ddpm)", text(&model_path)});
  options.push_back({"count", 'n', "N", "number of images (default 1)", [&](const std::string& v) {
                       return parse_int("--count", v, 1, 100000, &count);
                     }});
  options.push_back({"batch", 'b', "N", "images per forward pass (default: min(n, 8); --rng torch runs all n as one, as diffusers does)", [&](const std::string& v) {
                       return parse_int("--batch", v, 1, 4096, &batch);
                     }});
  options.push_back({"sampler", 0, "S", "ddpm or ddim (default: the model's, else ddim)", text(&sampler)});
  options.push_back({"steps", 0, "N", "sampling steps (default: the model's for its sampler, else 50 for ddim, 1000 for ddpm)",
                     [&](const std::string& v) { return parse_int("--steps", v, 1, 100000, &steps); }});
  options.push_back({"eta", 0, "X", "DDIM eta (default 0)", [&](const std::string& v) {
                       return parse_float("--eta", v, 0, 1, &eta);  // above 1 DDIM's direction term is imaginary
                     }});
  options.push_back({"spacing", 0, "S", "timestep spacing: leading|trailing|linspace (default: the model's)", text(&spacing)});
  options.push_back({"seed", 0, "N", "random seed (default: random, printed)", [&](const std::string& v) {
                       long long value;
                       DDPM_TRY(parse_int("--seed", v, 0, (1ll << 53), &value));
                       seed = static_cast<uint64_t>(value);
                       seed_given = true;
                       return Status();
                     }});
  options.push_back({"rng", 0, "R", "noise generator: philox (per-image streams) or torch (PyTorch CPU parity)", text(&rng)});
  options.push_back({"class", 0, "C", "class name, id or uncond; a comma list cycles (default: cycle all)",
                     [&](const std::string& v) {
                       if (v.empty() || v.front() == ',' || v.back() == ',' || v.find(",,") != std::string::npos) {
                         return errorf("--class: '%s' has an empty entry", v.c_str());
                       }
                       class_text = v;
                       return Status();
                     }});
  options.push_back({"cfg", 0, "S", "classifier-free guidance scale (default: the model's)", [&](const std::string& v) {
                       return parse_float("--cfg", v, -100, 100, &cfg);
                     }});
  options.push_back({"uncond-class", 0, "ID", "null class id for guidance (default: the model's; needed when it names none)",
                     [&](const std::string& v) { return parse_int("--uncond-class", v, 0, 1000000, &uncond_class); }});
  options.push_back({"output", 'o', "FILE", "output PNG (default output.png)", text(&output)});
  options.push_back({"no-grid", 0, "", "write numbered files instead of one grid", [&](const std::string&) {
                       no_grid = true;
                       return Status();
                     }});
  options.push_back({"grid-cols", 0, "N", "grid columns (default: one per class when cycling all classes with -n at least the class count, else about square)",
                     [&](const std::string& v) { return parse_int("--grid-cols", v, 1, 100000, &grid_columns); }});
  options.push_back({"scale", 0, "K", "nearest-neighbour upscaling of the output (default 1)", [&](const std::string& v) {
                       return parse_int("--scale", v, 1, 64, &scale);
                     }});
  options.push_back({"save-raw", 0, "FILE", "also write the samples as little-endian float32 NCHW", text(&raw_path)});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout, "ddpm generate -m MODEL.ddpm [-n N] [--sampler ddim --steps 50] [-o out.png]", options);
    return 0;
  }
  if (s.ok() && !positional.empty()) s = errorf("unexpected argument '%s' (see --help)", positional[0].c_str());
  if (s.ok() && model_path.empty()) s = errorf("missing -m MODEL.ddpm");
  if (s.ok()) s = apply_common_settings(common);
  GenerateOptions o;
  if (s.ok() && rng != "philox" && rng != "torch") s = errorf("--rng: '%s' is not philox or torch", rng.c_str());
  // One generator draws the whole run's noise in diffusers' order, so the run is one batch: a smaller -b would
  // change the images (or, honoured, the noise), and a larger one is only memory.
  if (s.ok() && rng == "torch" && batch != 0 && batch != count) {
    s = errorf("-b %lld: --rng torch samples all -n %lld images as one batch, as diffusers does", batch, count);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm generate: %s\n", s.message().c_str());
    return 2;
  }
  const auto t_load = std::chrono::steady_clock::now();
  std::unique_ptr<Model> model;
  s = Model::load(model_path, &model);
  if (s.ok()) apply_int8_winograd(int8_winograd, model.get());
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm generate: %s\n", s.message().c_str());
    return 1;
  }
  ModelInfo& info = const_cast<ModelInfo&>(model->info());
  if (uncond_class >= 0) {
    if (info.class_count() == 0) {
      std::fprintf(stderr, "ddpm generate: --uncond-class: %s is not class-conditional\n", model_path.c_str());
      return 2;
    }
    if (uncond_class >= info.class_count()) {
      std::fprintf(stderr, "ddpm generate: --uncond-class %lld is outside the model's %lld classes (0..%lld)\n",
                   uncond_class, (long long)info.class_count(), (long long)info.class_count() - 1);
      return 2;
    }
    info.null_class = static_cast<int32_t>(uncond_class);
  }
  const double load_seconds = seconds_since(t_load);

  o.count = static_cast<int>(count);
  o.batch = static_cast<int>(batch);
  o.noise = rng == "torch" ? NoiseKind::Torch : NoiseKind::Philox;
  if (!seed_given) seed = std::random_device{}() & ((1ull << 32) - 1);
  o.seed = seed;
  s = resolve_sampler(info, sampler, static_cast<int>(steps), &o.sampler);
  sampler = to_string(o.sampler.sampler);
  if (s.ok() && !spacing.empty()) {
    TimestepSpacing sp{};
    s = parse_timestep_spacing(spacing, &sp).with_context("--spacing");
    if (s.ok()) o.sampler.spacing = sp;
  }
  if (s.ok() && steps > info.scheduler.num_train_timesteps) {
    s = errorf("--steps %lld: the model's schedule has %d timesteps, so at most %d steps", steps,
               info.scheduler.num_train_timesteps, info.scheduler.num_train_timesteps);
  }
  if (s.ok() && o.sampler.sampler == SamplerKind::DDPM && eta != 0) {
    s = errorf("--eta applies to the DDIM sampler only (this run uses --sampler ddpm)");
  }
  o.sampler.eta = static_cast<float>(eta);
  if (s.ok() && !std::isnan(cfg) && !info.unet.has_class_table()) {
    s = errorf("--cfg: this model is not class-conditional, so there is nothing to guide");
  }
  if (s.ok() && !std::isnan(cfg) && cfg != 1.0 && !info.null_class) {
    s = errorf("--cfg: guidance needs a null class, which this model does not name (give --uncond-class ID)");
  }
  o.guidance_scale = std::isnan(cfg) ? info.default_guidance_scale : static_cast<float>(cfg);
  if (s.ok() && !class_text.empty()) {
    if (!info.unet.has_class_table()) s = errorf("--class: this model is not class-conditional");
    std::vector<int32_t> cycle;
    std::stringstream list(class_text);
    std::string item;
    while (s.ok() && std::getline(list, item, ',')) {
      int32_t id;
      s = resolve_class(item, info, &id);
      cycle.push_back(id);
    }
    for (int k = 0; s.ok() && k < o.count; ++k) o.classes.push_back(cycle[k % cycle.size()]);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm generate: %s\n", s.message().c_str());
    return 2;
  }

  // Outputs are checked before sampling, which may take minutes: their size first.
  const int c = static_cast<int>(info.channels), h = static_cast<int>(info.height), w = static_cast<int>(info.width);
  // Cycling every class through at least once, the grid reads best with one class per column (a last row may be
  // short); fewer images than classes make a square.
  int columns = static_cast<int>(grid_columns);
  const int64_t cycle = static_cast<int64_t>(info.sampled_classes().size());
  if (columns == 0 && info.unet.has_class_table() && class_text.empty() && cycle > 0 && o.count >= cycle) {
    columns = static_cast<int>(cycle);
  }
  const int gap = o.count > 1 ? 2 : 0;
  int64_t out_width = int64_t{w} * scale, out_height = int64_t{h} * scale;
  if (!no_grid) grid_size(o.count, h, w, columns, gap, static_cast<int>(scale), &out_width, &out_height);
  if (out_width > kPngMaxSide || out_height > kPngMaxSide || out_width * out_height > kPngMaxPixels) {
    std::fprintf(stderr,
                 "ddpm generate: the %s would be %lldx%lld pixels, more than a PNG written here may have (%d per side, "
                 "%lld in all): lower %s--scale\n",
                 no_grid ? "image" : "grid", (long long)out_width, (long long)out_height, kPngMaxSide,
                 (long long)kPngMaxPixels, no_grid ? "" : "-n or ");
    return 2;
  }
  // Then where they go.
  // The numbered files differ from each other by construction: each is checked against the model and the raw
  // file only (linear in -n), and the first stands for the others' directory.
  const std::string first_image = no_grid ? numbered_path(output, 0) : output;
  s = check_distinct_paths(raw_path, model_path, "the model");
  for (int k = 0; s.ok() && k < (no_grid ? o.count : 1); ++k) {
    const std::string image = no_grid ? numbered_path(output, k) : output;
    s = check_distinct_paths(image, model_path, "the model");
    if (s.ok()) s = check_distinct_paths(image, raw_path, "the --save-raw file");
  }
  for (int k = 0; s.ok() && k < (no_grid ? o.count : 1); ++k) {
    s = check_can_write(no_grid ? numbered_path(output, k) : output);
  }
  if (s.ok() && !raw_path.empty()) s = check_can_write(raw_path);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm generate: %s\n", s.message().c_str());
    return 1;
  }
  // A name ending .jpg would promise a format this tool does not write.
  {
    const size_t dot = output.find_last_of('.'), slash = output.find_last_of('/');
    std::string extension = dot == std::string::npos || (slash != std::string::npos && dot < slash) ? "png"
                                                                                                     : output.substr(dot + 1);
    for (char& ch : extension) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (extension != "png") {
      std::fprintf(stderr, "warning: %s: written as PNG (the only image format ddpm writes)\n", output.c_str());
    }
  }
  ThreadPool pool(common.threads);
  const bool tty = isatty(STDERR_FILENO);
  const auto t_start = std::chrono::steady_clock::now();
  int total_steps_done = 0, last_reported = -1;
  GenerateProgressFn progress = [&](const GenerateProgress& p) {
    ++total_steps_done;
    const int batches = (p.images_total + std::max(1, o.batch > 0 ? o.batch : std::min(p.images_total, 8)) - 1) /
                        std::max(1, o.batch > 0 ? o.batch : std::min(p.images_total, 8));
    const int total = p.steps * (o.noise == NoiseKind::Torch ? 1 : batches);
    const double elapsed = seconds_since(t_start);
    const double rate = total_steps_done / std::max(elapsed, 1e-9);
    const double eta_s = (total - total_steps_done) / std::max(rate, 1e-9);
    const int percent = total ? 100 * total_steps_done / total : 100;
    if (tty) {
      const int width = 30, filled = width * percent / 100;
      std::fprintf(stderr, "\r[%.*s%*s] %3d%% step %d/%d  %.2f it/s  ETA %.0fs ", filled,
                   "##############################", width - filled, "", percent, total_steps_done, total, rate, eta_s);
    } else if (percent / 10 != last_reported / 10) {
      std::fprintf(stderr, "step %d/%d (%d%%), %.2f it/s, ETA %.0fs\n", total_steps_done, total, percent, rate, eta_s);
    }
    last_reported = percent;
    return Status();
  };
  std::vector<float> images;
  s = generate_images(*model, o, pool, &images, progress);
  if (tty) std::fprintf(stderr, "\n");
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm generate: %s\n", s.message().c_str());
    return 1;
  }
  const double sample_seconds = seconds_since(t_start);
  const size_t non_finite = static_cast<size_t>(
      std::count_if(images.begin(), images.end(), [](float v) { return !std::isfinite(v); }));
  if (non_finite > 0) {
    std::fprintf(stderr, "warning: %zu of %zu sampled values are NaN or infinite (written as black): the model's "
                         "weights or the sampling diverged\n", non_finite, images.size());
  }

  std::ostringstream parameters;
  parameters << "ddpm.cpp generate: model " << model_path << ", sampler " << sampler << ", steps "
             << o.sampler.steps << ", eta " << eta << ", seed "
             << seed << ", rng " << rng << ", spacing "
             << to_string(o.sampler.spacing.value_or(info.scheduler.timestep_spacing)) << ", size " << w << "x" << h
             << ", count " << o.count;
  if (info.unet.has_class_table()) parameters << ", class " << (class_text.empty() ? "cycle" : class_text) << ", cfg " << o.guidance_scale;
  if (uncond_class >= 0) parameters << ", uncond-class " << uncond_class;
  // It changes the pixels of quantised models (docs/QUANT.md), so a rerun needs it.
  if (model->int8_winograd()) parameters << ", int8-winograd on";
  // Every file is written and closed under a temporary name first, and only then are they all renamed into place:
  // a failure anywhere (a full disk, a file size limit) leaves the destinations as they were.
  std::vector<AtomicFile> files;
  auto stage = [&](const std::string& path, const void* data, size_t bytes) {
    files.emplace_back();
    Status staged = files.back().open(path);
    if (staged.ok()) staged = files.back().write(data, bytes);
    if (staged.ok()) staged = files.back().finish_writing();
    return staged;
  };
  std::vector<uint8_t> pixels;
  images_to_u8(images.data(), o.count, c, h, w, info.value_low, info.value_high, &pixels);
  std::vector<std::pair<std::string, std::string>> text_chunks = {{"parameters", parameters.str()}};
  std::vector<uint8_t> image, png;
  int image_width = 0, image_height = 0;
  for (int k = 0; s.ok() && k < (no_grid ? o.count : 1); ++k) {
    if (no_grid) {
      make_grid(pixels.data() + static_cast<size_t>(k) * h * w * c, 1, c, h, w, 1, 0, 0, static_cast<int>(scale),
                &image, &image_width, &image_height);
    } else {
      make_grid(pixels.data(), o.count, c, h, w, columns, gap, 0, static_cast<int>(scale), &image, &image_width,
                &image_height);
    }
    const std::string path = no_grid ? numbered_path(output, k) : output;
    s = encode_png(image_width, image_height, c, image.data(), text_chunks, &png);
    if (!s.ok()) s = s.with_context(path);
    if (s.ok()) s = stage(path, png.data(), png.size());
  }
  if (s.ok() && !raw_path.empty()) s = stage(raw_path, images.data(), images.size() * sizeof(float));
  for (AtomicFile& file : files) {
    if (s.ok()) s = file.commit();
  }
  if (s.ok() && no_grid) {
    for (int k = 0; k < o.count; ++k) std::printf("wrote %s\n", numbered_path(output, k).c_str());
  } else if (s.ok()) {
    std::printf("wrote %s (%d image%s, %dx%d)\n", output.c_str(), o.count, o.count > 1 ? "s" : "", image_width,
                image_height);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm generate: %s\n", s.message().c_str());
    return 1;
  }
  std::fprintf(stderr, "seed %llu; load %.2f s, sampling %.2f s (%.1f ms/step), peak memory %.0f MB\n",
               (unsigned long long)seed, load_seconds, sample_seconds,
               1e3 * sample_seconds / std::max(1, total_steps_done), peak_rss_mb());
  return 0;
}

}  // namespace ddpm::tools
