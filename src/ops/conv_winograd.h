// 3×3 stride-1 convolutions by Winograd's minimal filtering F(2×2, 3×3): the conv2d compute path chosen for f32/f16
// weights when the layer is wide and the image has enough 2×2 output tiles (see conv_winograd.cpp for the rule).
// It does 16 multiply-adds per output tile and input channel where the implicit GEMM does 36, at the price of
// transforming weights, inputs and outputs; results differ from the GEMM path by rounding only (relative to the
// products' magnitudes), and are the same for any thread count and any batch split. Block-typed weights flagged
// kFlagInt8Winograd take it too, with 8-bit transformed filters and inputs (more error; see conv_winograd.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ddpm/tensor.h"
#include "ops/op_exec.h"

namespace ddpm {

// Fewest 2×2 output tiles per image for which conv2d takes the Winograd path. Settable for tests and
// benchmarks that compare the two paths (a huge value: never); a graph must be planned after a change for its shared
// buffer to follow (until then a node takes whichever path the current rule and the planned buffer allow).
int64_t conv2d_winograd_min_tiles();
void set_conv2d_winograd_min_tiles(int64_t tiles);
// Fewest input channels for which block-typed filters take the 8-bit Winograd path (128; below it the direct
// integer conv is faster). Settable for tests and benchmarks, like the tile count.
int64_t conv2d_int8_winograd_min_channels();
void set_conv2d_int8_winograd_min_channels(int64_t channels);
// Whether 8-bit Winograd runs by tile groups, quantising the transformed input straight into the integer GEMM's
// panels in each thread's scratch (the default), or keeps V in f32 in the shared buffer for run_qgemm to quantise
// (the same bits, more memory and time): for tests; plan after a change.
bool conv2d_winograd_fused_input();
void set_conv2d_winograd_fused_input(bool fused);
// Calls run by tile groups since the start (tests check that the path really ran).
int64_t conv2d_winograd_grouped_runs();

// ExecContext::shared bytes the Winograd path needs for a Conv2d node, or 0 when the rule does not pick it; and the
// per-thread scratch bytes (8-bit Winograd's input staging).
size_t conv2d_winograd_shared_bytes(const Tensor& node);
size_t conv2d_winograd_scratch_bytes(const Tensor& node);
// Runs the node by Winograd and returns true, or returns false (nothing done) when the rule does not pick it or the
// shared buffer is too small.
bool run_conv2d_winograd(const Tensor& node, ExecContext& ctx);

}  // namespace ddpm
