// Per-node timing of Graph::compute, for finding where a training step or a forward pass spends its time.
// Enabled by DDPM_PROFILE=1 (read once); off, it costs one branch per compute() call. At exit it prints to stderr
// the time per op kind, split into forward and backward (every node after a graph's first MseLossGrad), then the
// most expensive nodes by op and shapes. Times are wall-clock per node, and CPU time of the calling thread ("cpu0":
// with -t 1 the op's whole work, unaffected by other processes competing for the cores), summed over all
// compute() calls and divided by their number.
#pragma once

#include <cstddef>

#include "ddpm/tensor.h"

namespace ddpm::profile {

bool enabled();
// Adds wall `seconds` and the calling thread's `cpu_seconds` to node `t`; `backward` as defined above.
void record(const Tensor& t, bool backward, double seconds, double cpu_seconds);
double thread_cpu_seconds();
// Counts one compute() call (the report's per-call averages divide by it).
void count_call();
// Forgets everything recorded so far: a benchmark calls it after its warm-up runs, whose first-use work (decoding
// kept weights, planning) would otherwise be averaged into every node.
void reset();

}  // namespace ddpm::profile
