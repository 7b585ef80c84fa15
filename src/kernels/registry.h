// The kernel registry: every ISA-specific routine the ops call, as one table per instruction-set level.
//
// src/kernels/ref/ holds the scalar reference of every entry; avx2/, avx512/ and neon/ hold variants with the same
// signatures, each directory compiled with its own flags. Each level's table starts from the reference table and
// overrides what it implements (see <isa>/table.cpp), so a level may accelerate only what pays. The level is chosen
// once at start-up from CPUID + XCR0 (x86) or the architecture (ARM64), widest first; DDPM_ISA=scalar|avx2|avx512|
// neon (or `ddpm --isa`) forces one, for tests and benchmarks. tests/test_kernels.cpp compares every table's
// entries against the reference on shapes that hit every tail.
#pragma once

#include <cmath>
#include <cstdint>

#include "ddpm/status.h"

namespace ddpm::kernels {

enum class Isa { Scalar, Avx2, Avx512, Neon };

// Extra terms a micro-kernel adds to its tile after the last k block, in this order, each a separately rounded
// add: exactly what the driver's separate epilogue pass would compute, so fusing it changes no bit.
struct GemmEpilogue {
  const float* row_bias = nullptr;  // MR values, one per tile row
  const float* col_bias = nullptr;  // NR values, one per tile column
  const float* residual = nullptr;  // MR rows of NR, row stride residual_ld
  int64_t residual_ld = 0;
};

// One run of a packed B row (see GemmMicroKernel::gather_rows): lanes [0, length) at dst + dst_offset, of which
// [lead, length - trail) come from src + src_offset + (lane - lead) * step and the others are zero (padding).
struct GatherRun {
  int64_t dst_offset = 0;
  int64_t src_offset = 0;
  int32_t length = 0, lead = 0, trail = 0;
};

// Direct convolution over few input channels (src/ops/conv_direct.cpp picks it; the GEMM's packing dominates when
// K = Ci·kh·kw is small). Output element (c, r, j), for c < out_channels, r < rows, j < out_width:
//   acc = 0; for ci, u, v in increasing order: acc += w[c·K + (ci·kh + u)·kw + v] · x(ci, r·stride + u, v)
//   then acc += bias[c]; then acc += residual(c, r, j)
// with x(ci, row, v) = x[ci·x_channel_stride + row·x_row_stride + (v % stride)·x_phase_stride + j + v / stride]:
// the caller stages the zero-padded input with each row split into `stride` phases (phase p holds padded columns
// p, p + stride, …), so every tap reads consecutive floats. One chain per element, FMA at SIMD levels and mul+add
// in the reference, exactly as the GEMM micro-kernels and their epilogue compute it: the two paths agree bit for
// bit on one level. Each staged phase row must be readable (any values) up to lane
// round_up(out_width, kDirectConvLanes) + (kw − 1) / stride, so kernels may read whole vectors past out_width;
// they never write past it. K ≤ kDirectConvMaxK, so kernels can lay out their per-tap tables on the stack.
constexpr int64_t kDirectConvLanes = 16;
constexpr int64_t kDirectConvMaxK = 256;
struct DirectConv {
  const float* x = nullptr;
  int64_t x_channel_stride = 0, x_row_stride = 0, x_phase_stride = 0;
  // taps[k], k = (ci·kh + u)·kw + v: where tap k reads for output (0, 0), i.e. ci·x_channel_stride +
  // u·x_row_stride + (v % stride)·x_phase_stride + v / stride; tabulated by the caller, so the SIMD tap loops do no
  // index arithmetic (the reference recomputes it from the strides).
  const int64_t* taps = nullptr;
  const float* w = nullptr;        // [out_channels][K], f32
  const float* bias = nullptr;     // out_channels values, or null
  // Element (c, r, j) at residual[c·residual_channel_stride + r·residual_row_stride + j], or null.
  const float* residual = nullptr;
  int64_t residual_channel_stride = 0, residual_row_stride = 0;
  float* y = nullptr;               // element (c, r, j) at y[c·y_channel_stride + r·y_row_stride + j]
  int64_t y_channel_stride = 0, y_row_stride = 0;
  int64_t in_channels = 0, kernel_h = 0, kernel_w = 0, stride = 1;
  int64_t out_channels = 0, rows = 0, out_width = 0;
};

// GEMM micro-kernels of one level: C[MR×NR] (+)= A_panel · B_panel over kc steps.
//   run:      a_panel: kc × MR floats, k-major (a_panel[k*MR + m]).
//   run_rows: A read in place, a_rows[m][k] (unit stride along k; rows anywhere) — saves packing A. Optional.
//             When `epilogue` is non-null its terms are added before the store.
//   b_panel: kc × NR floats (b_panel[k*NR + n]). c: MR rows of NR floats with row stride ldc. accumulate=false
//   overwrites C, true adds to it. Every output element is one chain of FMAs (or of mul+add, for the reference)
//   in k order, so how the driver blocks K or splits the work never changes a bit.
// The driver (src/ops/gemm.cpp) packs panels, handles tails through a temporary tile and threads the work; a
// micro-kernel only ever sees full tiles.
//   gather_rows: the B packers' inner loop (im2col, strided and transposed matrices): for r < rows and every run,
//   fills the run's lanes of dst + r*dst_stride from src + r*src_stride, zero lanes included. Lanes outside the
//   runs are left alone. Step 1 and 2 (stride-2 convolutions) are the fast cases. A copy of bits: any 32-bit
//   pattern arrives unchanged (the quantised conv gathers 4-byte groups of int8 values through it).
struct GemmMicroKernel {
  int mr = 0;
  int nr = 0;
  void (*run)(int64_t kc, const float* a_panel, const float* b_panel, float* c, int64_t ldc, bool accumulate) = nullptr;
  void (*run_rows)(int64_t kc, const float* const* a_rows, const float* b_panel, float* c, int64_t ldc,
                   bool accumulate, const GemmEpilogue* epilogue) = nullptr;
  void (*gather_rows)(const GatherRun* runs, int64_t count, int64_t step, const float* src, int64_t src_stride,
                      float* dst, int64_t dst_stride, int64_t rows) = nullptr;
};

// Quantised GEMM (src/ops/qgemm.cpp): C[M×N] (+)= A·B where A holds block-quantised weight rows (q8_0, q4_0, q4_1,
// q5_0: 32 values per block, K padded to a multiple of 32 with zeros) and B is f32, quantised on the fly per column
// and per block of 32 k values, asymmetrically (a minimum and 255 levels above it, so that the mostly non-negative
// outputs of SiLU, the input of most U-Net convs, get twice the resolution a symmetric int8 grid gives them):
//   lo = min_i x_i, hi = max_i x_i      (as `x < lo ? x : lo` from lo = +inf, `x > hi ? x : hi` from hi = -inf:
//                                        NaN values are skipped, and the order of ±0 is fixed)
//   d = (hi - lo) / 254.0f; id = (d > 0) ? 1.0f / d : 0.0f;
//   u_i = fmin(fmax(nearbyint((x_i - lo) * id), 0), 254)   (NaN -> 0; nearbyint rounds to nearest even, as
//                                                           cvtps2dq / fcvtns do); q_i = u_i - 127 (int8, |q| <= 127)
//   s = d * (float)(Σ_i u_i)
// so x_i ≈ lo + d·u_i. Every kernel's quantize_b gives these q (or u, see b_biased), d, s and lo bit for bit
// (biased kernels: u + 1, lo − d and d·(Σ u + 32), see b_biased).
// Output element (m, n): acc = accumulate ? C[m][n] : 0; then per block b in increasing order
//   acc = acc + (float)(Σ_i wq[m][32b+i]·u[n][32b+i]) * (wd[b][m] * d[b][n]);   (the int32 sum is exact)
//   acc = acc + lo_coef[b][m] * lo[b][n];
//   acc = acc + wmin[b][m] * s[b][n];                      (types with minima, q4_1, only)
// where lo_coef = wd·(float)Σ_i wq (+ 32·wmin for q4_1) comes with the weights (QGemmPanelA); after the last k
// block the epilogue's three separately rounded adds (GemmEpilogue). Kernels that keep B signed form Σ wq·u as
// Σ wq·q + 127·Σ wq. SIMD kernels may fuse the mul+add pairs into FMAs, which is the only difference from the
// reference besides the roundings of b_biased kernels' (u + 1, lo − d) description. Since each element is the
// same chain of per-block adds, blocking K (in multiples of 32) or splitting M and N changes no bit.
struct QGemmPanelA {     // MR weight rows × kc values (kc a multiple of 32), filled by the driver from unpack_blocks
  const int8_t* q;       // [kc/4][MR][4]: values k..k+3 of row m at q + (k/4)*MR*4 + m*4
  const float* d;        // [kc/32][MR] block scales
  const float* min;      // [kc/32][MR] block minima (q4_1), nullptr for types without
  const int16_t* qsum;   // [kc/32][MR] Σ of the 32 q of each block (|Σ| <= 32·128: int16 keeps kept panels small)
  const float* lo_coef;  // [kc/32][MR] d·(float)qsum (+ 32·min for q4_1): what each activation minimum is multiplied by
  // Added to the agreed interface: every |q| <= 16 (q4_0, q4_1, q5_0). Then 2·127·16 bounds each int16 pair sum
  // of a u8×s8 multiply by 4064 and a whole block's eight of them fit int16 (32512): kernels may sum a block in
  // int16 and widen once per block instead of once per 4 k.
  bool small_q = false;
};

// lo_coef of one block, the weight side of the activations' minimum lo: Σ_k w_k·(lo + d·u_k) = wd·d·Σ wq·u +
// lo·(wd·Σ wq + 32·wmin) + wmin·d·Σ u. d·(float)qsum rounded, then (q4_1) the exact 32·min added with one more
// rounding: one fma, written so on every target (on x86-64 compiled for any CPU std::fma is a library call, and a
// plain add of the exact product rounds the same; a compiler free to contract must not fuse d·qsum into it instead).
inline float block_lo_coefficient(float d, int16_t qsum, float min, bool has_min) {
  const float lo_coef = d * static_cast<float>(qsum);
  if (!has_min) return lo_coef;
#if defined(__x86_64__) && !defined(__FMA__)
  return lo_coef + 32.0f * min;
#else
  return std::fma(32.0f, min, lo_coef);
#endif
}

struct QGemmMicroKernel {
  const char* name = nullptr;  // added to the agreed interface: tells variants of one level apart in tests/benches
  int mr = 0, nr = 0;
  // quantize_b stores activations as v = u + 1 = q + 128 (uint8, for u8×s8 instructions) on the grid x ≈ lo' +
  // d·v: with lo' = lo − d (one f32 subtraction) in place of lo and s' = d·(float)(Σ u + 32) in place of s. The
  // contract's arithmetic with (v, lo', s') for (u, lo, s) is the same sum (lo_coef = wd·Σ wq + 32·wmin takes
  // back exactly what the +1 adds), so the kernel needs no integer correction per block; it differs from the
  // reference by roundings only.
  bool b_biased = false;
  // kc×NR f32 panel (b_panel[k*NR + n], as PackB writes it) -> this kernel's B panel of qgemm_b_panel_bytes(kc, NR)
  // bytes: [kc/4][NR][4] int8 q (or biased uint8) values, then [kc/32][NR] f32 scales d, [kc/32][NR] f32 sums s
  // and [kc/32][NR] f32 minima lo.
  void (*quantize_b)(int64_t kc, const float* b_panel, uint8_t* q_panel) = nullptr;
  // C[MR×NR] (+)= A·B over kc as defined above; c has row stride ldc; epilogue non-null only on the last k block.
  void (*run)(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
              const GemmEpilogue* epilogue) = nullptr;
};
inline size_t qgemm_b_panel_bytes(int64_t kc, int nr) {
  return static_cast<size_t>(kc * nr + 3 * (kc / 32) * nr * static_cast<int64_t>(sizeof(float)));
}

// Each level's micro-kernel set, defined in <isa>/gemm.cpp.
GemmMicroKernel reference_gemm();
QGemmMicroKernel reference_qgemm();  // src/kernels/ref/qgemm.cpp
#if !defined(DDPM_NO_SIMD) && defined(__x86_64__)
GemmMicroKernel avx2_gemm();
GemmMicroKernel avx512_gemm();
QGemmMicroKernel avx2_qgemm();        // src/kernels/avx2/qgemm.cpp
QGemmMicroKernel avx512_qgemm();      // src/kernels/avx512/qgemm.cpp: AVX-512BW, for CPUs without VNNI
QGemmMicroKernel avx512vnni_qgemm();  // src/kernels/avx512vnni/: call only if cpu_features().avx512_vnni
QGemmMicroKernel avxvnni_qgemm();     // src/kernels/avxvnni/: 256-bit, call only if cpu_features().avx_vnni
// The same 256-bit kernel's source EVEX-encoded (src/kernels/avx512vnni/qgemm_ymm.cpp): tests and benchmarks only,
// call only if cpu_features().avx512_vnni.
QGemmMicroKernel avxvnni_evex_qgemm();
#endif
#if !defined(DDPM_NO_SIMD) && defined(__aarch64__)
GemmMicroKernel neon_gemm();
QGemmMicroKernel neon_qgemm();          // src/kernels/neon/qgemm.cpp: ARMv8.0 (vmull_s8), runs on every ARM64 CPU
QGemmMicroKernel neon_dotprod_qgemm();  // src/kernels/neon_dotprod/: sdot; call only if cpu_features().neon_dotprod
#endif

struct KernelTable {
  Isa isa = Isa::Scalar;
  const char* isa_name = "scalar";

