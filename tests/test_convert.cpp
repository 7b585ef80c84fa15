// The original DDPM key layout (pesser/pytorch_diffusion names, 1×1-conv attention weights, reversed up levels):
// renamed to diffusers keys, config inferred from shapes, and the converted model computes what diffusers computes.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <fstream>
#include <regex>

#include "io/safetensors.h"
#include "io/tensor_loader.h"
#include "model/convert.h"
#include "model/model.h"
#include "test_util.h"

using namespace ddpm;

namespace {

// diffusers key → original DDPM key, for a model with `levels` levels (the inverse of what the converter does).
std::string to_original(const std::string& name, int levels) {
  std::smatch m;
  static const std::regex block(R"(^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$)");
  static const std::regex attn(R"(^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(\w+(?:\.0)?)\.(weight|bias)$)");
  static const std::regex resample(R"(^(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(weight|bias)$)");
  auto level = [&](const std::string& dir, const std::string& i) {
    return std::to_string(dir == "up" ? levels - 1 - std::stoi(i) : std::stoi(i));
  };
  auto resnet_part = [](const std::string& p) {
    return p == "time_emb_proj" ? std::string("temb_proj") : p == "conv_shortcut" ? std::string("nin_shortcut") : p;
  };
  auto attn_part = [](const std::string& p) {
    if (p == "group_norm") return std::string("norm");
    if (p == "to_out.0") return std::string("proj_out");
    return p.substr(3);  // to_q → q
  };
  if (std::regex_match(name, m, block)) {
    return m[1].str() + "." + level(m[1], m[2]) + ".block." + m[3].str() + "." + resnet_part(m[4]) + "." + m[5].str();
  }
  if (std::regex_match(name, m, attn)) {
    return m[1].str() + "." + level(m[1], m[2]) + ".attn." + m[3].str() + "." + attn_part(m[4]) + "." + m[5].str();
  }
  if (std::regex_match(name, m, resample)) {
    return m[1].str() + "." + level(m[1], m[2]) + (m[3] == "downsamplers" ? ".downsample" : ".upsample") + ".conv." + m[4].str();
  }
  if (name.rfind("mid_block.", 0) == 0) {
    std::string rest = name.substr(10);
    rest = std::regex_replace(rest, std::regex(R"(^resnets\.0)"), "block_1");
    rest = std::regex_replace(rest, std::regex(R"(^resnets\.1)"), "block_2");
    rest = std::regex_replace(rest, std::regex(R"(^attentions\.0)"), "attn_1");
    rest = std::regex_replace(rest, std::regex(R"(\.time_emb_proj\.)"), ".temb_proj.");
    rest = std::regex_replace(rest, std::regex(R"(\.group_norm\.)"), ".norm.");
    rest = std::regex_replace(rest, std::regex(R"(\.to_out\.0\.)"), ".proj_out.");
    rest = std::regex_replace(rest, std::regex(R"(\.to_([qkv])\.)"), ".$1.");
    return "mid." + rest;
  }
  if (name.rfind("time_embedding.linear_1.", 0) == 0) return "temb.dense.0." + name.substr(24);
  if (name.rfind("time_embedding.linear_2.", 0) == 0) return "temb.dense.1." + name.substr(24);
  if (name.rfind("conv_norm_out.", 0) == 0) return "norm_out." + name.substr(14);
  return name;
}

}  // namespace

// Writes `source` (diffusers names) as an original-DDPM checkpoint with a "model." prefix; returns its path.
static std::string write_original_layout(const std::string& source, const std::string& dir, const std::string& name, int levels) {
  MappedFile file;
  REQUIRE(file.open(source).ok());
  std::vector<SourceTensor> tensors;
  REQUIRE(read_safetensors(source, file, &tensors, nullptr).ok());
  std::vector<std::vector<float>> data;
  data.reserve(tensors.size());
  std::vector<SafetensorsWriteEntry> entries;
  for (const SourceTensor& t : tensors) {
    data.emplace_back(static_cast<size_t>(t.numel()));
    REQUIRE(load_tensor_f32(file, t, data.back().data()).ok());
    SafetensorsWriteEntry e{"model." + to_original(t.name, levels), SourceDType::F32, t.shape, data.back().data()};
    // The original code's attention projections are 1×1 convolutions.
    if (t.name.find("attentions") != std::string::npos && t.shape.size() == 2) e.shape = {t.shape[0], t.shape[1], 1, 1};
    entries.push_back(e);
  }
  const std::string path = dir + "/" + name;
  REQUIRE(write_safetensors(path, entries).ok());
  return path;
}

TEST_CASE("original DDPM layout: renamed, config inferred, output equal to diffusers", "[convert]") {
  char pattern[] = "/tmp/ddpm_convert_XXXXXX";
  REQUIRE(mkdtemp(pattern));
  const std::string dir = pattern;

  // Without a config: the layout is detected, names mapped ("model." stripped), the config inferred from shapes
  // (tiny: 32/64 channels, attention at the second level).
  ConvertOptions o;
  o.input = write_original_layout("data/unet/tiny/diffusion_pytorch_model.fp16.safetensors", dir, "tiny_original.safetensors", 2);
  o.output = dir + "/inferred.ddpm";
  o.image_size = 16;
  ConvertReport report;
  Status s = convert_checkpoint(o, &report);
  INFO(s.message());
  REQUIRE(s.ok());
  std::string notes;
  for (const std::string& n : report.notes) notes += n + "\n";
  INFO(notes);
  CHECK(notes.find("block_out_channels [32,64]") != std::string::npos);
  CHECK(notes.find("attention at resolution 8") != std::string::npos);
  std::unique_ptr<Model> inferred;
  REQUIRE(Model::load(o.output, &inferred).ok());
  CHECK(inferred->info().unet.down_block_types == std::vector<std::string>{"DownBlock2D", "AttnDownBlock2D"});
  CHECK(inferred->info().unet.up_block_types == std::vector<std::string>{"AttnUpBlock2D", "UpBlock2D"});
  CHECK(inferred->info().unet.layers_per_block == 1);
  CHECK(inferred->info().unet.freq_shift == 1);
  CHECK(inferred->info().height == 16);

  // With micro's own config the converted original-layout checkpoint reproduces diffusers' output.
  o = ConvertOptions();
  o.input = write_original_layout("data/unet/micro/diffusion_pytorch_model.safetensors", dir, "micro_original.safetensors", 2);
  o.config = "data/unet/micro/config.json";
  o.output = dir + "/micro_original.ddpm";
  s = convert_checkpoint(o, &report);
  INFO(s.message());
  REQUIRE(s.ok());
  std::unique_ptr<Model> model;
  REQUIRE(Model::load(o.output, &model).ok());
  std::unique_ptr<UNet> net;
  REQUIRE(UNet::build(model->info().unet, model->weights(), 2, 8, 8, &net).ok());
  std::ifstream xs("data/unet/micro/a_x.f32", std::ios::binary), ys("data/unet/micro/a_y_f32.f32", std::ios::binary);
  std::vector<float> x(384), y(384), out(384);
  xs.read(reinterpret_cast<char*>(x.data()), 384 * 4);
  ys.read(reinterpret_cast<char*>(y.data()), 384 * 4);
  const float t[2] = {0, 999};
  ThreadPool pool(2);
  REQUIRE(net->forward(pool, x.data(), t, nullptr, out.data()).ok());
  CHECK(test::relative_l2(out.data(), y.data(), 384) <= 1e-5);
}
