// Sampling from a network while it trains: the weights come from a buffer (the EMA), not from a .ddpm file, and
// the network may be any NetSpec (the toy MLP has no .ddpm reader). Noise, batching and guidance follow
// model/pipeline.cpp (Philox streams per image, ε = ε_uncond + s·(ε_cond − ε_uncond)), so a grid drawn here with
// some seed shows what `ddpm generate` draws from the exported model with that seed and batch size.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "ddpm/threadpool.h"
#include "model/sampler.h"
#include "train/net.h"

namespace ddpm {

// One forward-only network of fixed batch over caller-owned weights, planned once and run many times.
class ForwardNet {
 public:
  static Status build(const NetSpec& spec, const WeightLookup& weights, int64_t batch, std::unique_ptr<ForwardNet>* out);
  // x [B, C, H, W], t [B], labels [B] (class-table models; else null), out [B, C, H, W].
  Status run(ThreadPool& pool, const float* x, const float* t, const int32_t* labels, float* out);
  int64_t batch() const { return batch_; }

 private:
  Graph graph_;
  UNetGraphParts io_;
  int64_t batch_ = 0;
};

struct SampleRequest {
  SamplerSpec sampler;
  int count = 1;
  std::vector<int32_t> labels;  // one per image for class-table models, else empty
  float guidance_scale = 1.0f;  // used when != 1 and null_class is set
  std::optional<int32_t> null_class;
  uint64_t seed = 0;
  int max_batch = 64;  // images per network batch (the network runs 2× that under guidance)
};

// count · C·H·W floats in model range. `net` is reused between calls when its batch fits (pass an empty pointer
// the first time); it must have been built over `weights`.
Status sample_network(const NetSpec& spec, const Schedule& schedule, const WeightLookup& weights, ThreadPool& pool,
                      const SampleRequest& request, std::unique_ptr<ForwardNet>* net, std::vector<float>* out);

}  // namespace ddpm