  GemmMicroKernel gemm;
  QGemmMicroKernel qgemm;  // block-quantised weights (see QGemmMicroKernel)

  // Elementwise rows. In-place (y == x) is allowed for all of them.
  void (*silu)(int64_t n, const float* x, float* y) = nullptr;
  void (*add)(int64_t n, const float* a, const float* b, float* y) = nullptr;
  void (*mul)(int64_t n, const float* a, const float* b, float* y) = nullptr;
  void (*add_scalar)(int64_t n, const float* a, float b, float* y) = nullptr;
  void (*mul_scalar)(int64_t n, const float* a, float b, float* y) = nullptr;
  // y = x·scale + shift, optionally followed by SiLU (GroupNorm's per-channel apply step).
  void (*affine)(int64_t n, const float* x, float scale, float shift, float* y) = nullptr;
  void (*affine_silu)(int64_t n, const float* x, float scale, float shift, float* y) = nullptr;
  // y = x (no overlap) by non-temporal stores for the whole cache lines of y, where the level has them: the lines go
  // towards memory without being read first or kept in this core's cache, so storing to lines another core holds
  // does not wait for that core (ExecContext::stream_outputs says when that pays). Such stores are ordered only by
  // store_fence(), which every task that streamed calls before it ends. The reference: a plain copy, no fence needed.
  void (*stream_copy)(int64_t n, const float* x, float* y) = nullptr;
  void (*store_fence)() = nullptr;

