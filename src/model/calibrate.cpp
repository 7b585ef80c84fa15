#include "model/calibrate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>

#include "core/rng.h"
#include "model/sampler.h"
#include "ops/conv_winograd.h"
#include "quant/retype.h"

namespace ddpm {
namespace {

constexpr uint64_t kCalibrationSeed = 0;

bool conditional(const ModelInfo& info) { return info.unet.has_class_table(); }

// The mean over the input groups (one per timestep) of each group's relative L2, as bench/quant_quality.sh
// averages its t=50/500/950 columns: a pooled L2 would let the large-t outputs hide the rest.
double mean_relative_l2(const CalibrationInputs& inputs, const std::vector<float>& expected,
                        const std::vector<float>& got) {
  const int groups = inputs.batch / kCalibrationImages;
  const int64_t per_group = static_cast<int64_t>(got.size()) / groups;
  double sum = 0;
  for (int g = 0; g < groups; ++g) {
    sum += quant::relative_l2(expected.data() + g * per_group, got.data() + g * per_group, per_group);
  }
  return sum / groups;
}

// What a conv path costs per multiply-add, in units of the direct integer conv's: the cifar10-size U-Net's layers
// at batch 1 on 2 threads (DDPM_PROFILE of `ddpm bench unet --type f32,q8_0,q8_0:on`, AVX-512 VNNI, session 11):
// 8-bit Winograd 0.67–0.75 of the direct integer conv on 128–512-channel 3×3 layers, f32 Winograd 1.5–1.65,
// the f32 GEMM (1×1 and small 3×3 convs) 2.0–2.4.
constexpr double kCostInt8Winograd = 0.7, kCostInt8Direct = 1.0, kCostF32Winograd = 1.6, kCostF32Gemm = 2.2;

// The convs' estimated time in those units: which candidate is faster depends on the model (how many of its
// multiply-adds 8-bit Winograd takes, how many the f16 tier holds), and timing them would make the written file
// depend on the machine's load.
double estimated_conv_cost(UNet& net) {
  double cost = 0;
  for (const Tensor* node : net.graph().nodes()) {
    if (node->op != OpKind::Conv2d) continue;
    const Tensor& w = *node->src[1];
    const double macs =
        static_cast<double>(node->numel()) * static_cast<double>(w.shape[1] * w.shape[2] * w.shape[3]);
    const bool winograd = conv2d_winograd_shared_bytes(*node) > 0;
    const bool integer = dtype_traits(w.dtype).is_quantized;
    cost += macs * (integer ? (winograd ? kCostInt8Winograd : kCostInt8Direct)
                            : (winograd ? kCostF32Winograd : kCostF32Gemm));
  }
  return cost;
}

std::string percent(double fraction) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f%%", 100.0 * fraction);
  return text;
}

}  // namespace

double default_error_budget(DType type) {
  switch (type) {
    case DType::Q8_0: return 0.01;
    case DType::Q5_0: return 0.03;
    case DType::Q4_1:
    case DType::Q4_0: return 0.06;
    default: return 0.0;
  }
}

