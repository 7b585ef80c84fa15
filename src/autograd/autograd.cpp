// build_backward: reverse-mode autodiff by appending nodes to the forward graph.
//
// 1. Mark the nodes that matter: those that depend on some wrt tensor (forward sweep) and that the loss depends on
//    (backward sweep from the loss). Only nodes in both sets get a gradient, and a rule builds a source's gradient
//    only when that source is marked, so e.g. the first conv never computes dx for the image.
// 2. Walk the nodes from the loss down, in reverse creation order. Creation order is a topological order, so when
//    a node is reached every consumer has already contributed to its gradient. Contributions are added as they
//    arrive (((c0 + c1) + c2) …), in that fixed order.
// 3. Each op's rule (one function per op family below, the forward lives in src/ops/<family>.cpp) turns the
//    node's gradient into contributions for its sources, with forward ops (matmul, mul, scale, slice, …) where
//    they do the job and backward ops (src/ops/*_backward.cpp, builders in autograd/ops_backward.h) where not.
//
// Views are handled through their storage root: a view's gradient goes straight to the root (view_grad), which
// covers any chain of reshape/permute/slice at once; a view's own source, if it is a view too, gets nothing from
// it. Rules read forward tensors (activations, weights) as sources, so the planner keeps them alive until the
// backward pass has used them.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "autograd/ops_backward.h"
#include "ddpm/autograd.h"
#include "ddpm/ops.h"
#include "ops/op_exec.h"

namespace ddpm {
namespace {

// The seed d(loss)/d(loss) = 1. Graph parameters reference caller-owned memory; this constant outlives every graph.
const float kOne[kMaxRank] = {1.0f, 1.0f, 1.0f, 1.0f};

// Forward conv2d's iparams (src/ops/conv.cpp).
Conv2dParams conv_params(const Tensor& node) {
  Conv2dParams p;
  p.stride = static_cast<int>(node.iparams[0]);
  p.pad_top = static_cast<int>(node.iparams[1]);
  p.pad_left = static_cast<int>(node.iparams[2]);
  p.pad_bottom = static_cast<int>(node.iparams[3]);
  p.pad_right = static_cast<int>(node.iparams[4]);
  return p;
}

bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; ++i) {
    if (a.shape[i] != b.shape[i]) return false;
  }
  return true;
}

// `t`'s elements with `like`'s shape (same count): t itself or a free view of a contiguous copy.
Tensor* view_as(Graph& g, Tensor* t, int rank, const int64_t* shape) {
  if (!t) return nullptr;
  t = contiguous(g, t);
  bool same = t->rank == rank;
  for (int i = 0; same && i < rank; ++i) same = t->shape[i] == shape[i];
  if (same) return t;
  int64_t stride[kMaxRank];
  int64_t step = 1;
  for (int i = rank - 1; i >= 0; --i) {
    stride[i] = step;
    step *= shape[i];
  }
  DDPM_ASSERT(step == t->numel());
  return g.new_view(t, rank, shape, stride, 0);
}
Tensor* view_as(Graph& g, Tensor* t, const Tensor& like) { return view_as(g, t, like.rank, like.shape); }
Tensor* view_as(Graph& g, Tensor* t, std::initializer_list<int64_t> shape) {
  return view_as(g, t, static_cast<int>(shape.size()), shape.begin());
}

Tensor* transpose_last2(Graph& g, Tensor* t) {
  if (t->rank == 2) return permute(g, t, {1, 0});
  if (t->rank == 3) return permute(g, t, {0, 2, 1});
  return permute(g, t, {0, 1, 3, 2});
}

// Product of the dims before the last two (matmul's flattened batch).
int64_t batch_count(const Tensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.rank - 2; ++i) n *= t.shape[i];
  return n;
}

class Backward {
 public:
  Backward(Graph& g, const std::vector<Tensor*>& nodes) : g_(g), nodes_(nodes), grad_(nodes.size(), nullptr) {}

  Status run(Tensor* loss, const std::vector<Tensor*>& wrt, std::vector<Tensor*>* grads) {
    mark(loss, wrt);
    if (!needed(loss)) {
      grads->assign(wrt.size(), nullptr);
      return Status();
    }
    grad_[loss->id] = g_.param("autograd.one", DType::F32, loss->rank, loss->shape, kOne);
    for (int id = loss->id; id >= 0 && error_.ok() && g_.status().ok(); --id) {
      Tensor* t = nodes_[id];
      if (needed(t) && grad_[id]) apply_rule(t, grad_[id]);
    }
    if (!error_.ok()) {
      g_.fail(error_);
      return error_;
    }
    grads->clear();
    for (Tensor* w : wrt) {
      Tensor* gw = grad_[w->id] ? contiguous(g_, grad_[w->id]) : nullptr;
      if (gw) g_.set_output(gw);
      grads->push_back(gw);
    }
    return g_.status();
  }

