#include "train/params.h"

#include <cmath>

#include "core/rng.h"

namespace ddpm {

uint64_t train_stream(TrainStream purpose, uint64_t index) {
  return (static_cast<uint64_t>(purpose) << 56) | (index & ((uint64_t{1} << 56) - 1));
}

uint32_t philox_word(uint64_t seed, uint64_t stream, uint64_t position) {
  const uint64_t block = position / 4;
  const uint32_t counter[4] = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                               static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)};
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  uint32_t words[4];
  philox4x32_10(counter, key, words);
  return words[position % 4];
}

uint32_t philox_below(uint64_t seed, uint64_t stream, uint64_t position, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(philox_word(seed, stream, position)) * n) >> 32);
}

std::vector<uint32_t> philox_permutation(uint64_t seed, uint64_t stream, uint32_t n) {
  std::vector<uint32_t> p(n);
  for (uint32_t i = 0; i < n; ++i) p[i] = i;
  for (uint32_t i = n; i > 1; --i) std::swap(p[i - 1], p[philox_below(seed, stream, i, i)]);
  return p;
}

ParamLayout::ParamLayout(std::vector<ParamSpec> specs) : specs_(std::move(specs)) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    int64_t n = 1;
    for (int64_t d : specs_[i].shape) n *= d;
    const int64_t begin = offsets_.back();
    offsets_.push_back(begin + n);
    for (int64_t b = begin; b < begin + n; b += kPieceSize) pieces_.push_back({i, b, std::min(begin + n, b + kPieceSize)});
    index_[specs_[i].name] = i;
  }
}

int ParamLayout::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : static_cast<int>(it->second);
}

WeightLookup ParamLayout::lookup(const float* buffer) const {
  return [this, buffer](const std::string& name, const std::vector<int64_t>&, WeightRef* out) {
    const int i = find(name);
    if (i < 0) return errorf("not a trained parameter");
    const ParamSpec& spec = specs_[static_cast<size_t>(i)];
    out->dtype = DType::F32;
    out->rank = static_cast<int>(spec.shape.size());
    for (int d = 0; d < out->rank; ++d) out->shape[d] = spec.shape[static_cast<size_t>(d)];
    out->data = buffer + offsets_[static_cast<size_t>(i)];
    return Status();
  };
}

void init_parameters(const ParamLayout& layout, uint64_t seed, float* out) {
  auto fan_in = [](const ParamSpec& s) {
    int64_t n = 1;
    for (size_t d = 1; d < s.shape.size(); ++d) n *= s.shape[d];
    return n;
  };
  auto ends_with = [](const std::string& s, const char* suffix) {
    const std::string t(suffix);
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
  };
  const PhiloxGenerator normal(seed);
  for (size_t i = 0; i < layout.size(); ++i) {
    const ParamSpec& spec = layout.specs()[i];
    float* p = out + layout.offset(i);
    const int64_t n = layout.numel(i);
    // The tensor whose fan-in sets the bound: a weight matrix itself, or the matrix beside a bias.
    const ParamSpec* matrix = spec.shape.size() >= 2 ? &spec : nullptr;
    if (!matrix && ends_with(spec.name, ".bias")) {
      const int w = layout.find(spec.name.substr(0, spec.name.size() - 5) + ".weight");
      if (w >= 0 && layout.specs()[static_cast<size_t>(w)].shape.size() >= 2) matrix = &layout.specs()[static_cast<size_t>(w)];
    }
    if (spec.name == "class_embedding.weight") {
      normal.normal(train_stream(TrainStream::InitNormal, i), 0, p, n);
    } else if (matrix) {
      const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in(*matrix))));
      const uint64_t stream = train_stream(TrainStream::InitUniform, i);
      for (int64_t k = 0; k < n; ++k) {
        const float u = static_cast<float>(philox_word(seed, stream, static_cast<uint64_t>(k)) >> 8) * (1.0f / 16777216.0f);
        p[k] = (2.0f * u - 1.0f) * bound;
      }
    } else {
      const float value = ends_with(spec.name, ".weight") ? 1.0f : 0.0f;  // normalisation scale and shift
      for (int64_t k = 0; k < n; ++k) p[k] = value;
    }
  }
}

}  // namespace ddpm
