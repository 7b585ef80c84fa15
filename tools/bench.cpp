// `ddpm bench ops`: times each op on the shapes of real DDPM U-Nets, at 1 thread and at N threads, and (when
// libopenblas is installed) the OpenBLAS sgemm of the equivalent im2col GEMM side by side. OpenBLAS is loaded with
// dlopen only here, for comparison; the library never links it. Convolutions also run with q8_0 / q4_0 weights.
// `ddpm bench unet`: the cifar10-32 U-Net forward at batch 1 and 8 (or --batch), 1 and N threads, for each --type of
// its conv and linear weights side by side, with the speed-up over f32 measured in the same run.
// `ddpm bench train`: training steps of a network preset on synthetic data, timed as bench/pytorch_unet.py times
// PyTorch (one warm-up step, then the median step: element n/2 of the sorted times), so the two compare directly.
#include <dlfcn.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "ddpm/graph.h"
#include "ddpm/ops.h"
#include "ddpm/threadpool.h"
#include "graph/profile.h"
#include "kernels/registry.h"
#include "model/model.h"
#include "model/unet.h"
#include "model/ddpm_file.h"
#include "ops/conv_winograd.h"
#include "quant/blocks.h"
#include "quant/policy.h"
#include "quant/retype.h"
#include "io/atomic_file.h"
#include "io/crc32c.h"
#include <unistd.h>
#include <sys/resource.h>
#include "tools/options.h"
#include "tools/subcommands.h"
#include "train/dataset.h"
#include "train/net.h"
#include "train/trainer.h"

