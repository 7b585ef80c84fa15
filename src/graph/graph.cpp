#include "ddpm/graph.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/align.h"
#include "ddpm/threadpool.h"
#include "graph/profile.h"
#include "ops/op_exec.h"
#include "ops/qgemm.h"

namespace ddpm {
namespace {

void free_aligned(uint8_t* p) { std::free(p); }

uint8_t* alloc_aligned(size_t bytes) {
  if (bytes == 0) bytes = kCacheLine;
  return static_cast<uint8_t*>(std::aligned_alloc(kCacheLine, align_to_cache_line(bytes)));
}

size_t tensor_bytes(const Tensor& t) { return dtype_tensor_bytes(t.dtype, t.rank, t.shape); }

// Best-fit placement of blocks inside one growing arena. Free blocks are kept sorted by offset and merged with
// their neighbours, so a freed region can be reused by any later tensor that fits.
class ArenaPlanner {
 public:
  size_t allocate(size_t bytes) {
    bytes = align_to_cache_line(std::max<size_t>(bytes, 1));
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].size >= bytes && (best == free_.size() || free_[i].size < free_[best].size)) best = i;
    }
    if (best != free_.size()) {
      const size_t offset = free_[best].offset;
      free_[best].offset += bytes;
      free_[best].size -= bytes;
      if (free_[best].size == 0) free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
      return offset;
    }
    // Grow the arena, reusing a free block that ends at the top.
    if (!free_.empty() && free_.back().offset + free_.back().size == top_) {
      const size_t offset = free_.back().offset;
      free_.pop_back();
      top_ = offset + bytes;
      return offset;
    }
    const size_t offset = top_;
    top_ += bytes;
    return offset;
  }

  void release(size_t offset, size_t bytes) {
    bytes = align_to_cache_line(std::max<size_t>(bytes, 1));
    auto it = std::lower_bound(free_.begin(), free_.end(), offset,
                               [](const Block& b, size_t off) { return b.offset < off; });
    it = free_.insert(it, Block{offset, bytes});
    // Merge with the next, then the previous block.
    auto next = it + 1;
    if (next != free_.end() && it->offset + it->size == next->offset) {
      it->size += next->size;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = it - 1;
      if (prev->offset + prev->size == it->offset) {
        prev->size += it->size;
        free_.erase(it);
      }
    }
  }

  size_t peak() const { return top_; }

 private:
  struct Block {
    size_t offset, size;
  };
  std::vector<Block> free_;
  size_t top_ = 0;
};

Tensor* storage_root(Tensor* t) { return t->view_source ? t->view_source : t; }

std::atomic<StreamOutputs> stream_outputs_mode{StreamOutputs::kAuto};

}  // namespace

void set_stream_outputs(StreamOutputs mode) { stream_outputs_mode.store(mode); }

bool stream_outputs_for(ThreadPool& pool) {
  if (pool.size() < 2) return false;
  switch (stream_outputs_mode.load()) {
    case StreamOutputs::kOn: return true;
    case StreamOutputs::kOff: return false;
    case StreamOutputs::kAuto: break;
  }
  static const char* env = std::getenv("DDPM_STREAM_OUTPUTS");
  if (env && (env[0] == '0' || env[0] == '1') && env[1] == '\0') return env[0] == '1';
  return pool.cores_far_apart();
}

Graph::Graph() : arena_(nullptr, free_aligned), shared_(nullptr, free_aligned) {}

Graph::~Graph() {
  for (uint8_t* s : scratch_) std::free(s);
}

size_t Graph::packed_weight_bytes() const { return packed_weights_ ? packed_weights_->bytes() : 0; }

Tensor* Graph::add_tensor() {
  storage_.emplace_back();
  Tensor* t = &storage_.back();
  t->id = static_cast<int>(nodes_.size());
  nodes_.push_back(t);
  return t;
}

Tensor* Graph::fail(Status error) {
  if (status_.ok()) status_ = std::move(error);
  return nullptr;
}

