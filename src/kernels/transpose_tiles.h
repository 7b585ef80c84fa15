// The loop every level's KernelTable::transpose shares: whole kTile × kTile tiles through the level's register
// transpose, the ragged right and bottom edges element by element (plain copies: no level can differ in them).
#pragma once

#include <cstdint>

namespace ddpm::kernels {
// Unnamed: each level's copy is compiled with its own -m flags and must never be merged with another's.
namespace {

template <int64_t kTile, typename TileFn>
inline void transpose_by_tiles(int64_t rows, int64_t cols, const float* src, int64_t src_stride, float* dst,
                               int64_t dst_stride, TileFn tile) {
  auto elements = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t r = r0; r < r1; ++r) dst[c * dst_stride + r] = src[r * src_stride + c];
    }
  };
  const int64_t full_rows = rows / kTile * kTile, full_cols = cols / kTile * kTile;
  for (int64_t r = 0; r < full_rows; r += kTile) {
    for (int64_t c = 0; c < full_cols; c += kTile) {
      tile(src + r * src_stride + c, src_stride, dst + c * dst_stride + r, dst_stride);
    }
    elements(r, r + kTile, full_cols, cols);
  }
  elements(full_rows, rows, 0, cols);
}

}  // namespace
}  // namespace ddpm::kernels
