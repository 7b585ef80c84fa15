// Random generators: a torch-compatible one (to reproduce diffusers' noise) and our own counter-based default.
//
// TorchGenerator reproduces what torch.Generator().manual_seed(s) yields on the CPU: the same MT19937 state, the
// same 24-bit float uniforms, and torch.randn's block-of-16 Box–Muller layout. torch's AVX2 kernel uses vectorised
// log/sin/cos approximations, so parity with it is about 1 ulp (≤ 2e-7 relative), not bitwise.
//
// PhiloxGenerator is Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3",
// SC'11). A value is a pure function of (seed, stream, position), so any split of the work over threads gives the
// same numbers and sample k of a batch can use its own stream: a batch of n equals n single runs.
//
// NoiseSource is what the sampler loop draws from; it fixes the batch semantics of each generator.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

class TorchGenerator {
 public:
  static constexpr uint64_t kDefaultSeed = 67280421310721ULL;  // torch's default_rng_seed_val

  explicit TorchGenerator(uint64_t seed = kDefaultSeed) { manual_seed(seed); }

  // Which torch CPU kernel randn (n ≥ 16) follows. Avx2: x86-64 torch on a CPU with AVX2 (the usual case, and the
  // one diffusers' reference numbers come from), angle 2π·u in float. Scalar: torch elsewhere (ARM64, old x86),
  // angle in double. torch's AVX2 log/sin/cos approximations are not emulated: expect ~1 ulp differences.
  enum class RandnPath { Avx2, Scalar };
  void set_randn_path(RandnPath path) { randn_path_ = path; }

  // torch keeps only the low 32 bits of the seed for MT19937 and drops any cached normal sample.
  void manual_seed(uint64_t seed);

  uint32_t random();    // one MT19937 output
  uint64_t random64();  // two outputs, the first one in the high word (torch's make64BitsFrom32Bits)

  // torch.rand in float32: 24 random bits, (r & 0xFFFFFF)·2^-24, then ·(to − from) + from in float.
  float uniform_float(float from = 0.0f, float to = 1.0f);
  // torch.rand in float64: 53 bits of random64().
  double uniform_double(double from = 0.0, double to = 1.0);

  // torch.randn(n) in float32 on a contiguous tensor. n ≥ 16 takes torch's block-of-16 path; n < 16 takes its
  // per-element double Box–Muller path, which caches the second value of each pair in the generator.
  Status randn(float* out, int64_t n);
  // torch.rand(n) / uniform_(from, to) in float32, serial.
  Status rand(float* out, int64_t n, float from = 0.0f, float to = 1.0f);
  // torch.randint(low, high, (n,)) for int64 tensors: (r mod (high − low)) + low with 32 or 64 random bits.
  Status randint(int64_t* out, int64_t n, int64_t low, int64_t high);

 private:
  double normal_double();  // torch's at::normal_distribution<double>(0, 1), with its cache

  std::mt19937 engine_;
  std::optional<double> next_double_normal_;
  RandnPath randn_path_ = RandnPath::Avx2;
};

// Philox4x32-10 block function: one 128-bit counter and a 64-bit key to 128 random bits.
void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

// Normal streams keyed by (seed, stream). Position p of a stream is a pure function of (seed, stream, p):
// block b = p / 4 is Philox(counter = (b_lo, b_hi, stream_lo, stream_hi), key = (seed_lo, seed_hi)), whose four
// words become four normals by Box–Muller in double on pairs of 32-bit uniforms, rounded to float.
class PhiloxGenerator {
 public:
  explicit PhiloxGenerator(uint64_t seed) : seed_(seed) {}
  uint64_t seed() const { return seed_; }

  // Writes positions [position, position + n) of stream `stream` to out.
  void normal(uint64_t stream, uint64_t position, float* out, int64_t n) const;
  // Uniform floats in [0, 1) with 24 bits, from the same counter space but a disjoint key (seed ^ a constant).
  void uniform(uint64_t stream, uint64_t position, float* out, int64_t n) const;

 private:
  uint64_t seed_;
};

// What a sampler draws its noise from. Each call is one tensor of shape (batch, per_sample…), in the order the
// diffusers pipeline would draw it.
class NoiseSource {
 public:
  virtual ~NoiseSource() = default;
  virtual Status normal(float* out, int batch, int64_t per_sample) = 0;
};

// diffusers semantics: one generator, the whole batch drawn as one torch.randn call.
class TorchNoise : public NoiseSource {
 public:
  explicit TorchNoise(uint64_t seed) : generator_(seed) {}
  Status normal(float* out, int batch, int64_t per_sample) override;
  TorchGenerator& generator() { return generator_; }

 private:
  TorchGenerator generator_;
};

// Our default: sample k of a batch reads stream first_stream + k, each stream advancing by per_sample values per
// draw. So image k of a batch run equals a batch-1 run with first_stream = first_stream + k, whatever the batch
// size or thread count.
class PhiloxNoise : public NoiseSource {
 public:
  explicit PhiloxNoise(uint64_t seed, uint64_t first_stream = 0) : generator_(seed), first_stream_(first_stream) {}
  Status normal(float* out, int batch, int64_t per_sample) override;

 private:
  PhiloxGenerator generator_;
  uint64_t first_stream_;
  std::vector<uint64_t> positions_;  // next unread position of each stream used so far
};

}  // namespace ddpm
