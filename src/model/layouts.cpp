#include "model/layouts.h"

#include <map>
#include <regex>

namespace ddpm {
namespace {

const SourceTensor* find(const std::vector<SourceTensor>& tensors, const std::string& name) {
  for (const SourceTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// Level count of an original-DDPM checkpoint: the number of distinct `down.{i}` prefixes.
int original_levels(const std::vector<SourceTensor>& tensors) {
  static const std::regex down(R"(^down\.(\d+)\.)");
  int levels = 0;
  for (const SourceTensor& t : tensors) {
    std::smatch m;
    if (std::regex_search(t.name, m, down)) levels = std::max(levels, std::stoi(m[1].str()) + 1);
  }
  return levels;
}

std::string rename_resnet_part(const std::string& part) {
  if (part == "temb_proj") return "time_emb_proj";
  if (part == "nin_shortcut") return "conv_shortcut";
  return part;  // norm1, conv1, norm2, conv2
}

std::string rename_attention_part(const std::string& part) {
  if (part == "norm") return "group_norm";
  if (part == "q") return "to_q";
  if (part == "k") return "to_k";
  if (part == "v") return "to_v";
  if (part == "proj_out") return "to_out.0";
  return part;
}

}  // namespace

const char* key_layout_name(KeyLayout layout) {
  return layout == KeyLayout::OriginalDdpm ? "original DDPM (pesser/pytorch_diffusion names)" : "diffusers UNet2DModel";
}

KeyLayout detect_key_layout(const std::vector<SourceTensor>& tensors) {
  for (const SourceTensor& t : tensors) {
    if (t.name.rfind("temb.dense.", 0) == 0 || t.name.rfind("mid.block_1.", 0) == 0) return KeyLayout::OriginalDdpm;
  }
  return KeyLayout::Diffusers;
}

Status rename_original_ddpm(std::vector<SourceTensor>* tensors) {
  const int levels = original_levels(*tensors);
  static const std::regex block(R"(^(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$)");
  static const std::regex attn(R"(^(down|up)\.(\d+)\.attn\.(\d+)\.(\w+)\.(weight|bias)$)");
  static const std::regex resample(R"(^(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)$)");
  static const std::regex mid(R"(^mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)$)");
  static const std::regex dense(R"(^temb\.dense\.([01])\.(weight|bias)$)");
  for (SourceTensor& t : *tensors) {
    std::smatch m;
    const std::string name = t.name;
    std::string renamed;
    // pesser's `up` list is indexed by resolution (0 = full size); diffusers' up_blocks run from the lowest.
    auto level_of = [&](const std::string& direction, const std::string& index) {
      const int i = std::stoi(index);
      return std::to_string(direction == "up" ? levels - 1 - i : i);
    };
    if (std::regex_match(name, m, block)) {
      renamed = m[1].str() + "_blocks." + level_of(m[1], m[2]) + ".resnets." + m[3].str() + "." +
                rename_resnet_part(m[4]) + "." + m[5].str();
    } else if (std::regex_match(name, m, attn)) {
      renamed = m[1].str() + "_blocks." + level_of(m[1], m[2]) + ".attentions." + m[3].str() + "." +
                rename_attention_part(m[4]) + "." + m[5].str();
    } else if (std::regex_match(name, m, resample)) {
      renamed = m[1].str() + "_blocks." + level_of(m[1], m[2]) + (m[3] == "downsample" ? ".downsamplers" : ".upsamplers") +
                ".0.conv." + m[4].str();
    } else if (std::regex_match(name, m, mid)) {
      const std::string module = m[1] == "block_1" ? "resnets.0" : m[1] == "block_2" ? "resnets.1" : "attentions.0";
      const std::string part = m[1] == "attn_1" ? rename_attention_part(m[2]) : rename_resnet_part(m[2]);
      renamed = "mid_block." + module + "." + part + "." + m[3].str();
    } else if (std::regex_match(name, m, dense)) {
      renamed = std::string("time_embedding.linear_") + (m[1] == "0" ? "1" : "2") + "." + m[2].str();
    } else if (name.rfind("norm_out.", 0) == 0) {
      renamed = "conv_norm_out." + name.substr(9);
    } else if (name.rfind("conv_in.", 0) == 0 || name.rfind("conv_out.", 0) == 0) {
      renamed = name;
    } else {
      return errorf("tensor '%s' is not part of the original DDPM layout", name.c_str());
    }
    t.name = renamed;
  }
  return Status();
}

Status infer_original_ddpm_config(const std::vector<SourceTensor>& tensors, int image_size, UNetConfig* out,
                                  std::vector<std::string>* notes) {
  const SourceTensor* conv_in = find(tensors, "conv_in.weight");
  const SourceTensor* conv_out = find(tensors, "conv_out.weight");
  if (!conv_in || !conv_out || conv_in->shape.size() != 4 || conv_out->shape.size() != 4) {
    return errorf("cannot infer the config: conv_in.weight / conv_out.weight missing or not 4-D");
  }
  UNetConfig c;
  const int64_t ch = conv_in->shape[0];
  c.in_channels = conv_in->shape[1];
  c.out_channels = conv_out->shape[0];
  int levels = 0;
  while (find(tensors, "down_blocks." + std::to_string(levels) + ".resnets.0.conv1.weight")) ++levels;
  if (levels == 0) return errorf("cannot infer the config: no down_blocks.0.resnets.0.conv1.weight");
  int layers = 0;
  while (find(tensors, "down_blocks.0.resnets." + std::to_string(layers) + ".conv1.weight")) ++layers;
  c.layers_per_block = layers;
  c.block_out_channels.clear();
  c.down_block_types.clear();
  c.up_block_types.clear();
  std::vector<bool> attention(static_cast<size_t>(levels));
  for (int i = 0; i < levels; ++i) {
    const SourceTensor* conv1 = find(tensors, "down_blocks." + std::to_string(i) + ".resnets.0.conv1.weight");
    c.block_out_channels.push_back(conv1->shape[0]);
    attention[i] = find(tensors, "down_blocks." + std::to_string(i) + ".attentions.0.to_q.weight") != nullptr;
    c.down_block_types.push_back(attention[i] ? "AttnDownBlock2D" : "DownBlock2D");
  }
  for (int i = levels - 1; i >= 0; --i) c.up_block_types.push_back(attention[i] ? "AttnUpBlock2D" : "UpBlock2D");
  if (const SourceTensor* dense = find(tensors, "time_embedding.linear_1.weight")) {
    if (dense->shape.size() == 2 && dense->shape[0] != 4 * ch) c.time_embedding_dim = dense->shape[0];
  }
  // The original code's fixed choices (§3): GroupNorm(32, eps 1e-6), sin-first embedding with divisor half − 1,
  // TF "SAME" stride-2 padding, single-head attention.
  c.norm_num_groups = 32;
  c.norm_eps = 1e-6;
  c.freq_shift = 1;
  c.flip_sin_to_cos = false;
  c.downsample_padding = 0;
  c.attention_head_dim.reset();
  if (image_size <= 0) image_size = levels == 4 ? 32 : 256;
  c.sample_size = {image_size};
  std::string channels, kinds;
  for (int i = 0; i < levels; ++i) {
    channels += (i ? "," : "") + std::to_string(c.block_out_channels[i]);
    if (attention[i]) kinds += (kinds.empty() ? "" : ",") + std::to_string(image_size >> i);
  }
  notes->push_back("inferred config (original DDPM layout): block_out_channels [" + channels + "], layers_per_block " +
                   std::to_string(layers) + ", attention at resolution " + (kinds.empty() ? "none" : kinds) +
                   ", in/out channels " + std::to_string(c.in_channels) + "/" + std::to_string(c.out_channels) +
                   ", GroupNorm 32 eps 1e-6, freq_shift 1, flip_sin_to_cos false, downsample_padding 0, image size " +
                   std::to_string(image_size) + " (guessed from the level count; --image-size or --config override)");
  DDPM_TRY(c.validate());
  *out = c;
  return Status();
}

}  // namespace ddpm
