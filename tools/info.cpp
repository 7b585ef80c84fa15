// `ddpm info PATH`: describes a model without converting or running it.
//   .ddpm file:       metadata, tensor summary, size and parameter count.
//   checkpoint:       (.safetensors, torch .bin/.pt/.pth/.ckpt, or a diffusers folder) container, the state dict
//                     chosen inside it, key layout and renames, tensors grouped by module (--tensors lists each
//                     with dtype and shape), parameter count, the U-Net config `ddpm convert` would use (config.json
//                     beside the weights, --config, or the one inferred from an original-DDPM checkpoint's shapes)
//                     and whether the tensors match it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <set>

#include "ddpm/graph.h"
#include "io/json.h"
#include "io/torch_checkpoint.h"
#include "model/checkpoint.h"
#include "model/layouts.h"
#include "model/model.h"
#include "model/unet.h"
#include "tools/options.h"
#include "tools/subcommands.h"

namespace ddpm::tools {
namespace {

struct InfoSettings {
  bool all_tensors = false;
  std::string config;  // --config
  CheckpointOptions checkpoint;
  int image_size = 0;
};

bool is_directory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Whether the file starts with the .ddpm magic; anything else is handed to the checkpoint reader, except files
// named *.ddpm, whose reader explains best what they look like instead.
bool is_ddpm_file(const std::string& path) {
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".ddpm") == 0) return true;
  // POSIX read: libstdc++'s filebuf throws when read() fails (a directory), where this simply says no.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char magic[4] = {};
  const bool ddpm = ::read(fd, magic, 4) == 4 && std::memcmp(magic, "DDPM", 4) == 0;
  ::close(fd);
  return ddpm;
}

int info_ddpm(const std::string& path, const InfoSettings& settings) {
  DdpmFile file;
  Status s = DdpmFile::open(path, &file, true);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm info: %s\n", s.message().c_str());
    return 1;
  }
  std::string architecture;
  (void)file.metadata().get_string("ddpm.architecture", &architecture);
  const bool checkpoint = architecture == kTrainingCheckpointArchitecture;
  std::printf("%s: ddpm.cpp %s, %.2f MB, %zu tensors\n", path.c_str(), checkpoint ? "training checkpoint" : "model",
              file.file_size() / 1e6, file.tensors().size());
  std::printf("metadata:\n");
  for (const auto& [key, value] : file.metadata().entries()) {
    std::printf("  %-32s %s\n", key.c_str(), value.describe(key.find("config") != std::string::npos ? 2000 : 120).c_str());
  }
  int64_t parameters = 0;
  struct TypeTotals {
    int tensors = 0;
    int64_t parameters = 0;
    uint64_t bytes = 0;
  };
  std::map<DType, TypeTotals> by_type;  // in dtype-code order: f32, f16, i32, then the block types
  for (const DdpmTensorInfo& t : file.tensors()) {
    parameters += t.numel();
    TypeTotals& totals = by_type[t.dtype];
    totals.tensors++;
    totals.parameters += t.numel();
    totals.bytes += t.bytes;
  }
  std::printf("tensors: %zu, parameters: %lld\n", file.tensors().size(), (long long)parameters);
  for (const auto& [type, totals] : by_type) {
    // Bits per weight include block scales and row padding, so they say what the type costs in this model.
    std::printf("  %-5s %5d tensors, %10lld parameters, %8.2f MB, %5.2f bits/weight%s\n", dtype_name(type),
                totals.tensors, (long long)totals.parameters, totals.bytes / 1e6,
                totals.parameters ? 8.0 * static_cast<double>(totals.bytes) / static_cast<double>(totals.parameters) : 0.0,
                dtype_traits(type).is_quantized ? " (block-quantised)" : "");
  }
  int tap_major = 0;
  for (const DdpmTensorInfo& t : file.tensors()) tap_major += t.tap_major;
  if (tap_major > 0) std::printf("  %d block-typed conv weights with rows tap-major (docs/FORMAT.md §6.8)\n", tap_major);
  if (by_type.end() != std::find_if(by_type.begin(), by_type.end(),
                                    [](const auto& entry) { return dtype_traits(entry.first).is_quantized; })) {
    std::printf("  3x3 convs by 8-bit Winograd: %s by default%s (--int8-winograd; for 3x3 convs with 128+ input "
                "channels and 16x16 outputs or more; docs/QUANT.md)\n",
                Model::prefers_int8_winograd(file) ? "on" : "off",
                file.metadata().has("quant.int8_winograd") ? ", as ddpm quantize's calibration chose" : "");
  }
  if (settings.all_tensors) {
    for (const DdpmTensorInfo& t : file.tensors()) {
      std::string shape;
      for (int i = 0; i < t.rank; ++i) shape += (i ? " x " : "") + std::to_string(t.shape[i]);
      std::printf("  %-60s %-5s %s%s\n", t.name.c_str(), dtype_name(t.dtype), shape.c_str(),
                  t.tap_major ? " (tap-major)" : "");
    }
  }
  // Other networks (the trainer's test presets, its checkpoints) are described above; what they are for is all
  // that is left to say.
  if (checkpoint) {
    std::printf("a training checkpoint: `ddpm train --resume %s` continues the run, with --export-only -o "
                "MODEL.ddpm it writes the EMA weights as a model\n", path.c_str());
    return 0;
  }
  if (architecture != "unet2d") {
    std::printf("network: '%s', not a U-Net: generate, eval and forward run U-Nets ('unet2d') only\n",
                architecture.c_str());
    return 0;
  }
  ModelInfo info;
  s = model_info_from_metadata(file.metadata(), path, &info);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm info: %s\n", s.message().c_str());
    return 1;
  }
  std::printf("image: %lldx%lld, %lld channel%s; ", (long long)info.height, (long long)info.width,
              (long long)info.channels, info.channels == 1 ? "" : "s");
  if (info.class_count()) std::printf("%lld classes%s\n", (long long)info.class_count(), info.null_class ? " (with null class)" : "");
  else std::printf("unconditional\n");
  return 0;
}

