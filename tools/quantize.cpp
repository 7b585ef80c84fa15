// `ddpm quantize IN.ddpm OUT.ddpm --type T [--keep REGEX]… [--tensor-type REGEX=TYPE]…`
#include <cstdio>

#include "quant/retype.h"
#include "tools/options.h"
#include "tools/subcommands.h"

namespace ddpm::tools {

int run_quantize(int argc, char** argv) {
  quant::TypePolicy policy;
  std::string type;
  bool quiet = false;
  std::vector<Option> options;
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
                "  Under q8_0 the last up block's resnet shortcuts and conv2 stay f16 ('resnets=q8_0' undoes it).\n"
                "  Regexes (ECMAScript) are searched in tensor names; --tensor-type is tried before --keep",
                options);
    return 0;
  }
  if (s.ok() && positional.size() != 2) s = errorf("expected IN.ddpm and OUT.ddpm (see --help)");
  if (s.ok() && type.empty()) s = errorf("missing --type (%s)", quant::weight_type_list().c_str());
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm quantize: %s\n", s.message().c_str());
    return 2;
  }
  quant::RetypeReport report;
  s = quant::retype_model(positional[0], positional[1], policy, &report);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm quantize: %s\n", s.message().c_str());
    return 1;
  }
  for (const std::string& w : report.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  const std::string text = quant::format_retype_report(report, !quiet);
  std::printf("quantized %s -> %s (%s)\n%s", positional[0].c_str(), positional[1].c_str(), policy.recipe().c_str(),
              text.c_str());
  return 0;
}

}  // namespace ddpm::tools
