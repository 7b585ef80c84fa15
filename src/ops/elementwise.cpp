// Elementwise ops: silu, scale, and broadcasting add/mul.
#include <algorithm>

#include "ddpm/ops.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

constexpr int64_t kElementsPerTask = 16384;

Tensor* unary(Graph& g, Tensor* x, UnaryOp op, float factor, const char* name) {
  if (!x) return nullptr;
  if (x->dtype != DType::F32) return g.fail(errorf("%s: expected an f32 tensor, got %s", name, dtype_name(x->dtype)));
  x = contiguous(g, x);
  Tensor* y = g.new_node(OpKind::Unary, DType::F32, x->rank, x->shape, {x});
  y->iparams[0] = static_cast<int64_t>(op);
  y->fparams[0] = factor;
  return y;
}

Tensor* binary(Graph& g, Tensor* a, Tensor* b, BinaryOp op, const char* name) {
  if (!a || !b) return nullptr;
  if (a->dtype != DType::F32 || b->dtype != DType::F32) {
    return g.fail(errorf("%s: expected f32 operands, got %s and %s", name, dtype_name(a->dtype), dtype_name(b->dtype)));
  }
  a = contiguous(g, a);
  b = contiguous(g, b);
  const int rank = std::max(a->rank, b->rank);
  int64_t shape[kMaxRank];
  for (int i = 0; i < rank; ++i) {
    const int ia = i - (rank - a->rank), ib = i - (rank - b->rank);
    const int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    if (da != db && da != 1 && db != 1) {
      return g.fail(errorf("%s: shapes %s and %s do not broadcast", name, a->shape_string().c_str(),
                           b->shape_string().c_str()));
    }
    shape[i] = std::max(da, db);
  }
  Tensor* y = g.new_node(OpKind::Binary, DType::F32, rank, shape, {a, b});
  y->iparams[0] = static_cast<int64_t>(op);
  return y;
}

// Operand strides aligned to the output's 4 dims, 0 where the operand broadcasts.
void broadcast_strides(const Tensor& t, const Tensor& out, int64_t* stride) {
  const int pad = kMaxRank - t.rank, out_pad = kMaxRank - out.rank;
  for (int i = 0; i < kMaxRank; ++i) {
    const int ti = i - pad;
    const int64_t out_dim = i - out_pad >= 0 ? out.shape[i - out_pad] : 1;
    const int64_t dim = ti >= 0 ? t.shape[ti] : 1;
    stride[i] = (ti >= 0 && dim == out_dim && dim != 1) ? t.stride[ti] : 0;
  }
}

}  // namespace

Tensor* silu(Graph& g, Tensor* x) { return unary(g, x, UnaryOp::Silu, 0.0f, "silu"); }
Tensor* scale(Graph& g, Tensor* x, float factor) { return unary(g, x, UnaryOp::Scale, factor, "scale"); }
Tensor* add(Graph& g, Tensor* a, Tensor* b) { return binary(g, a, b, BinaryOp::Add, "add"); }
Tensor* mul(Graph& g, Tensor* a, Tensor* b) { return binary(g, a, b, BinaryOp::Mul, "mul"); }

Status compute_unary(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const int64_t n = node.numel();
  const int64_t tasks = (n + kElementsPerTask - 1) / kElementsPerTask;
  const auto op = static_cast<UnaryOp>(node.iparams[0]);
  const float factor = node.fparams[0];
  ctx.pool.run(tasks, [&](int64_t task, int) {
    const int64_t begin = task * kElementsPerTask, count = std::min(kElementsPerTask, n - begin);
    if (op == UnaryOp::Silu) ctx.kernels.silu(count, x.f32() + begin, node.f32() + begin);
    else ctx.kernels.mul_scalar(count, x.f32() + begin, factor, node.f32() + begin);
  });
  return Status();
}

Status compute_binary(const Tensor& node, ExecContext& ctx) {
  const Tensor& a = *node.src[0];
  const Tensor& b = *node.src[1];
  int64_t shape[kMaxRank], sa[kMaxRank], sb[kMaxRank];
  const int pad = kMaxRank - node.rank;
  for (int i = 0; i < kMaxRank; ++i) shape[i] = i >= pad ? node.shape[i - pad] : 1;
  broadcast_strides(a, node, sa);
  broadcast_strides(b, node, sb);
  // Fold the innermost dims together while every operand walks them contiguously (or broadcasts over both), so
  // a [B,C,H,W] + [B,C,1,1] add runs over rows of H·W instead of rows of W.
  int64_t inner = shape[3];
  int first_outer = 3;
  while (first_outer > 0) {
    const int d = first_outer - 1;
    const bool a_ok = sa[d] == sa[3] * inner || (sa[d] == 0 && sa[3] == 0);
    const bool b_ok = sb[d] == sb[3] * inner || (sb[d] == 0 && sb[3] == 0);
    if (!a_ok || !b_ok) break;
    inner *= shape[d];
    first_outer = d;
  }
  int64_t rows = 1;
  for (int d = 0; d < first_outer; ++d) rows *= shape[d];
  const auto op = static_cast<BinaryOp>(node.iparams[0]);
  // Tasks of about kElementsPerTask: several short rows, or a piece of a long one (a same-shape add folds into one
  // row of every element, which as one task would run on one thread, reading what the op before wrote on both).
  const int64_t pieces = (inner + kElementsPerTask - 1) / kElementsPerTask;
  const int64_t rows_per_task = pieces > 1 ? 1 : std::max<int64_t>(1, kElementsPerTask / inner);
  const int64_t tasks = (rows + rows_per_task - 1) / rows_per_task * pieces;
  const kernels::KernelTable& k = ctx.kernels;
  ctx.pool.run(tasks, [&](int64_t task, int) {
    const int64_t first_row = task / pieces * rows_per_task, row_end = std::min(rows, first_row + rows_per_task);
    int64_t begin, end;
    split_range(inner, pieces, task % pieces, &begin, &end);
    const int64_t count = end - begin;
    for (int64_t r = first_row; r < row_end; ++r) {
      int64_t rem = r, off_a = 0, off_b = 0;
      for (int d = first_outer - 1; d >= 0; --d) {
        const int64_t i = rem % shape[d];
        rem /= shape[d];
        off_a += i * sa[d];
        off_b += i * sb[d];
      }
      const bool a_scalar = sa[3] == 0, b_scalar = sb[3] == 0;
      const float* pa = a.f32() + off_a + (a_scalar ? 0 : begin);
      const float* pb = b.f32() + off_b + (b_scalar ? 0 : begin);
      float* out = node.f32() + r * inner + begin;
      if (op == BinaryOp::Add) {
        if (!a_scalar && !b_scalar) k.add(count, pa, pb, out);
        else if (b_scalar && !a_scalar) k.add_scalar(count, pa, *pb, out);
        else if (a_scalar && !b_scalar) k.add_scalar(count, pb, *pa, out);
        else std::fill(out, out + count, *pa + *pb);
      } else {
        if (!a_scalar && !b_scalar) k.mul(count, pa, pb, out);
        else if (b_scalar && !a_scalar) k.mul_scalar(count, pa, *pb, out);
        else if (a_scalar && !b_scalar) k.mul_scalar(count, pb, *pa, out);
        else std::fill(out, out + count, *pa * *pb);
      }
    }
  });
  return Status();
}

}  // namespace ddpm
