// Calibration of `ddpm quantize`: which configuration of a block type a model can afford, measured on the model.
//
// Two choices trade output error for speed: 8-bit Winograd for the wide 3×3 convs (~1.2× faster forward) and,
// under q8_0, keeping the last up block's shortcuts and conv2 in f16 (~7 % slower). How much error they cost
// depends on the weights: on the random-weight cifar10-size U-Net q8_0 with both choices made for speed is at
// ~2 %, on the trained Fashion-MNIST model at 0.55 % (docs/QUANT.md). So instead of one rule per type, quantize
// runs each candidate against the input model on inputs the model meets while sampling and keeps the fastest whose
// relative output error stays within the type's budget; the file records the Winograd choice
// (`quant.int8_winograd`, which Model::load follows) and the measurement (`quant.calibration`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/threadpool.h"
#include "model/model.h"
#include "quant/policy.h"

namespace ddpm {

// The relative output error a block type may cost by default, the targets of docs/QUANT.md: q8_0 1 %, q5_0 3 %,
// q4_1 and q4_0 6 %. 0 for f32 and f16 (nothing to calibrate).
double default_error_budget(DType type);

// A batch of U-Net inputs: x [batch, C, H, W], timesteps [batch], labels [batch] (empty for models without a class
// table).
struct CalibrationInputs {
  int batch = 0;
  std::vector<float> x;
  std::vector<float> timesteps;
  std::vector<int32_t> labels;
};

// The model's own samples (kCalibrationImages images, DDIM with kCalibrationSteps steps from a fixed seed, classes
// cycling as `ddpm generate` cycles them, clamped to the value range) noised to t = 0.95·T, 0.5·T and 0.05·T:
// three groups of kCalibrationImages inputs like those the model meets in use (bench/quant_quality.sh noises test
// images the same way). Deterministic whatever the thread count.
constexpr int kCalibrationImages = 2;
constexpr int kCalibrationSteps = 20;
Status make_calibration_inputs(const Model& reference, ThreadPool& pool, CalibrationInputs* out);

// The U-Net's output for every input, [batch, out_channels, H, W]; and, when asked, the estimated time of its
// convs in units of a direct integer multiply-add (per-path costs measured on the cifar10-size U-Net, see
// calibrate.cpp), by which the candidates are ordered.
Status calibration_outputs(const Model& model, ThreadPool& pool, const CalibrationInputs& inputs,
                           std::vector<float>* out, double* estimated_cost = nullptr);

struct CalibrationCandidate {
  bool f16_tier = false;  // q8_0: the last up block's shortcuts and conv2 in f16
  bool int8_winograd = false;
  double error = 0;  // relative L2 of the outputs against the input model's, the mean over the three timesteps
  double estimated_cost = 0;  // calibration_outputs' estimate: lower is faster
  std::string describe(DType type) const;  // "int8 Winograd, no f16 tier"
};

struct CalibrationResult {
  DType type = DType::F32;
  std::vector<CalibrationCandidate> candidates;  // fastest first
  int chosen = -1;
  bool within_budget = false;  // false: none was, and the type's usual configuration is chosen
  double budget = 0;
  int inputs = 0;
  const CalibrationCandidate& choice() const { return candidates[static_cast<size_t>(chosen)]; }
  // One line, stored as quant.calibration: "q8_0, 6 inputs, budget 1%: int8 Winograd, no f16 tier 0.546%
  // (chosen); …".
  std::string summary() const;
};

// Retypes `input` (a .ddpm path) by each candidate of `policy`'s default type in memory and measures it against
// the input run without 8-bit Winograd. The candidates: q8_0 — with and without the f16 tier, each with 8-bit
// Winograd and without; the other block types — Winograd or not. Winograd is listed only where it changes the
// outputs (no conv of the model may qualify, see conv_winograd.cpp), the tier only where it changes the weights
// (`--tensor-type` may already have taken it away). Ordered by estimated_cost, fastest first (on the cifar10-size
// U-Net: Winograd without the tier, Winograd with it, direct without, direct with). The first within `budget` is
// chosen; when none is, the one the type gets without a calibration (the policy's f16 tier; Winograd for q4_0/q4_1
// only). Fails for plain default types and for files that are not U-Nets.
Status calibrate_quantization(const std::string& input, const quant::TypePolicy& policy, double budget,
                              ThreadPool& pool, CalibrationResult* out);

}  // namespace ddpm
