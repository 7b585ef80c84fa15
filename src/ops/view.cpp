// Views (reshape, permute, slice) only rewrite shape and strides; contiguous() copies when a view is strided.
#include <algorithm>
#include <cstring>

#include "ddpm/ops.h"
#include "ops/op_exec.h"

namespace ddpm {

Tensor* reshape(Graph& g, Tensor* x, std::initializer_list<int64_t> shape) {
  if (!x) return nullptr;
  const int rank = static_cast<int>(shape.size());
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  if (rank < 1 || rank > kMaxRank || count != x->numel()) {
    return g.fail(errorf("reshape: cannot view %s as a tensor of %d dims and %lld elements", x->shape_string().c_str(),
                         rank, (long long)count));
  }
  const int64_t rows = rank >= 2 ? shape.begin()[0] : 1;
  if (dtype_traits(x->dtype).is_quantized && rows != (x->rank >= 2 ? x->shape[0] : 1)) {
    // Block tensors are rows padded to whole blocks (dtype.h): a view must keep the rows.
    return g.fail(errorf("reshape: a %s tensor %s keeps its rows (first dimension) in any view", dtype_name(x->dtype),
                         x->shape_string().c_str()));
  }
  x = contiguous(g, x);
  int64_t stride[kMaxRank];
  int64_t s = 1;
  for (int i = rank - 1; i >= 0; --i) {
    stride[i] = s;
    s *= shape.begin()[i];
  }
  return g.new_view(x, rank, shape.begin(), stride, 0);
}

Tensor* permute(Graph& g, Tensor* x, std::initializer_list<int> axes) {
  if (!x) return nullptr;
  const int rank = static_cast<int>(axes.size());
  bool seen[kMaxRank] = {false, false, false, false};
  bool valid = rank == x->rank;
  for (int a : axes) {
    valid = valid && a >= 0 && a < x->rank && !seen[a];
    if (valid) seen[a] = true;
  }
  if (!valid) return g.fail(errorf("permute: invalid axes for %s", x->shape_string().c_str()));
  int64_t shape[kMaxRank], stride[kMaxRank];
  for (int i = 0; i < rank; ++i) {
    shape[i] = x->shape[axes.begin()[i]];
    stride[i] = x->stride[axes.begin()[i]];
  }
  return g.new_view(x, rank, shape, stride, 0);
}

Tensor* slice(Graph& g, Tensor* x, int dim, int64_t start, int64_t length) {
  if (!x) return nullptr;
  if (dim < 0 || dim >= x->rank || start < 0 || length < 1 || start + length > x->shape[dim]) {
    return g.fail(errorf("slice: [%lld, %lld) of dim %d is outside %s", (long long)start, (long long)(start + length),
                         dim, x->shape_string().c_str()));
  }
  int64_t shape[kMaxRank];
  std::copy(x->shape, x->shape + x->rank, shape);
  shape[dim] = length;
  return g.new_view(x, x->rank, shape, x->stride, start * x->stride[dim]);
}

Tensor* contiguous(Graph& g, Tensor* x) {
  if (!x) return nullptr;
  if (x->is_contiguous()) return x;
  if (dtype_traits(x->dtype).is_quantized) return g.fail(errorf("contiguous: cannot copy a strided %s tensor", dtype_name(x->dtype)));
  return g.new_node(OpKind::Contiguous, x->dtype, x->rank, x->shape, {x});
}

Status compute_contiguous(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const size_t element = dtype_traits(x.dtype).block_bytes;
  int64_t shape[kMaxRank] = {1, 1, 1, 1}, stride[kMaxRank] = {0, 0, 0, 0};
  // Dims that are contiguous with the next inner one are merged into it (innermost first), so that a permuted
  // [C, B, 7, 7] view copies rows of 49 values instead of 7.
  int dims = 0;
  int64_t merged_shape[kMaxRank], merged_stride[kMaxRank];  // innermost first
  for (int i = x.rank - 1; i >= 0; --i) {
    if (x.shape[i] == 1) continue;
    if (dims > 0 && x.stride[i] == merged_shape[dims - 1] * merged_stride[dims - 1]) {
      merged_shape[dims - 1] *= x.shape[i];
    } else {
      merged_shape[dims] = x.shape[i];
      merged_stride[dims] = x.stride[i];
      ++dims;
    }
  }
  for (int i = 0; i < dims; ++i) {
    shape[kMaxRank - 1 - i] = merged_shape[i];
    stride[kMaxRank - 1 - i] = merged_stride[i];
  }
  const int64_t rows = shape[0] * shape[1] * shape[2];
  const int64_t cols = shape[3];
  const int64_t tasks = std::min<int64_t>(rows, std::max<int64_t>(1, rows * cols / 8192));
  ctx.pool.run(tasks, [&](int64_t task, int) {
    int64_t begin, end;
    split_range(rows, tasks, task, &begin, &end);
    const uint8_t* src = static_cast<const uint8_t*>(x.data);
    uint8_t* dst = static_cast<uint8_t*>(node.data);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i0 = r / (shape[1] * shape[2]), i1 = (r / shape[2]) % shape[1], i2 = r % shape[2];
      const int64_t base = i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
      uint8_t* out = dst + static_cast<size_t>(r * cols) * element;
      if (stride[3] == 1) {
        std::memcpy(out, src + base * static_cast<int64_t>(element), static_cast<size_t>(cols) * element);
      } else {
        for (int64_t c = 0; c < cols; ++c) {
          std::memcpy(out + c * element, src + (base + c * stride[3]) * static_cast<int64_t>(element), element);
        }
      }
    }
  });
  return Status();
}

}  // namespace ddpm
