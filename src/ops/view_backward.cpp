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
  // Size-1 dims move nothing: drop them, so the copy's rows are as long as possible (a 1×1 conv weight
  // [Co, Ci, 1] is copied as Co rows of Ci, not Co·Ci rows of one element).
  int64_t kept_shape[kMaxRank], kept_stride[kMaxRank], row_major[kMaxRank];
  int kept = 0;
  for (int d = 0; d < src_rank; ++d) {
    if (src->shape[d] == 1) continue;
    kept_shape[kept] = src->shape[d];
    kept_stride[kept++] = stride[d];
  }
  if (kept == 0) kept_shape[kept] = 1, kept_stride[kept++] = 0;
  if (kept != src_rank) {
    int64_t step = 1;
    for (int d = kept - 1; d >= 0; --d) {
      row_major[d] = step;
      step *= kept_shape[d];
    }
    src = g.new_view(src, kept, kept_shape, row_major, 0);
    src_rank = kept;
    stride = kept_stride;
  }
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
  // A transposing copy (the innermost source dim is strided in the output while another source dim is
  // contiguous there: channels-last copies, weight reorders, attention's permuted heads) goes through the kernel
  // table's register transpose, 16 rows of dim j (one task) at a time.
  int transposed_dim = -1;
  for (int d = kMaxRank - 2; d >= 0; --d) {
    if (stride[3] != 1 && stride[d] == 1 && shape[d] > 1) transposed_dim = d;
  }
  int64_t src_stride[kMaxRank];
  int64_t step = 1;
  for (int d = kMaxRank - 1; d >= 0; --d) {
    src_stride[d] = step;
    step *= shape[d];
  }
  if (transposed_dim >= 0 && shape[3] > 1) {
    constexpr int64_t kTile = 16;
    const int j = transposed_dim;
    int other[2], n_other = 0;  // the two dims besides j and 3
    for (int d = 0; d < kMaxRank - 1; ++d) {
      if (d != j) other[n_other++] = d;
    }
    const int64_t outer = shape[other[0]] * shape[other[1]];
    const int64_t a_tiles = (shape[j] + kTile - 1) / kTile;
    ctx.pool.run(outer * a_tiles, [&](int64_t task, int) {
      const int64_t o = task / a_tiles, a0 = (task % a_tiles) * kTile;
      const int64_t i0 = o / shape[other[1]], i1 = o % shape[other[1]];
      const float* src = dview.f32() + i0 * src_stride[other[0]] + i1 * src_stride[other[1]];
      float* dst = out + i0 * stride[other[0]] + i1 * stride[other[1]];
      const int64_t a_end = std::min(shape[j], a0 + kTile);
      // dst[a + b·stride[3]] = src[a·src_stride[j] + b] for a in [a0, a_end), every b.
      ctx.kernels.transpose(a_end - a0, shape[3], src + a0 * src_stride[j], src_stride[j], dst + a0, stride[3]);
    });
    return Status();
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
