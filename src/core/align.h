// Sizes rounded up to a cache line: buffers carved out of one allocation (scratch layouts, the activation arena)
// start on lines of their own, so no two threads' data share a line and SIMD loads stay aligned.
#pragma once

#include <cstddef>

namespace ddpm {

constexpr size_t kCacheLine = 64;

constexpr size_t align_to_cache_line(size_t bytes) { return (bytes + kCacheLine - 1) / kCacheLine * kCacheLine; }

}  // namespace ddpm
