// `ddpm info FILE`: metadata, tensor summary, size and parameter count of a .ddpm model.
#include <cstdio>
#include <map>

#include "model/model.h"
#include "tools/options.h"
#include "tools/subcommands.h"

namespace ddpm::tools {

int run_info(int argc, char** argv) {
  std::vector<Option> options;
  bool all_tensors = false;
  options.push_back({"tensors", 0, "", "list every tensor", [&](const std::string&) {
                       all_tensors = true;
                       return Status();
                     }});
  std::vector<std::string> positional;
  bool help = false;
  Status s = parse_options(argc, argv, 2, options, &positional, &help);
  if (help) {
    print_usage(stdout, "ddpm info FILE.ddpm [--tensors]", options);
    return 0;
  }
  if (s.ok() && positional.size() != 1) s = errorf("expected one FILE (see --help)");
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm info: %s\n", s.message().c_str());
    return 2;
  }
  DdpmFile file;
  s = DdpmFile::open(positional[0], &file, true);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm info: %s\n", s.message().c_str());
    return 1;
  }
  std::printf("%s: ddpm.cpp model, %.2f MB, %zu tensors\n", positional[0].c_str(), file.file_size() / 1e6,
              file.tensors().size());
  std::printf("metadata:\n");
  for (const auto& [key, value] : file.metadata().entries()) {
    std::printf("  %-32s %s\n", key.c_str(), value.describe(key.find("config") != std::string::npos ? 2000 : 120).c_str());
  }
  int64_t parameters = 0;
  std::map<std::string, std::pair<int, int64_t>> by_type;
  for (const DdpmTensorInfo& t : file.tensors()) {
    parameters += t.numel();
    by_type[dtype_name(t.dtype)].first++;
    by_type[dtype_name(t.dtype)].second += static_cast<int64_t>(t.bytes);
  }
  std::printf("tensors: %zu, parameters: %lld\n", file.tensors().size(), (long long)parameters);
  for (const auto& [type, count_bytes] : by_type) {
    std::printf("  %-5s %5d tensors, %.2f MB\n", type.c_str(), count_bytes.first, count_bytes.second / 1e6);
  }
  if (all_tensors) {
    for (const DdpmTensorInfo& t : file.tensors()) {
      std::string shape;
      for (int i = 0; i < t.rank; ++i) shape += (i ? " x " : "") + std::to_string(t.shape[i]);
      std::printf("  %-60s %-4s %s\n", t.name.c_str(), dtype_name(t.dtype), shape.c_str());
    }
  }
  ModelInfo info;
  s = model_info_from_metadata(file.metadata(), positional[0], &info);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm info: %s\n", s.message().c_str());
    return 1;
  }
  std::printf("image: %lldx%lld, %lld channels; ", (long long)info.height, (long long)info.width, (long long)info.channels);
  if (info.class_count()) std::printf("%lld classes%s\n", (long long)info.class_count(), info.null_class ? " (with null class)" : "");
  else std::printf("unconditional\n");
  return 0;
}

}  // namespace ddpm::tools
