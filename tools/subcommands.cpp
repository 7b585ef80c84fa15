#include "tools/subcommands.h"

namespace ddpm::tools {

const std::vector<Subcommand>& subcommands() {
  static const std::vector<Subcommand> table = {
      {"generate", "sample images from a model", run_generate},
      {"convert", "diffusers/PyTorch checkpoint -> .ddpm", run_convert},
      {"quantize", "re-type a .ddpm model's weights (q8_0, q5_0, q4_1, q4_0, f16, f32)", run_quantize},
      {"info", "describe a .ddpm model", run_info},
      {"schedule", "timesteps and alpha_bar of a sampling run", run_schedule},
      {"forward", "one U-Net forward on raw float32 input", run_forward},
      {"bench", "benchmarks: `bench ops`", run_bench},
      {"train", "train a model (IDX or PNG-folder data) -> .ddpm", run_train},
      {"eval", "held-out denoising loss of a model on IDX or PNG data", run_eval},
  };
  return table;
}

}  // namespace ddpm::tools
