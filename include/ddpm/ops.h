// Op builders. Each records a node in the graph and checks shapes; on a mismatch it records an error naming the
// op and the shapes in g.status() and returns nullptr (and every builder given a nullptr input returns nullptr),
// so a whole network can be built and checked once at the end.
//
// Layout conventions: images are [B, C, H, W]; linear layers take [.., in] rows; weights use PyTorch's layouts
// (conv [Co, Ci, kh, kw], linear [out, in]) so checkpoint tensors are used as they are. One exception: a
// block-typed conv weight flagged kFlagTapMajor (as .ddpm files store them, docs/FORMAT.md §6.8) keeps the shape
// [Co, Ci, kh, kw] but holds each row in (kh, kw, Ci) order.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "ddpm/graph.h"

namespace ddpm {

struct Conv2dParams {
  int stride = 1;
  // Zero padding per side. Symmetric 3×3 convs use 1,1,1,1; diffusers' downsample_padding=0 is 0,0,1,1.
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
};
inline Conv2dParams conv_same3x3() { return {1, 1, 1, 1, 1}; }

// y = conv(x, weight) + bias (+ residual). x [B,Ci,H,W], weight [Co,Ci,kh,kw] f32|f16 or a block type (q8_0, …;
// contiguous, maybe kFlagTapMajor), bias [Co] f32|f16 or null, residual [B,Co,Ho,Wo] or null (fused skip
// connection).
Tensor* conv2d(Graph& g, Tensor* x, Tensor* weight, Tensor* bias, const Conv2dParams& params,
               Tensor* residual = nullptr);

// c = a·b over the last two dims, batch dims broadcast (a [..,M,K], b [..,K,N]); any strides.
Tensor* matmul(Graph& g, Tensor* a, Tensor* b);
// y = x·weightᵀ + bias. x [.., in], weight [out, in] f32|f16, bias [out] or null.
Tensor* linear(Graph& g, Tensor* x, Tensor* weight, Tensor* bias);

// GroupNorm over (C/groups channels × H × W) per sample, biased variance, f64 statistics; optional fused SiLU.
// channel_bias ([B, C] f32, optional) is added to x first, per sample and channel: the bits of
// group_norm(add(x, reshape(channel_bias, [B, C, 1, 1]))) without the sum going through memory (a resnet's
// time-embedding add). No backward rule with it: inference graphs only.
Tensor* group_norm(Graph& g, Tensor* x, int groups, float eps, Tensor* gamma, Tensor* beta, bool fuse_silu = false,
                   Tensor* channel_bias = nullptr);

Tensor* silu(Graph& g, Tensor* x);
Tensor* scale(Graph& g, Tensor* x, float factor);
// Broadcasting like numpy: shapes are right-aligned, size-1 dims stretch.
Tensor* add(Graph& g, Tensor* a, Tensor* b);
Tensor* mul(Graph& g, Tensor* a, Tensor* b);

Tensor* concat_channels(Graph& g, Tensor* a, Tensor* b);  // [B,Ca,H,W] ++ [B,Cb,H,W] → [B,Ca+Cb,H,W]
Tensor* upsample_nearest2x(Graph& g, Tensor* x);           // [B,C,H,W] → [B,C,2H,2W]
Tensor* avg_pool2x(Graph& g, Tensor* x);                   // [B,C,H,W] → [B,C,H/2,W/2]
// Along the last dim, of input_scale·x: the same bits as softmax(scale(x, input_scale)) without a pass over memory
// for the scaled logits (attention's 1/√d).
Tensor* softmax(Graph& g, Tensor* x, float input_scale = 1.0f);

// Sinusoidal embedding of timesteps t [B] (f32) → [B, dim], computed in f32 in diffusers' order.
Tensor* timestep_embedding(Graph& g, Tensor* t, int dim, bool flip_sin_to_cos, float freq_shift);
// rows[i] = table[indices[i]]. table [R, D] f32|f16, indices [B] i32 → [B, D]. Out-of-range indices are an error
// at compute time.
Tensor* get_rows(Graph& g, Tensor* table, Tensor* indices);

// Views (no copy).
Tensor* reshape(Graph& g, Tensor* x, std::initializer_list<int64_t> shape);  // x must be contiguous
Tensor* permute(Graph& g, Tensor* x, std::initializer_list<int> axes);       // new dim i = old dim axes[i]
Tensor* slice(Graph& g, Tensor* x, int dim, int64_t start, int64_t length);
Tensor* contiguous(Graph& g, Tensor* x);  // copy when strided, identity otherwise

}  // namespace ddpm