// Where a diffusers folder keeps its weights and config (root or unet/), in the converter's order of preference.
Status resolve_folder(const std::string& dir, std::string* weights, std::string* config) {
  for (const std::string& model_dir : {dir, dir + "/unet"}) {
    if (!is_file(model_dir + "/config.json")) continue;
    for (const char* name : {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                             "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"}) {
      if (is_file(model_dir + "/" + name)) {
        *weights = model_dir + "/" + name;
        *config = model_dir + "/config.json";
        return Status();
      }
    }
    return errorf("%s: has config.json but no diffusion_pytorch_model.{safetensors,bin}", model_dir.c_str());
  }
  return errorf("%s: not a diffusers model folder (no config.json at its root or in unet/)", dir.c_str());
}

Status read_config(const std::string& path, UNetConfig* out) {
  JsonValue json;
  DDPM_TRY(read_json_file(path, &json));
  Status s = UNetConfig::from_json(json, out);
  if (s.ok()) s = out->validate();
  if (!s.ok()) return errorf("%s: %s", path.c_str(), s.message().c_str());
  return Status();
}

// Module a tensor belongs to, for the summary: "down_blocks.1.attentions.0.to_q.weight" → "down_blocks.1",
// "conv_in.weight" → "conv_in".
std::string module_of(const std::string& name) {
  const size_t dot = name.find('.');
  if (dot == std::string::npos) return name;
  const size_t next = name.find('.', dot + 1);
  const std::string second = name.substr(dot + 1, next == std::string::npos ? std::string::npos : next - dot - 1);
  const bool numbered = !second.empty() && second.find_first_not_of("0123456789") == std::string::npos;
  return numbered && next != std::string::npos ? name.substr(0, next) : name.substr(0, dot);
}

std::string join_limited(const std::vector<std::string>& items, size_t limit) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < limit; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > limit) s += " (+" + std::to_string(items.size() - limit) + " more)";
  return s;
}

// What a torch file holds around its state dict: the root object and the dicts of tensors the reader could pick.
void print_torch_container(const CheckpointReader& reader, const InfoSettings& settings) {
  TorchCheckpoint checkpoint;
  if (!read_torch_checkpoint(reader.file().data(), reader.file().size(), reader.path(), &checkpoint).ok()) return;
  const PickleValue& root = *checkpoint.root;
  std::string line = root.describe();
  if (root.is_dict()) {
    std::vector<std::string> keys;
    for (size_t i = 0; i < root.dict_size(); ++i) {
      const PickleValue& key = root.dict_key(i);
      keys.push_back(key.kind == PickleKind::String ? key.text : key.describe());
    }
    bool tensors_at_root = false;
    for (size_t i = 0; i < root.dict_size() && !tensors_at_root; ++i) {
      tensors_at_root = root.dict_value(i).kind == PickleKind::Tensor;
    }
    if (!tensors_at_root) line += ": " + join_limited(keys, 8);
  }
  std::printf("  pickle root:   %s\n", line.c_str());
  std::vector<SourceTensor> tensors;
  std::vector<std::string> candidates;
  const Status s = collect_tensors(root, settings.checkpoint.key_path, &tensors, &candidates);
  if (settings.checkpoint.key_path.empty() && !candidates.empty()) {
    std::string chosen;
    for (const std::string& c : candidates) chosen += (chosen.empty() ? "" : ", ") + (c.empty() || c == "/" ? "(root)" : c);
    std::printf("  state dicts:   %s%s\n", chosen.c_str(),
                candidates.size() > 1 && s.ok() ? " (picked by name; --key PATH to choose)" : "");
  } else if (!settings.checkpoint.key_path.empty()) {
    std::printf("  state dict:    %s (--key)\n", settings.checkpoint.key_path.c_str());
  }
}

