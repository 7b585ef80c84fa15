#include "model/schedule.h"

// The tables must come out the same on every machine, so the compiler may not fuse a·b + c on its own (GCC does
// by default for C++ on ARM64); where torch's own build fuses, std::fma says so explicitly.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cmath>
#include <limits>

namespace ddpm {

// ---------------------------------------------------------------------------------------------------------------
// Enum spellings

namespace {

template <typename Enum>
struct Spelling {
  Enum value;
  const char* text;
};

constexpr Spelling<BetaSchedule> kBetaSchedules[] = {{BetaSchedule::Linear, "linear"},
                                                      {BetaSchedule::ScaledLinear, "scaled_linear"},
                                                      {BetaSchedule::SquaredCosCapV2, "squaredcos_cap_v2"},
                                                      {BetaSchedule::Sigmoid, "sigmoid"}};
constexpr Spelling<PredictionType> kPredictionTypes[] = {{PredictionType::Epsilon, "epsilon"},
                                                          {PredictionType::Sample, "sample"},
                                                          {PredictionType::VPrediction, "v_prediction"}};
constexpr Spelling<VarianceType> kVarianceTypes[] = {{VarianceType::FixedSmall, "fixed_small"},
                                                      {VarianceType::FixedSmallLog, "fixed_small_log"},
                                                      {VarianceType::FixedLarge, "fixed_large"},
                                                      {VarianceType::Learned, "learned"},
                                                      {VarianceType::LearnedRange, "learned_range"}};
constexpr Spelling<TimestepSpacing> kSpacings[] = {{TimestepSpacing::Leading, "leading"},
                                                    {TimestepSpacing::Trailing, "trailing"},
                                                    {TimestepSpacing::Linspace, "linspace"}};

template <typename Enum, size_t N>
const char* spell(const Spelling<Enum> (&table)[N], Enum value) {
  for (const auto& entry : table)
    if (entry.value == value) return entry.text;
  return "?";
}

template <typename Enum, size_t N>
std::string accepted_list(const Spelling<Enum> (&table)[N]) {
  std::string list;
  for (const auto& entry : table) {
    if (!list.empty()) list += ", ";
    list += entry.text;
  }
  return list;
}

template <typename Enum, size_t N>
Status parse(const Spelling<Enum> (&table)[N], const char* key, const std::string& text, Enum* out) {
  for (const auto& entry : table) {
    if (text == entry.text) {
      *out = entry.value;
      return Status();
    }
  }
  return errorf("%s \"%s\" is not supported (accepted: %s)", key, text.c_str(), accepted_list(table).c_str());
}

}  // namespace

const char* to_string(BetaSchedule value) { return spell(kBetaSchedules, value); }
const char* to_string(PredictionType value) { return spell(kPredictionTypes, value); }
const char* to_string(VarianceType value) { return spell(kVarianceTypes, value); }
const char* to_string(TimestepSpacing value) { return spell(kSpacings, value); }

Status parse_beta_schedule(const std::string& text, BetaSchedule* out) {
  if (text == "laplace")
    return errorf("beta_schedule \"laplace\" is not supported (accepted: %s)", accepted_list(kBetaSchedules).c_str());
  return parse(kBetaSchedules, "beta_schedule", text, out);
}

Status parse_prediction_type(const std::string& text, PredictionType* out) {
  return parse(kPredictionTypes, "prediction_type", text, out);
}

Status parse_variance_type(const std::string& text, VarianceType* out) {
  if (text == "fixed_large_log")
    return errorf("variance_type \"fixed_large_log\" is not supported: diffusers computes its std as sqrt(log(beta)), "
                  "which is NaN (accepted: %s)",
                  accepted_list(kVarianceTypes).c_str());
  return parse(kVarianceTypes, "variance_type", text, out);
}

Status parse_timestep_spacing(const std::string& text, TimestepSpacing* out) {
  return parse(kSpacings, "timestep_spacing", text, out);
}

// ---------------------------------------------------------------------------------------------------------------
// Config

namespace {

// Beyond this the tables stop being "a schedule" and start being a memory problem.
constexpr int kMaxTrainTimesteps = 1000000;

bool finite(double value) { return std::isfinite(value); }

}  // namespace

Status SchedulerConfig::validate() const {
  if (num_train_timesteps < 1 || num_train_timesteps > kMaxTrainTimesteps)
    return errorf("num_train_timesteps %d is out of range (1..%d)", num_train_timesteps, kMaxTrainTimesteps);
  if (!trained_betas.empty()) {
    if (trained_betas.size() != static_cast<size_t>(num_train_timesteps))
      return errorf("trained_betas has %zu values but num_train_timesteps is %d", trained_betas.size(),
                    num_train_timesteps);
    for (size_t i = 0; i < trained_betas.size(); ++i) {
      const float beta = trained_betas[i];
      if (!(beta >= 0.0f && beta <= 1.0f))
        return errorf("trained_betas[%zu] = %g is outside [0, 1]", i, static_cast<double>(beta));
    }
  } else {
    if (!finite(beta_start) || beta_start < 0.0 || beta_start > 1.0)
      return errorf("beta_start %g is outside [0, 1]", beta_start);
    if (!finite(beta_end) || beta_end < 0.0 || beta_end > 1.0)
      return errorf("beta_end %g is outside [0, 1]", beta_end);
  }
  if (clip_sample && (!finite(clip_sample_range) || clip_sample_range <= 0.0))
    return errorf("clip_sample_range %g must be a positive number", clip_sample_range);
  if (thresholding) {
    if (!finite(dynamic_thresholding_ratio) || dynamic_thresholding_ratio < 0.0 || dynamic_thresholding_ratio > 1.0)
      return errorf("dynamic_thresholding_ratio %g is outside [0, 1]", dynamic_thresholding_ratio);
    if (!finite(sample_max_value) || sample_max_value <= 0.0)
      return errorf("sample_max_value %g must be a positive number", sample_max_value);
  }
  if (steps_offset < 0 || steps_offset >= num_train_timesteps)
    return errorf("steps_offset %d is out of range (0..%d)", steps_offset, num_train_timesteps - 1);
  return Status();
}

// ---------------------------------------------------------------------------------------------------------------
// torch emulation

std::vector<float> torch_linspace_f32(double start_d, double end_d, int64_t steps) {
  std::vector<float> out(static_cast<size_t>(steps > 0 ? steps : 0));
  if (steps <= 0) return out;
  const float start = static_cast<float>(start_d);
  const float end = static_cast<float>(end_d);
  if (steps == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t halfway = steps / 2;
  // The reference torch build (x86-64, AVX2 + FMA) contracts `start + step·idx` and `end − step·(steps−idx−1)`
  // into one fma, and builds each 8-lane vector as base + k·step with lane 7 left unfused. Lanes 3, 5 and 6 are
  // fused here; the reference betas cannot tell (their values agree either way), lanes 1, 2, 4 are exact anyway.
  auto head = [&](int64_t idx) { return std::fma(step, static_cast<float>(idx), start); };
  auto tail = [&](int64_t idx) { return std::fma(-step, static_cast<float>(steps - idx - 1), end); };
  auto scalar = [&](int64_t idx) { return idx < halfway ? head(idx) : tail(idx); };
  int64_t idx = 0;
  // torch's vectorised loop takes 16 elements (two 8-lane vectors) at a time and finishes with the scalar lambda.
  for (; idx + 16 <= steps; idx += 8) {
    const float base = scalar(idx);
    out[static_cast<size_t>(idx)] = base;
    for (int k = 1; k < 7; ++k) out[static_cast<size_t>(idx + k)] = std::fma(static_cast<float>(k), step, base);
    const float seven_steps = 7.0f * step;
    out[static_cast<size_t>(idx + 7)] = base + seven_steps;
  }
  for (; idx < steps; ++idx) out[static_cast<size_t>(idx)] = scalar(idx);
  return out;
}

std::vector<float> torch_cumprod_f32(const std::vector<float>& values) {
  std::vector<float> out(values.size());
  double running = 1.0;
  for (size_t i = 0; i < values.size(); ++i) {
    running *= static_cast<double>(values[i]);
    out[i] = static_cast<float>(running);
  }
  return out;
}

std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  const size_t n = betas.size();
  if (n == 0) return {};
  std::vector<float> alphas(n);
  for (size_t i = 0; i < n; ++i) alphas[i] = 1.0f - betas[i];
  std::vector<float> sqrt_ab = torch_cumprod_f32(alphas);
  for (float& v : sqrt_ab) v = std::sqrt(v);
  const float a0 = sqrt_ab[0];
  const float aT = sqrt_ab[n - 1];
  // Shift so that √ᾱ_{T−1} = 0, then scale so that √ᾱ_0 keeps its value.
  const float scale = a0 / (a0 - aT);
  for (float& v : sqrt_ab) {
    v -= aT;
    v *= scale;
  }
  std::vector<float> ab(n);
  for (size_t i = 0; i < n; ++i) ab[i] = sqrt_ab[i] * sqrt_ab[i];
  std::vector<float> out(n);
  out[0] = 1.0f - ab[0];
  for (size_t i = 1; i < n; ++i) out[i] = 1.0f - ab[i] / ab[i - 1];
  return out;
}

namespace {

// Improved DDPM's cosine ᾱ(t) = cos²(((t + 0.008)/1.008)·π/2), in double as diffusers' Python does.
double cosine_alpha_bar(double t) {
  const double c = std::cos((t + 0.008) / 1.008 * 3.14159265358979323846 / 2.0);
  return c * c;
}

std::vector<float> make_betas(const SchedulerConfig& config) {
  const int T = config.num_train_timesteps;
  if (!config.trained_betas.empty()) return config.trained_betas;
  switch (config.beta_schedule) {
    case BetaSchedule::Linear:
      return torch_linspace_f32(config.beta_start, config.beta_end, T);
    case BetaSchedule::ScaledLinear: {
      std::vector<float> betas = torch_linspace_f32(std::sqrt(config.beta_start), std::sqrt(config.beta_end), T);
      for (float& b : betas) b = b * b;
      return betas;
    }
    case BetaSchedule::SquaredCosCapV2: {
      std::vector<float> betas(static_cast<size_t>(T));
      for (int i = 0; i < T; ++i) {
        const double t1 = static_cast<double>(i) / T;
        const double t2 = static_cast<double>(i + 1) / T;
        betas[static_cast<size_t>(i)] = static_cast<float>(std::min(1.0 - cosine_alpha_bar(t2) / cosine_alpha_bar(t1), 0.999));
      }
      return betas;
    }
    case BetaSchedule::Sigmoid: {
      // torch's AVX2 sigmoid uses a vectorised exp, so this is within an ulp of torch, not bitwise.
      std::vector<float> betas = torch_linspace_f32(-6.0, 6.0, T);
      const float range = static_cast<float>(config.beta_end - config.beta_start);
      const float start = static_cast<float>(config.beta_start);
      for (float& b : betas) {
        const float sigmoid = 1.0f / (1.0f + std::exp(-b));
        b = sigmoid * range + start;
      }
      return betas;
    }
  }
  return {};
}

}  // namespace

Status Schedule::create(const SchedulerConfig& config, Schedule* out) {
  DDPM_TRY(config.validate());
  Schedule s;
  s.config = config;
  s.betas = make_betas(config);
  if (config.rescale_betas_zero_snr) s.betas = rescale_zero_terminal_snr(s.betas);
  for (size_t i = 0; i < s.betas.size(); ++i) {
    if (!(s.betas[i] >= 0.0f && s.betas[i] <= 1.0f))
      return errorf("beta_schedule %s gives beta[%zu] = %g, outside [0, 1]", to_string(config.beta_schedule), i,
                    static_cast<double>(s.betas[i]));
  }
  s.alphas.resize(s.betas.size());
  for (size_t i = 0; i < s.betas.size(); ++i) s.alphas[i] = 1.0f - s.betas[i];
  s.alphas_cumprod = torch_cumprod_f32(s.alphas);
  s.final_alpha_cumprod = config.set_alpha_to_one ? 1.0f : s.alphas_cumprod[0];
  *out = std::move(s);
  return Status();
}

// ---------------------------------------------------------------------------------------------------------------
// Timesteps

Status compute_timesteps(const SchedulerConfig& config, int num_inference_steps, TimestepSpacing spacing,
                         std::vector<int64_t>* out, std::string* warning) {
  if (warning) warning->clear();
  const int T = config.num_train_timesteps;
  const int N = num_inference_steps;
  if (N < 1 || N > T) return errorf("num_inference_steps %d is out of range (1..%d = num_train_timesteps)", N, T);
  std::vector<int64_t> ts;
  ts.reserve(static_cast<size_t>(N) + 1);
  switch (spacing) {
    case TimestepSpacing::Linspace: {
      // numpy.linspace(0, T−1, N): i·step, the last value set to the end point exactly; then round half to even.
      if (N == 1) {
        ts.push_back(0);
        break;
      }
      const double step = static_cast<double>(T - 1) / static_cast<double>(N - 1);
      for (int i = N - 1; i >= 0; --i) {
        const double value = i == N - 1 ? static_cast<double>(T - 1) : static_cast<double>(i) * step;
        ts.push_back(static_cast<int64_t>(std::nearbyint(value)));
      }
      break;
    }
    case TimestepSpacing::Leading: {
      const int64_t ratio = T / N;
      for (int i = N - 1; i >= 0; --i) ts.push_back(static_cast<int64_t>(i) * ratio + config.steps_offset);
      break;
    }
    case TimestepSpacing::Trailing: {
      // numpy.arange(T, 0, −T/N): length ceil((0 − T)/(−T/N)); element 1 is start + step, and from there
      // start + i·(element1 − start). Then round half to even and subtract 1.
      const double start = static_cast<double>(T);
      const double step = -(static_cast<double>(T) / static_cast<double>(N));
      const double length = std::ceil(-start / step);
      const int64_t count = static_cast<int64_t>(length);
      const double second = start + step;
      const double delta = second - start;
      for (int64_t i = 0; i < count; ++i) {
        const double value = i == 0 ? start : (i == 1 ? second : start + static_cast<double>(i) * delta);
        ts.push_back(static_cast<int64_t>(std::nearbyint(value)) - 1);
      }
      if (static_cast<int64_t>(ts.size()) > N && ts.back() < 0) {
        ts.pop_back();
        if (warning)
          *warning = "trailing spacing with " + std::to_string(N) + " steps: numpy's arange gives " +
                     std::to_string(N + 1) + " timesteps, the last one -1 (diffusers would run an extra step at t = -1); "
                     "it is dropped";
      }
      break;
    }
  }
  if (static_cast<int64_t>(ts.size()) != N)
    return errorf("%s spacing with %d steps produced %zu timesteps", to_string(spacing), N, ts.size());
  for (int64_t t : ts) {
    if (t < 0 || t >= T)
      return errorf("%s spacing with %d steps and steps_offset %d gives timestep %lld, outside 0..%d",
                    to_string(spacing), N, config.steps_offset, static_cast<long long>(t), T - 1);
  }
  *out = std::move(ts);
  return Status();
}

Status check_custom_timesteps(const SchedulerConfig& config, const std::vector<int64_t>& timesteps) {
  if (timesteps.empty()) return errorf("custom timesteps: the list is empty");
  if (timesteps.front() >= config.num_train_timesteps)
    return errorf("custom timesteps: the first one (%lld) must be below num_train_timesteps (%d)",
                  static_cast<long long>(timesteps.front()), config.num_train_timesteps);
  for (size_t i = 1; i < timesteps.size(); ++i) {
    if (timesteps[i] >= timesteps[i - 1])
      return errorf("custom timesteps: must be strictly descending, but entry %zu (%lld) follows %lld", i,
                    static_cast<long long>(timesteps[i]), static_cast<long long>(timesteps[i - 1]));
  }
  if (timesteps.back() < 0)
    return errorf("custom timesteps: the last one (%lld) is negative", static_cast<long long>(timesteps.back()));
  return Status();
}

int64_t ddpm_previous_timestep(const std::vector<int64_t>& timesteps, size_t index) {
  return index + 1 < timesteps.size() ? timesteps[index + 1] : -1;
}

int64_t ddim_previous_timestep(const SchedulerConfig& config, int num_inference_steps, int64_t t) {
  DDPM_ASSERT(num_inference_steps >= 1);
  return t - config.num_train_timesteps / num_inference_steps;
}

}  // namespace ddpm
