// get_rows backward: the table's gradient. Row r collects every dy row whose index is r, added in increasing
// position, so a label that appears several times in a batch sums in a fixed order; rows never looked up get 0.
// Each task owns a range of table rows (a gather over the indices instead of a scatter into the table).
// timestep_embedding has no backward: its input is a timestep, never trained (see ddpm/autograd.h).
#include <algorithm>
#include <cstring>

#include "autograd/ops_backward.h"
#include "ops/op_exec.h"

namespace ddpm {

Tensor* get_rows_grad(Graph& g, Tensor* dy, Tensor* indices, int64_t rows) {
  if (!dy || !indices) return nullptr;
  dy = contiguous(g, dy);  // [N, D]
  const int64_t shape[2] = {rows, dy->shape[1]};
  return g.new_node(OpKind::GetRowsGrad, DType::F32, 2, shape, {dy, indices});  // [R, D]
}

Status compute_get_rows_grad(const Tensor& node, ExecContext& ctx) {
  const Tensor& dy = *node.src[0];
  const int32_t* indices = static_cast<const int32_t*>(node.src[1]->data);
  const int64_t rows = node.shape[0], dim = node.shape[1], count = dy.shape[0];
  for (int64_t i = 0; i < count; ++i) {
    if (indices[i] < 0 || indices[i] >= rows) {
      return errorf("index %d is outside the table's %lld rows", indices[i], (long long)rows);
    }
  }
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dim * count));
  ctx.pool.run((rows + rows_per_task - 1) / rows_per_task, [&](int64_t task, int) {
    const int64_t end = std::min(rows, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < end; ++r) {
      float* out = node.f32() + r * dim;
      std::memset(out, 0, static_cast<size_t>(dim) * sizeof(float));
      for (int64_t i = 0; i < count; ++i) {
        if (indices[i] != r) continue;
        const float* row = dy.f32() + i * dim;
        for (int64_t d = 0; d < dim; ++d) out[d] += row[d];
      }
    }
  });
  return Status();
}

}  // namespace ddpm
