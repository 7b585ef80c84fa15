// `ddpm schedule` (the timesteps and ᾱ_t a sampling run visits) and `ddpm forward` (one U-Net forward on raw
// float32 input, for checking a conversion against PyTorch).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "io/atomic_file.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tools/options.h"
#include "tools/subcommands.h"

namespace ddpm::tools {
namespace {

Status parse_list(const std::string& option, const std::string& text, std::vector<double>* out) {
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) {
    double v;
    DDPM_TRY(parse_float(option, item, -1e9, 1e9, &v));
    out->push_back(v);
  }
  if (out->empty()) return errorf("%s: empty list", option.c_str());
  return Status();
}

int fail(const char* tool, int code, const Status& s) {
  std::fprintf(stderr, "ddpm %s: %s\n", tool, s.message().c_str());
  return code;
}

}  // namespace

int run_schedule(int argc, char** argv) {
  std::string model_path, sampler, spacing;
  long long steps = 0;
  std::vector<Option> options;
  options.push_back({"model", 'm', "FILE", "model file (.ddpm)", [&](const std::string& v) {
                       model_path = v;
                       return Status();
                     }});
  options.push_back({"sampler", 0, "S", "ddpm or ddim (default: the model's, else ddim)", [&](const std::string& v) {
                       sampler = v;
                       return Status();
                     }});
  options.push_back({"steps", 0, "N", "sampling steps (default: the model's for its sampler, else 50 for ddim, 1000 for ddpm)", [&](const std::string& v) {
                       return parse_int("--steps", v, 1, 100000, &steps);
                     }});
  options.push_back({"spacing", 0, "S", "leading|trailing|linspace (default: the model's)", [&](const std::string& v) {
                       spacing = v;
                       return Status();
                     }});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout, "ddpm schedule -m MODEL.ddpm [--sampler ddim] [--steps N] [--spacing S]", options);
    return 0;
  }
  if (s.ok() && model_path.empty()) s = errorf("missing -m MODEL.ddpm");
  if (s.ok() && !positional.empty()) s = errorf("unexpected argument '%s'", positional[0].c_str());
  SamplerSpec spec;
  if (s.ok() && !sampler.empty()) s = parse_sampler_kind(sampler, &spec.sampler);  // a usage error before the file
  if (s.ok() && !spacing.empty()) {
    TimestepSpacing sp{};
    s = parse_timestep_spacing(spacing, &sp).with_context("--spacing");
    if (s.ok()) spec.spacing = sp;
  }
  if (!s.ok()) return fail("schedule", 2, s);
  DdpmFile file;
  ModelInfo info;
  s = DdpmFile::open(model_path, &file, false);
  if (s.ok()) s = model_info_from_metadata(file.metadata(), model_path, &info);
  if (s.ok()) s = resolve_sampler(info, sampler, static_cast<int>(steps), &spec);
  if (s.ok() && steps > info.scheduler.num_train_timesteps) {
    return fail("schedule", 2,
                errorf("--steps %lld: the model's schedule has %d timesteps, so at most %d steps", steps,
                       info.scheduler.num_train_timesteps, info.scheduler.num_train_timesteps));
  }
  Schedule schedule;
  if (s.ok()) s = Schedule::create(info.scheduler, &schedule);
  std::vector<int64_t> timesteps;
  std::string warning;
  if (s.ok()) s = sampler_timesteps(spec, schedule, &timesteps, &warning);
  if (!s.ok()) return fail("schedule", 1, s);
  if (!warning.empty()) std::fprintf(stderr, "warning: %s\n", warning.c_str());
  std::printf("%5s %6s %12s\n", "step", "t", "alpha_bar_t");
  for (size_t i = 0; i < timesteps.size(); ++i) {
    std::printf("%5zu %6lld %12.8f\n", i, (long long)timesteps[i], schedule.alphas_cumprod[timesteps[i]]);
  }
  return 0;
}

