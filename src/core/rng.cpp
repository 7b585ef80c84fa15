#include "core/rng.h"

// The noise must not depend on whether the compiler fuses a·b + c into one rounding (GCC does by default for C++
// on ARM64); both generators promise the same numbers on every machine.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cmath>
#include <cstring>
#include <limits>

namespace ddpm {

namespace {

constexpr double kPi = 3.14159265358979323846;

Status check_count(int64_t n, const char* what) {
  if (n < 0) return errorf("%s: negative element count %lld", what, static_cast<long long>(n));
  return Status();
}

// torch's normal_fill_16: u[0..7] give the radius, u[8..15] the angle. x86 torch with AVX2 forms the angle as
// float(2π)·u in float; its scalar kernel (other CPUs) forms 2π·u in double and then rounds it to float. The
// difference is up to half an ulp of the angle, i.e. a few 1e-7 absolute in the output.
void torch_normal_fill_16(float* data, TorchGenerator::RandnPath path) {
  const float two_pi_f = static_cast<float>(2.0 * kPi);
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - data[j];  // [0, 1) → (0, 1] so the log is finite
    const float u2 = data[j + 8];
    const float radius = std::sqrt(-2.0f * std::log(u1));
    const float theta = path == TorchGenerator::RandnPath::Avx2 ? two_pi_f * u2
                                                                : static_cast<float>(2.0 * kPi * static_cast<double>(u2));
    data[j] = radius * std::cos(theta);
    data[j + 8] = radius * std::sin(theta);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// TorchGenerator

void TorchGenerator::manual_seed(uint64_t seed) {
  // std::mt19937's seeding is exactly torch's init_with_uint32 (Knuth's 1812433253 recurrence).
  engine_.seed(static_cast<std::mt19937::result_type>(static_cast<uint32_t>(seed)));
  next_double_normal_.reset();
}

uint32_t TorchGenerator::random() { return static_cast<uint32_t>(engine_()); }

uint64_t TorchGenerator::random64() {
  const uint64_t hi = random();
  const uint64_t lo = random();
  return (hi << 32) | lo;
}

float TorchGenerator::uniform_float(float from, float to) {
  const float x = static_cast<float>(random() & 0xFFFFFFu) * (1.0f / 16777216.0f);
  return x * (to - from) + from;
}

double TorchGenerator::uniform_double(double from, double to) {
  const double x = static_cast<double>(random64() & ((uint64_t{1} << 53) - 1)) * (1.0 / 9007199254740992.0);
  return x * (to - from) + from;
}

double TorchGenerator::normal_double() {
  if (next_double_normal_) {
    const double cached = *next_double_normal_;
    next_double_normal_.reset();
    return cached;
  }
  // Note the roles: the first uniform gives the angle, the second the radius (torch's normal_distribution).
  const double u1 = uniform_double();
  const double u2 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log1p(-u2));
  const double theta = 2.0 * kPi * u1;
  next_double_normal_ = r * std::sin(theta);
  return r * std::cos(theta);
}

Status TorchGenerator::randn(float* out, int64_t n) {
  DDPM_TRY(check_count(n, "randn"));
  if (n < 16) {
    // torch's path for small (or non-contiguous) tensors: one double Box–Muller value per element, rounded.
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(normal_double());
    return Status();
  }
  for (int64_t i = 0; i < n; ++i) out[i] = uniform_float();
  for (int64_t i = 0; i + 16 <= n; i += 16) torch_normal_fill_16(out + i, randn_path_);
  if (n % 16 != 0) {
    // torch redraws 16 fresh uniforms for the last 16 positions, overwriting part of the last full block.
    float* tail = out + n - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
    torch_normal_fill_16(tail, randn_path_);
  }
  return Status();
}

Status TorchGenerator::rand(float* out, int64_t n, float from, float to) {
  DDPM_TRY(check_count(n, "rand"));
  if (!(from <= to) || !std::isfinite(to - from))
    return errorf("rand: bad range [%g, %g)", static_cast<double>(from), static_cast<double>(to));
  for (int64_t i = 0; i < n; ++i) out[i] = uniform_float(from, to);
  return Status();
}

Status TorchGenerator::randint(int64_t* out, int64_t n, int64_t low, int64_t high) {
  DDPM_TRY(check_count(n, "randint"));
  if (high <= low)
    return errorf("randint: empty range [%lld, %lld)", static_cast<long long>(low), static_cast<long long>(high));
  const uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = range >= (uint64_t{1} << 32) ? random64() : random();
    out[i] = static_cast<int64_t>(r % range + static_cast<uint64_t>(low));
  }
  return Status();
}

// ---------------------------------------------------------------------------------------------------------------
// Philox4x32-10

void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  // Multipliers and Weyl key increments (golden ratio, √3 − 1) as given in the paper.
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

namespace {

// Bit 63 of the block index separates the uniform helper's numbers from the normal streams.
constexpr uint64_t kUniformBlockFlag = uint64_t{1} << 63;

void philox_block(uint64_t seed, uint64_t stream, uint64_t block, uint32_t out[4]) {
  const uint32_t counter[4] = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                               static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)};
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  philox4x32_10(counter, key, out);
}

