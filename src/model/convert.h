// Checkpoint → .ddpm conversion: reads a diffusers folder or a bare checkpoint plus config, checks every tensor
// against what the U-Net needs (reporting missing, unexpected and mis-shaped tensors by name), converts the
// weights to the requested dtype and writes the self-describing model file atomically.
#pragma once

#include <string>
#include <vector>

#include "ddpm/dtype.h"
#include "model/checkpoint.h"

namespace ddpm {

struct ConvertOptions {
  std::string input;             // diffusers folder (root or unet/ + scheduler/ layout) or a checkpoint file
  std::string output;            // .ddpm path
  std::string config;            // config.json; required for a bare checkpoint file
  std::string scheduler_config;  // scheduler_config.json; default: found next to the model, else DDPM defaults
  DType type = DType::F32;       // f32 or f16 (matrices; norms and biases stay f32)
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
};

Status convert_checkpoint(const ConvertOptions& options, ConvertReport* report);

}  // namespace ddpm
