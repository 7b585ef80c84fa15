// The loops every level's KernelTable::winograd_input / winograd_output share (contracts in registry.h), over a
// level's vector types: each `Lanes` provides V, kWidth, load, store, add, sub, splat, deinterleave (2·kWidth
// floats into their even and odd elements) and store_interleaved (the inverse). Tiles go in whole groups of the
// widest vector, then of the narrower ones the level lists (a 16×16 output has rows of 8 tiles: AVX-512 takes them
// 8 at a time), then one by one (ScalarLanes, which alone is the reference). Every value is the same sequence of
// single float adds and subtracts either way, so every level gives the reference's bits.
#pragma once

#include <cstdint>

namespace ddpm::kernels {
// Unnamed: each level's copy is compiled with its own -m flags and must never be merged with another's.
namespace {

struct ScalarLanes {
  using V = float;
  static constexpr int64_t kWidth = 1;
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V splat(float v) { return v; }
  static void deinterleave(const float* p, V* even, V* odd) {
    *even = p[0];
    *odd = p[1];
  }
  static void store_interleaved(float* p, V even, V odd) {
    p[0] = even;
    p[1] = odd;
  }
};

// Whole groups of L::kWidth tiles of winograd_input from t0 while they fit before t1; returns the first tile left.
// Tile t reads columns 2t .. 2t+3 of the four rows.
template <typename L>
inline int64_t winograd_input_tiles(const float* rows, int64_t row_stride, int64_t t0, int64_t t1, float* out,
                                    int64_t out_stride) {
  using V = typename L::V;
  int64_t t = t0;
  for (; t + L::kWidth <= t1; t += L::kWidth) {
    // e/o: columns 2t, 2t+1 of each row; e1/o1: columns 2t+2, 2t+3. Then Bᵀ d (rows) and (Bᵀ d) B (columns).
    V e[4], o[4], e1[4], o1[4];
    for (int r = 0; r < 4; ++r) {
      L::deinterleave(rows + r * row_stride + 2 * t, &e[r], &o[r]);
      L::deinterleave(rows + r * row_stride + 2 * t + 2, &e1[r], &o1[r]);
    }
    const V re[4] = {L::sub(e[0], e[2]), L::add(e[1], e[2]), L::sub(e[2], e[1]), L::sub(e[1], e[3])};
    const V ro[4] = {L::sub(o[0], o[2]), L::add(o[1], o[2]), L::sub(o[2], o[1]), L::sub(o[1], o[3])};
    const V re1[4] = {L::sub(e1[0], e1[2]), L::add(e1[1], e1[2]), L::sub(e1[2], e1[1]), L::sub(e1[1], e1[3])};
    const V ro1[4] = {L::sub(o1[0], o1[2]), L::add(o1[1], o1[2]), L::sub(o1[2], o1[1]), L::sub(o1[1], o1[3])};
    for (int i = 0; i < 4; ++i) {
      L::store(out + (4 * i + 0) * out_stride + t, L::sub(re[i], re1[i]));
      L::store(out + (4 * i + 1) * out_stride + t, L::add(ro[i], re1[i]));
      L::store(out + (4 * i + 2) * out_stride + t, L::sub(re1[i], ro[i]));
      L::store(out + (4 * i + 3) * out_stride + t, L::sub(ro[i], ro1[i]));
    }
  }
  return t;
}

template <typename... Ls>
inline void winograd_input_by_lanes(const float* rows, int64_t row_stride, int64_t tiles, float* out,
                                    int64_t out_stride) {
  int64_t t = 0;
  ((t = winograd_input_tiles<Ls>(rows, row_stride, t, tiles, out, out_stride)), ...);
  winograd_input_tiles<ScalarLanes>(rows, row_stride, t, tiles, out, out_stride);
}

// Whole groups of L::kWidth tiles of winograd_output from t0 while they fit before t1; returns the first tile left.
template <typename L>
inline int64_t winograd_output_tiles(const float* m, int64_t m_stride, int64_t t0, int64_t t1, float bias, float* out,
                                     int64_t out_stride) {
  using V = typename L::V;
  const V b = L::splat(bias);
  int64_t t = t0;
  for (; t + L::kWidth <= t1; t += L::kWidth) {
    V s[2][4];  // Aᵀ M: rows combined
    for (int j = 0; j < 4; ++j) {
      const V m0 = L::load(m + j * m_stride + t), m1 = L::load(m + (4 + j) * m_stride + t);
      const V m2 = L::load(m + (8 + j) * m_stride + t), m3 = L::load(m + (12 + j) * m_stride + t);
      s[0][j] = L::add(L::add(m0, m1), m2);
      s[1][j] = L::sub(L::sub(m1, m2), m3);
    }
    for (int r = 0; r < 2; ++r) {  // (Aᵀ M) A: columns combined, then the bias
      const V left = L::add(L::add(L::add(s[r][0], s[r][1]), s[r][2]), b);
      const V right = L::add(L::sub(L::sub(s[r][1], s[r][2]), s[r][3]), b);
      L::store_interleaved(out + r * out_stride + 2 * t, left, right);
    }
  }
  return t;
}

template <typename... Ls>
inline void winograd_output_by_lanes(const float* m, int64_t m_stride, int64_t tiles, float bias, float* out,
                                     int64_t out_stride) {
  int64_t t = 0;
  ((t = winograd_output_tiles<Ls>(m, m_stride, t, tiles, bias, out, out_stride)), ...);
  winograd_output_tiles<ScalarLanes>(m, m_stride, t, tiles, bias, out, out_stride);
}

}  // namespace
}  // namespace ddpm::kernels
