// Golden tests: our U-Net against the outputs real diffusers (v0.31, PyTorch 1.13 CPU) computed for the reference
// checkpoints in tests/data/unet/ (copied from shared/reference). Targets from the issue: relative L2 ≤ 1e-5 with
// f32 weights and ≤ 2e-3 with f16 weights; we also hold max |error| ≤ 1e-4 as diffusers-reference.md §1.12 suggests.
#include <catch2/catch.hpp>

#include <cstring>
#include <deque>
#include <fstream>

#include "io/json.h"
#include "model/checkpoint.h"
#include "model/unet.h"
#include "test_util.h"

using namespace ddpm;
using namespace ddpm::test;

namespace {

std::vector<float> read_f32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

UNetConfig read_config(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  JsonValue json;
  REQUIRE(parse_json(text, &json).ok());
  UNetConfig config;
  Status s = UNetConfig::from_json(json, &config);
  INFO(s.message());
  REQUIRE(s.ok());
  return config;
}

// A weight lookup over a checkpoint that keeps the converted bytes alive for the graph.
struct LoadedWeights {
  CheckpointReader reader;
  DType dtype;
  bool vectors_f32 = true;  // GroupNorm parameters and biases stay f32, as our converter keeps them
  std::deque<std::vector<uint8_t>> storage;
  WeightLookup lookup() {
    return [this](const std::string& name, const std::vector<int64_t>& expected, WeightRef* out) {
      const SourceTensor* t = reader.find(name);
      if (!t) return errorf("not in the checkpoint");
      const DType want = expected.size() == 1 && vectors_f32 ? DType::F32 : dtype;
      storage.emplace_back();
      DDPM_TRY(reader.load(*t, want, &storage.back()));
      out->dtype = want;
      const bool squeeze = t->shape.size() == 4 && expected.size() == 2 && t->shape[2] == 1 && t->shape[3] == 1;
      out->rank = squeeze ? 2 : static_cast<int>(t->shape.size());
      for (int i = 0; i < out->rank; ++i) out->shape[i] = t->shape[i];
      out->data = storage.back().data();
      return Status();
    };
  }
};

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

struct Case {
  const char* name;
  float t0, t1;
};

void check_model(const std::string& dir, const std::string& weights_file, const std::string& data_dir, DType dtype,
                 const char* expected_suffix, double tolerance, double max_abs_tolerance, bool vectors_f32 = true) {
  UNetConfig config = read_config(dir + "/config.json");
  LoadedWeights weights;
  weights.dtype = dtype;
  weights.vectors_f32 = vectors_f32;
  Status opened = weights.reader.open(dir + "/" + weights_file);
  INFO(opened.message());
  REQUIRE(opened.ok());
  std::vector<float> x = read_f32(data_dir + "/a_x.f32");
  const int64_t c = config.in_channels, size = config.sample_size[0];
  REQUIRE(x.size() == size_t(2 * c * size * size));
  std::unique_ptr<UNet> net;
  Status built = UNet::build(config, weights.lookup(), 2, size, size, &net);
  INFO(built.message());
  REQUIRE(built.ok());
  for (Case k : {Case{"a", 0, 999}, Case{"b", 37, 500}}) {
    INFO("case " << k.name);
    std::vector<float> input = read_f32(data_dir + "/" + k.name + "_x.f32");
    std::vector<float> expected = read_f32(data_dir + "/" + k.name + expected_suffix);
    std::vector<float> out(expected.size());
    const float timesteps[2] = {k.t0, k.t1};
    for (const kernels::KernelTable* level : all_levels()) {
      INFO("level " << level->isa_name);
      IsaGuard guard;
      REQUIRE(kernels::select(level->isa_name).ok());
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        REQUIRE(net->forward(pool, input.data(), timesteps, nullptr, out.data()).ok());
        CHECK(relative_l2(out.data(), expected.data(), out.size()) <= tolerance);
        CHECK(max_abs_diff(out, expected) <= max_abs_tolerance);
      }
    }
  }
}

}  // namespace

TEST_CASE("micro U-Net (f32 weights) matches diffusers", "[unet][golden]") {
  check_model("data/unet/micro", "diffusion_pytorch_model.safetensors", "data/unet/micro", DType::F32, "_y_f32.f32",
              1e-5, 1e-4);
}

TEST_CASE("micro U-Net with legacy attention names and a 2022-era config matches diffusers", "[unet][golden]") {
  check_model("data/unet/micro_legacy", "diffusion_pytorch_model.safetensors", "data/unet/micro", DType::F32,
              "_y_f32.f32", 1e-5, 1e-4);
}

TEST_CASE("micro U-Net from the fp16 file matches diffusers' fp16-weight output", "[unet][golden]") {
  // diffusers loaded the fp16 file and computed in f32: the same weights we compute with, so f32 tolerances hold.
  check_model("data/unet/micro", "diffusion_pytorch_model.fp16.safetensors", "data/unet/micro", DType::F32,
              "_y_fp16w_f32.f32", 1e-5, 1e-4);
  // Rounding every tensor of the f32 file to f16 ourselves gives exactly diffusers' fp16 weights.
  check_model("data/unet/micro", "diffusion_pytorch_model.safetensors", "data/unet/micro", DType::F16,
              "_y_fp16w_f32.f32", 1e-5, 1e-4, /*vectors_f32=*/false);
  // Our f16 recipe (matrices f16, norms and biases f32) against the f32 model's output: the f16 budget.
  check_model("data/unet/micro", "diffusion_pytorch_model.safetensors", "data/unet/micro", DType::F16, "_y_f32.f32",
              2e-3, 1e-2);
}

