// Schedules, DDPM/DDIM steps, the sampling loop and the generators, against diffusers/torch/numpy reference data
// (tests/data/sched/, copied from the project's reference set; see README.md there).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/sampler.h"
#include "model/schedule.h"

using namespace ddpm;

namespace {

constexpr double kPi = 3.14159265358979323846;

std::vector<float> read_f32(const std::string& name, size_t count) {
  std::vector<float> values(count);
  const std::string path = "data/sched/" + name;
  FILE* f = std::fopen(path.c_str(), "rb");
  INFO("reading " << path);
  REQUIRE(f != nullptr);
  const size_t got = std::fread(values.data(), sizeof(float), count, f);
  std::fclose(f);
  REQUIRE(got == count);
  return values;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

size_t count_bit_differences(const float* a, const float* b, size_t n) {
  size_t d = 0;
  for (size_t i = 0; i < n; ++i) d += same_bits(a[i], b[i]) ? 0 : 1;
  return d;
}

// max |a − b| / max |b|
double rel_linf(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::fabs(static_cast<double>(b[i])));
  }
  return den > 0 ? num / den : num;
}

Schedule make_schedule(const SchedulerConfig& config) {
  Schedule s;
  Status st = Schedule::create(config, &s);
  INFO(st.message());
  REQUIRE(st.ok());
  return s;
}

SchedulerConfig linear_config() {
  SchedulerConfig c;
  c.num_train_timesteps = 1000;
  c.beta_start = 0.0001;
  c.beta_end = 0.02;
  c.beta_schedule = BetaSchedule::Linear;
  c.clip_sample = true;
  return c;
}

// diffusers' dummy_sample_deter: arange(768) as (C, H, W, B), /768, permuted to (B, C, H, W).
std::vector<float> dummy_sample_deter() {
  std::vector<float> x(4 * 3 * 8 * 8);
  for (int b = 0; b < 4; ++b)
    for (int c = 0; c < 3; ++c)
      for (int h = 0; h < 8; ++h)
        for (int w = 0; w < 8; ++w)
          x[((b * 3 + c) * 8 + h) * 8 + w] = static_cast<float>(c * 256 + h * 32 + w * 4 + b) / 768.0f;
  return x;
}

// diffusers' dummy model: sample · t / (t + 1), in float32.
void dummy_model(const float* x, int64_t t, float* out, size_t n) {
  const float tf = static_cast<float>(t);
  const float t1 = static_cast<float>(t + 1);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * tf / t1;
}

double sum_abs(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += std::fabs(static_cast<double>(v));
  return s;
}

// Replays fixed arrays as the noise of successive draws, then optionally hands over to a torch generator.
class ReplayNoise : public NoiseSource {
 public:
  std::vector<std::vector<float>> draws;
  TorchGenerator* then = nullptr;
  int calls = 0;
  Status normal(float* out, int batch, int64_t per_sample) override {
    const size_t n = static_cast<size_t>(batch * per_sample);
    const size_t k = static_cast<size_t>(calls++);
    if (k < draws.size()) {
      if (draws[k].size() != n) return errorf("replay draw %zu has %zu values, %zu asked", k, draws[k].size(), n);
      std::memcpy(out, draws[k].data(), n * sizeof(float));
      return Status();
    }
    if (then) return then->randn(out, static_cast<int64_t>(n));
    return errorf("replay noise exhausted after %zu draws", draws.size());
  }
};

class CountingNoise : public NoiseSource {
 public:
  int calls = 0;
  Status normal(float* out, int batch, int64_t per_sample) override {
    ++calls;
    for (int64_t i = 0; i < batch * per_sample; ++i) out[i] = 0.0f;
    return Status();
  }
};

