// Helpers shared by the tests: random data, relative L2 error, and running a graph under every kernel level.
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ddpm/graph.h"
#include "ddpm/ops.h"
#include "ddpm/threadpool.h"
#include "kernels/registry.h"
#include "model/ddpm_file.h"
#include "model/model.h"
#include "model/unet_config.h"
#include "ops/conv_winograd.h"

namespace ddpm::test {

// Starts `$DDPM_BIN ARGS` in the background with stdout and stderr going to `output_path` (truncated), exec'd by the
// shell so that the pid is the command's own: a signal sent to it reaches ddpm, not a shell. -1 if fork fails.
inline pid_t spawn_ddpm(const std::string& args, const std::string& output_path) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  const int fd = open(output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 1);
  dup2(fd, 2);
  const std::string command = std::string("exec ") + std::getenv("DDPM_BIN") + " " + args;
  execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
  _exit(127);
}

// f32 results against a double-precision reference: sums of up to a few thousand products keep a relative L2
// error near 1e-7; 1e-5 leaves room for FMA-vs-separate rounding and long reductions, and still catches any
// indexing mistake (those give errors of order 1).
constexpr double kF32RelativeL2 = 1e-5;

inline std::vector<float> random_vector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline double relative_l2(const float* actual, const double* expected, size_t n) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = actual[i] - expected[i];
    diff += d * d;
    norm += expected[i] * expected[i];
  }
  return norm == 0.0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

inline double relative_l2(const float* actual, const float* expected, size_t n) {
  std::vector<double> e(expected, expected + n);
  return relative_l2(actual, e.data(), n);
}

// Restores the kernel level chosen before the test when it goes out of scope.
struct IsaGuard {
  const kernels::KernelTable* saved = &kernels::active();
  ~IsaGuard() { (void)kernels::select(saved->isa_name); }
};

// Every kernel table this CPU can run (reference first).
inline std::vector<const kernels::KernelTable*> all_levels() {
  const kernels::KernelTable* tables[8];
  const int n = kernels::available_tables(tables, 8);
  return std::vector<const kernels::KernelTable*>(tables, tables + n);
}

// A U-Net of `info` with random f32 weights (normal, scaled by fan-in; norm scales around 1) written to `path`.
inline Status write_random_unet(const ModelInfo& info, const std::string& path, uint32_t seed) {
  std::vector<ParamSpec> specs;
  DDPM_TRY(unet_parameter_specs(info.unet, &specs));
  DdpmMetadata metadata;
  DDPM_TRY(model_info_to_metadata(info, &metadata));
  DdpmWriter writer;
  writer.set_metadata(metadata);
  std::vector<std::vector<float>> weights;
  std::mt19937 rng(seed);
  for (const ParamSpec& spec : specs) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    const bool norm_scale = spec.shape.size() == 1 && spec.name.find("norm") != std::string::npos &&
                            spec.name.find("weight") != std::string::npos;
    std::normal_distribution<float> dist(norm_scale ? 1.0f : 0.0f,
                                         spec.shape.size() > 1 ? 1.0f / std::sqrt(float(n / spec.shape[0])) : 0.05f);
    weights.emplace_back(static_cast<size_t>(n));
    for (float& v : weights.back()) v = dist(rng);
    DDPM_TRY(writer.add_tensor(spec.name, DType::F32, static_cast<int>(spec.shape.size()), spec.shape.data(),
                               weights.back().data()));
  }
  return writer.finish(path);
}

// A two-level U-Net without attention: `size`² images of `channels`, `width` channels at both levels, one resnet
// per block.
inline ModelInfo two_level_unet(int64_t size, int64_t channels, int64_t width, int64_t groups) {
  ModelInfo info;
  info.unet.sample_size = {size};
  info.unet.in_channels = channels;
  info.unet.out_channels = channels;
  info.unet.block_out_channels = {width, width};
  info.unet.down_block_types = {"DownBlock2D", "DownBlock2D"};
  info.unet.up_block_types = {"UpBlock2D", "UpBlock2D"};
  info.unet.layers_per_block = 1;
  info.unet.norm_num_groups = groups;
  info.height = info.width = size;
  info.channels = channels;
  return info;
}

// Wide enough for 8-bit Winograd (128 input channels, 16×16 outputs), small enough for a test (2.7 M weights).
inline Status write_wide_unet(const std::string& path) {
  return write_random_unet(two_level_unet(16, 3, 128, 32), path, 11);
}

// Lets 8-bit Winograd take narrower convs (the default takes 128 input channels or more) while it lives: the
// tests of the path run it on small shapes.
struct Int8WinogradMinChannels {
  int64_t saved = conv2d_int8_winograd_min_channels();
  explicit Int8WinogradMinChannels(int64_t channels) { set_conv2d_int8_winograd_min_channels(channels); }
  ~Int8WinogradMinChannels() { set_conv2d_int8_winograd_min_channels(saved); }
};

}  // namespace ddpm::test
