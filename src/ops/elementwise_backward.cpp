// Backward of the elementwise ops: the reduction that undoes broadcasting (sum_to) and SiLU's derivative.
// (scale's backward is a scale, add's is sum_to, mul's is a mul then sum_to: those reuse forward ops.)
#include <algorithm>
#include <vector>

#include "autograd/ops_backward.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

constexpr int64_t kElementsPerTask = 16384;

// Shape padded to 4 dims on the left (right-aligned, numpy style).
void pad4(int rank, const int64_t* shape, int64_t* out) {
  for (int i = 0; i < kMaxRank; ++i) out[i] = i >= kMaxRank - rank ? shape[i - (kMaxRank - rank)] : 1;
}

}  // namespace

Tensor* sum_to(Graph& g, Tensor* x, int rank, const int64_t* shape) {
  if (!x) return nullptr;
  if (rank < 1 || rank > x->rank) {
    return g.fail(errorf("sum_to: cannot reduce %s to rank %d", x->shape_string().c_str(), rank));
  }
  int64_t in[kMaxRank], out[kMaxRank];
  pad4(x->rank, x->shape, in);
  pad4(rank, shape, out);
  bool reduces = false;
  for (int i = 0; i < kMaxRank; ++i) {
    if (out[i] != in[i] && out[i] != 1) {
      return g.fail(errorf("sum_to: cannot reduce %s to a shape with dim %d = %lld", x->shape_string().c_str(), i,
                           (long long)out[i]));
    }
    reduces = reduces || out[i] != in[i];
  }
  x = contiguous(g, x);
  if (!reduces) {
    if (rank == x->rank) return x;
    // Only leading 1s differ: the same elements, viewed with the requested rank.
    int64_t stride[kMaxRank];
    int64_t step = 1;
    for (int i = rank - 1; i >= 0; --i) {
      stride[i] = step;
      step *= shape[i];
    }
    return g.new_view(x, rank, shape, stride, 0);
  }
  return g.new_node(OpKind::SumTo, DType::F32, rank, shape, {x});
}

Status compute_sum_to(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  int64_t in[kMaxRank], out[kMaxRank], in_stride[kMaxRank];
  pad4(x.rank, x.shape, in);
  pad4(node.rank, node.shape, out);
  int64_t s = 1;
  for (int i = kMaxRank - 1; i >= 0; --i) {
    in_stride[i] = s;
    s *= in[i];
  }
  // Trailing reduced dims form contiguous runs of `run` elements; the other reduced dims are enumerated as
  // offsets in row-major order. Each output element adds its runs in that order, each run through four
  // interleaved partial sums (a fixed order: the result does not depend on how outputs are split into tasks).
  int first_trailing = kMaxRank;
  while (first_trailing > 0 && out[first_trailing - 1] != in[first_trailing - 1]) --first_trailing;
  int64_t run = 1;
  for (int d = first_trailing; d < kMaxRank; ++d) run *= in[d];
  std::vector<int64_t> outer_offsets(1, 0);
  for (int d = 0; d < first_trailing; ++d) {
    if (out[d] == in[d]) continue;
    std::vector<int64_t> next;
    next.reserve(outer_offsets.size() * static_cast<size_t>(in[d]));
    for (int64_t base : outer_offsets) {
      for (int64_t i = 0; i < in[d]; ++i) next.push_back(base + i * in_stride[d]);
    }
    outer_offsets.swap(next);
  }
  const int64_t reduce_count = static_cast<int64_t>(outer_offsets.size()) * run;
  const int64_t outputs = node.numel();
  const int64_t per_task = std::max<int64_t>(1, (kElementsPerTask + reduce_count - 1) / reduce_count);
  ctx.pool.run((outputs + per_task - 1) / per_task, [&](int64_t task, int) {
    const int64_t begin = task * per_task, end = std::min(outputs, begin + per_task);
    std::vector<int64_t> base(static_cast<size_t>(end - begin));
    for (int64_t o = begin; o < end; ++o) {
      int64_t rem = o, offset = 0;
      for (int d = kMaxRank - 1; d >= 0; --d) {
        offset += (rem % out[d]) * in_stride[d];
        rem /= out[d];
      }
      base[o - begin] = offset;
    }
    const float* src = x.f32();
    float* dst = node.f32();
    if (run > 1) {
      for (int64_t o = begin; o < end; ++o) {
        double part[4] = {0.0, 0.0, 0.0, 0.0};
        for (int64_t offset : outer_offsets) {
          const float* p = src + base[o - begin] + offset;
          int64_t i = 0;
          for (; i + 4 <= run; i += 4) {
            for (int j = 0; j < 4; ++j) part[j] += p[i + j];
          }
          for (; i < run; ++i) part[0] += p[i];
        }
        dst[o] = static_cast<float>((part[0] + part[1]) + (part[2] + part[3]));
      }
    } else {
      // The innermost dim is kept: walk the reduced offsets outside and consecutive outputs inside.
      const int64_t count = end - begin;
      std::vector<double> sum(static_cast<size_t>(count), 0.0);
      double* acc = sum.data();
      const bool consecutive = base[count - 1] - base[0] == count - 1;  // the task's outputs read one span
      for (int64_t offset : outer_offsets) {
        const float* p = src + offset;
        if (consecutive) {
          const float* q = p + base[0];
          int64_t o = 0;
          for (; o + 8 <= count; o += 8) {  // blocks of 8: a constant trip count the compiler vectorises
            for (int64_t j = 0; j < 8; ++j) acc[o + j] += q[o + j];
          }
          for (; o < count; ++o) acc[o] += q[o];
        } else {
          for (int64_t o = 0; o < count; ++o) acc[o] += p[base[o]];
        }
      }
      for (int64_t o = begin; o < end; ++o) dst[o] = static_cast<float>(sum[o - begin]);
    }
  });
  return Status();
}

