// matmul and linear, both on the shared GEMM driver. Operands are read through their strides, so transposed
// views (attention's Kᵀ, a linear layer's Wᵀ) cost no copy.
#include "ddpm/ops.h"
#include "ops/gemm.h"
#include "ops/qgemm.h"
#include "quant/blocks.h"

namespace ddpm {
namespace {

// Stride that steps through the flattened batch dims (all dims before the last two), or false when the batch
// dims of a strided view cannot be flattened into one stride.
bool batch_layout(const Tensor& t, int64_t* count, int64_t* stride) {
  const int r = t.rank;
  if (r <= 2) {
    *count = 1;
    *stride = 0;
    return true;
  }
  if (r == 3) {
    *count = t.shape[0];
    *stride = t.shape[0] == 1 ? 0 : t.stride[0];
    return true;
  }
  *count = t.shape[0] * t.shape[1];
  if (t.shape[0] == 1) *stride = t.stride[1];
  else if (t.shape[1] == 1) *stride = t.stride[0];
  else if (t.stride[0] == t.shape[1] * t.stride[1]) *stride = t.stride[1];
  else return false;
  if (*count == 1) *stride = 0;
  return true;
}

Tensor* build_matmul(Graph& g, const char* op, Tensor* a, Tensor* b, Tensor* bias_col) {
  // A block-quantised operand is a weight matrix read as whole rows: only as the first operand, 2-D, unstrided.
  if (quant::is_block_type(b->dtype)) {
    return g.fail(errorf("%s: a %s operand must be the first one (the weight), got it second: %s", op,
                         dtype_name(b->dtype), b->shape_string().c_str()));
  }
  if (quant::is_block_type(a->dtype) && (a->rank != 2 || !a->is_contiguous())) {
    return g.fail(errorf("%s: a %s weight must be a contiguous 2-D matrix, got %s", op, dtype_name(a->dtype),
                         a->shape_string().c_str()));
  }
  if (a->rank < 2 || b->rank < 2 || a->dtype == DType::I32 || b->dtype == DType::I32) {
    return g.fail(errorf("%s: operands must be at least 2-D float tensors, got %s and %s", op,
                         a->shape_string().c_str(), b->shape_string().c_str()));
  }
  const int64_t m = a->shape[a->rank - 2], k = a->shape[a->rank - 1];
  const int64_t kb = b->shape[b->rank - 2], n = b->shape[b->rank - 1];
  if (k != kb) {
    return g.fail(errorf("%s: inner dimensions differ: %s · %s", op, a->shape_string().c_str(),
                         b->shape_string().c_str()));
  }
  int64_t a_batch, a_stride, b_batch, b_stride;
  if (!batch_layout(*a, &a_batch, &a_stride)) {
    a = contiguous(g, a);
    batch_layout(*a, &a_batch, &a_stride);
  }
  if (!batch_layout(*b, &b_batch, &b_stride)) {
    b = contiguous(g, b);
    batch_layout(*b, &b_batch, &b_stride);
  }
  if (a_batch != b_batch && a_batch != 1 && b_batch != 1) {
    return g.fail(errorf("%s: batch dimensions of %s and %s do not broadcast", op, a->shape_string().c_str(),
                         b->shape_string().c_str()));
  }
  const Tensor* batch_source = a_batch >= b_batch ? a : b;
  int64_t shape[kMaxRank];
  const int rank = std::max(batch_source->rank, 2);
  for (int i = 0; i < rank - 2; ++i) shape[i] = batch_source->shape[i];
  shape[rank - 2] = m;
  shape[rank - 1] = n;
  if (bias_col && (bias_col->rank != 1 || bias_col->shape[0] != n ||
                   (bias_col->dtype != DType::F32 && bias_col->dtype != DType::F16))) {
    return g.fail(errorf("%s: bias %s %s does not match %lld outputs (f32 or f16)", op, dtype_name(bias_col->dtype),
                         bias_col->shape_string().c_str(), (long long)n));
  }
  Tensor* y = g.new_node(OpKind::Matmul, DType::F32, rank, shape, {a, b, bias_col});
  y->iparams[0] = a_stride;
  y->iparams[1] = b_stride;
  return y;
}

}  // namespace

Tensor* matmul(Graph& g, Tensor* a, Tensor* b) {
  if (!a || !b) return nullptr;
  return build_matmul(g, "matmul", a, b, nullptr);
}

Tensor* linear(Graph& g, Tensor* x, Tensor* weight, Tensor* bias) {
  if (!x || !weight) return nullptr;
  if (weight->rank != 2 || x->shape[x->rank - 1] != weight->shape[1]) {
    return g.fail(errorf("linear: input %s does not match weight %s [out, in]", x->shape_string().c_str(),
                         weight->shape_string().c_str()));
  }
  if (quant::is_block_type(weight->dtype)) {
    // y = x·Wᵀ computed as yᵀ = W·xᵀ, so that the quantised weight is the GEMM's A (see compute_matmul).
    if (!weight->is_contiguous() || x->dtype != DType::F32 ||
        (bias && bias->dtype != DType::F32 && bias->dtype != DType::F16)) {
      return g.fail(errorf("linear: a %s weight must be contiguous and the input f32, got weight %s and input %s",
                           dtype_name(weight->dtype), weight->shape_string().c_str(), x->shape_string().c_str()));
    }
    const int64_t out = weight->shape[0];
    if (bias && (bias->rank != 1 || bias->shape[0] != out)) {
      return g.fail(errorf("linear: bias %s does not match %lld outputs", bias->shape_string().c_str(), (long long)out));
    }
    x = contiguous(g, x);
    int64_t shape[kMaxRank];
    for (int i = 0; i < x->rank; ++i) shape[i] = x->shape[i];
    shape[x->rank - 1] = out;
    return g.new_node(OpKind::Matmul, DType::F32, x->rank, shape, {x, weight, bias});
  }
  Tensor* weight_t = permute(g, weight, {1, 0});  // [in, out] view, no copy
  return build_matmul(g, "linear", x, weight_t, bias);
}

size_t scratch_matmul(const Tensor& node) {
  const bool quantized = quant::is_block_type(node.src[0]->dtype) || quant::is_block_type(node.src[1]->dtype);
  return quantized ? qgemm_scratch_bytes_max() : gemm_scratch_bytes_max();
}

size_t shared_matmul(const Tensor& node) {
  const Tensor& a = *node.src[0];
  const Tensor& b = *node.src[1];
  if (quant::is_block_type(b.dtype)) return qgemm_shared_bytes_max(b.shape[0], b.shape[1]);  // linear: W [out, in]
  if (quant::is_block_type(a.dtype)) return qgemm_shared_bytes_max(a.shape[a.rank - 2], a.shape[a.rank - 1]);
  return 0;
}

namespace {

// linear with a block-quantised weight W [out, in]: yᵀ[out × rows] = W · xᵀ, C written transposed into y [rows, out].
Status compute_linear_quantized(const Tensor& node, ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const Tensor& w = *node.src[1];
  const Tensor* bias = node.src[2];
  const int64_t in = w.shape[1], out = w.shape[0];
  StridedB packer{x.data, DType::F32, 0, 1, in, ctx.kernels.gemm.gather_rows};
  QGemmProblem p;
  p.M = out;
  p.N = x.numel() / in;
  p.K = in;
  p.a = w.data;
  p.a_dtype = w.dtype;
  set_weight_flags(w, &p);
  p.pack_b = pack_b_strided;
  p.pack_b_context = &packer;
  p.c = node.f32();
  p.ldc = 1;
  p.c_col_stride = out;
  if (bias) {
    p.bias_row = bias->data;
    p.bias_dtype = bias->dtype;
  }
  run_qgemm(p, ctx);
  return Status();
}

}  // namespace

Status compute_matmul(const Tensor& node, ExecContext& ctx) {
  const Tensor& a = *node.src[0];
  const Tensor& b = *node.src[1];
  const Tensor* bias = node.src[2];
  if (quant::is_block_type(b.dtype)) return compute_linear_quantized(node, ctx);
  const int r = node.rank;
  StridedB packer{b.data, b.dtype, node.iparams[1], b.stride[b.rank - 2], b.stride[b.rank - 1],
                  ctx.kernels.gemm.gather_rows};
  GemmProblem p;
  p.batch = 1;
  for (int i = 0; i < r - 2; ++i) p.batch *= node.shape[i];
  p.M = node.shape[r - 2];
  p.N = node.shape[r - 1];
  p.K = a.shape[a.rank - 1];
  p.a = a.data;
  p.a_dtype = a.dtype;
  p.a_batch_stride = node.iparams[0];
  p.a_row_stride = a.stride[a.rank - 2];
  p.a_col_stride = a.stride[a.rank - 1];
  p.pack_b = pack_b_strided;
  p.pack_b_context = &packer;
  p.c = node.f32();
  p.ldc = p.N;
  p.c_batch_stride = p.M * p.N;
  if (bias) {
    p.bias_col = bias->data;
    p.bias_dtype = bias->dtype;
  }
  if (quant::is_block_type(a.dtype)) {
    // The weight is shared by every batch item (build_matmul keeps block operands 2-D).
    QGemmProblem q;
    q.batch = p.batch;
    q.M = p.M;
    q.N = p.N;
    q.K = p.K;
    q.a = a.data;
    q.a_dtype = a.dtype;
    set_weight_flags(a, &q);
    q.pack_b = p.pack_b;
    q.pack_b_context = p.pack_b_context;
    q.c = p.c;
    q.ldc = p.ldc;
    q.c_batch_stride = p.c_batch_stride;
    q.bias_col = p.bias_col;
    q.bias_dtype = p.bias_dtype;
    run_qgemm(q, ctx);
    return Status();
  }
  run_gemm(p, ctx);
  return Status();
}

}  // namespace ddpm
