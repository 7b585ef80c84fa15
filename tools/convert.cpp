// `ddpm convert INPUT -o OUT.ddpm [--type f32|f16|q8_0|q5_0|q4_1|q4_0] [--config config.json] [--scheduler-config …]`
#include <cstdio>

#include "model/convert.h"
#include "quant/policy.h"
#include "tools/options.h"
#include "tools/subcommands.h"

namespace ddpm::tools {

int run_convert(int argc, char** argv) {
  ConvertOptions o;
  CommonSettings common;
  std::string type = "f32";
  bool quiet = false;
  std::vector<Option> options;
  options.push_back({"output", 'o', "OUT.ddpm", "output model file (required)", [&](const std::string& v) {
                       o.output = v;
                       return Status();
                     }});
  options.push_back({"type", 0, "T",
                     "weight type: " + quant::weight_type_list() +
                         " (default f32). f16: every matrix, norms and biases stay f32; block types: conv and linear "
                         "weights, not conv_in/conv_out/embeddings; under q5_0/q4_1/q4_0 the tensors that carry most "
                         "of the error go up a type, as with ddpm quantize (see its --help), but without its calibration: "
                         "convert to f32, then quantize, to have it",
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
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm convert: %s\n", s.message().c_str());
    return 2;
  }
  o.input = positional[0];
  ConvertReport report;
  s = convert_checkpoint(o, &report);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm convert: %s\n", s.message().c_str());
    return 1;
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
