// Direct convolution for few input channels: the conv2d compute path chosen when K = Ci·kh·kw is small (see
// conv_direct.cpp for the rule and why). Results equal the implicit-GEMM path's bit for bit on every level.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ddpm/tensor.h"
#include "ops/op_exec.h"

namespace ddpm {

// Largest K = Ci·kh·kw that conv2d runs directly with stride 1 (other strides: half of it). Settable for tests and
// benchmarks that compare the two paths (0: always the GEMM); a graph must be planned after a change for its
// scratch size to follow (until then the node keeps the GEMM).
int64_t conv2d_direct_max_k();
void set_conv2d_direct_max_k(int64_t k);

// Per-thread scratch the direct path needs for a Conv2d node, or 0 when the rule does not pick it.
size_t conv2d_direct_scratch_bytes(const Tensor& node);
// Runs the node directly and returns true, or returns false (nothing done) when the rule does not pick it.
bool run_conv2d_direct(const Tensor& node, ExecContext& ctx);

}  // namespace ddpm