namespace ddpm::tools {
namespace {

struct BenchSettings {
  CommonSettings common;
  long long repetitions = 0;  // 0: enough for ~0.3 s per case
  std::string filter;
  bool openblas = true;
  // bench unet: weight types side by side, each with its --int8-winograd choice ("auto", "on", "off").
  struct UNetVariant {
    DType type;
    std::string int8_winograd;
    bool f16_tier = true;  // q8_0: the policy's f16 layers (":no-tier" drops them, as a calibration may)
    std::string label() const {
      return dtype_name(type) + (int8_winograd == "auto" ? std::string() : ":" + int8_winograd) +
             (f16_tier ? "" : ":no-tier");
    }
  };
  std::vector<UNetVariant> types = {{DType::F32, "auto"}};
  std::string preset = "fashion-mnist";     // bench train
  long long batch = 0;                      // bench train: 0 is 64; bench unet: 0 is both 1 and 8
};

// A weight [rows, ...] as `type`: rows padded to whole blocks for block types (dtype.h), f16 or f32 as is.
// The stored bytes of a weight as `ddpm quantize` writes them (eligible conv weights tap-major).
std::vector<uint8_t> convert_weight(DType type, const std::vector<int64_t>& shape, const float* data) {
  const int rank = static_cast<int>(shape.size());
  std::vector<uint8_t> out(dtype_tensor_bytes(type, rank, shape.data()));
  const Status s = quant::encode_tensor("w", type, rank, shape.data(), data, out.data(), quant::ConvRows::kTapMajor);
  DDPM_ASSERT(s.ok());
  return out;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds per call of fn over `reps` runs after one warm-up; reps chosen from the warm-up when 0.
double time_it(const std::function<void()>& fn, long long reps) {
  const double t0 = now_seconds();
  fn();
  const double warm = now_seconds() - t0;
  if (reps <= 0) reps = std::clamp<long long>(static_cast<long long>(0.3 / std::max(warm, 1e-6)), 3, 200);
  std::vector<double> times;
  for (long long i = 0; i < reps; ++i) {
    const double s = now_seconds();
    fn();
    times.push_back(now_seconds() - s);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

constexpr int64_t kWinogradNever = std::numeric_limits<int64_t>::max();

struct Case {
  std::string op, shape;
  double flops;  // per run
  // Builds the graph on g with random data owned by `storage`.
  std::function<Tensor*(Graph& g, std::vector<std::vector<float>>& storage)> build;
  // The equivalent sgemm (M, N, K), or M == 0 when there is none.
  int64_t M = 0, N = 0, K = 0;
  // conv2d's Winograd rule while the case is planned and run: fewest tiles (kWinogradNever: off).
  int64_t winograd_min_tiles = kWinogradNever;
};

std::vector<float>& random_buffer(std::vector<std::vector<float>>& storage, int64_t n, uint32_t seed) {
  storage.emplace_back(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : storage.back()) v = dist(rng);
  return storage.back();
}

// winograd: the case runs conv2d's Winograd path (a model's frozen weights, any tile count); otherwise the GEMM.
Case conv_case(int64_t ci, int64_t co, int64_t hw, int stride, int k, DType type = DType::F32, bool winograd = false) {
  Case c;
  const int pad = k == 3 ? 1 : 0;
  const int64_t out = (hw + 2 * pad - k) / stride + 1;
  c.op = k == 3 ? (stride == 1 ? "conv3x3" : "conv3x3/s2") : "conv1x1";
  if (type != DType::F32) c.op = c.op + " " + dtype_name(type);
  if (winograd) {
    c.op += " winograd";
    c.winograd_min_tiles = 1;
  }
  c.shape = std::to_string(ci) + "->" + std::to_string(co) + " @" + std::to_string(hw) + "x" + std::to_string(hw);
  c.flops = 2.0 * co * ci * k * k * out * out;
  c.M = co;
  c.N = out * out;
  c.K = ci * k * k;
  c.build = [=](Graph& g, std::vector<std::vector<float>>& s) {
    Tensor* x = g.input("x", DType::F32, {1, ci, hw, hw});
    const float* weights = random_buffer(s, co * ci * k * k, 2).data();
    if (type != DType::F32) {
      // The converted bytes live in `storage` too, as floats' worth of bytes.
      const std::vector<uint8_t> bytes = convert_weight(type, {co, ci, k, k}, weights);
      s.emplace_back((bytes.size() + 3) / 4);
      std::memcpy(s.back().data(), bytes.data(), bytes.size());
      weights = s.back().data();
    }
    Tensor* w = g.param("w", type, {co, ci, k, k}, weights);
    w->flags |= kFlagFrozen;
    if (winograd && type != DType::F32) w->flags |= kFlagInt8Winograd;
    const int64_t shape[4] = {co, ci, k, k};
    if (quant::tap_major_eligible(type, 4, shape)) w->flags |= kFlagTapMajor;
    Tensor* b = g.param("b", DType::F32, {co}, random_buffer(s, co, 3).data());
    return conv2d(g, x, w, b, {stride, pad, pad, pad, pad});
  };
  return c;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  // The 3×3 convolutions of DDPM U-Nets (cifar10-32: 128/256 channels; Fashion-MNIST-size: 32/64 @ 28²).
  for (auto [ci, co, hw] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {128, 128, 32}, {256, 256, 16}, {256, 256, 8}, {512, 256, 16}, {64, 64, 28}, {32, 32, 28}, {1, 32, 28}}) {
    cases.push_back(conv_case(ci, co, hw, 1, 3));
  }
  // The same by Winograd F(2×2, 3×3) (GFLOP/s counts the direct convolution's multiply-adds).
  for (auto [ci, co, hw] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {128, 128, 32}, {256, 256, 16}, {256, 256, 8}, {256, 256, 4}, {512, 256, 16}, {64, 64, 28}, {32, 32, 28}}) {
    cases.push_back(conv_case(ci, co, hw, 1, 3, DType::F32, true));
  }
  cases.push_back(conv_case(128, 128, 32, 2, 3));
  cases.push_back(conv_case(384, 128, 32, 1, 1));
  // The same convolutions with block-quantised weights (integer dot products, activations quantised on the fly).
  for (DType type : {DType::Q8_0, DType::Q4_0}) {
    for (auto [ci, co, hw] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{128, 128, 32}, {256, 256, 16}, {256, 256, 8}}) {
      cases.push_back(conv_case(ci, co, hw, 1, 3, type));
    }
    cases.push_back(conv_case(128, 128, 32, 2, 3, type));
    cases.push_back(conv_case(384, 128, 32, 1, 1, type));
  }
  // Direct against 8-bit Winograd where the loader may choose either: the cifar10 widths, and the narrow layers of
  // a Fashion-MNIST-size U-Net, where the 16 GEMMs are too small for the transforms to pay.
  for (bool winograd : {false, true}) {
    // (128→128 @32 and 256→256 @16 direct are above.)
    for (auto [ci, co, hw] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {128, 128, 32}, {256, 256, 16}, {256, 128, 32}, {128, 64, 32}, {64, 128, 28}, {64, 64, 28}, {64, 32, 28},
             {32, 32, 28}, {64, 64, 64}}) {
      if (!winograd && ((ci == 128 && hw == 32 && co == 128) || (ci == 256 && hw == 16))) continue;
      cases.push_back(conv_case(ci, co, hw, 1, 3, DType::Q8_0, winograd));
    }
  }
  {
    Case c;
    c.op = "linear";
    c.shape = "256 tokens x 256->256";
    c.flops = 2.0 * 256 * 256 * 256;
    c.M = 256, c.N = 256, c.K = 256;
    c.build = [](Graph& g, std::vector<std::vector<float>>& s) {
      Tensor* x = g.input("x", DType::F32, {256, 256});
      Tensor* w = g.param("w", DType::F32, {256, 256}, random_buffer(s, 256 * 256, 4).data());
      Tensor* b = g.param("b", DType::F32, {256}, random_buffer(s, 256, 5).data());
      return linear(g, x, w, b);
    };
    cases.push_back(c);
  }
  {
    Case c;
    c.op = "attention";
    c.shape = "QK^T,softmax,PV 256x256 d=256";
    c.flops = 2.0 * 2 * 256 * 256 * 256;
    c.build = [](Graph& g, std::vector<std::vector<float>>&) {
      Tensor* q = g.input("q", DType::F32, {256, 256});   // [N, d]
      Tensor* kt = g.input("kt", DType::F32, {256, 256});  // [d, N]
      Tensor* vt = g.input("vt", DType::F32, {256, 256});  // [d, N]
      Tensor* p = softmax(g, scale(g, matmul(g, q, kt), 0.0625f));     // [N, N]
      return matmul(g, vt, permute(g, p, {1, 0}));                     // [d, N]
    };
    cases.push_back(c);
  }
  auto elementwise = [&](const char* name, int64_t c, int64_t hw, double flops_per_element,
                         std::function<Tensor*(Graph&, Tensor*, std::vector<std::vector<float>>&)> op) {
    Case k;
    k.op = name;
    k.shape = std::to_string(c) + " @" + std::to_string(hw) + "x" + std::to_string(hw);
    k.flops = flops_per_element * c * hw * hw;
    k.build = [=](Graph& g, std::vector<std::vector<float>>& s) { return op(g, g.input("x", DType::F32, {1, c, hw, hw}), s); };
    cases.push_back(k);
  };
  elementwise("group_norm+silu", 128, 32, 8, [](Graph& g, Tensor* x, std::vector<std::vector<float>>& s) {
    Tensor* gamma = g.param("g", DType::F32, {128}, random_buffer(s, 128, 6).data());
    Tensor* beta = g.param("b", DType::F32, {128}, random_buffer(s, 128, 7).data());
    return group_norm(g, x, 32, 1e-5f, gamma, beta, true);
  });
  elementwise("silu", 128, 32, 4, [](Graph& g, Tensor* x, std::vector<std::vector<float>>&) { return silu(g, x); });
  elementwise("add (broadcast [B,C,1,1])", 128, 32, 1, [](Graph& g, Tensor* x, std::vector<std::vector<float>>& s) {
    return add(g, x, g.param("e", DType::F32, {1, 128, 1, 1}, random_buffer(s, 128, 8).data()));
  });
  elementwise("concat", 128, 32, 0, [](Graph& g, Tensor* x, std::vector<std::vector<float>>&) {
    return concat_channels(g, x, g.input("y", DType::F32, {1, 128, 32, 32}));
  });
  elementwise("upsample2x", 256, 16, 0, [](Graph& g, Tensor* x, std::vector<std::vector<float>>&) { return upsample_nearest2x(g, x); });
  elementwise("avg_pool2x", 256, 16, 1, [](Graph& g, Tensor* x, std::vector<std::vector<float>>&) { return avg_pool2x(g, x); });
  return cases;
}

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
using SetThreadsFn = void (*)(int);

struct OpenBlas {
  void* handle = nullptr;
  SgemmFn sgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
  OpenBlas() {
    for (const char* name : {"libopenblas.so.0", "libopenblas.so", "libblas.so.3"}) {
      handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (handle) break;
    }
    if (!handle) return;
    sgemm = reinterpret_cast<SgemmFn>(dlsym(handle, "cblas_sgemm"));
    set_threads = reinterpret_cast<SetThreadsFn>(dlsym(handle, "openblas_set_num_threads"));
    if (!sgemm) {
      dlclose(handle);
      handle = nullptr;
    }
  }
  ~OpenBlas() {
    if (handle) dlclose(handle);
  }
};

int bench_ops(const BenchSettings& settings) {
  const std::vector<Case> cases = all_cases();
  if (!settings.filter.empty() &&
      std::none_of(cases.begin(), cases.end(), [&](const Case& c) { return c.op.find(settings.filter) != std::string::npos; })) {
    std::fprintf(stderr, "ddpm bench: --filter '%s' matches no op\n", settings.filter.c_str());
    return 2;
  }
  const int max_threads = settings.common.threads > 0 ? settings.common.threads : ThreadPool::physical_cores();
  std::vector<int> thread_counts = {1};
  if (max_threads > 1) thread_counts.push_back(max_threads);
  OpenBlas blas;
  const bool use_blas = settings.openblas && blas.sgemm;
  std::printf("ddpm bench ops — kernels: %s, threads: %d%s\n", kernels::active().isa_name, max_threads,
              use_blas ? ", OpenBLAS sgemm on the equivalent im2col GEMM alongside"
                       : (settings.openblas ? " (libopenblas not found: apt-get install libopenblas0 to compare)" : ""));
  std::printf("%-26s %-30s %3s %10s %9s", "op", "shape", "thr", "ms", "GFLOP/s");
  if (use_blas) std::printf(" %12s %9s", "blas GFLOP/s", "vs blas");
  std::printf("\n");
  // Our kernels are timed for every case first and OpenBLAS afterwards: OpenBLAS's idle threads keep spinning
  // for a while after each call and would steal the cores from ours if the two were interleaved.
  struct Row {
    const Case* c;
    int threads;
    double seconds, blas_seconds;
  };
  std::vector<Row> rows;
  for (const Case& c : cases) {
    if (!settings.filter.empty() && c.op.find(settings.filter) == std::string::npos) continue;
    std::vector<std::vector<float>> storage;
    const int64_t saved_min_tiles = conv2d_winograd_min_tiles();
    const int64_t saved_min_channels = conv2d_int8_winograd_min_channels();
    set_conv2d_winograd_min_tiles(c.winograd_min_tiles);
    // A Winograd case is the path on its shape, whatever the loader's rules would pick.
    if (c.winograd_min_tiles != kWinogradNever) set_conv2d_int8_winograd_min_channels(0);
    struct Restore {
      int64_t tiles, channels;
      ~Restore() {
        set_conv2d_winograd_min_tiles(tiles);
        set_conv2d_int8_winograd_min_channels(channels);
      }
    } restore{saved_min_tiles, saved_min_channels};
    Graph g;
    Tensor* out = c.build(g, storage);
    g.set_output(out);
    Status status = g.plan();
    if (!status.ok()) {
      std::fprintf(stderr, "ddpm bench: %s %s: %s\n", c.op.c_str(), c.shape.c_str(), status.message().c_str());
      return 1;
    }
    for (Tensor* t : g.nodes()) {
      if (t->flags & kFlagInput) {
        std::mt19937 rng(11);
        std::normal_distribution<float> dist(0.0f, 1.0f);
        for (int64_t i = 0; i < t->numel(); ++i) t->f32()[i] = dist(rng);
      }
    }
    for (int threads : thread_counts) {
      ThreadPool pool(threads);
      rows.push_back({&c, threads, time_it([&] { (void)g.compute(pool); }, settings.repetitions), 0.0});
    }
  }
  if (use_blas) {
    for (Row& row : rows) {
      const Case& c = *row.c;
      if (c.M == 0) continue;
      std::vector<std::vector<float>> storage;
      const std::vector<float> a = random_buffer(storage, c.M * c.K, 9);
      const std::vector<float> b = random_buffer(storage, c.K * c.N, 10);
      std::vector<float> out(static_cast<size_t>(c.M * c.N));
      if (blas.set_threads) blas.set_threads(row.threads);
      // CblasRowMajor = 101, CblasNoTrans = 111.
      row.blas_seconds = time_it(
          [&] {
            blas.sgemm(101, 111, 111, static_cast<int>(c.M), static_cast<int>(c.N), static_cast<int>(c.K), 1.0f,
                       a.data(), static_cast<int>(c.K), b.data(), static_cast<int>(c.N), 0.0f, out.data(),
                       static_cast<int>(c.N));
          },
          settings.repetitions);
    }
  }
  for (const Row& row : rows) {
    const Case& c = *row.c;
    std::printf("%-26s %-30s %3d %10.3f %9.1f", c.op.c_str(), c.shape.c_str(), row.threads, row.seconds * 1e3,
                c.flops / row.seconds * 1e-9);
    if (row.blas_seconds > 0) {
      std::printf(" %12.1f %8.0f%%", c.flops / row.blas_seconds * 1e-9, 100.0 * row.blas_seconds / row.seconds);
    }
    std::printf("\n");
  }
  return 0;
}

// google/ddpm-cifar10-32's architecture (diffusers-reference.md §2.1): 35.7 M parameters, 12.44 GFLOP per image.
UNetConfig cifar10_config() {
  UNetConfig c;
  c.sample_size = {32};
  c.block_out_channels = {128, 256, 256, 256};
  c.down_block_types = {"DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"};
  c.up_block_types = {"UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  c.layers_per_block = 2;
  c.attention_head_dim.reset();
  c.downsample_padding = 0;
  c.flip_sin_to_cos = false;
  c.freq_shift = 1;
  c.norm_eps = 1e-6;
  c.norm_num_groups = 32;
  return c;
}

int bench_unet(const BenchSettings& settings) {
  const UNetConfig config = cifar10_config();
  std::vector<ParamSpec> specs;
  Status s = unet_parameter_specs(config, &specs);
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm bench: %s\n", s.message().c_str());
    return 1;
  }
  // Random weights scaled like PyTorch's default init, so activations stay in a realistic range.
  std::map<std::string, std::vector<float>> weights;
  int64_t parameters = 0;
  std::mt19937 rng(7);
  for (const ParamSpec& spec : specs) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    parameters += n;
    const float fan_in = spec.shape.size() > 1 ? static_cast<float>(n / spec.shape[0]) : 1.0f;
    std::normal_distribution<float> dist(spec.shape.size() > 1 ? 0.0f : 1.0f, spec.shape.size() > 1 ? 1.0f / std::sqrt(fan_in) : 0.02f);
    std::vector<float>& w = weights[spec.name];
    w.resize(static_cast<size_t>(n));
    for (float& v : w) v = dist(rng);
  }
  // Each benchmarked type as `ddpm quantize --type T` would give it from an f32 file: the default policy decides
  // per tensor (norms, biases, conv_in and conv_out stay f32; the sensitive groups go up a type).
  std::vector<std::string> names;
  for (const ParamSpec& spec : specs) names.push_back(spec.name);
  std::map<std::string, std::vector<uint8_t>> converted;
  auto lookup_for = [&](const BenchSettings::UNetVariant& variant) -> WeightLookup {
    const DType type = variant.type;
    const bool int8_winograd = variant.int8_winograd == "auto" ? Model::prefers_int8_winograd(type)
                                                               : variant.int8_winograd == "on";
    auto policy = std::make_shared<quant::TypePolicy>(type);
    policy->set_q8_0_f16_tier(variant.f16_tier);
    policy->set_tensor_names(names);
    return [&, policy, int8_winograd](const std::string& name, const std::vector<int64_t>& expected, WeightRef* out) {
      const DType chosen =
          policy->decide(name, static_cast<int>(expected.size()), expected.data(), DType::F32).type;
      const bool matrix = chosen != DType::F32;
      out->dtype = chosen;
      out->rank = static_cast<int>(expected.size());
      for (int i = 0; i < out->rank; ++i) out->shape[i] = expected[i];
      out->frozen = true;  // as a loaded model's: unchanged while the benchmark's graphs live
      out->tap_major = quant::tap_major_eligible(chosen, out->rank, out->shape);
      out->int8_winograd = int8_winograd;
      if (!matrix) {
        out->data = weights.at(name).data();
        return Status();
      }
      const std::string key = std::string(dtype_name(chosen)) + ":" + name;
      auto it = converted.find(key);
      if (it == converted.end()) it = converted.emplace(key, convert_weight(chosen, expected, weights.at(name).data())).first;
      out->data = it->second.data();
      return Status();
    };
  };
  const int max_threads = settings.common.threads > 0 ? settings.common.threads : ThreadPool::physical_cores();
  const double gflop_per_image = 12.44;
  std::printf("ddpm bench unet — google/ddpm-cifar10-32 architecture (random weights, %lld parameters), kernels: %s\n",
              (long long)parameters, kernels::active().isa_name);
  int label_width = 8;
  for (const BenchSettings::UNetVariant& variant : settings.types)
    label_width = std::max(label_width, static_cast<int>(variant.label().size()));
  std::printf("%5s %3s %*s %12s %12s %10s %8s %14s\n", "batch", "thr", label_width, "type", "ms/forward", "images/s", "GFLOP/s",
              "vs f32", "activations MB");
  std::vector<int> thread_counts = {1};
  if (max_threads > 1) thread_counts.push_back(max_threads);
  std::vector<int> batches = {1, 8};
  if (settings.batch > 0) batches = {static_cast<int>(settings.batch)};
  for (int batch : batches) {
    std::vector<float> x(static_cast<size_t>(batch) * 3 * 32 * 32), out(x.size()), t(static_cast<size_t>(batch), 500.0f);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : x) v = normal(rng);
    // One network per type; the types take turns in each round so that background load hits them alike; the
    // fastest round of each counts (the least disturbed by other processes).
    std::vector<std::unique_ptr<UNet>> nets(settings.types.size());
    for (size_t i = 0; i < settings.types.size(); ++i) {
      s = UNet::build(config, lookup_for(settings.types[i]), batch, 32, 32, &nets[i]);
      if (!s.ok()) {
        std::fprintf(stderr, "ddpm bench: %s: %s\n", settings.types[i].label().c_str(), s.message().c_str());
        return 1;
      }
    }
    for (int threads : thread_counts) {
      ThreadPool pool(threads);
      const long long reps = settings.repetitions ? settings.repetitions : 5;
      std::vector<double> best(settings.types.size(), 1e30);
      // DDPM_PROFILE: per type, the timed forwards' wall time and the thread pool's account of them.
      std::vector<double> forward_seconds(settings.types.size(), 0.0);
      std::vector<ThreadPool::Timing> parallel(settings.types.size());
      for (long long round = 0; round < reps; ++round) {
        for (size_t i = 0; i < nets.size(); ++i) {
          UNet& net = *nets[i];
          if (round == 0) (void)net.forward(pool, x.data(), t.data(), nullptr, out.data());  // warm-up
          const ThreadPool::Timing before = pool.timing();
          const double start = now_seconds();
          (void)net.forward(pool, x.data(), t.data(), nullptr, out.data());
          const double seconds = now_seconds() - start;
          best[i] = std::min(best[i], seconds);
          if (round > 0) {
            const ThreadPool::Timing after = pool.timing();
            forward_seconds[i] += seconds;
            parallel[i].jobs += after.jobs - before.jobs;
            parallel[i].tasks += after.tasks - before.tasks;
            parallel[i].wall_seconds += after.wall_seconds - before.wall_seconds;
            parallel[i].busy_seconds += after.busy_seconds - before.busy_seconds;
          }
        }
        if (round == 0 && profile::enabled()) {  // only the rounds after every net's warm-up
          profile::reset();
          pool.set_timing(true);
        }
      }
      pool.set_timing(false);
      double f32_seconds = 0.0;
      for (size_t i = 0; i < nets.size(); ++i) {
        if (settings.types[i].type == DType::F32) f32_seconds = best[i];
      }
      for (size_t i = 0; i < nets.size(); ++i) {
        const double seconds = best[i];
        std::printf("%5d %3d %*s %12.2f %12.1f %10.1f", batch, threads, label_width, settings.types[i].label().c_str(), seconds * 1e3,
                    batch / seconds, gflop_per_image * batch / seconds);
        if (f32_seconds > 0) std::printf(" %7.2fx", f32_seconds / seconds);
        else std::printf(" %8s", "-");
        std::printf(" %14.1f\n", nets[i]->activation_bytes() / 1e6);
      }
      if (threads > 1) {
        // Whether this run streamed its ops' outputs decides a few percent either way (ExecContext::stream_outputs).
        std::printf("  %d threads: cores %.0f ns apart (one way), outputs %s\n", threads, pool.handoff_ns_measured(),
                    stream_outputs_for(pool) ? "streamed" : "stored");
      }
      for (size_t i = 0; profile::enabled() && reps > 1 && threads > 1 && i < nets.size(); ++i) {
        // Serial: the forward outside parallel jobs (one-task ops, graph bookkeeping); waiting: inside them.
        const double n = static_cast<double>(reps - 1), wall = parallel[i].wall_seconds / n;
        const double busy = parallel[i].busy_seconds / n, forward = forward_seconds[i] / n;
        std::printf("  DDPM_PROFILE %s, %d threads: forward %.2f ms = parallel jobs %.2f ms (%.0f jobs, %.0f tasks; "
                    "threads busy %.0f%%) + serial %.2f ms\n",
                    settings.types[i].label().c_str(), threads, forward * 1e3, wall * 1e3,
                    static_cast<double>(parallel[i].jobs) / n, static_cast<double>(parallel[i].tasks) / n,
                    wall > 0 ? 100.0 * busy / (threads * wall) : 0.0, (forward - wall) * 1e3);
      }
      std::fflush(stdout);
    }
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  std::printf("peak RSS %.0f MB (f32 weights %.0f MB)\n", usage.ru_maxrss / 1024.0, parameters * 4 / 1e6);
  return 0;
}

