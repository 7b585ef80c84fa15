// The diffusers UNet2DModel forward pass as a compute graph (reference: diffusers-reference.md §1).
//
// Module names mirror the checkpoint keys: the builder asks for "down_blocks.1.attentions.0.to_q.weight" and so on,
// with the shape it expects, so a converted diffusers checkpoint is used as it is, and a missing or wrongly shaped
// tensor is reported by its own name.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ddpm/graph.h"
#include "ddpm/threadpool.h"
#include "model/unet_config.h"

namespace ddpm {

struct WeightRef {
  DType dtype = DType::F32;
  int rank = 0;
  int64_t shape[kMaxRank] = {0, 0, 0, 0};
  const void* data = nullptr;
  bool mapped = false;  // data lies in a read-only file mapping (kFlagMapped)
  bool frozen = false;  // data does not change while a graph uses it (kFlagFrozen)
  bool tap_major = false;  // a block-typed conv weight stored tap-major (kFlagTapMajor)
  bool int8_winograd = false;  // a block-typed weight that 3×3 convs may run by 8-bit Winograd (kFlagInt8Winograd)
};

// Returns the weight `name`, or an error when it does not exist. `expected` is the shape the network needs (the
// builder checks the answer against it; a lookup may use it, e.g. to enumerate parameters).
using WeightLookup =
    std::function<Status(const std::string& name, const std::vector<int64_t>& expected, WeightRef* out)>;

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// The graph tensors of one U-Net built into a caller's graph (build_unet_graph).
struct UNetGraphParts {
  Tensor* sample = nullptr;        // input [B, in_channels, H, W] f32
  Tensor* timesteps = nullptr;     // input [B] f32
  Tensor* class_labels = nullptr;  // input as for UNet::forward (i32 [B], f32 [B] or f32 [B, D]); null if unconditional
  Tensor* output = nullptr;        // [B, out_channels, H, W] f32, marked as a graph output
};

// Appends the network to `g` without planning it, so a caller can add more nodes first (a training loss and its
// backward pass) and plan once. Weights come from `lookup` as graph parameters (caller-owned memory, read at every
// compute, so an optimiser may update them in place). taps: as UNet::build's keep_intermediates (may be null).
// inference_only_fusions: fuse ops that have no backward rule when fused (the resnets' time-embedding add into
// norm2); the outputs are the same bits either way.
Status build_unet_graph(Graph& g, const UNetConfig& config, const WeightLookup& lookup, int64_t batch, int64_t height,
                        int64_t width, UNetGraphParts* out,
                        std::vector<std::pair<std::string, Tensor*>>* taps = nullptr,
                        bool inference_only_fusions = false);

class UNet {
 public:
  // Builds and plans the graph for inputs [batch, in_channels, height, width].
  // keep_intermediates keeps every module's output (named like diffusers' modules: "time_proj", "conv_in",
  // "down_blocks.1.attentions.0", …) alive for intermediate(), to localise a mismatch against PyTorch.
  static Status build(const UNetConfig& config, const WeightLookup& lookup, int64_t batch, int64_t height,
                      int64_t width, std::unique_ptr<UNet>* out, bool keep_intermediates = false);
  // A kept module output after forward(), or nullptr.
  const Tensor* intermediate(const std::string& module) const;
  const std::vector<std::pair<std::string, Tensor*>>& intermediates() const { return taps_; }

  // One forward pass. sample [B, C, H, W]; timesteps [B] (float, as diffusers casts them);
  // class_labels: int32 [B] for a class table, float [B] for "timestep" class embeddings, float [B, D] for
  // "identity", null for unconditional models. out [B, out_channels, H, W].
  Status forward(ThreadPool& pool, const float* sample, const float* timesteps, const void* class_labels, float* out);

  const UNetConfig& config() const { return config_; }
  int64_t batch() const { return batch_; }
  size_t activation_bytes() const { return graph_.planned_arena_bytes(); }
  Graph& graph() { return graph_; }

 private:
  UNet() = default;
  UNetConfig config_;
  int64_t batch_ = 0;
  Graph graph_;
  Tensor* sample_ = nullptr;
  Tensor* timesteps_ = nullptr;
  Tensor* class_labels_ = nullptr;
  Tensor* output_ = nullptr;
  std::vector<std::pair<std::string, Tensor*>> taps_;
};

// Every parameter the network needs, with its shape, in build order (what a converter must provide).
Status unet_parameter_specs(const UNetConfig& config, std::vector<ParamSpec>* out);

}  // namespace ddpm
