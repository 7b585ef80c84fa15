// Checkpoint → .ddpm conversion: reads a diffusers folder or a bare checkpoint plus config, checks every tensor
// against what the U-Net needs (reporting missing, unexpected and mis-shaped tensors by name), converts the
// weights to the requested dtype and writes the self-describing model file atomically.
#pragma once

#include <string>
#include <vector>

#include "ddpm/dtype.h"
#include "model/checkpoint.h"
#include "quant/retype.h"

namespace ddpm {

struct ConvertOptions {
  std::string input;             // diffusers folder (root or unet/ + scheduler/ layout) or a checkpoint file
  std::string output;            // .ddpm path
  std::string config;            // config.json; required for a bare checkpoint file
  std::string scheduler_config;  // scheduler_config.json; default: found next to the model, else DDPM defaults
  // f32 or f16: every matrix, norms and biases stay f32. A block type (q8_0, q5_0, q4_1, q4_0): conv and linear
  // weights only, as quant/policy.h decides; the other tensors stay f32.
  DType type = DType::F32;
  std::vector<std::string> keep;          // --keep REGEX: these tensors stay f32
  std::vector<std::string> tensor_types;  // --tensor-type REGEX=TYPE, first match wins
  CheckpointOptions checkpoint;
  std::vector<std::string> class_names;  // optional
  int null_class = -1;                   // optional unconditional class for guidance (-1: none)
  int image_size = 0;                    // original-DDPM checkpoints without config: the training resolution
};

struct ConvertReport {
  std::string weights_path, config_path, scheduler_path;  // what was read
  std::string format;
  size_t tensors = 0;
  int64_t parameters = 0;
  uint64_t output_bytes = 0;
  double seconds = 0;
  std::vector<std::string> notes;  // renamed keys, defaults applied, …
  std::string recipe;              // provenance.dtype_recipe as written
  quant::RetypeReport retype;      // per tensor: type chosen and relative error; warnings; sizes
};

Status convert_checkpoint(const ConvertOptions& options, ConvertReport* report);

// Where convert_checkpoint reads from: a diffusers folder's weights, config and scheduler config (filled into *o
// when not given), or a bare file and the config.json beside it. Errors name a missing input.
Status resolve_convert_inputs(ConvertOptions* o, std::string* weights);

}  // namespace ddpm