// `ddpm bench format`: how long opening a 143 MB model (google/ddpm-cifar10-32 in f32) takes with and without the
// per-tensor CRC32C checks, i.e. what verification costs a user at every start.
int bench_format(const BenchSettings& settings) {
  constexpr size_t kTensors = 143;
  constexpr size_t kTensorBytes = size_t{1} << 20;
  std::vector<uint8_t> chunk(kTensorBytes);
  std::mt19937 rng(5);
  for (uint8_t& b : chunk) b = static_cast<uint8_t>(rng());
  DdpmWriter writer;
  Status status = writer.set_metadata("ddpm.architecture", MetadataValue::string("test"));
  const int64_t shape[1] = {static_cast<int64_t>(kTensorBytes / 4)};
  for (size_t i = 0; status.ok() && i < kTensors; ++i) {
    status = writer.add_tensor("t" + std::to_string(i), DType::F32, 1, shape, chunk.data());
  }
  const std::string directory = temp_directory();
  std::string pattern = directory + "/ddpm-bench-XXXXXX";
  const int fd = mkstemp(pattern.data());
  if (fd < 0) {
    std::fprintf(stderr, "ddpm bench: cannot create a temporary file in %s: %s\n", directory.c_str(),
                 std::strerror(errno));
    return 1;
  }
  close(fd);
  const std::string path = pattern;
  const RemoveOnSignal remove_on_interrupt(path);  // 144 MB of scratch must not outlive a Ctrl-C
  if (status.ok()) status = writer.finish(path);
  const long long reps = settings.repetitions > 0 ? settings.repetitions : 5;
  double verified = 1e30, unverified = 1e30;  // best of `reps`: the page cache is warm after the first open
  for (long long r = 0; status.ok() && r < reps; ++r) {
    for (bool verify : {true, false}) {
      const double start = now_seconds();
      DdpmFile file;
      status = DdpmFile::open(path, &file, verify);
      double& best = verify ? verified : unverified;
      best = std::min(best, now_seconds() - start);
      if (!status.ok()) break;
    }
  }
  std::remove(path.c_str());
  if (!status.ok()) {
    std::fprintf(stderr, "ddpm bench: %s\n", status.message().c_str());
    return 1;
  }
  std::printf("ddpm bench format — open a %zu MB .ddpm file (%zu tensors), best of %lld, crc32c: %s\n",
              kTensors * kTensorBytes >> 20, kTensors, reps, crc32c_implementation());
  std::printf("  open + verify checksums   %8.2f ms  (%.2f GB/s)\n", verified * 1e3,
              kTensors * kTensorBytes / verified * 1e-9);
  std::printf("  open without data checks  %8.2f ms\n", unverified * 1e3);
  return 0;
}

