// The networks the trainer can train, behind one description: a diffusers U-Net (images) or a tiny MLP denoiser for
// 1-D toy data. Both are built as graphs from named f32 parameters, so one training loop (src/train/trainer.h)
// serves both, and both come with presets.
//
// Toy MLP ("mlp1d"), for a batch of B scalars x_t [B, 1, 1, 1] and timesteps t [B]:
//   e = silu(time_mlp(sinusoid(t)))          [B, hidden]   the time embedding, diffusers' sinusoid (flip to cos)
//   h = input(x_t)                           [B, hidden]
//   repeat `layers` times: h = silu(layers.i(h + e))      the time is added before every hidden layer
//   ε̂ = output(h)                            [B, 1] → [B, 1, 1, 1]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/graph.h"
#include "io/json.h"
#include "model/schedule.h"
#include "model/unet.h"
#include "model/unet_config.h"

namespace ddpm {

struct MlpConfig {
  int64_t hidden = 64;         // width of every hidden layer
  int64_t layers = 3;          // hidden linear + SiLU layers
  int64_t time_embed_dim = 32;  // sinusoid width (even)

  JsonValue to_json() const;
  static Status from_json(const JsonValue& json, MlpConfig* out);
  Status validate() const;
};

enum class NetKind { UNet2D, Mlp1D };

// One trainable architecture and the shape of one sample ([channels, height, width]).
struct NetSpec {
  NetKind kind = NetKind::UNet2D;
  UNetConfig unet;  // kind == UNet2D
  MlpConfig mlp;    // kind == Mlp1D
  int64_t channels = 1, height = 1, width = 1;

  // "unet2d" or "mlp1d": the .ddpm architecture name.
  const char* architecture() const { return kind == NetKind::UNet2D ? "unet2d" : "mlp1d"; }
  int64_t sample_numel() const { return channels * height * width; }
  // Rows of the class-embedding table (0: unconditional). Only class tables are trainable conditioning.
  int64_t class_embeds() const;
  // The architecture and sample shape as compact JSON: equal text ⇔ same network (checkpoint compatibility).
  std::string fingerprint() const;
  static Status from_fingerprint(const std::string& text, NetSpec* out);

  // Checks that the sample shape fits the network and that the network can be trained here (f32 output with the
  // input's channels, class table conditioning only).
  Status validate() const;
  Status parameter_specs(std::vector<ParamSpec>* out) const;
  // Appends the forward network to `g` (not planned) with weights from `lookup`; inputs and output in *out.
  Status build(Graph& g, const WeightLookup& lookup, int64_t batch, UNetGraphParts* out) const;
};

// Presets:
//   "fashion-mnist": 28×28×1, block_out_channels 32/64/128, 2 layers per block, attention at 7×7 (level 2 and the
//                    mid block), GroupNorm 8 groups, 11 class embeddings (10 classes + the null class).
//   "toy-mlp":       the 1-D MLP above (hidden 128, 3 layers), trained on the built-in 1-D mixture. A test fixture
//                    (the trainer's correctness and resume tests run in seconds on it), not a product: no tool but
//                    `info` opens its model, so net_preset_names() does not offer it.
// The scheduler is diffusers' default DDPM (linear β 1e-4…0.02, T = 1000); toy-mlp turns clip_sample off, since its
// data lives at ±2.
Status net_preset(const std::string& name, NetSpec* spec, SchedulerConfig* scheduler);
const char* net_preset_names();  // the presets offered to users ("fashion-mnist"), for help and messages

// Fashion-MNIST's class names, in label order.
const std::vector<std::string>& fashion_mnist_class_names();

}  // namespace ddpm