// The reference trajectories' fake model: 0.3·tanh(x) + 0.01·(t/1000), the scalar formed in double then float.
void fake_model(const float* x, int64_t t, float* out, size_t n) {
  const float shift = static_cast<float>(0.01 * (static_cast<double>(t) / 1000.0));
  for (size_t i = 0; i < n; ++i) out[i] = 0.3f * std::tanh(x[i]) + shift;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("linear betas and alphas_cumprod equal diffusers bit for bit", "[sched]") {
  Schedule s = make_schedule(linear_config());
  const std::vector<float> betas = read_f32("linear_betas.f32", 1000);
  const std::vector<float> acp = read_f32("linear_alphas_cumprod.f32", 1000);
  REQUIRE(s.betas.size() == 1000);
  CHECK(count_bit_differences(s.betas.data(), betas.data(), 1000) == 0);
  CHECK(count_bit_differences(s.alphas_cumprod.data(), acp.data(), 1000) == 0);
  CHECK(s.final_alpha_cumprod == 1.0f);
  SchedulerConfig c = linear_config();
  c.set_alpha_to_one = false;
  CHECK(make_schedule(c).final_alpha_cumprod == acp[0]);
}

TEST_CASE("torch linspace and cumprod emulation basics", "[sched]") {
  CHECK(torch_linspace_f32(0, 1, 0).empty());
  const auto one = torch_linspace_f32(0.25, 7, 1);
  REQUIRE(one.size() == 1);
  CHECK(one[0] == 0.25f);
  const auto small = torch_linspace_f32(-1, 1, 5);
  REQUIRE(small.size() == 5);
  CHECK(small[0] == -1.0f);
  CHECK(small[2] == 0.0f);
  CHECK(small[4] == 1.0f);
  // Both end points are hit exactly whatever the length (torch counts the second half from the end).
  for (int64_t n : {16, 17, 33, 1000, 4000}) {
    const auto v = torch_linspace_f32(0.0001, 0.02, n);
    CHECK(v.front() == 0.0001f);
    CHECK(v.back() == 0.02f);
    for (size_t i = 1; i < v.size(); ++i) CHECK(v[i] > v[i - 1]);
  }
  const auto cp = torch_cumprod_f32({0.5f, 0.5f, 3.0f});
  CHECK(cp == std::vector<float>({0.5f, 0.25f, 0.75f}));
}

TEST_CASE("other beta schedules", "[sched]") {
  SchedulerConfig c = linear_config();
  c.beta_schedule = BetaSchedule::ScaledLinear;
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  Schedule s = make_schedule(c);
  CHECK(s.betas.front() == Approx(0.00085).epsilon(1e-6));
  CHECK(s.betas.back() == Approx(0.012).epsilon(1e-6));
  // The square roots are evenly spaced.
  CHECK(std::sqrt(s.betas[500]) - std::sqrt(s.betas[499]) ==
        Approx((std::sqrt(0.012) - std::sqrt(0.00085)) / 999).epsilon(1e-3));

  c = linear_config();
  c.beta_schedule = BetaSchedule::SquaredCosCapV2;
  s = make_schedule(c);
  auto abar = [](double t) {
    const double v = std::cos((t + 0.008) / 1.008 * kPi / 2);
    return v * v;
  };
  for (int i : {0, 1, 500, 998}) CHECK(s.betas[i] == static_cast<float>(1 - abar((i + 1) / 1000.0) / abar(i / 1000.0)));
  CHECK(s.betas[999] == 0.999f);  // capped

  c = linear_config();
  c.beta_schedule = BetaSchedule::Sigmoid;
  s = make_schedule(c);
  CHECK(s.betas.front() == Approx(0.0001 + 0.0199 / (1 + std::exp(6.0))).epsilon(1e-5));
  CHECK(s.betas[499] < s.betas[500]);

  c = linear_config();
  c.trained_betas = std::vector<float>(1000, 0.01f);
  s = make_schedule(c);
  CHECK(s.betas[123] == 0.01f);
  CHECK(s.alphas_cumprod[1] == static_cast<float>(0.99 * 0.99f));
}

TEST_CASE("rescale_betas_zero_snr gives a zero terminal SNR", "[sched]") {
  SchedulerConfig c = linear_config();
  c.rescale_betas_zero_snr = true;
  c.prediction_type = PredictionType::VPrediction;
  Schedule s = make_schedule(c);
  Schedule plain = make_schedule(linear_config());
  CHECK(s.alphas_cumprod.back() == 0.0f);
  CHECK(s.betas.back() == 1.0f);
  CHECK(s.alphas_cumprod[0] == Approx(plain.alphas_cumprod[0]).epsilon(1e-6));
  for (size_t i = 1; i < s.alphas_cumprod.size(); ++i) CHECK(s.alphas_cumprod[i] <= s.alphas_cumprod[i - 1]);
}

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("config enums parse and print diffusers' spellings", "[sched]") {
  BetaSchedule b;
  REQUIRE(parse_beta_schedule("squaredcos_cap_v2", &b).ok());
  CHECK(b == BetaSchedule::SquaredCosCapV2);
  CHECK(std::string(to_string(b)) == "squaredcos_cap_v2");
  Status st = parse_beta_schedule("cosine", &b);
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("cosine") != std::string::npos);
  CHECK(st.message().find("linear, scaled_linear, squaredcos_cap_v2, sigmoid") != std::string::npos);

  VarianceType v;
  REQUIRE(parse_variance_type("learned_range", &v).ok());
  CHECK(v == VarianceType::LearnedRange);
  st = parse_variance_type("fixed_large_log", &v);
  REQUIRE_FALSE(st.ok());
  CHECK(st.message().find("NaN") != std::string::npos);

  PredictionType p;
  REQUIRE(parse_prediction_type("v_prediction", &p).ok());
  CHECK(p == PredictionType::VPrediction);
  CHECK_FALSE(parse_prediction_type("v", &p).ok());

  TimestepSpacing sp;
  REQUIRE(parse_timestep_spacing("trailing", &sp).ok());
  CHECK(sp == TimestepSpacing::Trailing);
  st = parse_timestep_spacing("uniform", &sp);
  CHECK(st.message().find("leading, trailing, linspace") != std::string::npos);

  SamplerKind k;
  REQUIRE(parse_sampler_kind("ddim", &k).ok());
  CHECK(k == SamplerKind::DDIM);
  CHECK_FALSE(parse_sampler_kind("dpm", &k).ok());
}

TEST_CASE("bad configs are rejected with a message naming the key", "[sched]") {
  auto rejects = [](SchedulerConfig c, const char* key) {
    Schedule s;
    Status st = Schedule::create(c, &s);
    INFO(st.message());
    CHECK_FALSE(st.ok());
    CHECK(st.message().find(key) != std::string::npos);
  };
  SchedulerConfig c = linear_config();
  CHECK(c.validate().ok());
  c.num_train_timesteps = 0;
  rejects(c, "num_train_timesteps");
  c = linear_config();
  c.beta_end = 1.5;
  rejects(c, "beta_end");
  c = linear_config();
  c.beta_start = std::nan("");
  rejects(c, "beta_start");
  c = linear_config();
  c.trained_betas = {0.1f, 0.2f};
  rejects(c, "trained_betas");
  c = linear_config();
  c.trained_betas = std::vector<float>(1000, 0.01f);
  c.trained_betas[7] = -0.5f;
  rejects(c, "trained_betas[7]");
  c = linear_config();
  c.clip_sample_range = 0;
  rejects(c, "clip_sample_range");
  c = linear_config();
  c.thresholding = true;
  c.dynamic_thresholding_ratio = 1.5;
  rejects(c, "dynamic_thresholding_ratio");
  c = linear_config();
  c.steps_offset = -1;
  rejects(c, "steps_offset");
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

std::vector<int64_t> timesteps_of(const SchedulerConfig& c, int n, TimestepSpacing spacing) {
  std::vector<int64_t> ts;
  Status st = compute_timesteps(c, n, spacing, &ts, nullptr);
  INFO(st.message());
  REQUIRE(st.ok());
  return ts;
}

}  // namespace

