// End-to-end: convert a reference checkpoint, load it, sample. Determinism across threads and batch sizes,
// classifier-free guidance semantics, and converter errors that name the tensor (with nothing half-written).
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>

#include "io/safetensors.h"
#include "io/tensor_loader.h"
#include "model/convert.h"
#include "model/ddpm_file.h"
#include "model/pipeline.h"
#include "test_util.h"

using namespace ddpm;

namespace {

std::string temp_dir() {
  static std::string dir;
  if (dir.empty()) {
    char pattern[] = "/tmp/ddpm_pipeline_XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    dir = pattern;
  }
  return dir;
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::unique_ptr<Model> convert_and_load(const std::string& input, const std::string& name, DType type) {
  ConvertOptions o;
  o.input = input;
  o.output = temp_dir() + "/" + name;
  o.type = type;
  ConvertReport report;
  Status s = convert_checkpoint(o, &report);
  INFO(s.message());
  REQUIRE(s.ok());
  CHECK(report.tensors == 144);
  std::unique_ptr<Model> model;
  s = Model::load(o.output, &model);
  INFO(s.message());
  REQUIRE(s.ok());
  return model;
}

std::vector<float> generate(const Model& model, GenerateOptions o, int threads) {
  ThreadPool pool(threads);
  std::vector<float> images;
  Status s = generate_images(model, o, pool, &images);
  INFO(s.message());
  REQUIRE(s.ok());
  return images;
}

}  // namespace

TEST_CASE("convert + generate: same seed gives the same bytes for any thread count and batch split", "[pipeline]") {
  std::unique_ptr<Model> model = convert_and_load("data/unet/micro", "micro.ddpm", DType::F32);
  GenerateOptions o;
  o.count = 3;
  o.seed = 42;
  o.sampler.sampler = SamplerKind::DDIM;
  o.sampler.steps = 4;
  o.batch = 3;
  std::vector<float> a = generate(*model, o, 1);
  std::vector<float> b = generate(*model, o, 2);
  REQUIRE(a.size() == 3u * 3 * 8 * 8);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  // Philox noise: image k uses stream k, so one image at a time gives the same images.
  o.batch = 1;
  std::vector<float> c = generate(*model, o, 2);
  CHECK(std::memcmp(a.data(), c.data(), a.size() * 4) == 0);
  // A different seed changes the images.
  o.seed = 43;
  std::vector<float> d = generate(*model, o, 2);
  CHECK(std::memcmp(a.data(), d.data(), a.size() * 4) != 0);
  // DDPM sampling with torch noise runs (one batch, diffusers' semantics) and stays finite.
  o.sampler.sampler = SamplerKind::DDPM;
  o.sampler.steps = 5;
  o.noise = NoiseKind::Torch;
  std::vector<float> e = generate(*model, o, 2);
  for (float v : e) REQUIRE(std::isfinite(v));
}

TEST_CASE("images_to_u8 rounds like diffusers and make_grid tiles", "[pipeline]") {
  const float x[4] = {-1.0f, 1.0f, 0.0f, 3.0f};  // one image 1×2×2
  std::vector<uint8_t> u8;
  images_to_u8(x, 1, 1, 2, 2, -1.0f, 1.0f, &u8);
  CHECK(u8 == std::vector<uint8_t>{0, 255, 128, 255});  // 127.5 rounds half to even → 128
  std::vector<uint8_t> grid;
  int w, h;
  const uint8_t two[2] = {10, 20};  // two 1×1 gray images
  make_grid(two, 2, 1, 1, 1, 0, 1, 0, 2, &grid, &w, &h);
  CHECK(w == 5);
  CHECK(h == 2);
  CHECK(grid == std::vector<uint8_t>{10, 10, 0, 20, 20, 10, 10, 0, 20, 20});
}

TEST_CASE("classifier-free guidance: scale 0 is the unconditional model, scale 1 the conditional", "[pipeline]") {
  // A class-conditional micro model with random weights: 3 classes + a null class.
  UNetConfig config;
  config.sample_size = {8};
  config.in_channels = 1;
  config.out_channels = 1;
  config.block_out_channels = {8, 16};
  config.down_block_types = {"DownBlock2D", "AttnDownBlock2D"};
  config.up_block_types = {"AttnUpBlock2D", "UpBlock2D"};
  config.layers_per_block = 1;
  config.norm_num_groups = 4;
  config.num_class_embeds = 4;
  ModelInfo info;
  info.unet = config;
  info.height = info.width = 8;
  info.channels = 1;
  info.null_class = 3;
  info.class_names = {"a", "b", "c"};
  info.default_guidance_scale = 2.0f;
  const std::string path = temp_dir() + "/cond.ddpm";
  REQUIRE(test::write_random_unet(info, path, 5).ok());
  std::unique_ptr<Model> model;
  Status s = Model::load(path, &model);
  INFO(s.message());
  REQUIRE(s.ok());
  CHECK(model->info().default_guidance_scale == 2.0f);

  GenerateOptions o;
  o.count = 2;
  o.seed = 7;
  o.sampler.sampler = SamplerKind::DDIM;
  o.sampler.steps = 3;
  o.classes = {1, 2};
  o.guidance_scale = 0.0f;
  std::vector<float> guided_zero = generate(*model, o, 2);
  o.classes = {3, 3};
  o.guidance_scale = 1.0f;
  std::vector<float> unconditional = generate(*model, o, 2);
  CHECK(std::memcmp(guided_zero.data(), unconditional.data(), guided_zero.size() * 4) == 0);
  o.classes = {1, 2};
  std::vector<float> conditional = generate(*model, o, 2);
  CHECK(std::memcmp(conditional.data(), unconditional.data(), conditional.size() * 4) != 0);
  o.guidance_scale = 3.0f;
  std::vector<float> guided = generate(*model, o, 1);
  CHECK(std::memcmp(guided.data(), conditional.data(), guided.size() * 4) != 0);
  // Without --class the classes cycle: image k gets class k mod K, K counting the real classes only (3 is null).
  o.classes.clear();
  o.count = 4;
  o.guidance_scale = 1.0f;
  CHECK(model->info().sampled_classes() == std::vector<int32_t>{0, 1, 2});
  std::vector<float> cycled = generate(*model, o, 2);
  o.classes = {0, 1, 2, 0};
  std::vector<float> explicit_classes = generate(*model, o, 2);
  CHECK(std::memcmp(cycled.data(), explicit_classes.data(), cycled.size() * 4) == 0);
  o.classes = {0, 1, 2, 4};
  ThreadPool pool(1);
  std::vector<float> images;
  Status bad = generate_images(*model, o, pool, &images);
  CHECK(!bad.ok());
  CHECK(bad.message().find("class 4") != std::string::npos);
}

namespace {

// The micro reference U-Net as a diffusers folder `dir` (config + f32 safetensors), each tensor passed through
// `edit` first (which may change its values or shape, or drop it by returning false), then `extra` appended.
void write_micro_folder(const std::string& dir,
                        const std::function<bool(const SourceTensor&, SafetensorsWriteEntry*, std::vector<float>*)>& edit,
                        const std::vector<SafetensorsWriteEntry>& extra = {}) {
  MappedFile file;
  REQUIRE(file.open("data/unet/micro/diffusion_pytorch_model.safetensors").ok());
  std::vector<SourceTensor> tensors;
  REQUIRE(read_safetensors("micro", file, &tensors, nullptr).ok());
  std::vector<std::vector<float>> data;
  data.reserve(tensors.size() + 1);
  std::vector<SafetensorsWriteEntry> entries;
  for (const SourceTensor& t : tensors) {
    data.emplace_back(static_cast<size_t>(t.numel()));
    REQUIRE(load_tensor_f32(file, t, data.back().data()).ok());
    SafetensorsWriteEntry e{t.name, SourceDType::F32, t.shape, data.back().data()};
    if (edit(t, &e, &data.back())) entries.push_back(e);
  }
  entries.insert(entries.end(), extra.begin(), extra.end());
  mkdir(dir.c_str(), 0755);
  REQUIRE(write_safetensors(dir + "/diffusion_pytorch_model.safetensors", entries).ok());
  std::ifstream src("data/unet/micro/config.json");
  std::ofstream(dir + "/config.json") << src.rdbuf();
}

}  // namespace

TEST_CASE("converter reports missing, unexpected and mis-shaped tensors by name and writes nothing", "[pipeline]") {
  const std::string dir = temp_dir() + "/broken";
  const float extra = 1.0f;
  write_micro_folder(
      dir,
      [](const SourceTensor& t, SafetensorsWriteEntry* e, std::vector<float>*) {
        if (t.name == "conv_out.bias") return false;         // missing
        if (t.name == "conv_in.weight") e->shape = {8, 27};  // same bytes, wrong shape
        return true;
      },
      {{"extra.weight", SourceDType::F32, {1}, &extra}});  // unexpected
  ConvertOptions o;
  o.input = dir;
  o.output = temp_dir() + "/broken.ddpm";
  ConvertReport report;
  Status s = convert_checkpoint(o, &report);
  REQUIRE(!s.ok());
  CHECK(s.message().find("missing conv_out.bias [3]") != std::string::npos);
  CHECK(s.message().find("conv_in.weight is [8, 27], expected [8, 3, 3, 3]") != std::string::npos);
  CHECK(s.message().find("unexpected extra.weight") != std::string::npos);
  CHECK(!exists(o.output));
  o.input = dir + "/nope";
  CHECK(convert_checkpoint(o, &report).message().find("no such file") != std::string::npos);
  CHECK(!exists(o.output));
}

TEST_CASE("converter refuses weights that are NaN or infinite, in f32 and f16 outputs", "[pipeline]") {
  const std::string dir = temp_dir() + "/nan";
  write_micro_folder(dir, [](const SourceTensor& t, SafetensorsWriteEntry*, std::vector<float>* values) {
    if (t.name == "conv_in.bias") (*values)[3] = std::nanf("");
    return true;
  });
  const std::string weights = dir + "/diffusion_pytorch_model.safetensors";
  for (DType type : {DType::F32, DType::F16}) {
    ConvertOptions o;
    o.input = dir;
    o.output = temp_dir() + "/nan.ddpm";
    o.type = type;
    ConvertReport report;
    const Status s = convert_checkpoint(o, &report);
    INFO(dtype_name(type));
    CHECK(s.message() == weights + ": tensor 'conv_in.bias' holds NaN or infinity (element 3): a diverged or damaged "
                                   "checkpoint");
    CHECK(!exists(o.output));
  }
  // A block-typed weight: the encoder refuses it.
  const std::string conv = "down_blocks.0.resnets.0.conv1.weight";
  write_micro_folder(dir, [&](const SourceTensor& t, SafetensorsWriteEntry*, std::vector<float>* values) {
    if (t.name == conv) (*values)[5] = std::numeric_limits<float>::infinity();
    return true;
  });
  ConvertOptions o;
  o.input = dir;
  o.output = temp_dir() + "/inf.ddpm";
  o.type = DType::Q8_0;
  ConvertReport report;
  Status s = convert_checkpoint(o, &report);
  CHECK(s.message().find("tensor '" + conv + "': value") != std::string::npos);
  CHECK(s.message().find("quantised types need finite weights") != std::string::npos);
  CHECK(!exists(o.output));
  // Finite but beyond f16: said as such.
  write_micro_folder(dir, [&](const SourceTensor& t, SafetensorsWriteEntry*, std::vector<float>* values) {
    if (t.name == conv) (*values)[5] = 1e6f;
    return true;
  });
  o.type = DType::F16;
  s = convert_checkpoint(o, &report);
  CHECK(s.message() == weights + ": tensor '" + conv + "' element 5 is 1e+06, beyond f16's range (|x| <= 65504): keep "
                                 "it f32 (--tensor-type)");
  CHECK(!exists(o.output));
}

TEST_CASE("the shipped Fashion-MNIST model loads, names its classes and samples", "[pipeline][models]") {
  std::unique_ptr<Model> model;
  Status s = Model::load("../models/fashion-mnist.ddpm", &model);
  INFO(s.message());
  REQUIRE(s.ok());
  const ModelInfo& info = model->info();
  CHECK(info.height == 28);
  CHECK(info.width == 28);
  CHECK(info.channels == 1);
  REQUIRE(info.class_names.size() == 10);
  CHECK(info.class_names[0] == "T-shirt/top");
  CHECK(info.class_names[9] == "Ankle boot");
  REQUIRE(info.null_class);
  CHECK(*info.null_class == 10);
  CHECK(info.default_guidance_scale == 2.0f);
  CHECK(info.sampled_classes().size() == 10);
  // A couple of short DDIM runs: finite images in range, different classes giving different images.
  GenerateOptions o;
  o.count = 2;
  o.seed = 3;
  o.sampler.sampler = SamplerKind::DDIM;
  o.sampler.steps = 3;
  o.guidance_scale = info.default_guidance_scale;
  std::vector<float> images = generate(*model, o, 2);
  REQUIRE(images.size() == 2u * 28 * 28);
  for (float v : images) REQUIRE((v >= -1.0f && v <= 1.0f));
  CHECK(std::memcmp(images.data(), images.data() + 28 * 28, 28 * 28 * sizeof(float)) != 0);
}