 private:
  void mark(Tensor* loss, const std::vector<Tensor*>& wrt) {
    const size_t n = nodes_.size();
    std::vector<bool> depends(n, false), feeds_loss(n, false);
    for (Tensor* w : wrt) depends[w->id] = true;
    for (size_t i = 0; i < n; ++i) {
      const Tensor* t = nodes_[i];
      for (const Tensor* s : t->src) {
        if (s && depends[s->id]) depends[i] = true;
      }
      if (t->view_source && depends[t->view_source->id]) depends[i] = true;
    }
    feeds_loss[loss->id] = true;
    for (int i = loss->id; i >= 0; --i) {
      if (!feeds_loss[i]) continue;
      const Tensor* t = nodes_[i];
      for (const Tensor* s : t->src) {
        if (s) feeds_loss[s->id] = true;
      }
      if (t->view_source) feeds_loss[t->view_source->id] = true;
    }
    needed_.assign(n, false);
    for (size_t i = 0; i < n; ++i) needed_[i] = depends[i] && feeds_loss[i];
  }

  bool needed(const Tensor* t) const {
    return t && t->id >= 0 && static_cast<size_t>(t->id) < needed_.size() && needed_[t->id];
  }

  // Adds `contribution` (t's shape) to t's gradient.
  void contribute(Tensor* t, Tensor* contribution) {
    if (!contribution) return;  // a builder failed; g.status() has the error
    if (!same_shape(*t, *contribution) || contribution->dtype != DType::F32) {
      error_ = errorf("backward: internal shape error, gradient %s for tensor %s", contribution->shape_string().c_str(),
                      t->shape_string().c_str());
      return;
    }
    Tensor*& slot = grad_[t->id];
    slot = slot ? add(g_, slot, contribution) : contribution;
  }

  void fail_no_rule(const Tensor& t, const char* why) {
    if (error_.ok()) {
      error_ = errorf("backward: %s%s%s: %s", op_name(t.op), t.name.empty() ? "" : " ", t.name.c_str(), why);
    }
  }

  void apply_rule(Tensor* t, Tensor* dy) {
    switch (t->op) {
      case OpKind::Leaf: return;
      case OpKind::View: return contribute(t->view_source, view_grad(g_, dy, *t));
      case OpKind::Contiguous: return contribute(t->src[0], dy);
      case OpKind::Conv2d: return conv2d_rule(t, dy);
      case OpKind::Matmul: return matmul_rule(t, dy);
      case OpKind::GroupNorm: return group_norm_rule(t, dy);
      case OpKind::Unary: return unary_rule(t, dy);
      case OpKind::Binary: return binary_rule(t, dy);
      case OpKind::Concat: return concat_rule(t, dy);
      case OpKind::Upsample2x: return contribute(t->src[0], upsample2x_grad(g_, dy));
      case OpKind::AvgPool2x: return contribute(t->src[0], avg_pool2x_grad(g_, dy, *t->src[0]));
      case OpKind::Softmax: {
        Tensor* d_logits = softmax_grad(g_, dy, t);  // with respect to the scaled logits, as the Scale op's input
        return contribute(t->src[0], t->fparams[0] != 1.0f ? scale(g_, d_logits, t->fparams[0]) : d_logits);
      }
      case OpKind::TimestepEmbedding:
        // Timesteps are never trained; the sinusoid's derivative is not implemented.
        return fail_no_rule(*t, "no gradient with respect to the timesteps");
      case OpKind::GetRows:
        if (needed(t->src[1])) return fail_no_rule(*t, "no gradient with respect to integer indices");
        return contribute(t->src[0], get_rows_grad(g_, dy, t->src[1], t->src[0]->shape[0]));
      case OpKind::MseLoss:
        if (needed(t->src[0])) contribute(t->src[0], mse_loss_grad(g_, dy, t->src[0], t->src[1], 1.0f));
        if (needed(t->src[1])) contribute(t->src[1], mse_loss_grad(g_, dy, t->src[0], t->src[1], -1.0f));
        return;
      default: return fail_no_rule(*t, "no backward rule (second derivatives are not supported)");
    }
  }