TEST_CASE("timesteps follow numpy for every spacing", "[sched]") {
  SchedulerConfig c = linear_config();
  using V = std::vector<int64_t>;
  CHECK(timesteps_of(c, 7, TimestepSpacing::Linspace) == V({999, 832, 666, 500, 333, 166, 0}));
  CHECK(timesteps_of(c, 10, TimestepSpacing::Linspace) == V({999, 888, 777, 666, 555, 444, 333, 222, 111, 0}));
  CHECK(timesteps_of(c, 10, TimestepSpacing::Trailing) == V({999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
  CHECK(timesteps_of(c, 3, TimestepSpacing::Trailing) == V({999, 666, 332}));
  CHECK(timesteps_of(c, 7, TimestepSpacing::Leading) == V({852, 710, 568, 426, 284, 142, 0}));
  CHECK(timesteps_of(c, 1, TimestepSpacing::Linspace) == V({0}));
  const V leading50 = timesteps_of(c, 50, TimestepSpacing::Leading);
  REQUIRE(leading50.size() == 50);
  CHECK(leading50.front() == 980);
  CHECK(leading50.back() == 0);
  c.steps_offset = 1;
  CHECK(timesteps_of(c, 5, TimestepSpacing::Leading) == V({801, 601, 401, 201, 1}));
  CHECK(timesteps_of(c, 5, TimestepSpacing::Trailing) == V({999, 799, 599, 399, 199}));  // no offset there

  // Every N for T = 1000 (and some for T = 4000 and T = 37), against numpy 1.24.2 itself.
  std::ifstream table("data/sched/timesteps_numpy.txt");
  REQUIRE(table.good());
  std::string line;
  int rows = 0, pitfalls = 0;
  while (std::getline(table, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    int T, N;
    std::string spacing_name;
    long long count, sum, weighted, last;
    in >> T >> spacing_name >> N >> count >> sum >> weighted >> last;
    REQUIRE(in);
    TimestepSpacing spacing;
    REQUIRE(parse_timestep_spacing(spacing_name, &spacing).ok());
    SchedulerConfig cfg;
    cfg.num_train_timesteps = T;
    std::vector<int64_t> ts;
    std::string warning;
    Status st = compute_timesteps(cfg, N, spacing, &ts, &warning);
    INFO(line << " -> " << st.message());
    REQUIRE(st.ok());
    if (count == N + 1) {
      // numpy's extra trailing entry −1: we drop it and warn.
      ++pitfalls;
      CHECK(last == -1);
      CHECK_FALSE(warning.empty());
      sum += 1;
      weighted += count;
      count = N;
    } else {
      CHECK(warning.empty());
      CHECK(ts.back() == last);
    }
    long long s = 0, w = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      s += ts[i];
      w += static_cast<long long>(i + 1) * ts[i];
    }
    CHECK(static_cast<long long>(ts.size()) == count);
    CHECK(s == sum);
    CHECK(w == weighted);
    ++rows;
  }
  CHECK(rows > 4000);
  CHECK(pitfalls > 60);  // N = 61, 103, 121, … for T = 1000

  std::string warning;
  std::vector<int64_t> ts;
  REQUIRE(compute_timesteps(linear_config(), 61, TimestepSpacing::Trailing, &ts, &warning).ok());
  CHECK(ts.size() == 61);
  CHECK(ts.back() == 15);
  CHECK(warning.find("61") != std::string::npos);
}

TEST_CASE("bad step counts and offsets are rejected", "[sched]") {
  SchedulerConfig c = linear_config();
  std::vector<int64_t> ts;
  CHECK_FALSE(compute_timesteps(c, 0, TimestepSpacing::Leading, &ts, nullptr).ok());
  CHECK_FALSE(compute_timesteps(c, 1001, TimestepSpacing::Leading, &ts, nullptr).ok());
  CHECK(compute_timesteps(c, 1000, TimestepSpacing::Leading, &ts, nullptr).ok());
  c.steps_offset = 1;
  Status st = compute_timesteps(c, 1000, TimestepSpacing::Leading, &ts, nullptr);
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("1000") != std::string::npos);

  c = linear_config();
  CHECK(check_custom_timesteps(c, {999, 500, 0}).ok());
  CHECK_FALSE(check_custom_timesteps(c, {1000, 500}).ok());
  CHECK_FALSE(check_custom_timesteps(c, {500, 500}).ok());
  CHECK_FALSE(check_custom_timesteps(c, {500, 600}).ok());
  CHECK_FALSE(check_custom_timesteps(c, {}).ok());
  CHECK(ddpm_previous_timestep({999, 500, 0}, 1) == 0);
  CHECK(ddpm_previous_timestep({999, 500, 0}, 2) == -1);
  CHECK(ddim_previous_timestep(c, 3, 666) == 333);  // not 332, the next trailing entry
}

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("_get_variance values from diffusers' tests", "[sched]") {
  Schedule s = make_schedule(linear_config());
  CHECK(ddim_variance(s, 0, 0) == Approx(0.0).margin(1e-5));
  CHECK(ddim_variance(s, 420, 400) == Approx(0.14771).margin(1e-5));
  CHECK(ddim_variance(s, 980, 960) == Approx(0.32460).margin(1e-5));
  CHECK(ddim_variance(s, 487, 486) == Approx(0.00979).margin(1e-5));
  CHECK(ddim_variance(s, 999, 998) == Approx(0.02).margin(1e-5));
  CHECK(ddpm_variance(s, 0, -1) == 1e-20f);
  CHECK(ddpm_variance(s, 487, 486) == Approx(0.00979).margin(1e-5));
  CHECK(ddpm_variance(s, 999, 998) == Approx(0.02).margin(1e-5));
}

namespace {

// diffusers' DDIM full_loop: 10 steps, η = 0, dummy model, driven here through sample() (x_T replayed).
std::vector<float> ddim_full_loop(SchedulerConfig c) {
  Schedule s = make_schedule(c);
  ReplayNoise noise;
  noise.draws.push_back(dummy_sample_deter());
  SamplerSpec spec;
  spec.sampler = SamplerKind::DDIM;
  spec.steps = 10;
  std::vector<int64_t> seen;
  DenoiseFn model = [&](const float* x, int64_t t, float* out) {
    seen.push_back(t);
    dummy_model(x, t, out, 768);
    return Status();
  };
  std::vector<float> x(768);
  Status st = sample(spec, s, 4, 3, 8, 8, noise, model, x.data());
  INFO(st.message());
  REQUIRE(st.ok());
  CHECK(noise.calls == 1);
  CHECK(seen == std::vector<int64_t>({900, 800, 700, 600, 500, 400, 300, 200, 100, 0}));
  return x;
}

}  // namespace

TEST_CASE("DDIM full loops match diffusers' RNG-free vectors", "[sched]") {
  std::vector<float> x = ddim_full_loop(linear_config());
  CHECK(sum_abs(x) == Approx(172.0067).margin(1e-2));
  CHECK(sum_abs(x) / 768 == Approx(0.223967).margin(1e-3));

  SchedulerConfig c = linear_config();
  c.prediction_type = PredictionType::VPrediction;
  x = ddim_full_loop(c);
  CHECK(sum_abs(x) == Approx(52.5302).margin(1e-2));
  CHECK(sum_abs(x) / 768 == Approx(0.0684).margin(1e-3));

  c = linear_config();
  c.beta_start = 0.01;
  c.set_alpha_to_one = true;
  x = ddim_full_loop(c);
  CHECK(sum_abs(x) == Approx(149.8295).margin(1e-2));
  CHECK(sum_abs(x) / 768 == Approx(0.1951).margin(1e-3));

  c.set_alpha_to_one = false;
  x = ddim_full_loop(c);
  CHECK(sum_abs(x) == Approx(149.0784).margin(1e-2));
  CHECK(sum_abs(x) / 768 == Approx(0.1941).margin(1e-3));
}

TEST_CASE("DDIM 50-step trajectory matches diffusers step by step", "[sched]") {
  Schedule s = make_schedule(linear_config());  // DDIMPipeline defaults: set_alpha_to_one, steps_offset 0, clip
  const std::vector<float> xs = read_f32("ddim_eta0_linear_epsilon_leading-defaults_50_x.f32", 51 * 64);
  const std::vector<float> outs = read_f32("ddim_eta0_linear_epsilon_leading-defaults_50_model_output.f32", 50 * 64);
  SamplerSpec spec;
  spec.sampler = SamplerKind::DDIM;
  spec.steps = 50;
  std::vector<int64_t> ts;
  REQUIRE(sampler_timesteps(spec, s, &ts, nullptr).ok());
  REQUIRE(ts.size() == 50);
  StepShape shape;
  shape.channels = 1;
  shape.spatial = 64;
  std::vector<float> next(64), chain(xs.begin(), xs.begin() + 64);
  size_t differing_steps = 0;
  for (size_t i = 0; i < 50; ++i) {
    const int64_t t = ts[i];
    CHECK(t == 980 - 20 * static_cast<int64_t>(i));
    const int64_t prev = ddim_previous_timestep(s.config, 50, t);
    REQUIRE(ddim_step(s, t, prev, 0.0f, false, shape, &xs[i * 64], &outs[i * 64], nullptr, next.data()).ok());
    INFO("step " << i << " t=" << t);
    CHECK(rel_linf(next.data(), &xs[(i + 1) * 64], 64) <= 1e-6);
    differing_steps += count_bit_differences(next.data(), &xs[(i + 1) * 64], 64) ? 1 : 0;
    // The whole chain from x[0] with the stored model outputs, in place.
    REQUIRE(ddim_step(s, t, prev, 0.0f, false, shape, chain.data(), &outs[i * 64], nullptr, chain.data()).ok());
  }
  CHECK(differing_steps == 0);  // bit-exact: every scalar and element op is plain IEEE float as in torch
  CHECK(count_bit_differences(chain.data(), &xs[50 * 64], 64) == 0);

  // And through sample() with our own fake model (tanh differs from torch's vectorised one by an ulp or so).
  ReplayNoise noise;
  noise.draws.push_back(std::vector<float>(xs.begin(), xs.begin() + 64));
  std::vector<float> x(64);
  size_t calls = 0;
  DenoiseFn model = [&](const float* in, int64_t t, float* out) {
    fake_model(in, t, out, 64);
    CHECK(rel_linf(out, &outs[calls * 64], 64) <= 1e-6);
    ++calls;
    return Status();
  };
  REQUIRE(sample(spec, s, 1, 1, 8, 8, noise, model, x.data()).ok());
  CHECK(calls == 50);
  CHECK(noise.calls == 1);
  CHECK(rel_linf(x.data(), &xs[50 * 64], 64) <= 1e-5);
}

TEST_CASE("DDPM 7-step trajectory matches diffusers, noise included", "[sched]") {
  SchedulerConfig c = linear_config();
  c.variance_type = VarianceType::FixedSmall;
  Schedule s = make_schedule(c);
  const std::vector<float> xs = read_f32("ddpm_linear_epsilon_fixed_small_7_x.f32", 8 * 64);
  const std::vector<float> outs = read_f32("ddpm_linear_epsilon_fixed_small_7_model_output.f32", 7 * 64);
  const std::vector<float> x0s = read_f32("ddpm_linear_epsilon_fixed_small_7_pred_x0.f32", 7 * 64);
  const std::vector<float> noises = read_f32("ddpm_linear_epsilon_fixed_small_7_noise.f32", 6 * 64);
  std::vector<int64_t> ts;
  SamplerSpec spec;
  spec.steps = 7;
  REQUIRE(sampler_timesteps(spec, s, &ts, nullptr).ok());
  REQUIRE(ts == std::vector<int64_t>({852, 710, 568, 426, 284, 142, 0}));
  StepShape shape;
  shape.channels = 1;
  shape.spatial = 64;
  std::vector<float> next(64), x0(64), chain(xs.begin(), xs.begin() + 64);
  for (size_t i = 0; i < 7; ++i) {
    const int64_t t = ts[i];
    const int64_t prev = ddpm_previous_timestep(ts, i);
    const float* z = t > 0 ? &noises[i * 64] : nullptr;
    INFO("step " << i << " t=" << t);
    REQUIRE(ddpm_step(s, t, prev, shape, &xs[i * 64], &outs[i * 64], z, next.data(), x0.data()).ok());
    CHECK(count_bit_differences(next.data(), &xs[(i + 1) * 64], 64) == 0);
    CHECK(count_bit_differences(x0.data(), &x0s[i * 64], 64) == 0);
    CHECK(rel_linf(next.data(), &xs[(i + 1) * 64], 64) <= 1e-6);
    REQUIRE(ddpm_step(s, t, prev, shape, chain.data(), &outs[i * 64], z, chain.data()).ok());
  }
  CHECK(count_bit_differences(chain.data(), &xs[7 * 64], 64) == 0);

  // diffusers drew that noise from torch.Generator().manual_seed(7072), one (1,1,8,8) tensor per step with t > 0.
  TorchGenerator g(7072);
  std::vector<float> z(64);
  for (size_t i = 0; i < 6; ++i) {
    REQUIRE(g.randn(z.data(), 64).ok());
    CHECK(rel_linf(z.data(), &noises[i * 64], 64) <= 1e-6);
  }

  // The full pipeline loop: x_T replayed, then the torch generator: one draw per step with t > 0, in order.
  TorchGenerator g2(7072);
  ReplayNoise noise;
  noise.draws.push_back(std::vector<float>(xs.begin(), xs.begin() + 64));
  noise.then = &g2;
  std::vector<float> x(64);
  DenoiseFn model = [&](const float* in, int64_t t, float* out) {
    fake_model(in, t, out, 64);
    return Status();
  };
  REQUIRE(sample(spec, s, 1, 1, 8, 8, noise, model, x.data()).ok());
  CHECK(noise.calls == 7);
  CHECK(rel_linf(x.data(), &xs[7 * 64], 64) <= 1e-5);
}

TEST_CASE("DDPM full loop with torch noise matches diffusers (258.9606)", "[sched]") {
  // diffusers' test_full_loop_no_noise: the scheduler driven over t = 999 … 0 with prev = t − 1, noise of shape
  // (4,3,8,8) from torch.manual_seed(0) at every t > 0.
  for (PredictionType prediction : {PredictionType::Epsilon, PredictionType::VPrediction}) {
    SchedulerConfig c = linear_config();
    c.prediction_type = prediction;
    Schedule s = make_schedule(c);
    StepShape shape;
    shape.batch = 4;
    shape.channels = 3;
    shape.spatial = 64;
    std::vector<float> x = dummy_sample_deter(), out(768), z(768);
    TorchGenerator g(0);
    for (int64_t t = 999; t >= 0; --t) {
      dummy_model(x.data(), t, out.data(), 768);
      if (t > 0) REQUIRE(g.randn(z.data(), 768).ok());
      REQUIRE(ddpm_step(s, t, t - 1, shape, x.data(), out.data(), z.data(), x.data()).ok());
    }
    const double expected_sum = prediction == PredictionType::Epsilon ? 258.9606 : 202.0296;
    const double expected_mean = prediction == PredictionType::Epsilon ? 0.3372 : 0.2631;
    CHECK(sum_abs(x) == Approx(expected_sum).margin(1e-2));
    CHECK(sum_abs(x) / 768 == Approx(expected_mean).margin(1e-3));
  }
}

TEST_CASE("DDPM variance types and the learned split", "[sched]") {
  SchedulerConfig c = linear_config();
  c.clip_sample = false;
  StepShape shape;
  shape.batch = 2;
  shape.channels = 1;
  shape.spatial = 4;
  const std::vector<float> x = {0.5f, -1.0f, 2.0f, 0.0f, 1.0f, 1.0f, -0.25f, 3.0f};
  const std::vector<float> eps = {0.1f, 0.2f, -0.3f, 0.4f, 0.0f, -1.0f, 0.5f, 0.25f};
  const std::vector<float> z = {1.0f, -1.0f, 0.5f, 2.0f, -0.5f, 0.0f, 1.5f, -2.0f};
  const int64_t t = 500, prev = 400;

  auto run = [&](VarianceType vt, const std::vector<float>& out, int out_channels, std::vector<float>* result) {
    SchedulerConfig cc = c;
    cc.variance_type = vt;
    Schedule s = make_schedule(cc);
    StepShape sh = shape;
    sh.out_channels = out_channels;
    result->assign(8, 0.0f);
    return ddpm_step(s, t, prev, sh, x.data(), out.data(), z.data(), result->data());
  };
  Schedule s = make_schedule(c);
  std::vector<float> mean(8);
  REQUIRE(ddpm_step(s, 0, -1, shape, x.data(), eps.data(), nullptr, mean.data()).ok());  // t = 0: no noise needed
  // μ alone: the same step with zero noise.
  const std::vector<float> zero(8, 0.0f);
  REQUIRE(ddpm_step(s, t, prev, shape, x.data(), eps.data(), zero.data(), mean.data()).ok());

  const double ab_t = s.alphas_cumprod[t], ab_p = s.alphas_cumprod[prev];
  const double beta_c = 1 - ab_t / ab_p;
  const double small = (1 - ab_p) / (1 - ab_t) * beta_c;
  std::vector<float> r;
  REQUIRE(run(VarianceType::FixedSmall, eps, 0, &r).ok());
  for (int i = 0; i < 8; ++i) CHECK(r[i] == Approx(mean[i] + std::sqrt(small) * z[i]).epsilon(1e-5));
  REQUIRE(run(VarianceType::FixedSmallLog, eps, 0, &r).ok());
  for (int i = 0; i < 8; ++i) CHECK(r[i] == Approx(mean[i] + std::sqrt(small) * z[i]).epsilon(1e-5));
  REQUIRE(run(VarianceType::FixedLarge, eps, 0, &r).ok());
  for (int i = 0; i < 8; ++i) CHECK(r[i] == Approx(mean[i] + std::sqrt(beta_c) * z[i]).epsilon(1e-5));

  // Learned: per sample, the first C channels are ε, the last C the variance (here σ² or the interpolation frac).
  std::vector<float> out2(16);
  const float v_sample[2] = {0.0004f, 0.0009f};
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 4; ++i) {
      out2[b * 8 + i] = eps[b * 4 + i];
      out2[b * 8 + 4 + i] = v_sample[b];
    }
  REQUIRE(run(VarianceType::Learned, out2, 2, &r).ok());
  for (int i = 0; i < 8; ++i) CHECK(r[i] == Approx(mean[i] + std::sqrt(v_sample[i / 4]) * z[i]).epsilon(1e-5));
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 4; ++i) out2[b * 8 + 4 + i] = b == 0 ? -1.0f : 1.0f;  // frac 0 → β̃_t, frac 1 → β_t
  REQUIRE(run(VarianceType::LearnedRange, out2, 2, &r).ok());
  for (int i = 0; i < 4; ++i) CHECK(r[i] == Approx(mean[i] + std::sqrt(small) * z[i]).epsilon(1e-5));
  for (int i = 4; i < 8; ++i) CHECK(r[i] == Approx(mean[i] + std::sqrt(beta_c) * z[i]).epsilon(1e-5));

  // Layout mismatches are errors, not reads past the end.
  CHECK_FALSE(run(VarianceType::Learned, eps, 0, &r).ok());
  CHECK_FALSE(run(VarianceType::FixedSmall, out2, 2, &r).ok());
  CHECK_FALSE(run(VarianceType::FixedSmall, out2, 3, &r).ok());
  // Missing noise, bad timesteps.
  CHECK_FALSE(ddpm_step(s, t, prev, shape, x.data(), eps.data(), nullptr, r.data()).ok());
  CHECK_FALSE(ddpm_step(s, 1000, 999, shape, x.data(), eps.data(), z.data(), r.data()).ok());
  CHECK_FALSE(ddpm_step(s, -1, -2, shape, x.data(), eps.data(), z.data(), r.data()).ok());
}

