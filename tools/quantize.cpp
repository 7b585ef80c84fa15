// `ddpm quantize IN.ddpm OUT.ddpm --type T [--keep REGEX]… [--tensor-type REGEX=TYPE]…`
#include <cstdio>

#include "io/atomic_file.h"
#include "model/calibrate.h"
#include "model/ddpm_file.h"
#include "model/model.h"
#include "quant/retype.h"
#include "tools/quantize.h"
#include "tools/subcommands.h"

namespace ddpm::tools {

namespace {

// convert calibrates a scratch f32 file; its messages name the checkpoint instead, the file the user gave.
std::string relabel(std::string text, const std::string& path, const std::string& label) {
  if (path == label || path.empty()) return text;
  for (size_t at = text.find(path); at != std::string::npos; at = text.find(path, at + label.size())) {
    text.replace(at, path.size(), label);
  }
  return text;
}

}  // namespace

void add_calibration_options(std::vector<Option>* options, CalibrationSettings* settings) {
  options->push_back({"max-error", 0, "PCT",
                      "calibration: the U-Net output error (relative L2, %) the faster configurations may cost "
                      "(default: the type's target, q8_0 1, q5_0 3, q4_1/q4_0 6)",
                      [settings](const std::string& v) {
                        return parse_float("--max-error", v, 0, 100, &settings->max_error_percent);
                      }});
  options->push_back({"no-calibrate", 0, "",
                      "skip the calibration: the f16 tier under q8_0, and 8-bit Winograd for q4_0/q4_1 only",
                      [settings](const std::string&) {
                        settings->calibrate = false;
                        return Status();
                      }});
}

Status check_calibration_settings(const CalibrationSettings& settings, DType type) {
  if (settings.max_error_percent >= 0 && (!settings.calibrate || !dtype_traits(type).is_quantized)) {
    return errorf("--max-error: %s", !settings.calibrate ? "the calibration it bounds is skipped by --no-calibrate"
                                                         : "only block types (q8_0, q5_0, q4_1, q4_0) are calibrated");
  }
  return Status();
}

int calibrate_and_retype(const char* tool, const std::string& input, const std::string& label,
                         const std::string& output, quant::TypePolicy& policy, const CalibrationSettings& settings,
                         int threads, quant::RetypeReport* report) {
  const bool block_type = dtype_traits(policy.default_type()).is_quantized;
  quant::RetypeOptions retype_options;
  Status s;
  if (settings.calibrate && block_type) {
    // Only U-Nets that ddpm can run have a forward to measure; other files are re-typed as the policy says.
    DdpmFile file;
    std::string architecture;
    ModelInfo info;
    const char* skipped = nullptr;
    // The input and the output are checked first (checksums too), so that the hint below goes only with errors of
    // the calibration itself.
    s = DdpmFile::open(input, &file, true);
    if (s.ok() && file.metadata().get_string("ddpm.architecture", &architecture).ok() &&
        architecture == kTrainingCheckpointArchitecture) {
      s = training_checkpoint_error(input);
    }
    if (s.ok()) s = check_distinct_paths(output, input, "the input model");
    if (s.ok()) s = check_can_write(output);
    if (!s.ok()) {
      std::fprintf(stderr, "ddpm %s: %s\n", tool, relabel(s.message(), input, label).c_str());
      return 1;
    }
    if (architecture != "unet2d") {
      skipped = "not a U-Net";
    } else if (model_info_from_metadata(file.metadata(), input, &info).ok() && !info.unet.class_embed_type.empty() &&
               !info.unet.has_class_table()) {
      skipped = "the model's class input (class_embed_type 'timestep' or 'identity') is not one ddpm can give";
    }
    if (skipped) std::fprintf(stderr, "note: no calibration: %s\n", skipped);
    if (!skipped) {
      ThreadPool pool(threads);
      CalibrationResult result;
      const double budget = settings.max_error_percent >= 0 ? settings.max_error_percent / 100.0
                                                            : default_error_budget(policy.default_type());
      // Two sampled images and a forward per configuration: seconds for a small model, minutes for a large one.
      std::printf("calibrating on %s: %d images by DDIM-%d, then each configuration on them (--no-calibrate skips)\n",
                  label.c_str(), kCalibrationImages, kCalibrationSteps);
      std::fflush(stdout);
      s = calibrate_quantization(input, policy, budget, pool, &result);
      if (!s.ok()) {
        std::fprintf(stderr, "ddpm %s: %s (--no-calibrate skips the calibration)\n", tool,
                     relabel(s.message(), input, label).c_str());
        return 1;
      }
      policy.set_q8_0_f16_tier(result.choice().f16_tier);
      retype_options.int8_winograd = result.choice().int8_winograd;
      retype_options.calibration = result.summary();
      std::printf("calibration: U-Net output error against %s on %d inputs (budget %.3g%%)\n", label.c_str(),
                  result.inputs, 100.0 * budget);
      const double slowest = result.candidates.back().estimated_cost;
      for (size_t i = 0; i < result.candidates.size(); ++i) {
        const CalibrationCandidate& c = result.candidates[i];
        std::printf("  %-36s %8.3f%%  conv time ~%.2f%s\n", c.describe(policy.default_type()).c_str(),
                    100.0 * c.error, slowest > 0 ? c.estimated_cost / slowest : 1.0,
                    static_cast<int>(i) == result.chosen ? "  <- written" : "");
      }
      if (!result.within_budget) {
        std::fflush(stdout);
        std::fprintf(stderr, "warning: no configuration is within %.3g%%; writing the type's default\n",
                     100.0 * budget);
      }
    }
  }
  s = quant::retype_model(input, output, policy, report, retype_options);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm %s: %s\n", tool, relabel(s.message(), input, label).c_str());
    return 1;
  }
  for (std::string& w : report->warnings) w = relabel(w, input, label);
  return 0;
}