  // y = conv(x, W) + b + residual.
  void conv2d_rule(Tensor* t, Tensor* dy) {
    Tensor* x = t->src[0];       // [B, Ci, H, W]
    Tensor* w = t->src[1];       // [Co, Ci, kh, kw]
    Tensor* bias = t->src[2];    // [Co]
    Tensor* residual = t->src[3];  // [B, Co, Ho, Wo]
    const Conv2dParams p = conv_params(*t);
    dy = contiguous(g_, dy);  // [B, Co, Ho, Wo]
    if (needed(x)) contribute(x, conv2d_grad_input(g_, dy, w, *x, p));
    if (needed(w)) contribute(w, conv2d_grad_weight(g_, dy, x, *w, p));
    if (needed(bias)) {
      const int64_t per_channel[3] = {t->shape[1], 1, 1};  // right-aligned against [B, Co, Ho, Wo]
      contribute(bias, view_as(g_, sum_to(g_, dy, 3, per_channel), *bias));
    }
    if (needed(residual)) contribute(residual, dy);
  }

  // C = A·B (+ bias over columns), batch dims flattened; an operand with one batch item is shared by all of C's.
  //   dA = dC·Bᵀ,  dB = Aᵀ·dC,  dbias = Σ_rows dC.
  // A shared operand's gradient sums over C's batch, which is one GEMM over the batch-flattened matrices:
  //   shared A: dA [M, K] = Σ_b dC_b·B_bᵀ = dC as [M, nb·N] · B as [nb·N, K]
  //   shared B: dB [K, N] = Σ_b A_bᵀ·dC_b = (A as [nb·M, K])ᵀ · dC as [nb·M, N]
  // An operand that is a transposed view of a row-major tensor R (a linear layer's Wᵀ, attention's Pᵀ) gets its
  // gradient in R's layout directly, dR = dBᵀ = dCᵀ·A (or dAᵀ = B·dCᵀ), instead of a result scattered back
  // through the view, when the strided dCᵀ it reads is smaller than the other way's strided operand + scatter.
  void matmul_rule(Tensor* t, Tensor* dc) {
    Tensor* a = t->src[0];
    Tensor* b = t->src[1];
    Tensor* bias = t->src[2];
    const int64_t m = a->shape[a->rank - 2], k = a->shape[a->rank - 1], n = b->shape[b->rank - 1];
    const int64_t nb = batch_count(*t);
    const bool a_shared = batch_count(*a) != nb, b_shared = batch_count(*b) != nb;
    dc = contiguous(g_, dc);  // [.., M, N]
    if (needed(a)) {
      Tensor* root = transposed_root(a);
      if (root && !a_shared && n * m <= n * k + m * k) {
        contribute(root, view_as(g_, matmul(g_, b, transpose_last2(g_, dc)), *root));  // dAᵀ = B·dCᵀ [.., K, M]
      } else if (!a_shared) {
        contribute(a, view_as(g_, matmul(g_, dc, transpose_last2(g_, b)), *a));  // [.., M, K]
      } else {
        Tensor* dc_rows = view_as(g_, permute(g_, view_as(g_, dc, {nb, m, n}), {1, 0, 2}), {m, nb * n});
        Tensor* b_rows = view_as(g_, permute(g_, view_as(g_, b, {nb, k, n}), {0, 2, 1}), {nb * n, k});
        contribute(a, view_as(g_, matmul(g_, dc_rows, b_rows), *a));  // [M, K]
      }
    }
    if (needed(b)) {
      Tensor* root = transposed_root(b);
      if (root && !b_shared && n * m <= k * m + k * n) {
        contribute(root, view_as(g_, matmul(g_, transpose_last2(g_, dc), a), *root));  // dBᵀ = dCᵀ·A [.., N, K]
      } else if (root && b_shared && n * nb * m <= k * nb * m + k * n) {
        Tensor* dc_rows = view_as(g_, dc, {nb * m, n});
        contribute(root, view_as(g_, matmul(g_, permute(g_, dc_rows, {1, 0}), view_as(g_, a, {nb * m, k})), *root));
      } else if (!b_shared) {
        contribute(b, view_as(g_, matmul(g_, transpose_last2(g_, a), dc), *b));  // [.., K, N]
      } else {
        Tensor* a_rows = view_as(g_, a, {nb * m, k});
        contribute(b, view_as(g_, matmul(g_, permute(g_, a_rows, {1, 0}), view_as(g_, dc, {nb * m, n})), *b));
      }
    }
    if (needed(bias)) contribute(bias, sum_to(g_, dc, bias->rank, bias->shape));
  }