TEST_CASE("DDIM eta, sample prediction and use_clipped_model_output", "[sched]") {
  SchedulerConfig c = linear_config();
  Schedule s = make_schedule(c);
  StepShape shape;
  shape.channels = 1;
  shape.spatial = 4;
  const std::vector<float> x = {0.5f, -1.0f, 2.0f, 0.0f};
  const std::vector<float> eps = {0.1f, 3.0f, -0.3f, 0.4f};
  const std::vector<float> z = {1.0f, -1.0f, 0.5f, 2.0f};
  const int64_t t = 500, prev = 480;
  std::vector<float> a(4), b(4), x0(4);
  REQUIRE(ddim_step(s, t, prev, 0.0f, false, shape, x.data(), eps.data(), nullptr, a.data(), x0.data()).ok());
  REQUIRE(ddim_step(s, t, prev, 1.0f, false, shape, x.data(), eps.data(), z.data(), b.data()).ok());
  const double ab_t = s.alphas_cumprod[t], ab_p = s.alphas_cumprod[prev];
  const double sigma = std::sqrt((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p));
  for (int i = 0; i < 4; ++i) {
    const double x0_ref = std::max(-1.0, std::min(1.0, (x[i] - std::sqrt(1 - ab_t) * eps[i]) / std::sqrt(ab_t)));
    CHECK(x0[i] == Approx(x0_ref).epsilon(1e-5));
    CHECK(a[i] == Approx(std::sqrt(ab_p) * x0_ref + std::sqrt(1 - ab_p) * eps[i]).epsilon(1e-5));
    CHECK(b[i] == Approx(std::sqrt(ab_p) * x0_ref + std::sqrt(1 - ab_p - sigma * sigma) * eps[i] + sigma * z[i])
                      .epsilon(1e-5));
  }
  // use_clipped_model_output recomputes ε̂ from the clipped x̂0; elements that were not clipped barely move.
  REQUIRE(ddim_step(s, t, prev, 0.0f, true, shape, x.data(), eps.data(), nullptr, b.data()).ok());
  for (int i = 0; i < 4; ++i) {
    const double e = (x[i] - std::sqrt(ab_t) * x0[i]) / std::sqrt(1 - ab_t);
    CHECK(b[i] == Approx(std::sqrt(ab_p) * x0[i] + std::sqrt(1 - ab_p) * e).epsilon(1e-5));
  }
  CHECK(b[1] != Approx(a[1]).epsilon(1e-3));  // element 1 was clipped (x̂0 ≈ −3.3)
  // Sample prediction: x̂0 = output, ε̂ from it.
  c.prediction_type = PredictionType::Sample;
  c.clip_sample = false;
  Schedule s2 = make_schedule(c);
  REQUIRE(ddim_step(s2, t, prev, 0.0f, false, shape, x.data(), eps.data(), nullptr, a.data(), x0.data()).ok());
  for (int i = 0; i < 4; ++i) {
    CHECK(x0[i] == eps[i]);
    const double e = (x[i] - std::sqrt(ab_t) * eps[i]) / std::sqrt(1 - ab_t);
    CHECK(a[i] == Approx(std::sqrt(ab_p) * eps[i] + std::sqrt(1 - ab_p) * e).epsilon(1e-5));
  }
  // Final step uses final_alpha_cumprod = 1: x_prev = x̂0 exactly.
  REQUIRE(ddim_step(s2, 0, -20, 0.0f, false, shape, x.data(), eps.data(), nullptr, a.data()).ok());
  for (int i = 0; i < 4; ++i) CHECK(a[i] == eps[i]);
  // A learned-variance model (2C channels) under DDIM: the variance half is ignored.
  std::vector<float> out2(eps);
  out2.insert(out2.end(), {9.0f, 9.0f, 9.0f, 9.0f});
  StepShape shape2 = shape;
  shape2.out_channels = 2;
  REQUIRE(ddim_step(s, t, prev, 0.0f, false, shape, x.data(), eps.data(), nullptr, a.data()).ok());
  REQUIRE(ddim_step(s, t, prev, 0.0f, false, shape2, x.data(), out2.data(), nullptr, b.data()).ok());
  CHECK(a == b);
  CHECK_FALSE(ddim_step(s, t, prev, -0.5f, false, shape, x.data(), eps.data(), z.data(), a.data()).ok());
  CHECK_FALSE(ddim_step(s, t, prev, 0.5f, false, shape, x.data(), eps.data(), nullptr, a.data()).ok());
}