Tensor* silu_grad(Graph& g, Tensor* dy, Tensor* x) {
  if (!dy || !x) return nullptr;
  dy = contiguous(g, dy);
  x = contiguous(g, x);
  return g.new_node(OpKind::SiluGrad, DType::F32, x->rank, x->shape, {dy, x});
}

void silu_backward_rows(int64_t n, const float* __restrict__ dy, const float* __restrict__ neg_z,
                        const float* __restrict__ e, float* __restrict__ dz) {
  // silu(z) = z·σ(z)  ⇒  silu'(z) = σ(z) + z·σ(z)·(1 − σ(z)). Blocks of 8 over restrict pointers: a constant trip
  // count without aliasing, which the compiler vectorises at -O2 for any target.
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int64_t j = 0; j < 8; ++j) {
      const float sigmoid = 1.0f / (1.0f + e[i + j]);
      dz[i + j] = dy[i + j] * (sigmoid * (1.0f - neg_z[i + j] * (1.0f - sigmoid)));
    }
  }
  for (; i < n; ++i) {
    const float sigmoid = 1.0f / (1.0f + e[i]);
    dz[i] = dy[i] * (sigmoid * (1.0f - neg_z[i] * (1.0f - sigmoid)));
  }
}

Status compute_silu_grad(const Tensor& node, ExecContext& ctx) {
  const float* dy = node.src[0]->f32();
  const float* x = node.src[1]->f32();
  float* dx = node.f32();
  const int64_t n = node.numel();
  const kernels::KernelTable& k = ctx.kernels;
  ctx.pool.run((n + kElementsPerTask - 1) / kElementsPerTask, [&](int64_t task, int) {
    const int64_t end = std::min(n, (task + 1) * kElementsPerTask);
    constexpr int64_t kRow = 256;
    float neg_x[kRow], e[kRow];
    for (int64_t i = task * kElementsPerTask; i < end; i += kRow) {
      const int64_t count = std::min(kRow, end - i);
      k.mul_scalar(count, x + i, -1.0f, neg_x);
      k.exp_shifted_sum(count, neg_x, 0.0f, e);  // e^−x through the kernel table's vector exp
      silu_backward_rows(count, dy + i, neg_x, e, dx + i);
    }
  });
  return Status();
}

}  // namespace ddpm