int run_quantize(int argc, char** argv) {
  quant::TypePolicy policy;
  std::string type;
  bool quiet = false;
  CalibrationSettings calibration;
  CommonSettings common;
  std::vector<Option> options;
  add_common_options(&options, &common);
  options.push_back({"type", 0, "T", "weight type: " + quant::weight_type_list() + " (required)",
                     [&](const std::string& v) {
                       DType t;
                       DDPM_TRY(quant::parse_weight_type("--type", v, &t));
                       type = v;
                       policy.set_default_type(t);
                       return Status();
                     }});
  options.push_back({"keep", 0, "REGEX", "keep the type of tensors whose name matches (repeatable)",
                     [&](const std::string& v) { return policy.add_keep(v); }});
  options.push_back({"tensor-type", 0, "REGEX=TYPE", "give matching tensors TYPE (repeatable; the first rule that matches and whose TYPE the tensor can take wins: block types skip norms, biases and embedding tables)",
                     [&](const std::string& v) { return policy.add_override(v); }});
  add_calibration_options(&options, &calibration);
  options.push_back({"quiet", 'q', "", "print the totals only, not the per-tensor table", [&](const std::string&) {
                       quiet = true;
                       return Status();
                     }});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout,
                "ddpm quantize IN.ddpm OUT.ddpm --type T\n"
                "  re-types the weights of a model. By default only conv and linear weights take T; norms, biases,\n"
                "  embeddings, conv_in and conv_out keep their type. Under q4_0, q4_1 and q5_0 the resnet shortcuts\n"
                "  (conv_shortcut) and the resnet convs of down_blocks.0 and the last up block get q8_0: they carry\n"
                "  most of the output error (docs/QUANT.md); the resampling convs and attention projections go one\n"
                "  step up (q5_0, or q8_0 under q5_0); --tensor-type 'resnets|samplers|attentions=q4_0' undoes both.\n"
                "  Under q8_0 the last up block's resnet shortcuts and conv2 stay f16 ('resnets=q8_0' undoes it)\n"
                "  unless the calibration drops them. Regexes (ECMAScript) are searched in tensor names;\n"
                "  --tensor-type is tried before --keep.\n"
                "  Calibration (U-Nets, block types): the model samples 2 images (DDIM-20, fixed seed), noises them\n"
                "  to t = 950, 500, 50, and on those 6 inputs each configuration's output is compared with the\n"
                "  input model's: 8-bit Winograd for the 3x3 convs of 128+ channels (~1.2x faster) or not and,\n"
                "  under q8_0, the f16 tier or not (~7 %). The fastest (estimated from the model's convs) within\n"
                "  --max-error is written, else the type's usual one; generate and eval follow its Winograd choice\n"
                "  (--int8-winograd overrides)",
                options);
    return 0;
  }
  if (s.ok() && positional.size() != 2) s = errorf("expected IN.ddpm and OUT.ddpm (see --help)");
  if (s.ok() && type.empty()) s = errorf("missing --type (%s)", quant::weight_type_list().c_str());
  if (s.ok()) s = apply_common_settings(common);
  if (s.ok()) s = check_calibration_settings(calibration, policy.default_type());
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm quantize: %s\n", s.message().c_str());
    return 2;
  }
  quant::RetypeReport report;
  const int code = calibrate_and_retype("quantize", positional[0], positional[0], positional[1], policy, calibration,
                                        common.threads, &report);
  if (code != 0) return code;
  for (const std::string& w : report.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  const std::string text = quant::format_retype_report(report, !quiet);
  std::printf("quantized %s -> %s (%s)\n%s", positional[0].c_str(), positional[1].c_str(), policy.recipe().c_str(),
              text.c_str());
  return 0;
}

}  // namespace ddpm::tools
