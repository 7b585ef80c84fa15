// Builders of the backward ops: the nodes that backward rules (src/autograd/autograd.cpp) append to a graph.
// Each op family's backward kernels live next to nothing else in src/ops/<family>_backward.cpp, written against
// the forward's memory layout (every tensor they read is contiguous unless said otherwise).
//
// Shape letters: B batch, C/Ci/Co channels, H×W input and Ho×Wo output pixels, T = kh·kw kernel taps,
// G groups, R table rows, D row width.
#pragma once

#include <cstdint>

#include "ddpm/graph.h"
#include "ddpm/ops.h"

namespace ddpm {

// Σ of x over the dims where `shape` has a 1 and x does not: the gradient of a broadcast operand. `shape` is
// right-aligned against x like numpy broadcasting (rank ≤ x's; every dim equals x's or is 1). Accumulated in
// double in a fixed order (row-major over the reduced dims). The result always has exactly `shape`
// (x itself, or a view of it, when nothing is reduced).
Tensor* sum_to(Graph& g, Tensor* x, int rank, const int64_t* shape);

// Gradient of a view's storage root from the gradient of the view: a tensor of the root's shape that holds
// dview's elements where `view` reads the root and zeros elsewhere (views are injective: reshape, permute,
// slice). A full-coverage row-major view (a reshape) becomes a free reshape of dview.
Tensor* view_grad(Graph& g, Tensor* dview, const Tensor& view);
// The kernel behind view_grad: a new f32 tensor of `shape` with out[offset + Σ_d i_d·stride_d] = src[i] for every
// index i of src (contiguous f32, src_rank dims; strides may be negative, the map must be injective), zeros
// elsewhere unless `full` says every element is written.
Tensor* scatter(Graph& g, Tensor* src, int rank, const int64_t* shape, int src_rank, const int64_t* stride,
                int64_t offset, bool full);

// conv2d backward. dy [B, Co, Ho, Wo]; weight [Co, Ci, kh, kw] f32|f16; x [B, Ci, H, W]; p as in the forward.
// dx [B, Ci, H, W] = col2im(Wᵀ · dy) computed per input pixel as a gather GEMM (no scatter, so deterministic).
Tensor* conv2d_grad_input(Graph& g, Tensor* dy, Tensor* weight, const Tensor& x, const Conv2dParams& p);
// dw [Co, Ci, kh, kw] = dy · im2col(x)ᵀ, a GEMM with K = batch·pixels.
Tensor* conv2d_grad_weight(Graph& g, Tensor* dy, Tensor* x, const Tensor& weight, const Conv2dParams& p);

// group_norm backward (forward node `y` = group_norm(x, gamma, beta), optional fused SiLU); statistics recomputed
// in double exactly as the forward computes them.
Tensor* group_norm_grad_input(Graph& g, Tensor* dy, const Tensor& y);   // dx [B, C, ...]
Tensor* group_norm_grad_params(Graph& g, Tensor* dy, const Tensor& y);  // [2, C]: row 0 dγ, row 1 dβ
// Both at once, the same values bit for bit: dx [B, C, ...] (a view of a node that also holds dγ/dβ's partial sums)
// and the [2, C] parameter gradient summed from them. Both null on error.
void group_norm_grad_input_and_params(Graph& g, Tensor* dy, const Tensor& y, Tensor** dx, Tensor** params);

Tensor* silu_grad(Graph& g, Tensor* dy, Tensor* x);     // dy·σ(x)·(1 + x·(1 − σ(x)))
// The row kernel shared by silu_grad and group_norm's fused SiLU: dz = dy·silu'(z) from neg_z = −z and e = e^−z.
void silu_backward_rows(int64_t n, const float* __restrict__ dy, const float* __restrict__ neg_z,
                        const float* __restrict__ e, float* __restrict__ dz);
Tensor* softmax_grad(Graph& g, Tensor* dy, Tensor* y);  // y·(dy − Σ dy·y) per row; y is the softmax output

Tensor* upsample2x_grad(Graph& g, Tensor* dy);                   // [B,C,2H,2W] → [B,C,H,W]: sum of each 2×2 block
Tensor* avg_pool2x_grad(Graph& g, Tensor* dy, const Tensor& x);  // [B,C,H/2,W/2] → x's shape: ¼ spread, odd edge 0

// Gradient of get_rows' table: [R, D], row r = Σ of dy's rows i with indices[i] == r, added in increasing i.
Tensor* get_rows_grad(Graph& g, Tensor* dy, Tensor* indices, int64_t rows);

// d mse_loss / d prediction (sign +1) or d target (sign −1): sign·dloss·2·(prediction − target)/N.
Tensor* mse_loss_grad(Graph& g, Tensor* dloss, Tensor* prediction, Tensor* target, float sign);

}  // namespace ddpm
