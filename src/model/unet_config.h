// The diffusers UNet2DModel configuration (config.json), with diffusers' defaults for every missing key.
// Reference: /work/shared/docs/diffusers-reference.md §1.1; old hub configs omit many keys, so defaults matter.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ddpm/status.h"
#include "io/json.h"

namespace ddpm {

struct UNetConfig {
  std::vector<int64_t> sample_size;  // empty (null), [S] or [H, W]
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  bool center_input_sample = false;
  std::string time_embedding_type = "positional";
  std::optional<int64_t> time_embedding_dim;  // null → 4·block_out_channels[0]
  double freq_shift = 0;
  bool flip_sin_to_cos = true;
  std::vector<std::string> down_block_types = {"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2D";  // "" = null: no mid block
  std::vector<std::string> up_block_types = {"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  std::vector<int64_t> block_out_channels = {224, 448, 672, 896};
  int64_t layers_per_block = 2;
  double mid_block_scale_factor = 1;
  int64_t downsample_padding = 1;
  std::string downsample_type = "conv";
  std::string upsample_type = "conv";
  double dropout = 0;
  std::string act_fn = "silu";
  std::optional<int64_t> attention_head_dim = 8;  // null → one head as wide as the block
  std::optional<int64_t> norm_num_groups = 32;
  std::optional<int64_t> attn_norm_num_groups;
  double norm_eps = 1e-5;
  std::string resnet_time_scale_shift = "default";
  bool add_attention = true;
  std::string class_embed_type;  // "" = null
  std::optional<int64_t> num_class_embeds;
  std::optional<int64_t> num_train_timesteps;

  // Reads a diffusers config.json object; keys it does not know are ignored, wrong types are errors.
  static Status from_json(const JsonValue& json, UNetConfig* out);
  // Every field, defaults included, in config.json form (so a .ddpm file never depends on defaults).
  JsonValue to_json() const;
  // Checks what the U-Net builder relies on (lengths agree, channels divide by the groups, supported block types).
  Status validate() const;

  int64_t time_embed_dim() const { return time_embedding_dim.value_or(4 * block_out_channels[0]); }
  // The smallest spatial size the network accepts (each level halves it).
  int64_t spatial_multiple() const { return int64_t(1) << (block_out_channels.size() - 1); }
  bool has_class_table() const { return class_embed_type.empty() && num_class_embeds.has_value(); }
  bool is_class_conditional() const { return !class_embed_type.empty() || num_class_embeds.has_value(); }
};

}  // namespace ddpm
