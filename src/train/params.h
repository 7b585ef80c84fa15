// Trainable parameters as one flat f32 buffer, their initialisation, and the random streams of a training run.
//
// Every parameter tensor is a slice of one buffer (weights, their EMA and both AdamW moments share the layout), so
// checkpoints, optimiser passes and comparisons are loops over one array, and a WeightLookup hands the graph
// builders views into whichever buffer a graph should read.
//
// Randomness: every random number of a run is a pure function of (seed, purpose, index, position) through Philox
// (core/rng.h), never of a generator's history. So a run resumed at step k draws exactly what an uninterrupted run
// draws at step k, and the thread count cannot change anything.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/unet.h"

namespace ddpm {

// What a stream is for; the purpose sits in the top byte of the Philox stream id, the index (a step, an epoch, a
// parameter) in the low 56 bits, so streams of different purposes never share counters.
enum class TrainStream : uint64_t {
  InitUniform = 1,  // index: parameter
  InitNormal = 2,   // index: parameter
  Order = 3,        // index: epoch — the data permutation
  Timestep = 4,     // index: step
  Noise = 5,        // index: step; position: sample·numel + element
  LabelDrop = 6,    // index: step
  Flip = 7,         // index: step
  Split = 8,        // index: 0 — the validation split
  Validation = 9,   // index: 0 (timesteps) or 1 (noise) — identical at every evaluation
};

uint64_t train_stream(TrainStream purpose, uint64_t index);
// Word `position` of a stream: 32 uniform bits.
uint32_t philox_word(uint64_t seed, uint64_t stream, uint64_t position);
// ⌊word·n / 2³²⌋: an integer in [0, n) (bias below n/2³², irrelevant for our n).
uint32_t philox_below(uint64_t seed, uint64_t stream, uint64_t position, uint32_t n);
// A permutation of [0, n) by Fisher–Yates on stream words.
std::vector<uint32_t> philox_permutation(uint64_t seed, uint64_t stream, uint32_t n);

class ParamLayout {
 public:
  // A contiguous piece of one parameter: optimiser passes split the work into these, a fixed partition of the
  // buffer (pieces of at most kPieceSize), so results never depend on which thread took which piece.
  struct Piece {
    size_t param;
    int64_t begin, end;  // offsets into the flat buffer
  };
  static constexpr int64_t kPieceSize = 32768;

  ParamLayout() = default;
  explicit ParamLayout(std::vector<ParamSpec> specs);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  size_t size() const { return specs_.size(); }
  int64_t offset(size_t i) const { return offsets_[i]; }
  int64_t numel(size_t i) const { return offsets_[i + 1] - offsets_[i]; }
  int64_t total() const { return offsets_.back(); }
  const std::vector<Piece>& pieces() const { return pieces_; }
  // Index of the parameter `name`, or −1.
  int find(const std::string& name) const;

  // Serves parameter tensors as f32 views of `buffer` (total() floats), which must outlive the graphs built.
  WeightLookup lookup(const float* buffer) const;

 private:
  std::vector<ParamSpec> specs_;
  std::vector<int64_t> offsets_ = {0};
  std::vector<Piece> pieces_;
  std::unordered_map<std::string, size_t> index_;
};

// PyTorch's default initialisation of the layers these names belong to, from (seed, parameter index) streams:
//   conv / linear weights and their biases  U(−1/√fan_in, 1/√fan_in)   (kaiming_uniform with a = √5)
//   norm weights (rank 1, no matrix beside them) 1, their biases 0
//   class_embedding.weight                  N(0, 1)                      (nn.Embedding)
void init_parameters(const ParamLayout& layout, uint64_t seed, float* out);

}  // namespace ddpm