TEST_CASE("dynamic thresholding and clipping", "[sched]") {
  // 100 values |v| = 0.02·(1 … 100), signs alternating; q = 0.9 → rank 89.1 → s = lerp(1.80, 1.82, 0.1) ≈ 1.802.
  std::vector<float> v(200);
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 100; ++i) v[b * 100 + i] = (i % 2 ? -1.0f : 1.0f) * 0.02f * (i + 1) * (b == 0 ? 1.0f : 0.25f);
  std::vector<float> orig = v;
  dynamic_threshold(v.data(), 2, 100, 0.9f, 1.5f);
  // Sample 0: s = clamp(1.802, 1, 1.5) = 1.5. Sample 1: s = clamp(0.45, 1, 1.5) = 1 → plain clamp to [−1, 1].
  for (int i = 0; i < 100; ++i) {
    const float expect0 = std::max(-1.5f, std::min(1.5f, orig[i])) / 1.5f;
    CHECK(v[i] == Approx(expect0).epsilon(1e-6));
    CHECK(v[100 + i] == orig[100 + i]);
  }
  v = orig;
  dynamic_threshold(v.data(), 1, 100, 0.9f, 10.0f);
  const float s = 1.8f + 0.1f * 0.02f;
  for (int i = 0; i < 100; ++i) CHECK(v[i] == Approx(std::max(-s, std::min(s, orig[i])) / s).epsilon(1e-5));

  std::vector<float> w = {-3.0f, -0.5f, 0.5f, 3.0f, std::nanf("")};
  clip_sample(w.data(), 5, 2.0f);
  CHECK(w[0] == -2.0f);
  CHECK(w[1] == -0.5f);
  CHECK(w[3] == 2.0f);
  CHECK(std::isnan(w[4]));

  // Thresholding wins over clip_sample inside a step.
  SchedulerConfig c = linear_config();
  c.thresholding = true;
  c.sample_max_value = 3.0;
  c.prediction_type = PredictionType::Sample;
  Schedule sch = make_schedule(c);
  StepShape shape;
  shape.channels = 1;
  shape.spatial = 4;
  const std::vector<float> out = {2.0f, -2.0f, 0.5f, 0.0f}, x = {0, 0, 0, 0};
  std::vector<float> next(4), x0(4);
  REQUIRE(ddim_step(sch, 10, 0, 0.0f, false, shape, x.data(), out.data(), nullptr, next.data(), x0.data()).ok());
  CHECK(x0[0] == Approx(1.0f));  // s = 2 (quantile of {2, 2, 0.5, 0} at 0.995): 2/2
  CHECK(x0[2] == Approx(0.25f));
}