TEST_CASE("parameter specs list every checkpoint tensor with its shape", "[unet]") {
  UNetConfig config = read_config("data/unet/micro/config.json");
  std::vector<ParamSpec> specs;
  REQUIRE(unet_parameter_specs(config, &specs).ok());
  CHECK(specs.size() == 144);  // the manifest's num_tensors
  int64_t params = 0;
  for (const ParamSpec& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    params += n;
  }
  CHECK(params == 45259);  // the manifest's num_parameters
  CheckpointReader reader;
  REQUIRE(reader.open("data/unet/micro/diffusion_pytorch_model.safetensors").ok());
  for (const ParamSpec& s : specs) {
    INFO(s.name);
    const SourceTensor* t = reader.find(s.name);
    REQUIRE(t);
    CHECK(t->shape == s.shape);
  }
}

TEST_CASE("U-Net build errors name the tensor and the shapes", "[unet]") {
  UNetConfig config = read_config("data/unet/micro/config.json");
  std::vector<float> zeros(4096);
  WeightLookup wrong = [&](const std::string& name, const std::vector<int64_t>& expected, WeightRef* out) {
    if (name == "down_blocks.1.attentions.0.to_k.weight") return errorf("not in the checkpoint");
    out->dtype = DType::F32;
    out->rank = static_cast<int>(expected.size());
    for (int i = 0; i < out->rank; ++i) out->shape[i] = expected[i];
    if (name == "conv_in.weight") out->shape[1] = 4;
    out->data = zeros.data();
    return Status();
  };
  std::unique_ptr<UNet> net;
  Status s = UNet::build(config, wrong, 1, 8, 8, &net);
  REQUIRE(!s.ok());
  CHECK(s.message() == "tensor 'conv_in.weight' has shape [8, 4, 3, 3], expected [8, 3, 3, 3]");
  config.block_out_channels = {8, 12};
  CHECK(!UNet::build(config, wrong, 1, 8, 8, &net).ok());
  config = read_config("data/unet/micro/config.json");
  Status odd = UNet::build(config, wrong, 1, 7, 8, &net);
  CHECK(odd.message().find("multiple of 2") != std::string::npos);
}

TEST_CASE("micro U-Net intermediates match diffusers module by module", "[unet][golden][debug]") {
  UNetConfig config = read_config("data/unet/micro/config.json");
  LoadedWeights weights;
  weights.dtype = DType::F32;
  REQUIRE(weights.reader.open("data/unet/micro/diffusion_pytorch_model.safetensors").ok());
  std::unique_ptr<UNet> net;
  REQUIRE(UNet::build(config, weights.lookup(), 2, 8, 8, &net, true).ok());
  std::vector<float> x = read_f32("data/unet/micro/a_x.f32");
  std::vector<float> out(x.size());
  const float timesteps[2] = {0, 999};
  ThreadPool pool(1);
  REQUIRE(net->forward(pool, x.data(), timesteps, nullptr, out.data()).ok());
  const char* dir = std::getenv("DDPM_REFERENCE_INTERMEDIATES");  // e.g. ../../shared/reference/unet/micro/a_inter
  for (const auto& [name, t] : net->intermediates()) {
    const std::string path = dir ? std::string(dir) + "/" + name + ".f32"
                                 : (name == "time_proj" ? "data/unet/micro/a_time_proj.f32" : "");
    if (path.empty()) continue;
    std::ifstream probe(path);
    if (!probe.good()) continue;
    std::vector<float> expected = read_f32(path);
    INFO(name);
    REQUIRE(expected.size() == size_t(t->numel()));
    const double err = relative_l2(t->f32(), expected.data(), expected.size());
    if (dir) WARN(name << ": relative L2 " << err);
    CHECK(err <= 1e-5);
  }
}

TEST_CASE("tiny U-Net (32/64 channels, 16x16) matches diffusers", "[unet][golden]") {
  // The repository keeps tiny's weights as f16 (rounded by us from the f32 file, exactly as diffusers' .half());
  // diffusers' output for those weights is the fp16w reference.
  check_model("data/unet/tiny", "diffusion_pytorch_model.fp16.safetensors", "data/unet/tiny", DType::F32,
              "_y_fp16w_f32.f32", 1e-5, 1e-4);
  // With the f32 original, when the shared reference folder is next to the checkout.
  const std::string shared = "../../shared/reference/models/tiny";
  std::ifstream probe(shared + "/diffusion_pytorch_model.safetensors");
  if (!probe.good()) {
    WARN("shared/reference not found: f32 tiny check skipped");
    return;
  }
  check_model(shared, "diffusion_pytorch_model.safetensors", "data/unet/tiny", DType::F32, "_y_f32.f32", 1e-5, 1e-4);
  check_model(shared, "diffusion_pytorch_model.bin", "data/unet/tiny", DType::F32, "_y_f32.f32", 1e-5, 1e-4);
}

TEST_CASE("micro U-Net from the genuine torch.save .bin matches diffusers", "[unet][golden]") {
  check_model("data/unet/micro_legacy", "diffusion_pytorch_model.bin", "data/unet/micro", DType::F32, "_y_f32.f32",
              1e-5, 1e-4);
}