// Two words → two normals. u1 ∈ (0, 1] keeps the log finite; 32 bits put the largest radius at ≈ 6.7σ.
void box_muller_pair(uint32_t a, uint32_t b, float* out) {
  constexpr double kTwoPow32Inv = 1.0 / 4294967296.0;
  const double u1 = (static_cast<double>(a) + 1.0) * kTwoPow32Inv;
  const double u2 = static_cast<double>(b) * kTwoPow32Inv;
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 2.0 * kPi * u2;
  out[0] = static_cast<float>(r * std::cos(theta));
  out[1] = static_cast<float>(r * std::sin(theta));
}

void philox_normal_block(uint64_t seed, uint64_t stream, uint64_t block, float out[4]) {
  uint32_t words[4];
  philox_block(seed, stream, block, words);
  box_muller_pair(words[0], words[1], out);
  box_muller_pair(words[2], words[3], out + 2);
}

}  // namespace

void PhiloxGenerator::normal(uint64_t stream, uint64_t position, float* out, int64_t n) const {
  if (n <= 0) return;
  uint64_t block = position / 4;
  int skip = static_cast<int>(position % 4);
  int64_t done = 0;
  float values[4];
  while (done < n) {
    philox_normal_block(seed_, stream, block, values);
    for (int j = skip; j < 4 && done < n; ++j) out[done++] = values[j];
    skip = 0;
    ++block;
  }
}

void PhiloxGenerator::uniform(uint64_t stream, uint64_t position, float* out, int64_t n) const {
  if (n <= 0) return;
  uint64_t block = position / 4;
  int skip = static_cast<int>(position % 4);
  int64_t done = 0;
  uint32_t words[4];
  while (done < n) {
    philox_block(seed_, stream, (block & ~kUniformBlockFlag) | kUniformBlockFlag, words);
    for (int j = skip; j < 4 && done < n; ++j)
      out[done++] = static_cast<float>(words[j] >> 8) * (1.0f / 16777216.0f);
    skip = 0;
    ++block;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Noise sources

namespace {

Status check_draw_shape(int batch, int64_t per_sample) {
  if (batch < 1 || per_sample < 1)
    return errorf("noise draw of shape (%d, %lld): both sizes must be positive", batch,
                  static_cast<long long>(per_sample));
  if (per_sample > std::numeric_limits<int64_t>::max() / batch)
    return errorf("noise draw of shape (%d, %lld) overflows", batch, static_cast<long long>(per_sample));
  return Status();
}

}  // namespace

Status TorchNoise::normal(float* out, int batch, int64_t per_sample) {
  DDPM_TRY(check_draw_shape(batch, per_sample));
  return generator_.randn(out, static_cast<int64_t>(batch) * per_sample);
}

Status PhiloxNoise::normal(float* out, int batch, int64_t per_sample) {
  DDPM_TRY(check_draw_shape(batch, per_sample));
  if (positions_.size() < static_cast<size_t>(batch)) positions_.resize(static_cast<size_t>(batch), 0);
  for (int k = 0; k < batch; ++k) {
    const uint64_t position = positions_[static_cast<size_t>(k)];
    generator_.normal(first_stream_ + static_cast<uint64_t>(k), position, out + static_cast<int64_t>(k) * per_sample,
                      per_sample);
    positions_[static_cast<size_t>(k)] = position + static_cast<uint64_t>(per_sample);
  }
  return Status();
}

}  // namespace ddpm