TEST_CASE("add_noise and get_velocity invert each other", "[sched]") {
  Schedule s = make_schedule(linear_config());
  const std::vector<float> x0 = {0.5f, -0.25f, 1.0f, 0.0f, -1.0f, 0.75f};
  const std::vector<float> eps = {1.0f, 0.5f, -2.0f, 0.3f, 0.1f, -0.7f};
  const int64_t ts[2] = {10, 900};
  std::vector<float> xt(6), v(6);
  REQUIRE(add_noise(s, ts, 2, 3, x0.data(), eps.data(), xt.data()).ok());
  REQUIRE(get_velocity(s, ts, 2, 3, x0.data(), eps.data(), v.data()).ok());
  for (int i = 0; i < 6; ++i) {
    const double ab = s.alphas_cumprod[ts[i / 3]];
    CHECK(xt[i] == Approx(std::sqrt(ab) * x0[i] + std::sqrt(1 - ab) * eps[i]).epsilon(1e-6));
    // x0 = √ᾱ·x_t − √(1−ᾱ)·v (what v-prediction's x̂0 uses).
    CHECK(std::sqrt(ab) * xt[i] - std::sqrt(1 - ab) * v[i] == Approx(x0[i]).margin(1e-5));
  }
  const int64_t bad[2] = {10, 1000};
  CHECK_FALSE(add_noise(s, bad, 2, 3, x0.data(), eps.data(), xt.data()).ok());
  CHECK_FALSE(get_velocity(s, bad, 2, 3, x0.data(), eps.data(), v.data()).ok());
}

