// Checkpoint key layouts other than diffusers' own, mapped onto diffusers UNet2DModel names.
//
// The original DDPM layout (Ho et al.'s TF code as ported by pesser/pytorch_diffusion: `temb.dense.0`,
// `down.1.block.0.nin_shortcut`, `mid.attn_1`, `up.3.upsample.conv`, 1×1-conv q/k/v) is mapped name by name
// (diffusers-reference.md §3); its configuration is inferred from tensor shapes when no config.json exists.
#pragma once

#include <string>
#include <vector>

#include "io/tensor_source.h"
#include "model/unet_config.h"

namespace ddpm {

enum class KeyLayout { Diffusers, OriginalDdpm };
const char* key_layout_name(KeyLayout layout);

KeyLayout detect_key_layout(const std::vector<SourceTensor>& tensors);

// Renames every tensor of an original-DDPM checkpoint to its diffusers key (in place).
Status rename_original_ddpm(std::vector<SourceTensor>* tensors);

// Infers the UNet2DModel config of an original-DDPM checkpoint (already renamed to diffusers keys) from its
// shapes. The image size cannot be read from weights: `image_size` (0 = guess: 32 for 4 levels, 256 otherwise)
// decides it and the attention levels' resolution. `notes` receives each inferred value, for the user.
Status infer_original_ddpm_config(const std::vector<SourceTensor>& tensors, int image_size, UNetConfig* out,
                                  std::vector<std::string>* notes);

}  // namespace ddpm
