// Reverse-mode automatic differentiation over a compute graph, the ggml way: backward rules append ordinary nodes
// to the same Graph, so the planner places the backward pass's tensors like the forward's (each activation lives
// until its last use, forward or backward), and execution, threading and bit-identical results for any thread
// count come for free.
//
//   ddpm::Graph g;
//   Tensor* x = g.input("x", DType::F32, {8, 3, 32, 32});                       // [B, C, H, W]
//   Tensor* w = g.param("conv.weight", DType::F32, {8, 3, 3, 3}, weights);       // trained in place
//   Tensor* target = g.input("target", DType::F32, {8, 8, 32, 32});
//   Tensor* loss = ddpm::mse_loss(g, ddpm::conv2d(g, x, w, nullptr, ddpm::conv_same3x3()), target);  // [1]
//   std::vector<Tensor*> grads;
//   DDPM_TRY(ddpm::build_backward(g, loss, {w}, &grads));   // grads[0]: [8, 3, 3, 3] f32, kept alive as an output
//   g.plan();
//   for (step …) { fill(x, target); g.compute(pool); read loss->f32()[0], grads[0]->f32(); update weights in place; }
//
// Parameters are Leaf tensors (g.param) whose memory belongs to the caller, so an optimiser may rewrite it between
// compute() calls: nothing in the graph caches them. Gradients are f32 and contiguous whatever the parameter's type
// (an f16 parameter gets an f32 gradient).
//
// What is differentiated: every op of ops.h that the U-Net uses — conv2d (bias, fused residual, any stride and
// padding), matmul/linear (transposed views, broadcast batches), group_norm (+ fused SiLU), silu, scale,
// broadcasting add/mul, concat_channels, upsample_nearest2x, avg_pool2x, softmax, get_rows (the table), contiguous
// and the views (reshape, permute, slice). timestep_embedding has no gradient: its input is a timestep, never a
// trained value, so asking for a gradient through it is an error. get_rows has no gradient for its indices.
// Second derivatives are not supported (backward nodes have no rules of their own).
#pragma once

#include <vector>

#include "ddpm/graph.h"

namespace ddpm {

// Mean squared error over all elements: Σ (prediction − target)² / N → [1]. prediction and target are f32 of the
// same shape. The sum is accumulated in double in a fixed order (fixed chunks, summed in chunk order), so the
// loss is the same for any thread count. Differentiable in both arguments.
Tensor* mse_loss(Graph& g, Tensor* prediction, Tensor* target);

// Appends to `g` the nodes that compute d(loss)/d(wrt[i]) for every i, and stores them in (*grads)[i].
//   loss: a scalar (one element, f32) computed by `g`.
//   wrt:  tensors of `g` (usually parameters, also inputs or intermediate nodes) of a float type.
//   (*grads)[i]: an f32 contiguous tensor of wrt[i]'s shape, marked as a graph output so it can be read after
//         compute(); nullptr when the loss does not depend on wrt[i] (the gradient is zero).
// Only nodes that lie on a path from some wrt[i] to the loss get backward work. Where a tensor feeds several
// consumers its gradient is the sum of their contributions, added in a fixed order (reverse creation order of the
// consumers). Bad arguments (a loss that is not one f32 value, a wrt tensor of another graph or of integer type)
// return an error and leave `g` untouched; an op on the path without a backward rule (timestep_embedding, or a
// backward op: no second derivatives) returns an error that is also recorded in g.status(), so plan() fails.
// May be called more than once on the same graph (each call appends its own nodes).
Status build_backward(Graph& g, Tensor* loss, const std::vector<Tensor*>& wrt, std::vector<Tensor*>* grads);

}  // namespace ddpm