  // Reductions. Statistics for GroupNorm are accumulated in double, as the reference requires.
  double (*sum_f64)(int64_t n, const float* x) = nullptr;
  double (*sum_squared_deviation_f64)(int64_t n, const float* x, double mean) = nullptr;
  float (*max)(int64_t n, const float* x) = nullptr;  // n >= 1
  // y = exp(x - shift); returns Σy (f32 accumulation, fixed order per level). y may be x.
  float (*exp_shifted_sum)(int64_t n, const float* x, float shift, float* y) = nullptr;

  // Weight conversion.
  void (*f16_to_f32)(int64_t n, const uint16_t* x, float* y) = nullptr;
  void (*f32_to_f16)(int64_t n, const float* x, uint16_t* y) = nullptr;
  // A kept weight panel's block scales as QGemmPanelA wants them (src/ops/qgemm.cpp keeps them as f16 bits and sums,
  // a sixth less memory, and widens one k block per use): d = f16(d16); with min16 (q4_1) min = f16(min16), else
  // min is not written; lo_coef = block_lo_coefficient(d, qsum, min). Bit for bit the reference's on every level.
  void (*widen_block_scales)(int64_t n, const uint16_t* d16, const uint16_t* min16, const int16_t* qsum, float* d,
                             float* min, float* lo_coef) = nullptr;