static void set_row_major(Tensor* t) {
  int64_t stride = 1;
  for (int i = t->rank - 1; i >= 0; --i) {
    t->stride[i] = stride;
    stride *= t->shape[i];
  }
}

Tensor* Graph::param(const std::string& name, DType dtype, int rank, const int64_t* shape, const void* data) {
  if (rank < 1 || rank > kMaxRank) return fail(errorf("param %s: rank %d is not in 1..%d", name.c_str(), rank, kMaxRank));
  for (int i = 0; i < rank; ++i) {
    if (shape[i] <= 0) return fail(errorf("param %s: dimension %d is %lld", name.c_str(), i, (long long)shape[i]));
  }
  Tensor* t = add_tensor();
  t->dtype = dtype;
  t->rank = rank;
  std::copy(shape, shape + rank, t->shape);
  set_row_major(t);
  // Any shape is valid for a block type: its rows are padded to whole blocks (dtype_tensor_bytes).
  t->data = const_cast<void*>(data);
  t->flags = kFlagParam;
  t->name = name;
  return t;
}

Tensor* Graph::param(const std::string& name, DType dtype, std::initializer_list<int64_t> shape, const void* data) {
  return param(name, dtype, static_cast<int>(shape.size()), shape.begin(), data);
}

Tensor* Graph::input(const std::string& name, DType dtype, std::initializer_list<int64_t> shape) {
  const int rank = static_cast<int>(shape.size());
  if (rank < 1 || rank > kMaxRank) return fail(errorf("input %s: rank %d is not in 1..%d", name.c_str(), rank, kMaxRank));
  for (int64_t d : shape) {
    if (d <= 0) return fail(errorf("input %s: non-positive dimension %lld", name.c_str(), (long long)d));
  }
  Tensor* t = add_tensor();
  t->dtype = dtype;
  t->rank = rank;
  std::copy(shape.begin(), shape.end(), t->shape);
  set_row_major(t);
  t->flags = kFlagInput;
  t->name = name;
  return t;
}

void Graph::set_output(Tensor* t) {
  if (t) storage_root(t)->flags |= kFlagOutput;
}

Tensor* Graph::new_node(OpKind op, DType dtype, int rank, const int64_t* shape, std::initializer_list<Tensor*> sources) {
  DDPM_ASSERT(rank >= 1 && rank <= kMaxRank);
  DDPM_ASSERT(sources.size() <= static_cast<size_t>(kMaxSources));
  Tensor* t = add_tensor();
  t->op = op;
  t->dtype = dtype;
  t->rank = rank;
  std::copy(shape, shape + rank, t->shape);
  set_row_major(t);
  int i = 0;
  for (Tensor* s : sources) t->src[i++] = s;
  planned_ = false;
  return t;
}

Tensor* Graph::new_view(Tensor* source, int rank, const int64_t* shape, const int64_t* stride, int64_t offset) {
  DDPM_ASSERT(rank >= 1 && rank <= kMaxRank);
  if (storage_root(source)->flags & kFlagTapMajor) {
    // Its rows are not in the order its shape says (kFlagTapMajor): only conv2d reads it, whole.
    return fail(errorf("cannot take a view of '%s': a tap-major conv weight is only usable whole, by conv2d",
                       storage_root(source)->name.c_str()));
  }
  Tensor* t = add_tensor();
  t->op = OpKind::View;
  t->dtype = source->dtype;
  t->rank = rank;
  std::copy(shape, shape + rank, t->shape);
  std::copy(stride, stride + rank, t->stride);
  // Views always point at the tensor that owns memory, so the planner needs no chains.
  t->view_source = storage_root(source);
  t->view_offset = (source->view_source ? source->view_offset : 0) + offset;
  t->src[0] = source;
  planned_ = false;
  return t;
}