TEST_CASE("sample() draws noise in diffusers' pipeline order", "[sched]") {
  DenoiseFn zero_model = [](const float*, int64_t, float* out) {
    for (int i = 0; i < 2 * 3 * 4 * 4; ++i) out[i] = 0.0f;
    return Status();
  };
  std::vector<float> x(2 * 3 * 4 * 4);
  SchedulerConfig c = linear_config();
  Schedule s = make_schedule(c);

  SamplerSpec ddpm;
  ddpm.steps = 10;
  CountingNoise n1;
  REQUIRE(sample(ddpm, s, 2, 3, 4, 4, n1, zero_model, x.data()).ok());
  CHECK(n1.calls == 1 + 9);  // x_T, then every t > 0 (the last t is 0)

  c.steps_offset = 1;
  Schedule s_off = make_schedule(c);
  CountingNoise n2;
  REQUIRE(sample(ddpm, s_off, 2, 3, 4, 4, n2, zero_model, x.data()).ok());
  CHECK(n2.calls == 1 + 10);  // the last t is 1 > 0: noise is still drawn

  SamplerSpec ddim;
  ddim.sampler = SamplerKind::DDIM;
  ddim.steps = 10;
  CountingNoise n3;
  REQUIRE(sample(ddim, s, 2, 3, 4, 4, n3, zero_model, x.data()).ok());
  CHECK(n3.calls == 1);
  ddim.eta = 0.5f;
  CountingNoise n4;
  REQUIRE(sample(ddim, s, 2, 3, 4, 4, n4, zero_model, x.data()).ok());
  CHECK(n4.calls == 1 + 10);  // every step, t = 0 included

  // Spacing override, progress and cancellation.
  ddim.spacing = TimestepSpacing::Trailing;
  std::vector<int64_t> seen;
  CountingNoise n5;
  ProgressFn progress = [&](int i, int total, int64_t t) {
    CHECK(total == 10);
    seen.push_back(t);
    if (i == 3) return errorf("cancelled");
    return Status();
  };
  Status st = sample(ddim, s, 2, 3, 4, 4, n5, zero_model, x.data(), progress);
  CHECK_FALSE(st.ok());
  CHECK(st.message() == "cancelled");
  CHECK(seen == std::vector<int64_t>({999, 899, 799, 699}));

  // Model failures carry the timestep.
  DenoiseFn failing = [](const float*, int64_t, float*) { return errorf("out of memory"); };
  CountingNoise n6;
  st = sample(ddpm, s, 2, 3, 4, 4, n6, failing, x.data());
  CHECK(st.message().find("timestep 900") != std::string::npos);

  // Bad specs.
  CountingNoise n7;
  SamplerSpec bad = ddpm;
  bad.steps = 1001;
  CHECK_FALSE(sample(bad, s, 2, 3, 4, 4, n7, zero_model, x.data()).ok());
  bad = ddpm;
  bad.eta = 0.5f;
  CHECK_FALSE(sample(bad, s, 2, 3, 4, 4, n7, zero_model, x.data()).ok());
  bad = ddim;
  bad.eta = -1.0f;
  CHECK_FALSE(sample(bad, s, 2, 3, 4, 4, n7, zero_model, x.data()).ok());
  CHECK_FALSE(sample(ddpm, s, 0, 3, 4, 4, n7, zero_model, x.data()).ok());
  CHECK_FALSE(sample(ddpm, s, 2, 3, 0, 4, n7, zero_model, x.data()).ok());
  SchedulerConfig sig = linear_config();
  sig.beta_schedule = BetaSchedule::Sigmoid;
  Schedule s_sig = make_schedule(sig);
  st = sample(ddim, s_sig, 2, 3, 4, 4, n7, zero_model, x.data());
  CHECK(st.message().find("sigmoid") != std::string::npos);
  CHECK(n7.calls == 0);  // nothing was drawn for rejected specs

  // Default step counts: 1000 for DDPM (all of a shorter schedule), 50 for DDIM.
  std::vector<int64_t> ts;
  SamplerSpec def;
  REQUIRE(sampler_timesteps(def, s, &ts, nullptr).ok());
  CHECK(ts.size() == 1000);
  def.sampler = SamplerKind::DDIM;
  REQUIRE(sampler_timesteps(def, s, &ts, nullptr).ok());
  CHECK(ts.size() == 50);
}

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("torch randn reproduces torch.randn(100) with seed 42", "[sched]") {
  const std::vector<float> ref = read_f32("randn_seed42_n100.f32", 100);
  TorchGenerator g(42);
  std::vector<float> out(100);
  REQUIRE(g.randn(out.data(), 100).ok());
  double worst = 0;
  for (int i = 0; i < 100; ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(out[i]) - ref[i]) / std::max(1e-3, std::fabs(double(ref[i]))));
  CHECK(worst <= 1e-6);
  CHECK(rel_linf(out.data(), ref.data(), 100) <= 1e-6);
  // torch's scalar kernel (non-AVX2 CPUs) forms the angle in double; the two agree to a few 1e-7.
  TorchGenerator scalar(42);
  scalar.set_randn_path(TorchGenerator::RandnPath::Scalar);
  std::vector<float> other(100);
  REQUIRE(scalar.randn(other.data(), 100).ok());
  CHECK(rel_linf(other.data(), ref.data(), 100) <= 1e-6);
  // Re-seeding restarts the stream.
  g.manual_seed(42);
  std::vector<float> again(100);
  REQUIRE(g.randn(again.data(), 100).ok());
  CHECK(again == out);
}

TEST_CASE("torch generator: uniforms, small randn, randint", "[sched]") {
  // MT19937 with seed 5489 is the standard's reference sequence; its 10000th output is 4123659995.
  TorchGenerator g(5489);
  uint32_t r = 0;
  for (int i = 0; i < 10000; ++i) r = g.random();
  CHECK(r == 4123659995u);

  g.manual_seed(1);
  TorchGenerator h(1);
  const uint32_t first = h.random();
  CHECK(g.uniform_float() == static_cast<float>(first & 0xFFFFFF) / 16777216.0f);
  std::vector<float> u(1000);
  REQUIRE(g.rand(u.data(), 1000, 2.0f, 3.0f).ok());
  for (float v : u) {
    CHECK(v >= 2.0f);
    CHECK(v < 3.0f);
  }

  // n < 16: per-element double Box–Muller with a cached second value; two values per pair of 64-bit uniforms.
  TorchGenerator a(3), b(3);
  std::vector<float> small(3);
  REQUIRE(a.randn(small.data(), 3).ok());
  const double u1 = b.uniform_double(), u2 = b.uniform_double();
  const double radius = std::sqrt(-2.0 * std::log1p(-u2));
  CHECK(small[0] == static_cast<float>(radius * std::cos(2.0 * kPi * u1)));
  CHECK(small[1] == static_cast<float>(radius * std::sin(2.0 * kPi * u1)));
  // After 3 values one is cached: two pairs of 64-bit uniforms = 8 outputs consumed (b has used 4 so far).
  for (int i = 0; i < 4; ++i) b.random();
  CHECK(a.random() == b.random());

  std::vector<int64_t> ints(1000);
  REQUIRE(g.randint(ints.data(), 1000, 0, 1000).ok());
  bool saw_high = false;
  for (int64_t v : ints) {
    CHECK(v >= 0);
    CHECK(v < 1000);
    saw_high = saw_high || v > 900;
  }
  CHECK(saw_high);
  TorchGenerator c(9), d(9);
  int64_t one = 0;
  REQUIRE(c.randint(&one, 1, 5, 10).ok());
  CHECK(one == static_cast<int64_t>(d.random() % 5 + 5));
  CHECK_FALSE(g.randint(ints.data(), 1, 3, 3).ok());
  CHECK_FALSE(g.randn(u.data(), -1).ok());
}

