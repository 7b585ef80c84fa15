#include "tools/options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "io/atomic_file.h"
#include "kernels/registry.h"
#include "model/model.h"

namespace ddpm::tools {

void add_common_options(std::vector<Option>* options, CommonSettings* settings) {
  options->push_back({"threads", 't', "N", "worker threads (default: physical cores)", [settings](const std::string& v) {
                        long long n;
                        DDPM_TRY(parse_int("--threads", v, 1, 1024, &n));
                        settings->threads = static_cast<int>(n);
                        return Status();
                      }});
  options->push_back({"isa", 0, "LEVEL", "force a kernel level: auto|scalar|avx2|avx512|neon (default: auto)",
                      [settings](const std::string& v) {
                        settings->isa = v;
                        return Status();
                      }});
}

Status apply_common_settings(const CommonSettings& settings) {
  DDPM_TRY(kernels::init_from_environment());
  // The graph reads it where it decides (graph.cpp); a misspelt value would otherwise be ignored without a word.
  const char* stream = std::getenv("DDPM_STREAM_OUTPUTS");
  if (stream && std::strcmp(stream, "0") != 0 && std::strcmp(stream, "1") != 0) {
    return errorf("DDPM_STREAM_OUTPUTS: '%s' is not 0 or 1", stream);
  }
  // Allowed (benchmarks of oversubscription), but rarely what was meant: each extra thread only waits its turn.
  const int available = static_cast<int>(std::thread::hardware_concurrency());
  if (available > 0 && settings.threads > available) {
    std::fprintf(stderr, "warning: -t %d: this machine runs %d threads at once; more only slow the work down\n",
                 settings.threads, available);
  }
  if (settings.isa != "auto") return kernels::select(settings.isa.c_str()).with_context("--isa");
  return Status();
}

void add_int8_winograd_option(std::vector<Option>* options, std::string* mode) {
  options->push_back({"int8-winograd", 0, "MODE",
                      "auto|on|off: wide 3x3 convs of a quantised model by Winograd in 8 bits, ~1.2x faster for "
                      "+0.2-0.3 points of output error on q4 models, +0.85 on q8_0 (default: auto = as ddpm quantize's "
                      "calibration chose; for files without one, on for q4_0/q4_1 models)",
                      [mode](const std::string& v) {
                        if (v != "auto" && v != "on" && v != "off")
                          return errorf("--int8-winograd: '%s' is not auto, on or off", v.c_str());
                        *mode = v;
                        return Status();
                      }});
}

void apply_int8_winograd(const std::string& mode, Model* model) {
  if (mode != "auto") model->set_int8_winograd(mode == "on");
  if (mode == "on") {
    bool block_typed = false;
    for (const DdpmTensorInfo& t : model->file().tensors()) block_typed |= dtype_traits(t.dtype).is_quantized;
    if (!block_typed) {
      std::fprintf(stderr, "note: --int8-winograd on: the model has no block-typed (q8_0 …) weights, so nothing runs "
                           "in 8 bits\n");
    }
  }
}

Status parse_options(int argc, char** argv, int first, const std::vector<Option>& options,
                     std::vector<std::string>* positional, bool* help_requested) {
  *help_requested = false;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      *help_requested = true;
      continue;
    }
    if (arg.size() < 2 || arg[0] != '-' || arg == "--") {
      positional->push_back(arg);
      continue;
    }
    std::string name, value;
    bool has_inline_value = false;
    const Option* match = nullptr;
    if (arg[1] == '-') {
      name = arg.substr(2);
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_inline_value = true;
      }
      for (const Option& o : options) {
        if (o.long_name == name) match = &o;
      }
      name = "--" + name;
    } else {
      if (arg.size() != 2) return errorf("unknown option '%s' (see --help)", arg.c_str());
      for (const Option& o : options) {
        if (o.short_name == arg[1]) match = &o;
      }
      name = arg;
    }
    if (!match) return errorf("unknown option '%s' (see --help)", arg.c_str());
    if (match->value_hint.empty()) {
      if (has_inline_value) return errorf("option %s takes no value", name.c_str());
    } else if (!has_inline_value) {
      if (i + 1 >= argc) return errorf("option %s needs a value (%s)", name.c_str(), match->value_hint.c_str());
      value = argv[++i];
    }
    DDPM_TRY(match->apply(value));
  }
  return Status();
}

void print_usage(FILE* out, const char* synopsis, const std::vector<Option>& options) {
  std::fprintf(out, "usage: %s\n\noptions:\n", synopsis);
  for (const Option& o : options) {
    std::string left = o.short_name ? std::string("-") + o.short_name + ", " : "    ";
    left += "--" + o.long_name;
    if (!o.value_hint.empty()) left += " " + o.value_hint;
    std::fprintf(out, "  %-28s %s\n", left.c_str(), o.help.c_str());
  }
  std::fprintf(out, "  %-28s %s\n", "-h, --help", "show this help");
}

Status parse_int(const std::string& option, const std::string& value, long long min, long long max, long long* out) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0') return errorf("%s: '%s' is not an integer", option.c_str(), value.c_str());
  if (errno == ERANGE) return errorf("%s: %s is outside %lld..%lld", option.c_str(), value.c_str(), min, max);
  if (v < min || v > max) return errorf("%s: %lld is outside %lld..%lld", option.c_str(), v, min, max);
  *out = v;
  return Status();
}

Status parse_float(const std::string& option, const std::string& value, double min, double max, double* out) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v)) {
    return errorf("%s: '%s' is not a number", option.c_str(), value.c_str());
  }
  if (v < min || v > max) return errorf("%s: %g is outside %g..%g", option.c_str(), v, min, max);
  *out = v;
  return Status();
}

Status check_file_roles(const std::vector<FileRole>& outputs, const std::vector<FileRole>& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].path.empty()) continue;
    for (const FileRole& input : inputs) DDPM_TRY(check_distinct_paths(outputs[i].path, input.path, input.role));
    for (size_t j = 0; j < i; ++j) DDPM_TRY(check_distinct_paths(outputs[i].path, outputs[j].path, outputs[j].role));
  }
  return Status();
}

}  // namespace ddpm::tools