Status Graph::plan() {
  DDPM_TRY(status_);
  const size_t n = nodes_.size();
  // Last node that reads each storage root (through views too); outputs and inputs live to the end.
  std::vector<size_t> last_use(n, 0);
  for (size_t i = 0; i < n; ++i) {
    Tensor* t = nodes_[i];
    last_use[t->id] = std::max(last_use[t->id], i);
    for (Tensor* s : t->src) {
      if (s) last_use[storage_root(s)->id] = std::max(last_use[storage_root(s)->id], i);
    }
  }
  constexpr size_t kForever = std::numeric_limits<size_t>::max();
  std::vector<size_t> offset(n, kForever);
  std::vector<std::vector<Tensor*>> dies_after(n);
  ArenaPlanner planner;
  for (size_t i = 0; i < n; ++i) {
    Tensor* t = nodes_[i];
    if (t->flags & kFlagInput) offset[i] = planner.allocate(tensor_bytes(*t));
  }
  // An op that may write over its first input takes that input's memory when this op is its last reader, it is
  // an activation of the same size, and no other input of the op shares it (a view of it read elsewhere).
  auto input_to_overwrite = [&](size_t i) -> Tensor* {
    Tensor* t = nodes_[i];
    Tensor* s = t->src[0];
    if (!op_exec(t->op).may_overwrite_input || !s || s->op == OpKind::Leaf || s->op == OpKind::View) return nullptr;
    if ((s->flags & (kFlagInput | kFlagOutput)) || offset[s->id] == kForever || last_use[s->id] != i) return nullptr;
    if (s->dtype != t->dtype || tensor_bytes(*s) != tensor_bytes(*t)) return nullptr;
    for (int j = 1; j < kMaxSources; ++j) {
      if (t->src[j] && storage_root(t->src[j]) == s) return nullptr;
    }
    return s;
  };
  size_t scratch = 0, shared = 0;
  for (size_t i = 0; i < n; ++i) {
    Tensor* t = nodes_[i];
    if (t->op == OpKind::Leaf || t->op == OpKind::View) continue;
    if (Tensor* s = input_to_overwrite(i)) {
      // s's memory becomes t's: s is no longer released after this node, t is when it dies.
      std::vector<Tensor*>& dying = dies_after[i];
      const auto entry = std::find(dying.begin(), dying.end(), s);
      DDPM_ASSERT(entry != dying.end());
      dying.erase(entry);
      offset[i] = offset[s->id];
    } else {
      offset[i] = planner.allocate(tensor_bytes(*t));
    }
    if (!(t->flags & kFlagOutput)) dies_after[last_use[i]].push_back(t);
    if (const ScratchFn fn = op_exec(t->op).scratch_bytes) scratch = std::max(scratch, fn(*t));
    if (const ScratchFn fn = op_exec(t->op).shared_bytes) shared = std::max(shared, fn(*t));
    for (Tensor* dead : dies_after[i]) planner.release(offset[dead->id], tensor_bytes(*dead));
  }
  arena_bytes_ = planner.peak();
  arena_.reset(alloc_aligned(arena_bytes_));
  if (!arena_) return errorf("cannot allocate %zu bytes for activations", arena_bytes_);
  for (size_t i = 0; i < n; ++i) {
    if (offset[i] != kForever) nodes_[i]->data = arena_.get() + offset[i];
  }
  for (Tensor* t : nodes_) {
    if (t->op == OpKind::View) {
      const size_t element_bytes = dtype_traits(t->dtype).block_bytes;  // views only exist for plain types
      t->data = static_cast<uint8_t*>(t->view_source->data) + t->view_offset * static_cast<int64_t>(element_bytes);
    }
  }
  scratch_per_thread_ = align_to_cache_line(scratch);
  shared_bytes_ = align_to_cache_line(shared);
  shared_.reset(shared_bytes_ ? alloc_aligned(shared_bytes_) : nullptr);
  if (shared_bytes_ && !shared_) return errorf("cannot allocate %zu bytes of shared scratch memory", shared_bytes_);
  planned_ = true;
  return Status();
}