TEST_CASE("torch randn layout: blocks of 16 and a fresh tail", "[sched]") {
  // n = 20: 20 uniforms, block [0, 16), then 16 fresh uniforms for [4, 20). So values 0..3 equal those of a
  // 16-value call, and the generator has consumed 36 outputs.
  TorchGenerator a(11), b(11);
  std::vector<float> v20(20), v16(16);
  REQUIRE(a.randn(v20.data(), 20).ok());
  REQUIRE(b.randn(v16.data(), 16).ok());
  for (int i = 0; i < 4; ++i) CHECK(v20[i] == v16[i]);
  for (int i = 0; i < 20; ++i) b.random();
  CHECK(a.random() == b.random());
}

TEST_CASE("Philox4x32-10 known answers and normal streams", "[sched]") {
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    uint32_t out[4];
    philox4x32_10(k.ctr, k.key, out);
    for (int i = 0; i < 4; ++i) CHECK(out[i] == k.out[i]);
  }

  PhiloxGenerator g(1234);
  // Position addressing: any split of a range gives the same values.
  std::vector<float> whole(1001), parts(1001);
  g.normal(3, 5, whole.data(), 1001);
  g.normal(3, 5, parts.data(), 7);
  g.normal(3, 12, parts.data() + 7, 500);
  g.normal(3, 512, parts.data() + 507, 494);
  CHECK(whole == parts);
  // Streams and seeds differ.
  std::vector<float> other(1001);
  g.normal(4, 5, other.data(), 1001);
  CHECK(other != whole);
  PhiloxGenerator(1235).normal(3, 5, other.data(), 1001);
  CHECK(other != whole);

  // Moments of 2^18 values.
  const int n = 1 << 18;
  std::vector<float> z(n);
  g.normal(0, 0, z.data(), n);
  double mean = 0, var = 0, kurt = 0;
  for (float v : z) mean += v;
  mean /= n;
  for (float v : z) {
    var += (v - mean) * (v - mean);
    kurt += std::pow(v - mean, 4);
  }
  var /= n;
  kurt /= n * var * var;
  CHECK(std::fabs(mean) < 0.01);
  CHECK(std::fabs(var - 1) < 0.01);
  CHECK(std::fabs(kurt - 3) < 0.05);
  // Neighbouring values are uncorrelated.
  double lag = 0;
  for (int i = 1; i < n; ++i) lag += (z[i] - mean) * (z[i - 1] - mean);
  CHECK(std::fabs(lag / (n * var)) < 0.01);

  std::vector<float> uni(4096);
  g.uniform(0, 0, uni.data(), 4096);
  double usum = 0;
  for (float v : uni) {
    CHECK(v >= 0.0f);
    CHECK(v < 1.0f);
    usum += v;
  }
  CHECK(std::fabs(usum / 4096 - 0.5) < 0.02);
}

TEST_CASE("philox noise: a batch of n equals n single runs", "[sched]") {
  const int per_sample = 3 * 5 * 5;  // not a multiple of 4, so draws straddle Philox blocks
  PhiloxNoise batch(77);
  std::vector<float> b1(4 * per_sample), b2(4 * per_sample);
  REQUIRE(batch.normal(b1.data(), 4, per_sample).ok());
  REQUIRE(batch.normal(b2.data(), 4, per_sample).ok());
  for (int k = 0; k < 4; ++k) {
    PhiloxNoise single(77, static_cast<uint64_t>(k));
    std::vector<float> s1(per_sample), s2(per_sample);
    REQUIRE(single.normal(s1.data(), 1, per_sample).ok());
    REQUIRE(single.normal(s2.data(), 1, per_sample).ok());
    CHECK(std::memcmp(s1.data(), &b1[k * per_sample], per_sample * sizeof(float)) == 0);
    CHECK(std::memcmp(s2.data(), &b2[k * per_sample], per_sample * sizeof(float)) == 0);
  }
  CHECK(std::memcmp(b1.data(), b1.data() + per_sample, per_sample * sizeof(float)) != 0);
  CHECK(std::memcmp(b1.data(), b2.data(), per_sample * sizeof(float)) != 0);

  // And through the whole sampler: image k of a batch-of-3 DDPM run equals a single run on stream k.
  Schedule s = make_schedule(linear_config());
  SamplerSpec spec;
  spec.steps = 5;
  auto run = [&](int batch_size, uint64_t first_stream, std::vector<float>* x) {
    PhiloxNoise noise(5, first_stream);
    x->assign(static_cast<size_t>(batch_size) * 48, 0.0f);
    DenoiseFn m = [batch_size](const float* in, int64_t t, float* out) {
      for (int i = 0; i < batch_size * 48; ++i) out[i] = 0.1f * in[i] + 0.001f * static_cast<float>(t);
      return Status();
    };
    return sample(spec, s, batch_size, 3, 4, 4, noise, m, x->data());
  };
  std::vector<float> all, one;
  REQUIRE(run(3, 0, &all).ok());
  for (int k = 0; k < 3; ++k) {
    REQUIRE(run(1, static_cast<uint64_t>(k), &one).ok());
    CHECK(std::memcmp(one.data(), &all[k * 48], 48 * sizeof(float)) == 0);
  }

  // TorchNoise draws the whole batch as one randn call (diffusers semantics).
  TorchNoise tn(42);
  std::vector<float> tb(2 * 50);
  REQUIRE(tn.normal(tb.data(), 2, 50).ok());
  const std::vector<float> ref = read_f32("randn_seed42_n100.f32", 100);
  CHECK(rel_linf(tb.data(), ref.data(), 100) <= 1e-6);
  CHECK_FALSE(tn.normal(tb.data(), 0, 50).ok());
  CHECK_FALSE(batch.normal(tb.data(), 2, 0).ok());
}