int bench_train(const BenchSettings& settings) {
  NetSpec net;
  SchedulerConfig scheduler;
  Status s = net_preset(settings.preset, &net, &scheduler).with_context("--preset");
  if (s.ok() && net.kind != NetKind::UNet2D) s = errorf("--preset %s is not a U-Net", settings.preset.c_str());
  if (!s.ok()) {  // a flag's value: a usage error, as the other commands' are
    std::fprintf(stderr, "ddpm bench: %s\n", s.message().c_str());
    return 2;
  }
  // Random 8-bit images and labels of the preset's geometry and classes (the null class, if any, excluded).
  Dataset data;
  const int64_t classes = net.class_embeds() > 0 ? net.class_embeds() - 1 : 0;
  const long long batch = settings.batch > 0 ? settings.batch : 64;
  data.count = 2 * batch;
  data.channels = net.channels;
  data.height = net.height;
  data.width = net.width;
  data.source = "synthetic";
  std::mt19937 rng(3);
  data.pixels.resize(static_cast<size_t>(data.count * data.sample_numel()));
  for (uint8_t& p : data.pixels) p = static_cast<uint8_t>(rng());
  for (int64_t c = 0; c < classes; ++c) data.class_names.push_back("class " + std::to_string(c));
  for (int64_t i = 0; classes > 0 && i < data.count; ++i) data.labels.push_back(static_cast<int32_t>(i % classes));
  TrainOptions options;
  options.batch = batch;
  options.warmup = 0;
  if (classes == 0) options.cond_drop = 0;
  std::unique_ptr<Trainer> trainer;
  if (s.ok()) s = Trainer::create(net, scheduler, options, data, &trainer);
  const int threads = settings.common.threads > 0 ? settings.common.threads : ThreadPool::physical_cores();
  ThreadPool pool(threads);
  constexpr int kWarmup = 1;
  const long long reps = settings.repetitions > 0 ? settings.repetitions : 10;
  std::vector<double> seconds;
  for (long long i = 0; s.ok() && i < kWarmup + reps; ++i) {
    const double start = now_seconds();
    s = trainer->step(pool);
    if (i >= kWarmup) seconds.push_back(now_seconds() - start);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "ddpm bench: %s\n", s.message().c_str());
    return 1;
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  std::printf("ddpm bench train — %s preset (%lld parameters), batch %lld, %d threads, kernels: %s\n",
              settings.preset.c_str(), (long long)trainer->weights().size(), batch, threads,
              kernels::active().isa_name);
  std::printf("  %.1f ms/step (median of %lld after %d warm-up step; fastest %.1f, slowest %.1f), %.1f images/s\n",
              median * 1e3, reps, kWarmup, seconds.front() * 1e3, seconds.back() * 1e3, batch / median);
  return 0;
}

}  // namespace