Status Graph::compute(ThreadPool& pool) {
  if (!planned_) DDPM_TRY(plan());
  const size_t threads = static_cast<size_t>(pool.size());
  if (scratch_.size() < threads) {
    for (uint8_t* s : scratch_) std::free(s);
    scratch_.assign(threads, nullptr);
    for (auto& s : scratch_) {
      s = alloc_aligned(scratch_per_thread_);
      if (!s) return errorf("cannot allocate %zu bytes of scratch memory", scratch_per_thread_);
    }
  }
  if (!packed_weights_) packed_weights_ = std::make_unique<PackedWeights>();
  ExecContext ctx{pool, scratch_.data(), scratch_per_thread_, kernels::active(), shared_.get(), shared_bytes_,
                  packed_weights_.get()};
  ctx.stream_outputs = stream_outputs_for(pool);
  const bool profiling = profile::enabled();
  if (profiling) profile::count_call();
  bool backward = false;
  for (Tensor* t : nodes_) {
    if (t->op == OpKind::Leaf || t->op == OpKind::View) continue;
    const auto start = profiling ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    const double cpu_start = profiling ? profile::thread_cpu_seconds() : 0.0;
    Status status = op_exec(t->op).compute(*t, ctx);
    if (!status.ok()) return status.with_context(std::string(op_name(t->op)) + (t->name.empty() ? "" : " " + t->name));
    if (profiling) {
      backward = backward || t->op == OpKind::MseLossGrad;
      profile::record(*t, backward, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                      profile::thread_cpu_seconds() - cpu_start);
    }
  }
  return Status();
}

const OpExec& op_exec(OpKind op) {
  static const OpExec table[] = {
      {nullptr, nullptr},                          // Leaf
      {nullptr, nullptr},                          // View
      {compute_contiguous, nullptr},               // Contiguous
      {compute_conv2d, scratch_conv2d, shared_conv2d},  // Conv2d
      {compute_matmul, scratch_matmul, shared_matmul},  // Matmul
      {compute_group_norm, scratch_group_norm, nullptr, true},  // GroupNorm: a task reads its group, then writes it
      {compute_unary, nullptr, nullptr, true},      // Unary
      {compute_binary, nullptr, nullptr, true},     // Binary
      {compute_concat, nullptr},                   // Concat
      {compute_upsample2x, nullptr},               // Upsample2x
      {compute_avg_pool2x, nullptr},               // AvgPool2x
      {compute_softmax, nullptr},                  // Softmax
      {compute_timestep_embedding, nullptr},       // TimestepEmbedding
      {compute_get_rows, nullptr},                 // GetRows
      {compute_mse_loss, nullptr},                             // MseLoss
      {compute_mse_loss_grad, nullptr},                        // MseLossGrad
      {compute_sum_to, nullptr},                               // SumTo
      {compute_view_grad, nullptr},                            // ViewGrad
      {compute_conv2d_grad_input, scratch_conv2d_grad, shared_conv2d_grad_input},  // Conv2dGradInput
      {compute_conv2d_grad_weight, scratch_conv2d_grad},       // Conv2dGradWeight
      {compute_group_norm_grad_input, nullptr},                // GroupNormGradInput
      {compute_group_norm_grad_params, nullptr},               // GroupNormGradParams
      {compute_silu_grad, nullptr},                            // SiluGrad
      {compute_softmax_grad, nullptr},                         // SoftmaxGrad
      {compute_upsample2x_grad, nullptr},                      // Upsample2xGrad
      {compute_avg_pool2x_grad, nullptr},                      // AvgPool2xGrad
      {compute_get_rows_grad, nullptr},                        // GetRowsGrad
  };
  static_assert(sizeof(table) / sizeof(table[0]) == static_cast<size_t>(OpKind::kCount), "one entry per OpKind");
  return table[static_cast<int>(op)];
}

}  // namespace ddpm