  // Direct convolution (see DirectConv).
  void (*conv_direct)(const DirectConv& conv) = nullptr;

  // Transposing copy of a rows × cols block: dst[c·dst_stride + r] = src[r·src_stride + c] (channels-last copies
  // of activations, weight reorders). Copies only, so every level gives the reference's bits.
  void (*transpose)(int64_t rows, int64_t cols, const float* src, int64_t src_stride, float* dst,
                    int64_t dst_stride) = nullptr;

  // Winograd F(2×2, 3×3) transforms of one row of `tiles` tiles (src/ops/conv_winograd.cpp; shared loops in
  // winograd_tiles.h, so every level gives the reference's bits).
  //   winograd_input: four input rows at rows + r·row_stride, zero-padded by the caller, each 2·tiles + 2 floats
  //   (tile t covers columns 2t .. 2t+3); writes position f = 4i + j of (Bᵀ d B) for tile t to
  //   out[f·out_stride + t].
  //   winograd_output: position f of tile t at m[f·m_stride + t]; writes (Aᵀ M A) + bias, the tile's two output
  //   rows, to out[r·out_stride + 2t + c] (r, c in {0, 1}): 2·tiles floats per row.
  void (*winograd_input)(const float* rows, int64_t row_stride, int64_t tiles, float* out,
                         int64_t out_stride) = nullptr;
  void (*winograd_output)(const float* m, int64_t m_stride, int64_t tiles, float bias, float* out,
                          int64_t out_stride) = nullptr;
};

const char* isa_name(Isa isa);
bool isa_from_name(const char* name, Isa* out);

// The table in use. Defaults to the best level this CPU supports.
const KernelTable& active();
// The table for `isa`, or nullptr when it is not compiled in or this CPU cannot run it.
const KernelTable* table_for(Isa isa);
const KernelTable& reference();
// Every level this binary can run on this CPU, reference first.
int available_tables(const KernelTable** out, int capacity);

// Every quantised-GEMM kernel this binary can run on this CPU, reference first (a level may hold one of several,
// e.g. AVX-512 with or without VNNI): tests compare each against the reference.
int available_qgemm_kernels(QGemmMicroKernel* out, int capacity);

// Chooses the level by name ("scalar", "avx2", "avx512", "neon", or "auto"); error if unknown or unsupported.
Status select(const char* name);
// Applies DDPM_ISA when set, and DDPM_QGEMM (the name of a kernel available_qgemm_kernels lists: every level then
// runs that quantised micro-kernel instead of its own; for benchmarks, e.g. DDPM_QGEMM=avxvnni-evex).
Status init_from_environment();

// Per-level tables, defined in each ISA directory (only those compiled for this architecture exist).
KernelTable make_reference_table();
#if !defined(DDPM_NO_SIMD) && defined(__x86_64__)
KernelTable make_avx2_table();
KernelTable make_avx512_table();
#endif
#if !defined(DDPM_NO_SIMD) && defined(__aarch64__)
KernelTable make_neon_table();
#endif

// CPU features (x86: CPUID + XCR0, so an OS that does not save AVX-512 state disables it).
struct CpuFeatures {
  bool avx2_fma_f16c = false;
  bool avx512 = false;       // F + BW + VL + DQ
  bool avx512_vnni = false;
  bool avx_vnni = false;     // AVX-VNNI: VEX-encoded 256-bit vpdpbusd with AVX2 (Intel since Alder Lake; no AVX-512)
  bool neon = false;
  bool neon_dotprod = false;
};
const CpuFeatures& cpu_features();

}  // namespace ddpm::kernels