int info_checkpoint(const std::string& input, const InfoSettings& settings) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "ddpm info: %s\n", s.message().c_str());
    return 1;
  };
  std::string weights = input, config = settings.config;
  const bool folder = is_directory(input);
  if (folder) {
    std::string folder_config;
    Status s = resolve_folder(input, &weights, &folder_config);
    if (!s.ok()) return fail(s);
    if (config.empty()) config = folder_config;
  } else if (config.empty()) {
    const size_t slash = input.find_last_of('/');
    const std::string sibling = (slash == std::string::npos ? std::string(".") : input.substr(0, slash)) + "/config.json";
    if (is_file(sibling)) config = sibling;
  }
  CheckpointReader reader;
  Status s = reader.open(weights, settings.checkpoint);
  if (!s.ok()) return fail(s);
  // A config that cannot be read is the whole answer: said before any description, in one line.
  UNetConfig unet;
  if (!config.empty()) {
    s = read_config(config, &unet);
    if (!s.ok()) return fail(s);
  }

  const std::vector<SourceTensor>& tensors = reader.tensors();
  int64_t parameters = 0;
  std::map<std::string, std::pair<int, uint64_t>> by_dtype;
  for (const SourceTensor& t : tensors) {
    parameters += t.numel();
    auto& entry = by_dtype[source_dtype_name(t.dtype)];
    entry.first++;
    entry.second += static_cast<uint64_t>(t.numel()) * static_cast<uint64_t>(source_dtype_size(t.dtype));
  }
  std::printf("%s: %s checkpoint, %.2f MB, %zu tensors, %lld parameters\n", weights.c_str(), reader.format().c_str(),
              reader.file().size() / 1e6, tensors.size(), (long long)parameters);
  if (folder) std::printf("  folder:        %s (diffusers layout)\n", input.c_str());
  if (reader.format() != "safetensors") print_torch_container(reader, settings);
  std::printf("  key layout:    %s", key_layout_name(reader.layout()));
  if (!reader.renamed().empty()) {
    const auto& first = reader.renamed().front();
    std::printf(", %zu names normalised to diffusers keys (e.g. %s -> %s)", reader.renamed().size(), first.first.c_str(),
                first.second.c_str());
  }
  std::printf("\n  dtypes:       ");
  for (const auto& [name, count_bytes] : by_dtype) {
    std::printf(" %s: %d tensors, %.2f MB;", name.c_str(), count_bytes.first, count_bytes.second / 1e6);
  }
  std::printf("\n");

  // Tensors: every one with --tensors, otherwise one line per module in order of first appearance.
  if (settings.all_tensors) {
    std::printf("tensors:\n");
    for (const SourceTensor& t : tensors) {
      std::printf("  %-60s %-4s %s\n", t.name.c_str(), source_dtype_name(t.dtype), shape_text(t.shape).c_str());
    }
  } else {
    std::vector<std::string> order;
    std::map<std::string, std::pair<int, int64_t>> modules;
    for (const SourceTensor& t : tensors) {
      const std::string m = module_of(t.name);
      if (!modules.count(m)) order.push_back(m);
      modules[m].first++;
      modules[m].second += t.numel();
    }
    std::printf("tensors by module (--tensors lists each with dtype and shape):\n");
    for (const std::string& m : order) {
      std::printf("  %-40s %4d tensors %12lld parameters\n", m.c_str(), modules[m].first, (long long)modules[m].second);
    }
  }

  // The config `ddpm convert` would use, and whether the tensors fit it.
  std::vector<std::string> notes;
  if (!config.empty()) {
    std::printf("config: %s\n", config.c_str());
  } else if (reader.layout() == KeyLayout::OriginalDdpm) {
    s = infer_original_ddpm_config(tensors, settings.image_size, &unet, &notes);
    if (!s.ok()) return fail(s.with_context(weights));
    std::printf("config: inferred from tensor shapes (original-DDPM layout; --config overrides)\n");
    for (const std::string& n : notes) std::printf("  note: %s\n", n.c_str());
  } else {
    std::printf("config: none found (no config.json beside the weights); `ddpm convert` needs --config\n");
    return 0;
  }
  if (settings.image_size > 0) unet.sample_size = {settings.image_size};
  // One key per line, values compact: the whole config fits a screen.
  const JsonValue unet_json = unet.to_json();
  for (const JsonValue::Member& m : unet_json.members()) {
    std::printf("  %-24s %s\n", m.first.c_str(), to_json(m.second, false).c_str());
  }

  std::vector<ParamSpec> specs;
  s = unet_parameter_specs(unet, &specs);
  if (!s.ok()) return fail(s.with_context(config.empty() ? weights : config));
  std::vector<std::string> missing, misshaped, unexpected;
  std::set<std::string> wanted;
  int64_t needed = 0;
  for (const ParamSpec& spec : specs) {
    wanted.insert(spec.name);
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    needed += n;
    const SourceTensor* t = reader.find(spec.name);
    if (!t) {
      missing.push_back(spec.name + " " + shape_text(spec.shape));
      continue;
    }
    const bool squeezable = spec.shape.size() == 2 && t->shape.size() == 4 && t->shape[0] == spec.shape[0] &&
                            t->shape[1] == spec.shape[1] && t->shape[2] == 1 && t->shape[3] == 1;
    if (t->shape != spec.shape && !squeezable) {
      misshaped.push_back(spec.name + " is " + shape_text(t->shape) + ", expected " + shape_text(spec.shape));
    }
  }
  for (const SourceTensor& t : tensors) {
    if (!wanted.count(t.name)) unexpected.push_back(t.name);
  }
  if (missing.empty() && misshaped.empty() && unexpected.empty()) {
    std::printf("match: every tensor the U-Net needs is present with its shape (%zu tensors, %lld parameters)\n",
                specs.size(), (long long)needed);
  } else {
    std::printf("match: NO, `ddpm convert` would refuse this checkpoint with this config:\n");
    if (!missing.empty()) std::printf("  missing %zu: %s\n", missing.size(), join_limited(missing, 5).c_str());
    if (!misshaped.empty()) std::printf("  wrong shape %zu: %s\n", misshaped.size(), join_limited(misshaped, 5).c_str());
    if (!unexpected.empty()) std::printf("  unexpected %zu: %s\n", unexpected.size(), join_limited(unexpected, 5).c_str());
  }
  return 0;
}

}  // namespace

