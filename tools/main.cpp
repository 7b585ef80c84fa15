// `ddpm`: one binary, one subcommand per tool. Each subcommand parses its options from the shared table and calls
// the library; nothing here computes.
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "kernels/registry.h"
#include "tools/subcommands.h"

#ifndef DDPM_VERSION
#define DDPM_VERSION "0.1.0"
#endif

namespace {

void print_help() {
  std::printf(
      "ddpm.cpp %s — diffusion (DDPM/DDIM) image models on the CPU\n\n"
      "usage: ddpm <command> [options]\n\n"
      "commands:\n"
      "  generate       sample images from a model:  ddpm generate -m model.ddpm -n 8 -o out.png\n"
      "  convert        diffusers folder / safetensors / PyTorch checkpoint -> .ddpm\n"
      "  quantize       re-type a model's weights:  ddpm quantize in.ddpm out.ddpm --type q8_0\n"
      "  train          train a U-Net on IDX files or PNG folders (AdamW, EMA, checkpoints, resume)\n"
      "  info           describe a .ddpm model (metadata, tensors, size)\n"
      "  schedule       the timesteps and alpha_bar_t a sampling run visits\n"
      "  forward        one U-Net forward on raw float32 input (to compare with PyTorch)\n"
      "  eval           held-out denoising loss of a model on a dataset (compare weight types, checkpoints)\n"
      "  bench          ops | unet | train | format: time the ops on the U-Net's shapes, the cifar10-size U-Net per\n"
      "                 weight type, training steps, opening a model\n"
      "\n"
      "global options:\n"
      "  --version      print version and the kernel level in use\n"
      "  --help         this text; `ddpm <command> --help` for a command's options\n"
      "\n"
      "environment: DDPM_ISA=scalar|avx2|avx512|neon forces a kernel level, DDPM_QGEMM=NAME a quantised-GEMM kernel\n"
      "(benchmarks), DDPM_STREAM_OUTPUTS=0|1 whether ops stream their outputs past the caches.\n",
      DDPM_VERSION);
}

int run_command(int argc, char** argv) {
  const std::string command = argv[1];
  for (const ddpm::tools::Subcommand& sub : ddpm::tools::subcommands()) {
    if (command != sub.name) continue;
    // The tools size their large buffers up front and say so when one cannot be had; any other allocation that fails
    // ends here, as one line and after the destructors have removed temporary files, not as an abort.
    try {
      return sub.run(argc, argv);
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr, "ddpm %s: out of memory\n", sub.name);
      return 1;
    }
  }
  std::fprintf(stderr, "ddpm: unknown command '%s' (see ddpm --help)\n", command.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // `ddpm help generate` is `ddpm generate --help`.
  if (argc == 3 && !std::strcmp(argv[1], "help")) {
    char help_flag[] = "--help";
    char* help_argv[] = {argv[0], argv[2], help_flag, nullptr};
    return run_command(3, help_argv);
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_help();
    return argc < 2 ? 2 : 0;  // no command at all is a usage error, as an unknown one is
  }
  if (!std::strcmp(argv[1], "--version")) {
    if (argc > 2) {
      std::fprintf(stderr, "ddpm: --version takes no arguments (got '%s')\n", argv[2]);
      return 2;
    }
    ddpm::Status status = ddpm::kernels::init_from_environment();
    if (!status.ok()) {
      std::fprintf(stderr, "ddpm: %s\n", status.message().c_str());
      return 2;
    }
    // The quantised-GEMM kernel too: a level may pick one of several by CPU feature (ARM64 dotprod, AVX-512 VNNI,
    // AVX-VNNI) or DDPM_QGEMM.
    std::printf("ddpm.cpp %s (kernels: %s, qgemm: %s)\n", DDPM_VERSION, ddpm::kernels::active().isa_name,
                ddpm::kernels::active().qgemm.name);
    return 0;
  }
  return run_command(argc, argv);
}