int run_forward(int argc, char** argv) {
  CommonSettings common;
  std::string int8_winograd = "auto";
  std::string model_path, input, output, shape_text, timesteps_text, labels_text;
  std::vector<Option> options;
  add_common_options(&options, &common);
  add_int8_winograd_option(&options, &int8_winograd);
  options.push_back({"model", 'm', "FILE", "model file (.ddpm)", text(&model_path)});
  options.push_back({"input", 0, "FILE", "input sample, little-endian float32 NCHW", text(&input)});
  options.push_back({"shape", 0, "B,C,H,W", "input shape", text(&shape_text)});
  options.push_back({"timesteps", 0, "T1,..", "one timestep per batch item", text(&timesteps_text)});
  options.push_back({"class-labels", 0, "L1,..", "one class id per batch item (class-conditional models)", text(&labels_text)});
  options.push_back({"output", 'o', "FILE", "output, little-endian float32 NCHW", text(&output)});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout, "ddpm forward -m MODEL.ddpm --input x.f32 --shape B,C,H,W --timesteps t1,..,tB -o y.f32", options);
    return 0;
  }
  if (s.ok() && (model_path.empty() || input.empty() || output.empty() || shape_text.empty() || timesteps_text.empty())) {
    s = errorf("-m, --input, --shape, --timesteps and -o are required (see --help)");
  }
  if (s.ok()) s = apply_common_settings(common);
  std::vector<double> shape, timesteps, labels;
  if (s.ok()) s = parse_list("--shape", shape_text, &shape);
  if (s.ok() && shape.size() != 4) s = errorf("--shape: expected B,C,H,W");
  for (size_t i = 0; s.ok() && i < shape.size(); ++i) {
    if (!(shape[i] >= 1 && shape[i] <= 65536) || shape[i] != std::floor(shape[i])) {
      s = errorf("--shape: %s is not a size (whole numbers from 1 to 65536)", json_number_text(shape[i]).c_str());
    }
  }
  if (s.ok()) s = parse_list("--timesteps", timesteps_text, &timesteps);
  if (s.ok() && !labels_text.empty()) s = parse_list("--class-labels", labels_text, &labels);
  if (s.ok() && timesteps.size() != static_cast<size_t>(shape[0])) s = errorf("--timesteps: need one per batch item");
  if (s.ok() && !labels.empty() && labels.size() != static_cast<size_t>(shape[0])) {
    s = errorf("--class-labels: need one per batch item");
  }
  if (!s.ok()) return fail("forward", 2, s);
  s = check_file_roles({{output, "the output"}}, {{model_path, "the model"}, {input, "the input"}});
  if (!s.ok()) return fail("forward", 1, s);
  std::unique_ptr<Model> model;
  s = Model::load(model_path, &model);
  if (s.ok()) apply_int8_winograd(int8_winograd, model.get());
  if (!s.ok()) return fail("forward", 1, s);
  const ModelInfo& info = model->info();
  const int64_t b = static_cast<int64_t>(shape[0]), c = static_cast<int64_t>(shape[1]), h = static_cast<int64_t>(shape[2]),
                w = static_cast<int64_t>(shape[3]);
  if (c != info.unet.in_channels) return fail("forward", 2, errorf("--shape: the model takes %lld channels", (long long)info.unet.in_channels));
  if (!labels.empty() && info.class_count() == 0) {
    return fail("forward", 2, errorf("--class-labels: %s is not class-conditional", model_path.c_str()));
  }
  if (labels.empty() && info.unet.has_class_table()) {
    return fail("forward", 2, errorf("%s is class-conditional: give --class-labels, one class id per batch item",
                                     model_path.c_str()));
  }
  for (double label : labels) {
    if (!(label >= 0 && label < static_cast<double>(info.class_count())) || label != std::floor(label)) {
      return fail("forward", 2, errorf("--class-labels: %s is not a class id of %s (0 to %lld)",
                                       json_number_text(label).c_str(), model_path.c_str(),
                                       (long long)info.class_count() - 1));
    }
  }
  MappedFile x;
  s = x.open(input);
  if (s.ok() && x.size() != static_cast<uint64_t>(b * c * h * w) * 4) {
    s = errorf("%s: has %llu bytes, --shape needs %lld", input.c_str(), (unsigned long long)x.size(), (long long)(b * c * h * w * 4));
  }
  if (!s.ok()) return fail("forward", 1, s);
  std::unique_ptr<UNet> net;
  s = UNet::build(info.unet, model->weights(), b, h, w, &net);
  if (!s.ok()) return fail("forward", 1, s);
  std::vector<float> sample(static_cast<size_t>(b * c * h * w));
  std::memcpy(sample.data(), x.data(), sample.size() * 4);
  std::vector<float> t(timesteps.begin(), timesteps.end());
  std::vector<int32_t> label_ids(labels.begin(), labels.end());
  std::vector<float> out(static_cast<size_t>(b * info.unet.out_channels * h * w));
  ThreadPool pool(common.threads);
  s = net->forward(pool, sample.data(), t.data(), label_ids.empty() ? nullptr : label_ids.data(), out.data());
  if (s.ok()) s = write_file_atomically(output, out.data(), out.size() * 4);
  if (!s.ok()) return fail("forward", 1, s);
  std::printf("wrote %s [%lld, %lld, %lld, %lld]\n", output.c_str(), (long long)b, (long long)info.unet.out_channels,
              (long long)h, (long long)w);
  return 0;
}

}  // namespace ddpm::tools