int run_info(int argc, char** argv) {
  std::vector<Option> options;
  InfoSettings settings;
  options.push_back({"tensors", 0, "", "list every tensor", [&](const std::string&) {
                       settings.all_tensors = true;
                       return Status();
                     }});
  options.push_back({"config", 0, "FILE", "checkpoints: the config.json to check the tensors against",
                     [&](const std::string& v) {
                       settings.config = v;
                       return Status();
                     }});
  options.push_back({"key", 0, "PATH", "torch files: dotted path of the state dict (default: auto)",
                     [&](const std::string& v) {
                       settings.checkpoint.key_path = v;
                       return Status();
                     }});
  options.push_back({"strip-prefix", 0, "PREFIX", "remove PREFIX from tensor names (default: auto)",
                     [&](const std::string& v) {
                       settings.checkpoint.strip_prefix = v;
                       return Status();
                     }});
  options.push_back({"image-size", 0, "N", "training resolution of an original-DDPM checkpoint without config",
                     [&](const std::string& v) {
                       long long n;
                       DDPM_TRY(parse_int("--image-size", v, 1, 4096, &n));
                       settings.image_size = static_cast<int>(n);
                       return Status();
                     }});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout,
                "ddpm info PATH [--tensors]\n"
                "  PATH: a .ddpm model, a .safetensors/.bin/.pt/.pth/.ckpt checkpoint or a diffusers folder\n"
                "        (checkpoints are described without converting them)",
                options);
    return 0;
  }
  if (s.ok() && positional.size() != 1) s = errorf("expected one PATH (see --help)");
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm info: %s\n", s.message().c_str());
    return 2;
  }
  const std::string& path = positional[0];
  if (!is_directory(path) && !is_file(path)) {
    std::fprintf(stderr, "ddpm info: %s: no such file or folder\n", path.c_str());
    return 1;
  }
  if (!is_directory(path) && is_ddpm_file(path)) {
    // A .ddpm file carries its config: the checkpoint options would be silently ignored.
    const char* ignored = nullptr;
    if (!settings.config.empty()) ignored = "--config";
    if (!settings.checkpoint.key_path.empty()) ignored = "--key";
    if (!settings.checkpoint.strip_prefix.empty()) ignored = "--strip-prefix";
    if (settings.image_size > 0) ignored = "--image-size";
    if (ignored) {
      std::fprintf(stderr, "ddpm info: %s applies to checkpoints, not to a .ddpm model (%s)\n", ignored, path.c_str());
      return 2;
    }
    return info_ddpm(path, settings);
  }
  return info_checkpoint(path, settings);
}

}  // namespace ddpm::tools