  // The row-major tensor that `v` is a transpose (last two dims swapped) of, or null: v is a view whose
  // transpose reads its whole root in row-major order.
  Tensor* transposed_root(Tensor* v) const {
    if (v->op != OpKind::View || v->rank < 2) return nullptr;
    Tensor* root = v->view_source;
    if (v->view_offset != 0 || v->numel() != root->numel() || !needed(root)) return nullptr;
    Tensor swapped = *v;
    std::swap(swapped.shape[v->rank - 1], swapped.shape[v->rank - 2]);
    std::swap(swapped.stride[v->rank - 1], swapped.stride[v->rank - 2]);
    return swapped.is_contiguous() ? root : nullptr;
  }

  void group_norm_rule(Tensor* t, Tensor* dy) {
    if (t->src[3]) return fail_no_rule(*t, "no backward rule with a fused channel bias (an inference graph's)");
    Tensor* x = t->src[0];
    Tensor* gamma = t->src[1];
    Tensor* beta = t->src[2];
    Tensor* params = nullptr;  // [2, C]
    if (needed(x) && (needed(gamma) || needed(beta))) {
      Tensor* dx = nullptr;
      group_norm_grad_input_and_params(g_, dy, *t, &dx, &params);  // one pass over x and dy for both
      if (!dx) return;
      contribute(x, dx);
    } else if (needed(x)) {
      contribute(x, group_norm_grad_input(g_, dy, *t));
    }
    if (needed(gamma) || needed(beta)) {
      if (!params) params = group_norm_grad_params(g_, dy, *t);
      if (!params) return;
      if (needed(gamma)) contribute(gamma, view_as(g_, slice(g_, params, 0, 0, 1), *gamma));
      if (needed(beta)) contribute(beta, view_as(g_, slice(g_, params, 0, 1, 1), *beta));
    }
  }

  void unary_rule(Tensor* t, Tensor* dy) {
    Tensor* x = t->src[0];
    if (static_cast<UnaryOp>(t->iparams[0]) == UnaryOp::Silu) return contribute(x, silu_grad(g_, dy, x));
    contribute(x, scale(g_, dy, t->fparams[0]));  // Scale
  }

  // Broadcasting add/mul: each operand's gradient is reduced back to its own shape.
  void binary_rule(Tensor* t, Tensor* dy) {
    Tensor* a = t->src[0];
    Tensor* b = t->src[1];
    const bool is_mul = static_cast<BinaryOp>(t->iparams[0]) == BinaryOp::Mul;
    if (needed(a)) contribute(a, sum_to(g_, is_mul ? mul(g_, dy, b) : dy, a->rank, a->shape));
    if (needed(b)) contribute(b, sum_to(g_, is_mul ? mul(g_, dy, a) : dy, b->rank, b->shape));
  }

  void concat_rule(Tensor* t, Tensor* dy) {
    Tensor* a = t->src[0];
    Tensor* b = t->src[1];
    const int64_t ca = a->shape[1], cb = b->shape[1];
    if (needed(a)) contribute(a, slice(g_, dy, 1, 0, ca));  // strided views; consumers copy if they must
    if (needed(b)) contribute(b, slice(g_, dy, 1, ca, cb));
  }

  Graph& g_;
  const std::vector<Tensor*>& nodes_;
  std::vector<Tensor*> grad_;  // per forward node id: the gradient accumulated so far
  std::vector<bool> needed_;
  Status error_;
};

}  // namespace

Status build_backward(Graph& g, Tensor* loss, const std::vector<Tensor*>& wrt, std::vector<Tensor*>* grads) {
  DDPM_ASSERT(grads != nullptr);
  DDPM_TRY(g.status());
  const std::vector<Tensor*> nodes = g.nodes();  // a snapshot: the forward graph, before any gradient node
  auto belongs = [&](const Tensor* t) {
    return t && t->id >= 0 && static_cast<size_t>(t->id) < nodes.size() && nodes[t->id] == t;
  };
  if (!belongs(loss)) return errorf("build_backward: the loss is not a tensor of this graph");
  if (loss->numel() != 1 || loss->dtype != DType::F32) {
    return errorf("build_backward: the loss must be one f32 value, got %s %s", dtype_name(loss->dtype),
                  loss->shape_string().c_str());
  }
  for (size_t i = 0; i < wrt.size(); ++i) {
    if (!belongs(wrt[i])) return errorf("build_backward: wrt[%zu] is not a tensor of this graph", i);
    if (wrt[i]->dtype == DType::I32) {
      return errorf("build_backward: wrt[%zu] (%s) is an integer tensor and has no gradient", i, wrt[i]->name.c_str());
    }
  }
  Backward backward(g, nodes);
  return backward.run(loss, wrt, grads);
}

}  // namespace ddpm
