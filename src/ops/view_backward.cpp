// Gradients through views. A view reads its storage root (always a row-major node: views point at the tensor
// that owns memory, never at another view) at root[offset + Σ index_d·stride_d]; so whatever chain of reshapes,
// permutes and slices produced it, the root's gradient is dview's elements put back at those positions, zeros
// elsewhere. Our views are injective (no element read twice), so every root element receives at most one value
// and the scatter needs no accumulation: each dview row is copied by one task into disjoint places.
#include <algorithm>
#include <cstring>
#include <utility>

#include "autograd/ops_backward.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

// iparams of a ViewGrad node: the view's strides right-aligned to 4 dims (0..3), its offset (4), and whether it
// covers the whole root (5), which makes the zero fill unnecessary.
enum ViewGradParam { kOffset = 4, kFullCoverage = 5 };

// True when no two indices of the view reach the same element: with the dims sorted by stride, each stride
// steps past everything the smaller dims can reach.
bool is_injective(const Tensor& view) {
  int order[kMaxRank], n = 0;
  for (int d = 0; d < view.rank; ++d) {
    if (view.shape[d] > 1) order[n++] = d;
  }
  for (int i = 1; i < n; ++i) {  // insertion sort by stride (at most 4 dims)
    for (int j = i; j > 0 && view.stride[order[j]] < view.stride[order[j - 1]]; --j) std::swap(order[j], order[j - 1]);
  }
  int64_t reach = 0;  // largest offset the dims so far can add
  for (int i = 0; i < n; ++i) {
    const int d = order[i];
    if (view.stride[d] <= reach) return false;
    reach += view.stride[d] * (view.shape[d] - 1);
  }
  return true;
}

}  // namespace

Tensor* view_grad(Graph& g, Tensor* dview, const Tensor& view) {
  if (!dview) return nullptr;
  const Tensor& root = *view.view_source;
  dview = contiguous(g, dview);
  if (!dview) return nullptr;
  int64_t row_major[kMaxRank];
  int64_t step = 1;
  for (int i = root.rank - 1; i >= 0; --i) {
    row_major[i] = step;
    step *= root.shape[i];
  }
  const bool full = view.numel() == root.numel();
  if (full && view.view_offset == 0 && view.is_contiguous()) {
    return g.new_view(dview, root.rank, root.shape, row_major, 0);  // a reshape: same order, free
  }
  if (!is_injective(view)) {
    return g.fail(errorf("backward: view %s with strides that overlap has no gradient", view.shape_string().c_str()));
  }
  return scatter(g, dview, root.rank, root.shape, view.rank, view.stride, view.view_offset, full);
}

Tensor* scatter(Graph& g, Tensor* src, int rank, const int64_t* shape, int src_rank, const int64_t* stride,
                int64_t offset, bool full) {
  if (!src) return nullptr;
  DDPM_ASSERT(src->dtype == DType::F32 && src->is_contiguous() && src->rank == src_rank);
  Tensor* out = g.new_node(OpKind::ViewGrad, DType::F32, rank, shape, {src});
  for (int i = 0; i < kMaxRank; ++i) {
    const int d = i - (kMaxRank - src_rank);
    out->iparams[i] = d >= 0 ? stride[d] : 0;
  }
  out->iparams[kOffset] = offset;
  out->iparams[kFullCoverage] = full ? 1 : 0;
  return out;
}

Status compute_view_grad(const Tensor& node, ExecContext& ctx) {
  const Tensor& dview = *node.src[0];
  int64_t shape[kMaxRank];
  for (int i = 0; i < kMaxRank; ++i) {
    const int d = i - (kMaxRank - dview.rank);
    shape[i] = d >= 0 ? dview.shape[d] : 1;
  }
  const int64_t* stride = node.iparams;
  float* out = node.f32() + node.iparams[kOffset];
  if (node.iparams[kFullCoverage] == 0) {
    const int64_t n = node.numel(), chunk = 65536;
    ctx.pool.run((n + chunk - 1) / chunk, [&](int64_t task, int) {
      const int64_t begin = task * chunk;
      std::memset(node.f32() + begin, 0, static_cast<size_t>(std::min(chunk, n - begin)) * sizeof(float));
    });
  }
  const int64_t rows = shape[0] * shape[1] * shape[2], cols = shape[3];
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / cols);
  ctx.pool.run((rows + rows_per_task - 1) / rows_per_task, [&](int64_t task, int) {
    const int64_t end = std::min(rows, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < end; ++r) {
      const int64_t i0 = r / (shape[1] * shape[2]), i1 = (r / shape[2]) % shape[1], i2 = r % shape[2];
      float* dst = out + i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
      const float* src = dview.f32() + r * cols;
      if (stride[3] == 1) {
        std::memcpy(dst, src, static_cast<size_t>(cols) * sizeof(float));
      } else {
        for (int64_t c = 0; c < cols; ++c) dst[c * stride[3]] = src[c];
      }
    }
  });
  return Status();
}

}  // namespace ddpm
