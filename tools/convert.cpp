// `ddpm convert INPUT -o OUT.ddpm [--type f32|f16|q8_0|q5_0|q4_1|q4_0] [--config config.json] [--scheduler-config …]`
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "io/atomic_file.h"
#include "model/convert.h"
#include "quant/policy.h"
#include "tools/options.h"
#include "tools/quantize.h"
#include "tools/subcommands.h"

namespace ddpm::tools {

namespace {

// Where a block type's calibration keeps the f32 model it measures against: beside the output (the disk the user
// chose for it), unless the output is a device or pipe; then in $TMPDIR.
std::string scratch_f32_path(const std::string& output) {
  struct stat st;
  std::string base = output;
  if (::stat(output.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    base = temp_directory() + "/ddpm-convert";
  }
  return base + ".f32.scratch." + std::to_string(static_cast<long long>(::getpid()));
}

}  // namespace

int run_convert(int argc, char** argv) {
  ConvertOptions o;
  CommonSettings common;
  CalibrationSettings calibration;
  std::string type = "f32";
  bool quiet = false;
  std::vector<Option> options;
  add_common_options(&options, &common);
  options.push_back({"output", 'o', "OUT.ddpm", "output model file (required)", [&](const std::string& v) {
                       o.output = v;
                       return Status();
                     }});
  options.push_back({"type", 0, "T",
                     "weight type: " + quant::weight_type_list() +
                         " (default f32). f16: every matrix, norms and biases stay f32; block types: conv and linear "
                         "weights, not conv_in/conv_out/embeddings; under q5_0/q4_1/q4_0 the tensors that carry most "
                         "of the error go up a type, as with ddpm quantize; and a U-Net in a block type is calibrated as ddpm "
                         "quantize calibrates (see its --help; this needs room for an f32 copy of the model beside OUT)",
                     [&](const std::string& v) {
                       type = v;
                       return quant::parse_weight_type("--type", v, &o.type);
                     }});
  options.push_back({"keep", 0, "REGEX", "keep matching tensors f32 (repeatable)", [&](const std::string& v) {
                       quant::TypePolicy check;
                       DDPM_TRY(check.add_keep(v));
                       o.keep.push_back(v);
                       return Status();
                     }});
  options.push_back({"tensor-type", 0, "REGEX=TYPE", "give matching tensors TYPE (repeatable; the first rule that matches and whose TYPE the tensor can take wins: block types skip norms, biases and embedding tables)",
                     [&](const std::string& v) {
                       quant::TypePolicy check;
                       DDPM_TRY(check.add_override(v));
                       o.tensor_types.push_back(v);
                       return Status();
                     }});
  add_calibration_options(&options, &calibration);
  options.push_back({"quiet", 'q', "", "no per-tensor table for quantised types", [&](const std::string&) {
                       quiet = true;
                       return Status();
                     }});
  options.push_back({"config", 0, "FILE", "config.json of a bare checkpoint", [&](const std::string& v) {
                       o.config = v;
                       return Status();
                     }});
  options.push_back({"scheduler-config", 0, "FILE", "scheduler_config.json (default: found beside the model)",
                     [&](const std::string& v) {
                       o.scheduler_config = v;
                       return Status();
                     }});
  options.push_back({"key", 0, "PATH", "torch files: dotted path of the state dict (default: auto)",
                     [&](const std::string& v) {
                       o.checkpoint.key_path = v;
                       return Status();
                     }});
  options.push_back({"strip-prefix", 0, "PREFIX", "remove PREFIX from tensor names (default: auto)",
                     [&](const std::string& v) {
                       o.checkpoint.strip_prefix = v;
                       return Status();
                     }});
  options.push_back({"null-class", 0, "ID", "class id used as the unconditional class for guidance",
                     [&](const std::string& v) {
                       long long id;
                       DDPM_TRY(parse_int("--null-class", v, 0, 1000000, &id));
                       o.null_class = static_cast<int>(id);
                       return Status();
                     }});
  options.push_back({"image-size", 0, "N", "training resolution of an original-DDPM checkpoint without config",
                     [&](const std::string& v) {
                       long long n;
                       DDPM_TRY(parse_int("--image-size", v, 1, 4096, &n));
                       o.image_size = static_cast<int>(n);
                       return Status();
                     }});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  const char* synopsis = "ddpm convert INPUT -o OUT.ddpm [--type f32|f16|q8_0|q5_0|q4_1|q4_0] [--config config.json]\n"
                         "  INPUT: a diffusers folder (config.json + diffusion_pytorch_model.safetensors|bin, or unet/ +\n"
                         "         scheduler/), or a .safetensors/.bin/.pt/.ckpt file with --config";
  if (help) {
    print_usage(stdout, synopsis, options);
    return 0;
  }
  if (s.ok() && positional.size() != 1) s = errorf("expected one INPUT (see --help)");
  if (s.ok() && o.output.empty()) s = errorf("missing -o OUT.ddpm");
  if (s.ok()) s = apply_common_settings(common);
  if (s.ok()) s = check_calibration_settings(calibration, o.type);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm convert: %s\n", s.message().c_str());
    return 2;
  }
  o.input = positional[0];
  ConvertReport report;
  const bool calibrated = calibration.calibrate && dtype_traits(o.type).is_quantized;
  if (!calibrated) {
    s = convert_checkpoint(o, &report);
    if (!s.ok()) {
      std::fprintf(stderr, "ddpm convert: %s\n", s.message().c_str());
      return 1;
    }
  } else {
    // The calibration measures each configuration against the model run in f32, which it reads from a file: the
    // checkpoint is converted to a scratch f32 .ddpm, then re-typed from there exactly as `ddpm quantize` would
    // (convert --type T without calibration stores the same tensors as convert + quantize --no-calibrate).
    const auto start = std::chrono::steady_clock::now();
    // The output is checked against every input before the scratch conversion, which may take minutes.
    ConvertOptions resolved = o;
    std::string weights;
    s = resolve_convert_inputs(&resolved, &weights);
    if (s.ok()) s = check_distinct_paths(o.output, weights, "the checkpoint");
    if (s.ok()) s = check_distinct_paths(o.output, resolved.config, "the config");
    if (s.ok()) s = check_distinct_paths(o.output, resolved.scheduler_config, "the scheduler config");
    if (s.ok()) s = check_can_write(o.output);
    ConvertOptions f32 = o;
    f32.type = DType::F32;
    f32.keep.clear();
    f32.tensor_types.clear();
    f32.output = scratch_f32_path(o.output);
    RemoveOnSignal remove_scratch_on_signal(f32.output);
    if (s.ok()) s = convert_checkpoint(f32, &report);
    if (!s.ok()) {
      std::remove(f32.output.c_str());
      std::fprintf(stderr, "ddpm convert: %s\n", s.message().c_str());
      return 1;
    }
    quant::TypePolicy policy;
    policy.set_default_type(o.type);
    Status rules;  // checked as the options were parsed
    for (const std::string& k : o.keep) rules = rules.ok() ? policy.add_keep(k) : rules;
    for (const std::string& t : o.tensor_types) rules = rules.ok() ? policy.add_override(t) : rules;
    DDPM_ASSERT(rules.ok());
    const quant::RetypeReport from_checkpoint = std::move(report.retype);  // the source types, the checkpoint's size
    report.retype = quant::RetypeReport();
    const int code = calibrate_and_retype("convert", f32.output, report.weights_path, o.output, policy, calibration,
                                          common.threads, &report.retype);
    std::remove(f32.output.c_str());
    if (code != 0) return code;
    // The report speaks of the checkpoint, as without the calibration: an f16 tensor stays "f16 -> q8_0".
    report.retype.input_bytes = from_checkpoint.input_bytes;
    for (quant::TensorRetype& t : report.retype.tensors) {
      for (const quant::TensorRetype& source : from_checkpoint.tensors) {
        if (source.name != t.name) continue;
        t.from = source.from;
        t.bytes_from = source.bytes_from;
        if (t.to == t.from) t.relative_error = 0;
        break;
      }
    }
    report.recipe = policy.recipe();
    report.output_bytes = report.retype.output_bytes;
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  for (const std::string& note : report.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  for (const std::string& w : report.retype.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  std::printf("converted %s (%s) -> %s\n", report.weights_path.c_str(), report.format.c_str(), o.output.c_str());
  std::printf("  config %s%s%s\n", report.config_path.c_str(), report.scheduler_path.empty() ? "" : ", scheduler ",
              report.scheduler_path.c_str());
  std::printf("  %zu tensors, %lld parameters, %.1f MB (%s), %.2f s\n", report.tensors, (long long)report.parameters,
              report.output_bytes / 1e6, type.c_str(), report.seconds);
  bool quantised = false;
  for (const quant::TensorRetype& t : report.retype.tensors) quantised |= dtype_traits(t.to).is_quantized;
  if (quantised) {
    std::printf("  recipe: %s\n%s", report.recipe.c_str(), quant::format_retype_report(report.retype, !quiet).c_str());
  }
  return 0;
}

}  // namespace ddpm::tools