Status make_calibration_inputs(const Model& reference, ThreadPool& pool, CalibrationInputs* out) {
  const ModelInfo& info = reference.info();
  const int n = kCalibrationImages;
  const int64_t per_image = info.channels * info.height * info.width;
  std::unique_ptr<UNet> net;
  DDPM_TRY(UNet::build(info.unet, reference.weights(), n, info.height, info.width, &net));
  std::vector<int32_t> labels;
  if (conditional(info)) {
    const std::vector<int32_t> cycle = info.sampled_classes();
    for (int k = 0; k < n; ++k) labels.push_back(cycle[static_cast<size_t>(k) % cycle.size()]);
  }
  SamplerSpec spec;
  spec.sampler = SamplerKind::DDIM;
  spec.steps = kCalibrationSteps;
  spec.out_channels = static_cast<int>(info.unet.out_channels);
  Schedule schedule;
  DDPM_TRY(Schedule::create(info.scheduler, &schedule));
  std::vector<float> t_batch(static_cast<size_t>(n));
  DenoiseFn denoise = [&](const float* x, int64_t t, float* model_output) -> Status {
    std::fill(t_batch.begin(), t_batch.end(), static_cast<float>(t));
    return net->forward(pool, x, t_batch.data(), labels.empty() ? nullptr : labels.data(), model_output);
  };
  PhiloxNoise sampling_noise(kCalibrationSeed);
  std::vector<float> images(static_cast<size_t>(n * per_image));
  DDPM_TRY(sample(spec, schedule, n, static_cast<int>(info.channels), static_cast<int>(info.height),
                  static_cast<int>(info.width), sampling_noise, denoise, images.data()));
  // As images are saved: within the value range (a random-weight model's samples are not).
  for (float& v : images) v = std::min(info.value_high, std::max(info.value_low, v));

  // Noised to x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε at t = 0.95·T, 0.5·T, 0.05·T, as training noises images: not the
  // sampler's own states, which for a model that is not trained drift far from what any input looks like.
  *out = CalibrationInputs();
  const int64_t train_steps = schedule.num_train_timesteps();
  PhiloxNoise noise(kCalibrationSeed, static_cast<uint64_t>(n));
  std::vector<float> eps(images.size()), x_t(images.size());
  for (double fraction : {0.95, 0.5, 0.05}) {
    const int64_t t = std::min<int64_t>(
        train_steps - 1, static_cast<int64_t>(std::lround(fraction * static_cast<double>(train_steps))));
    const std::vector<int64_t> timesteps(static_cast<size_t>(n), t);
    DDPM_TRY(noise.normal(eps.data(), n, per_image));
    DDPM_TRY(add_noise(schedule, timesteps.data(), n, per_image, images.data(), eps.data(), x_t.data()));
    out->x.insert(out->x.end(), x_t.begin(), x_t.end());
    out->timesteps.insert(out->timesteps.end(), static_cast<size_t>(n), static_cast<float>(t));
    out->labels.insert(out->labels.end(), labels.begin(), labels.end());
    out->batch += n;
  }
  return Status();
}

Status calibration_outputs(const Model& model, ThreadPool& pool, const CalibrationInputs& inputs,
                           std::vector<float>* out, double* estimated_cost) {
  // One group (timestep) at a time, at the sampling batch: a forward's results do not depend on the batch, and a
  // large model's activations stay those of kCalibrationImages images.
  const ModelInfo& info = model.info();
  const int n = kCalibrationImages;
  DDPM_ASSERT(inputs.batch % n == 0);
  std::unique_ptr<UNet> net;
  DDPM_TRY(UNet::build(info.unet, model.weights(), n, info.height, info.width, &net));
  if (estimated_cost) *estimated_cost = estimated_conv_cost(*net);
  const int64_t per_input = info.channels * info.height * info.width;
  const int64_t per_output = info.unet.out_channels * info.height * info.width;
  out->assign(static_cast<size_t>(inputs.batch * per_output), 0.0f);
  for (int first = 0; first < inputs.batch; first += n) {
    const void* labels = conditional(info) ? inputs.labels.data() + first : nullptr;
    DDPM_TRY(net->forward(pool, inputs.x.data() + first * per_input, inputs.timesteps.data() + first, labels,
                          out->data() + first * per_output));
  }
  return Status();
}

std::string CalibrationCandidate::describe(DType type) const {
  std::string text = int8_winograd ? "int8 Winograd" : "direct 3x3 convs";
  if (type == DType::Q8_0) text += f16_tier ? ", f16 tier" : ", no f16 tier";
  return text;
}

std::string CalibrationResult::summary() const {
  char budget_text[32];
  std::snprintf(budget_text, sizeof budget_text, "%.3g%%", 100.0 * budget);
  std::string text = std::string(dtype_name(type)) + ", " + std::to_string(inputs) + " inputs, budget " +
                     budget_text + ":";
  for (size_t i = 0; i < candidates.size(); ++i) {
    text += (i ? "; " : " ") + candidates[i].describe(type) + " " + percent(candidates[i].error);
    if (static_cast<int>(i) == chosen) {
      text += within_budget ? " (chosen)" : " (chosen: none within the budget; the type's default)";
    }
  }
  return text;
}