int run_bench(int argc, char** argv) {
  BenchSettings settings;
  std::vector<Option> options;
  add_common_options(&options, &settings.common);
  options.push_back({"reps", 0, "N", "timed repetitions per case (default: enough for ~0.3 s)", [&](const std::string& v) {
                       return parse_int("--reps", v, 1, 1000000, &settings.repetitions);
                     }});
  options.push_back({"filter", 0, "TEXT", "only cases whose op name contains TEXT", [&](const std::string& v) {
                       settings.filter = v;
                       return Status();
                     }});
  options.push_back({"type", 0, "T,T,...",
                     "bench unet: weight types side by side (f32,f16,q8_0,q5_0,q4_1,q4_0; default f32), each may end "
                     "in :on or :off to force --int8-winograd, and q8_0 in :no-tier to drop the f16 layers as "
                     "quantize's calibration may (e.g. q8_0,q8_0:on,q8_0:on:no-tier)",
                     [&](const std::string& v) {
                       settings.types.clear();
                       size_t start = 0;
                       while (start <= v.size()) {
                         const size_t comma = std::min(v.find(',', start), v.size());
                         std::string name = v.substr(start, comma - start), mode = "auto";
                         bool f16_tier = true;
                         const size_t tier = name.size() >= 8 ? name.rfind(":no-tier") : std::string::npos;
                         if (tier != std::string::npos && tier + 8 == name.size()) {
                           f16_tier = false;
                           name = name.substr(0, tier);
                         }
                         const size_t colon = name.find(':');
                         if (colon != std::string::npos) {
                           mode = name.substr(colon + 1);
                           name = name.substr(0, colon);
                           if (mode != "on" && mode != "off")
                             return errorf("--type: '%s' ends in ':%s', expected :on, :off or :no-tier", name.c_str(),
                                           mode.c_str());
                         }
                         if (!f16_tier && name != "q8_0") {
                           return errorf("--type: '%s:no-tier': only q8_0 has an f16 tier", name.c_str());
                         }
                         DType type;
                         if (!dtype_from_name(name.c_str(), &type) || type == DType::I32) {
                           return errorf("--type: unknown weight type '%s' (f32, f16, q8_0, q5_0, q4_1, q4_0)", name.c_str());
                         }
                         if (mode != "auto" && !dtype_traits(type).is_quantized) {
                           return errorf("--type: '%s:%s': :on/:off choose 8-bit Winograd, which only block types have",
                                         name.c_str(), mode.c_str());
                         }
                         settings.types.push_back({type, mode, f16_tier});
                         start = comma + 1;
                       }
                       return Status();
                     }});
  options.push_back({"preset", 0, "NAME", "bench train: network preset (default fashion-mnist)", text(&settings.preset)});
  options.push_back({"batch", 0, "N",
                     "bench train: images per step (default 64); bench unet: only this batch (default 1 and 8)",
                     [&](const std::string& v) { return parse_int("--batch", v, 1, 4096, &settings.batch); }});
  options.push_back({"no-blas", 0, "", "do not compare with OpenBLAS", [&](const std::string&) {
                       settings.openblas = false;
                       return Status();
                     }});
  // Which benchmarks read each option: one given to another is refused rather than silently ignored.
  const std::map<std::string, std::set<std::string>> used_by = {{"filter", {"ops"}},
                                                                {"no-blas", {"ops"}},
                                                                {"type", {"unet"}},
                                                                {"preset", {"train"}},
                                                                {"batch", {"train", "unet"}}};
  std::set<std::string> given;
  for (Option& option : options) {
    option.apply = [apply = option.apply, name = option.long_name, &given](const std::string& v) {
      given.insert(name);
      return apply(v);
    };
  }
  std::vector<std::string> positional;
  bool help = false;
  Status status = parse_options(argc, argv, 2, options, &positional, &help);
  const char* synopsis = "ddpm bench ops|unet|train|format [options]";
  if (help) {
    print_usage(stdout, synopsis, options);
    return 0;
  }
  if (status.ok()) status = apply_common_settings(settings.common);
  if (status.ok() && (positional.size() != 1 || (positional[0] != "ops" && positional[0] != "unet" &&
                                                   positional[0] != "train" && positional[0] != "format"))) {
    status = errorf("expected a benchmark name: ops, unet, train or format");
  }
  for (const auto& [name, benchmarks] : used_by) {
    if (status.ok() && given.count(name) && !benchmarks.count(positional[0])) {
      std::string list;
      for (const std::string& b : benchmarks) list += (list.empty() ? "bench " : " and bench ") + b;
      status = errorf("--%s applies to %s only, not bench %s", name.c_str(), list.c_str(), positional[0].c_str());
    }
  }
  if (!status.ok()) {
    std::fprintf(stderr, "ddpm bench: %s\n", status.message().c_str());
    return 2;
  }
  if (positional[0] == "format") return bench_format(settings);
  if (positional[0] == "train") return bench_train(settings);
  return positional[0] == "unet" ? bench_unet(settings) : bench_ops(settings);
}

}  // namespace ddpm::tools
