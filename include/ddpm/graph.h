// Compute graphs: built first, planned once, executed many times.
//
//   ddpm::Graph g;
//   Tensor* x = g.input("x", DType::F32, {1, 3, 32, 32});            // [B, C, H, W]
//   Tensor* w = g.param("conv.weight", DType::F32, {8, 3, 3, 3}, weights);
//   Tensor* y = ddpm::silu(g, ddpm::conv2d(g, x, w, nullptr, {1, 1, 1, 1, 1}));
//   g.set_output(y);
//   if (!g.status().ok()) …                  // builders record the first shape error instead of asserting
//   g.plan();                                // liveness-based placement of every activation in one arena
//   fill(x->f32()); g.compute(pool);         // run; repeat as often as needed (sampling loops)
//
// Building only records ops and shapes. The planner walks nodes in creation order (a topological order, since a
// node can only use nodes created before it), frees each activation after its last consumer and reuses the space
// best-fit, so peak memory is what the widest point of the network needs, not the sum of all activations.
// Execution runs nodes in order; each op splits its own work into tasks over the thread pool with a partition
// whose arithmetic does not depend on the thread count, so results are bit-identical for any number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "ddpm/status.h"
#include "ddpm/tensor.h"

namespace ddpm {

class ThreadPool;
class PackedWeights;  // internal: weights kept in a derived form (src/ops/qgemm.h)

class Graph {
 public:
  Graph();
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // Constant tensor whose memory is owned by the caller (model weights); data must outlive the graph. A block-typed
  // (q8_0, q4_0, …) param is decoded into the integer GEMM's layout at the first compute() and kept in that form,
  // so its data must not change afterwards; f32/f16 params are read at every compute() (training updates them),
  // unless flagged kFlagFrozen (a loaded model's weights), whose conv filters may be kept Winograd-transformed.
  Tensor* param(const std::string& name, DType dtype, std::initializer_list<int64_t> shape, const void* data);
  Tensor* param(const std::string& name, DType dtype, int rank, const int64_t* shape, const void* data);
  // Tensor placed in the arena by plan() and filled by the caller before each compute().
  Tensor* input(const std::string& name, DType dtype, std::initializer_list<int64_t> shape);
  // Keeps `t` alive to the end of compute() so the caller can read it.
  void set_output(Tensor* t);

  // First error recorded by an op builder (shape mismatch, bad parameter), or ok.
  const Status& status() const { return status_; }
  // Records an error (the first one wins) and returns nullptr, so builders can `return g.fail(...)`.
  Tensor* fail(Status error);

  // Places every non-parameter tensor in one arena. Call after building, before compute().
  Status plan();
  size_t planned_arena_bytes() const { return arena_bytes_; }
  // Bytes of per-thread scratch that compute() needs for `threads` threads.
  size_t scratch_bytes_per_thread() const { return scratch_per_thread_; }
  // Bytes of the one scratch buffer all threads of an op share (e.g. unpacked quantised weights).
  size_t shared_scratch_bytes() const { return shared_bytes_; }
  // Bytes of weights kept in a derived form (see param: decoded block types, Winograd filters), after a compute().
  size_t packed_weight_bytes() const;
  // Runs the graph. `pool` decides the thread count; results do not depend on it.
  Status compute(ThreadPool& pool);

  const std::vector<Tensor*>& nodes() const { return nodes_; }

  // For op builders: creates a node of the given op/shape with row-major strides.
  Tensor* new_node(OpKind op, DType dtype, int rank, const int64_t* shape, std::initializer_list<Tensor*> sources);
  // For op builders: creates a view of `source` (shape/strides filled in by the caller).
  Tensor* new_view(Tensor* source, int rank, const int64_t* shape, const int64_t* stride, int64_t offset);

 private:
  Tensor* add_tensor();

  std::deque<Tensor> storage_;  // deque: node addresses stay stable as the graph grows
  std::vector<Tensor*> nodes_;
  Status status_;
  bool planned_ = false;
  size_t arena_bytes_ = 0;
  size_t scratch_per_thread_ = 0;
  size_t shared_bytes_ = 0;
  std::unique_ptr<uint8_t[], void (*)(uint8_t*)> arena_;
  std::unique_ptr<uint8_t[], void (*)(uint8_t*)> shared_;
  std::vector<uint8_t*> scratch_;  // one per thread, grown on demand
  std::unique_ptr<PackedWeights> packed_weights_;
};

}  // namespace ddpm