Status calibrate_quantization(const std::string& input, const quant::TypePolicy& policy, double budget,
                              ThreadPool& pool, CalibrationResult* out) {
  *out = CalibrationResult();
  const DType type = policy.default_type();
  if (!dtype_traits(type).is_quantized) {
    return errorf("%s: there is nothing to calibrate for %s", input.c_str(), dtype_name(type));
  }
  std::unique_ptr<Model> reference;
  DDPM_TRY(Model::load(input, &reference));
  // The reference is the input's weights as exactly as they can run: a re-quantised file (q4_0, or calibrated
  // with Winograd) would otherwise measure the candidates against its own rounding.
  reference->set_int8_winograd(false);
  CalibrationInputs inputs;
  DDPM_TRY(make_calibration_inputs(*reference, pool, &inputs).with_context(input + ": calibration"));
  std::vector<float> expected;
  DDPM_TRY(calibration_outputs(*reference, pool, inputs, &expected).with_context(input + ": calibration"));
  reference.reset();

  out->type = type;
  out->budget = budget;
  out->inputs = inputs.batch;
  const std::vector<bool> tiers = type == DType::Q8_0 ? std::vector<bool>{false, true} : std::vector<bool>{false};
  // Weights per tier setting, to skip a tier that changes nothing.
  std::vector<std::vector<DType>> tier_types;
  for (bool tier : tiers) {
    quant::TypePolicy candidate_policy = policy;
    candidate_policy.set_q8_0_f16_tier(tier);
    std::vector<uint8_t> bytes;
    quant::RetypeReport report;
    DDPM_TRY(quant::retype_model_to_bytes(input, candidate_policy, &bytes, &report).with_context("calibration"));
    std::vector<DType> types;
    for (const quant::TensorRetype& t : report.tensors) types.push_back(t.to);
    bool distinct = true;
    for (const std::vector<DType>& earlier : tier_types) distinct = distinct && earlier != types;
    tier_types.push_back(types);
    if (!distinct) continue;
    std::unique_ptr<Model> model;
    DDPM_TRY(Model::from_bytes(input + " (" + dtype_name(type) + ")", bytes, &model));
    bytes = std::vector<uint8_t>();
    std::vector<float> direct;
    for (bool winograd : {false, true}) {
      CalibrationCandidate c;
      c.f16_tier = tier;
      c.int8_winograd = winograd;
      model->set_int8_winograd(winograd);
      std::vector<float> got;
      DDPM_TRY(calibration_outputs(*model, pool, inputs, &got, &c.estimated_cost)
                   .with_context(input + ": calibration"));
      // No conv of this model takes the 8-bit Winograd path (too narrow or too small): nothing to choose.
      if (winograd && got == direct) continue;
      if (!winograd) direct = got;
      c.error = mean_relative_l2(inputs, expected, got);
      if (!std::isfinite(c.error)) c.error = std::numeric_limits<double>::infinity();  // never within a budget
      out->candidates.push_back(c);
    }
  }
  std::stable_sort(out->candidates.begin(), out->candidates.end(),
                   [](const CalibrationCandidate& a, const CalibrationCandidate& b) {
                     return a.estimated_cost < b.estimated_cost;
                   });
  for (size_t i = 0; i < out->candidates.size() && out->chosen < 0; ++i) {
    if (out->candidates[i].error <= budget) {
      out->chosen = static_cast<int>(i);
      out->within_budget = true;
    }
  }
  // None within the budget: the measurement gives no reason to leave the type's usual configuration (the one
  // --no-calibrate writes), so a budget nothing meets never makes a model slower than it was.
  for (size_t i = 0; i < out->candidates.size() && out->chosen < 0; ++i) {
    const CalibrationCandidate& c = out->candidates[i];
    if (c.int8_winograd == Model::prefers_int8_winograd(type) && c.f16_tier == policy.q8_0_f16_tier())
      out->chosen = static_cast<int>(i);
  }
  for (size_t i = 0; i < out->candidates.size() && out->chosen < 0; ++i) {  // a policy without the tier
    if (out->candidates[i].int8_winograd == Model::prefers_int8_winograd(type)) out->chosen = static_cast<int>(i);
  }
  // A model with no conv Winograd could take has its direct configurations only.
  if (out->chosen < 0) out->chosen = static_cast<int>(out->candidates.size()) - 1;
  DDPM_ASSERT(out->chosen >= 0);
  return Status();
}

}  // namespace ddpm
