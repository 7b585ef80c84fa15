// Tensors: typed, up to 4-D, strided views over memory owned elsewhere.
//
// A Tensor is also a node of a compute graph (see graph.h): `op` and `src` record how it is computed; `data` is
// null until the graph's planner places it in the activation arena. Leaves are either parameters (weights whose
// memory belongs to the model, often an mmapped file) or inputs (placed by the planner, filled by the caller).
//
// Shapes are written outermost first, like PyTorch: an image batch is [B, C, H, W] with W contiguous.
// Strides are in elements. A tensor is contiguous when its strides are the row-major ones of its shape.
#pragma once

#include <cstdint>
#include <string>

#include "ddpm/dtype.h"

namespace ddpm {

constexpr int kMaxRank = 4;
constexpr int kMaxSources = 4;

enum class OpKind : uint8_t {
  Leaf,        // parameter or input: no computation
  View,        // reshape / transpose / slice of src[0]'s memory; computed by pointer arithmetic only
  Contiguous,  // row-major copy of a strided src[0]
  Conv2d,      // src: x [B,Ci,H,W], weight [Co,Ci,kh,kw], bias [Co]?, residual [B,Co,Ho,Wo]?
  Matmul,      // src: a [..,M,K], b [..,K,N] (b may be strided), bias?
  GroupNorm,   // src: x [B,C,H,W], gamma [C], beta [C]; optional fused SiLU
  Unary,       // src: x; elementwise function (silu, scale)
  Binary,      // src: a, b (broadcast); add or mul
  Concat,      // src: a, b; along dim 1
  Upsample2x,  // nearest
  AvgPool2x,   // 2x2 stride 2
  Softmax,     // along the last dim, row max subtracted
  TimestepEmbedding,  // src: t [B] f32 → [B, dim] sinusoidal
  GetRows,     // src: table [R, D], indices [B] i32 → [B, D]
  // Training (src/autograd/, backward kernels in src/ops/*_backward.cpp).
  MseLoss,             // src: prediction, target → [1]
  MseLossGrad,         // src: dloss [1], prediction, target → d prediction (or d target)
  SumTo,               // src: x → x summed over broadcast dims
  ViewGrad,            // src: dview → gradient of the view's storage root
  Conv2dGradInput,     // src: dy [B,Co,Ho,Wo], weightᵀ [Ci,Co,kh,kw] → dx
  Conv2dGradWeight,    // src: dy, x → per-image partial dw [G, Co, Ci·kh·kw]
  GroupNormGradInput,  // src: dy, x, gamma, beta → dx
  GroupNormGradParams, // src: dy, x, gamma, beta → [2, C] (dgamma, dbeta)
  SiluGrad,            // src: dy, x → dx
  SoftmaxGrad,         // src: dy, y → dx
  Upsample2xGrad,      // src: dy [B,C,2H,2W] → [B,C,H,W]
  AvgPool2xGrad,       // src: dy [B,C,H/2,W/2] → [B,C,H,W]
  GetRowsGrad,         // src: dy [B, D], indices [B] → d table [R, D]
  kCount
};

const char* op_name(OpKind op);

enum TensorFlags : uint8_t {
  kFlagParam = 1,   // constant data owned outside the graph
  kFlagInput = 2,   // placed by the planner, written by the caller before compute
  kFlagOutput = 4,  // kept alive until the end of compute
  // A param whose data is a read-only file mapping (a model file): once the executor keeps the weight in another
  // form (block types decoded for the integer GEMM), it may hand the file's pages back to the OS.
  kFlagMapped = 8,
  // A param whose data does not change while the graph lives (a loaded model's weights, unlike a trainer's): the
  // executor may keep forms derived from f32/f16 data across compute() calls (Winograd-transformed filters).
  kFlagFrozen = 16,
  // A block-typed conv weight [Co, Ci, kh, kw] whose rows are stored tap-major, values in (kh, kw, Ci) order
  // (quant::tap_major_eligible; docs/FORMAT.md §6.8): set by the model loader for files that say so.
  kFlagTapMajor = 32,
  // A frozen block-typed 3×3 conv weight that conv2d may run by Winograd F(2×2, 3×3) with 8-bit transformed
  // filters (src/ops/conv_winograd.cpp): faster, at some extra output error; set by the model loader when asked.
  kFlagInt8Winograd = 64,
};

struct Tensor {
  DType dtype = DType::F32;
  int rank = 0;
  int64_t shape[kMaxRank] = {1, 1, 1, 1};
  int64_t stride[kMaxRank] = {1, 1, 1, 1};
  void* data = nullptr;

  OpKind op = OpKind::Leaf;
  Tensor* src[kMaxSources] = {nullptr, nullptr, nullptr, nullptr};
  int64_t iparams[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // op-specific integer parameters
  float fparams[4] = {0, 0, 0, 0};                 // op-specific float parameters

  // Views: the tensor whose memory this one reads, and the element offset into it.
  Tensor* view_source = nullptr;
  int64_t view_offset = 0;

  uint8_t flags = 0;
  int id = -1;  // position in the graph's node list (creation order = a topological order)
  std::string name;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
  bool is_contiguous() const;
  // Shape as "[2, 3, 8, 8]" for messages.
  std::string shape_string() const;

  float* f32() const { return static_cast<float*>(data); }
};

}  // namespace ddpm
