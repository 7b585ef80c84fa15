// conv2d as an implicit GEMM: C[Co × Ho·Wo] = W[Co × Ci·kh·kw] · im2col(x)[Ci·kh·kw × Ho·Wo] per image.
// im2col is never materialised: the GEMM driver asks for one KC × NC block at a time and pack_im2col builds it
// straight into the packed panel layout.
//
// Row k = (channel, tap) of the block gathers the same input positions for every channel of a tap, only from another
// input plane. So the packer describes the columns once per tap as runs (contiguous lanes of one output row within
// one panel, with their padding lanes) and hands every channel of that tap to the micro-kernel set's gather_rows,
// which copies each run with vector loads and stores. The walk over the columns is shared by the taps.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "ddpm/ops.h"
#include "ops/conv_direct.h"
#include "ops/conv_winograd.h"
#include "ops/gemm.h"
#include "ops/qgemm.h"
#include "quant/blocks.h"

namespace ddpm {
namespace {

// iparams layout of a Conv2d node.
enum ConvParam { kStride = 0, kPadTop, kPadLeft, kPadBottom, kPadRight };

using GatherRows = decltype(kernels::GemmMicroKernel::gather_rows);

struct Im2col {
  const float* x;  // [B, Ci, H, W]
  int64_t channels, height, width, kernel_h, kernel_w, out_width;
  int64_t stride, pad_top, pad_left;
  GatherRows gather_rows;
  // Batch items side by side: column n is output pixel n % (out_height·out_width) of image n / (out_height·out_width),
  // and the packer's batch argument is 0 (compute_conv2d_merged).
  int64_t out_height = 0;
  bool merged = false;
  // Row order of the weights: k = tap·Ci + ci (kFlagTapMajor) instead of ci·taps + tap.
  bool tap_major = false;
};

// Columns are walked in pieces that stay within one output row and one panel; the pieces are the same for every
// tap, so they are found once per group of kMaxPieces and turned into each tap's runs from there.
struct Piece {
  int64_t dst_offset, oy, ox, length, image_offset;
};
constexpr int kMaxPieces = 64;

// Lanes i of a run starting at input column ix0 that land inside the row: [lead, valid_end) of [0, length).
// Division-free for strides 1 and 2, which is every convolution of a U-Net: this runs once per run and tap.
inline void valid_lanes(int64_t ix0, int64_t stride, int64_t width, int64_t length, int64_t* lead, int64_t* valid_end) {
  int64_t before, inside;  // lanes left of column 0; lanes left of column `width`
  if (stride == 1) {
    before = -ix0;
    inside = width - ix0;
  } else if (stride == 2) {
    before = (1 - ix0) >> 1;
    inside = (width - ix0 + 1) >> 1;
  } else {
    before = ix0 >= 0 ? 0 : (-ix0 + stride - 1) / stride;
    inside = ix0 >= width ? 0 : (width - ix0 + stride - 1) / stride;
  }
  *lead = std::clamp<int64_t>(before, 0, length);
  *valid_end = std::clamp<int64_t>(inside, 0, length);
}

// Appends the run of `length` lanes at dst_offset for input row iy from input column ix0, merging it into the
// previous run when both continue each other in the packed row and in the input (1×1 and middle taps).
inline void add_run(const Im2col& g, int64_t iy, int64_t ix0, int64_t length, int64_t dst_offset,
                    int64_t image_offset, kernels::GatherRun* runs, int* count) {
  kernels::GatherRun run;
  run.dst_offset = dst_offset;
  run.length = static_cast<int32_t>(length);
  int64_t lead = length, valid_end = length;
  if (iy >= 0 && iy < g.height) valid_lanes(ix0, g.stride, g.width, length, &lead, &valid_end);
  if (valid_end <= lead) {
    run.lead = run.length;  // all padding
  } else {
    run.lead = static_cast<int32_t>(lead);
    run.trail = static_cast<int32_t>(length - valid_end);
    run.src_offset = image_offset + iy * g.width + ix0 + lead * g.stride;
  }
  if (*count > 0) {
    kernels::GatherRun& prev = runs[*count - 1];
    const bool adjacent = prev.dst_offset + prev.length == run.dst_offset;
    const bool both_zero = prev.lead == prev.length && run.lead == run.length;
    const bool both_full = prev.lead == 0 && prev.trail == 0 && run.lead == 0 && run.trail == 0 &&
                           prev.src_offset + prev.length * g.stride == run.src_offset;
    if (adjacent && (both_zero || both_full)) {
      prev.length += run.length;
      if (both_zero) prev.lead = prev.length;
      return;
    }
  }
  runs[(*count)++] = run;
}

// Walks columns [n0, n0 + nc) of the packed panels (consecutive, panel_stride elements apart) in pieces that stay
// within one output row and one panel, and hands them to emit(pieces, count) in groups of at most kMaxPieces.
template <class Emit>
void walk_columns(const Im2col& g, int64_t n0, int64_t nc, int nr, int64_t panel_stride, Emit emit) {
  const int64_t plane = g.height * g.width;
  Piece pieces[kMaxPieces];
  int64_t first = n0, image_offset = 0;  // merged: runs reach other images through their source offsets
  if (g.merged) {
    const int64_t out_plane = g.out_height * g.out_width;
    image_offset = (n0 / out_plane) * g.channels * plane;
    first = n0 % out_plane;
  }
  int64_t column = 0, lane = 0, panel_offset = 0, oy = first / g.out_width, ox = first % g.out_width;
  while (column < nc) {
    int count = 0;
    while (count < kMaxPieces && column < nc) {
      const int64_t length = std::min({g.out_width - ox, nr - lane, nc - column});
      pieces[count++] = {panel_offset + lane, oy, ox, length, image_offset};
      column += length;
      lane += length;
      ox += length;
      if (lane == nr) {
        lane = 0;
        panel_offset += panel_stride;
      }
      if (ox == g.out_width) {
        ox = 0;
        ++oy;
        if (g.merged && oy == g.out_height) {
          oy = 0;
          image_offset += g.channels * plane;
        }
      }
    }
    emit(pieces, count);
  }
}

// The runs of one tap (kernel row tap / kw, column tap % kw) for a group of pieces.
int tap_runs(const Im2col& g, int64_t tap, const Piece* pieces, int count, kernels::GatherRun* runs) {
  const int64_t row_offset = tap / g.kernel_w - g.pad_top, column_offset = tap % g.kernel_w - g.pad_left;
  int run_count = 0;
  for (int i = 0; i < count; ++i) {
    const Piece& piece = pieces[i];
    add_run(g, piece.oy * g.stride + row_offset, piece.ox * g.stride + column_offset, piece.length, piece.dst_offset,
            piece.image_offset, runs, &run_count);
  }
  return run_count;
}

// Zeroes lanes [nc % nr, nr) of the last panel's `rows` rows (nr apart), when the columns end inside a panel.
void zero_tail_lanes(const Im2col& g, int64_t nc, int nr, int64_t panel_stride, int64_t rows, float* dst) {
  if (const int64_t tail = nc % nr) {
    kernels::GatherRun pad;
    pad.dst_offset = (nc / nr) * panel_stride + tail;
    pad.length = pad.lead = static_cast<int32_t>(nr - tail);
    g.gather_rows(&pad, 1, 1, g.x, 0, dst, nr, rows);
  }
}

void pack_im2col(const void* context, int64_t batch, int64_t k0, int64_t kc, int64_t n0, int64_t nc, int nr,
                 float* dst) {
  // A copy: the original sits on the calling thread's stack, in lines that thread keeps writing.
  const Im2col g = *static_cast<const Im2col*>(context);
  const int64_t plane = g.height * g.width;
  const float* image = g.x + batch * g.channels * plane;
  const int64_t taps = g.kernel_h * g.kernel_w;
  kernels::GatherRun runs[kMaxPieces];
  walk_columns(g, n0, nc, nr, kc * nr, [&](const Piece* pieces, int count) {
    for (int64_t tap = 0; tap < taps; ++tap) {
      if (g.tap_major) {
        // Rows k = tap·Ci + ci: this tap's channels are consecutive rows.
        const int64_t k_first = std::max(k0, tap * g.channels), k_end = std::min(k0 + kc, (tap + 1) * g.channels);
        if (k_first >= k_end) continue;
        const int run_count = tap_runs(g, tap, pieces, count, runs);
        g.gather_rows(runs, run_count, g.stride, image + (k_first - tap * g.channels) * plane, plane,
                      dst + (k_first - k0) * nr, nr, k_end - k_first);
        continue;
      }
      // Rows k = ci·taps + tap: this tap's channels are every taps-th row.
      const int64_t k_first = k0 + ((tap - k0 % taps) % taps + taps) % taps;
      if (k_first >= k0 + kc) continue;
      const int64_t rows = (k0 + kc - 1 - k_first) / taps + 1;
      const int run_count = tap_runs(g, tap, pieces, count, runs);
      g.gather_rows(runs, run_count, g.stride, image + (k_first / taps) * plane, plane, dst + (k_first - k0) * nr,
                    taps * nr, rows);
    }
  });
  zero_tail_lanes(g, nc, nr, kc * nr, kc, dst);
}

// Tap-major block weights (kFlagTapMajor): every 32-value block of a weight row is one tap's weights for 32 input
// channels, so what it multiplies is the same 32 channels of one input pixel for every tap and output pixel that
// reads that pixel. The input is therefore quantised once per op, each (pixel, group of 32 channels) as one column
// of the kernel's B quantiser, and the GEMM's B panels are gathered from those bytes: the same values, scales and
// sums as quantising im2col's panels (kc × nr) directly, which would quantise each pixel once per tap.
struct QuantizedInput {
  Im2col geometry;  // gather_rows, sizes, stride and padding; x unused (the pre-quantised planes replace it)
  int64_t groups = 0, plane = 0;  // 32-channel groups; input pixels per image
  uint8_t* base = nullptr;        // image after image, item_bytes apart
  size_t item_bytes = 0;
  // Quads j = 0..7 of group cb (channels 32cb + 4j .. 32cb + 4j + 3, one byte each, as quantize_b stores a column)
  // of pixel p at words(b)[(8cb + j)·plane + p]: one plane per quad, so a run of pixels is a run of 4-byte words.
  float* words(int64_t b) const { return reinterpret_cast<float*>(base + static_cast<size_t>(b) * item_bytes); }
  // Scale d, sum s and minimum lo (f = 0, 1, 2) of group cb at pixel p: scales(b)[(f·groups + cb)·plane + p].
  float* scales(int64_t b) const { return words(b) + aligned_floats(groups * 8 * plane); }
  static int64_t aligned_floats(int64_t n) { return (n + 15) / 16 * 16; }
  static size_t bytes_per_item(int64_t channels, int64_t plane) {
    const int64_t groups = channels / quant::kQuantBlock;
    return static_cast<size_t>(aligned_floats(groups * 8 * plane) + aligned_floats(3 * groups * plane)) *
           sizeof(float);
  }
};

// The gathered panels: for each 32-value block of [k0, k0 + kc) (tap t = block / groups, group block % groups),
// its 8 quad rows from the tap's input pixels, and its d, s and lo rows; padding lanes get zero words and zero
// scales (an all-zero block adds nothing whatever its bytes).
void pack_quantized_im2col(const void* context, const kernels::QGemmMicroKernel& kernel, int64_t batch, int64_t k0,
                           int64_t kc, int64_t n0, int64_t nc, uint8_t* panels) {
  const QuantizedInput q = *static_cast<const QuantizedInput*>(context);
  const Im2col& g = q.geometry;
  const int nr = kernel.nr;
  const int64_t blocks = kc / quant::kQuantBlock, first_block = k0 / quant::kQuantBlock;
  const int64_t panel_floats = static_cast<int64_t>(kernels::qgemm_b_panel_bytes(kc, nr) / sizeof(float));
  const int64_t scale_rows_at = kc / 4 * nr;  // the d rows follow the kc/4 quad rows
  float* dst = reinterpret_cast<float*>(panels);
  const float* words = q.words(batch);
  const float* scales = q.scales(batch);
  kernels::GatherRun runs[kMaxPieces];
  walk_columns(g, n0, nc, nr, panel_floats, [&](const Piece* pieces, int count) {
    int64_t runs_tap = -1;
    int run_count = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t tap = (first_block + b) / q.groups, group = (first_block + b) % q.groups;
      if (tap != runs_tap) {
        run_count = tap_runs(g, tap, pieces, count, runs);
        runs_tap = tap;
      }
      g.gather_rows(runs, run_count, g.stride, words + group * 8 * q.plane, q.plane, dst + b * 8 * nr, nr, 8);
      g.gather_rows(runs, run_count, g.stride, scales + group * q.plane, q.groups * q.plane,
                    dst + scale_rows_at + b * nr, blocks * nr, 3);
    }
  });
  zero_tail_lanes(g, nc, nr, panel_floats, kc / 4 + 3 * blocks, dst);
}

Im2col make_im2col(const Tensor& node, const ExecContext& ctx) {
  const Tensor& x = *node.src[0];
  const Tensor& w = *node.src[1];
  Im2col im2col{x.f32(), x.shape[1], x.shape[2], x.shape[3], w.shape[2], w.shape[3], node.shape[3],
                node.iparams[kStride], node.iparams[kPadTop], node.iparams[kPadLeft], ctx.kernels.gemm.gather_rows};
  if (!im2col.gather_rows) im2col.gather_rows = kernels::reference().gemm.gather_rows;  // a level without one
  im2col.tap_major = (w.flags & kFlagTapMajor) != 0;
  return im2col;
}

// What GemmProblem and QGemmProblem share: C[Co × Ho·Wo] = W · im2col(x) per image, + bias per row, + residual.
template <class Problem>
void set_conv_problem(const Tensor& node, const Im2col* im2col, Problem* p) {
  const Tensor& x = *node.src[0];
  const Tensor& w = *node.src[1];
  const Tensor* bias = node.src[2];
  const Tensor* residual = node.src[3];
  p->batch = x.shape[0];
  p->M = w.shape[0];
  p->N = node.shape[2] * node.shape[3];
  p->K = w.shape[1] * w.shape[2] * w.shape[3];
  p->a = w.data;
  p->a_dtype = w.dtype;
  if constexpr (std::is_same_v<Problem, QGemmProblem>) set_weight_flags(w, p);
  p->pack_b = pack_im2col;
  p->pack_b_context = im2col;
  p->c = node.f32();
  p->ldc = p->N;
  p->c_batch_stride = p->M * p->N;
  if (bias) {
    p->bias_row = bias->data;
    p->bias_dtype = bias->dtype;
  }
  if (residual) {
    p->residual = residual->f32();
    p->residual_ld = p->N;
    p->residual_batch_stride = p->M * p->N;
  }
}

}  // namespace

Tensor* conv2d(Graph& g, Tensor* x, Tensor* weight, Tensor* bias, const Conv2dParams& p, Tensor* residual) {
  if (!x || !weight) return nullptr;
  if (x->rank != 4 || weight->rank != 4 || x->dtype != DType::F32) {
    return g.fail(errorf("conv2d: expected x [B,Ci,H,W] f32 and weight [Co,Ci,kh,kw], got x %s and weight %s",
                         x->shape_string().c_str(), weight->shape_string().c_str()));
  }
  if (weight->dtype != DType::F32 && weight->dtype != DType::F16 && !quant::is_block_type(weight->dtype)) {
    return g.fail(errorf("conv2d: weight type %s is not supported", dtype_name(weight->dtype)));
  }
  if (quant::is_block_type(weight->dtype) && !weight->is_contiguous()) {
    // Block weights are read as whole rows of Ci·kh·kw values; a strided view has no such rows.
    return g.fail(errorf("conv2d: a %s weight must be contiguous, got a strided view %s", dtype_name(weight->dtype),
                         weight->shape_string().c_str()));
  }
  if ((weight->flags & kFlagTapMajor) && !quant::tap_major_eligible(weight->dtype, weight->rank, weight->shape)) {
    return g.fail(errorf("conv2d: weight '%s' %s %s is flagged tap-major, which only block types with a multiple of "
                         "32 input channels and more than one tap can be", weight->name.c_str(),
                         dtype_name(weight->dtype), weight->shape_string().c_str()));
  }
  if (x->shape[1] != weight->shape[1]) {
    return g.fail(errorf("conv2d: input has %lld channels but weight %s expects %lld", (long long)x->shape[1],
                         weight->shape_string().c_str(), (long long)weight->shape[1]));
  }
  if (p.stride < 1 || p.pad_top < 0 || p.pad_left < 0 || p.pad_bottom < 0 || p.pad_right < 0) {
    return g.fail(errorf("conv2d: invalid stride %d or padding", p.stride));
  }
  const int64_t co = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
  const int64_t padded_h = x->shape[2] + p.pad_top + p.pad_bottom, padded_w = x->shape[3] + p.pad_left + p.pad_right;
  if (padded_h < kh || padded_w < kw) {
    return g.fail(errorf("conv2d: kernel %lldx%lld larger than padded input %s", (long long)kh, (long long)kw,
                         x->shape_string().c_str()));
  }
  const int64_t out_shape[4] = {x->shape[0], co, (padded_h - kh) / p.stride + 1, (padded_w - kw) / p.stride + 1};
  if (bias && (bias->rank != 1 || bias->shape[0] != co || (bias->dtype != DType::F32 && bias->dtype != DType::F16))) {
    return g.fail(errorf("conv2d: bias %s %s does not match %lld output channels (f32 or f16)",
                         dtype_name(bias->dtype), bias->shape_string().c_str(), (long long)co));
  }
  if (residual) {
    bool same = residual->rank == 4 && residual->dtype == DType::F32;
    for (int i = 0; same && i < 4; ++i) same = residual->shape[i] == out_shape[i];
    if (!same) {
      return g.fail(errorf("conv2d: residual %s does not match output [%lld, %lld, %lld, %lld]",
                           residual->shape_string().c_str(), (long long)out_shape[0], (long long)out_shape[1],
                           (long long)out_shape[2], (long long)out_shape[3]));
    }
  }
  x = contiguous(g, x);
  if (residual) residual = contiguous(g, residual);
  if (!weight->is_contiguous()) weight = contiguous(g, weight);
  Tensor* y = g.new_node(OpKind::Conv2d, DType::F32, 4, out_shape, {x, weight, bias, residual});
  y->iparams[kStride] = p.stride;
  y->iparams[kPadTop] = p.pad_top;
  y->iparams[kPadLeft] = p.pad_left;
  y->iparams[kPadBottom] = p.pad_bottom;
  y->iparams[kPadRight] = p.pad_right;
  return y;
}

static size_t scratch_conv2d_quantized(const Tensor& node) {
  return quant::is_block_type(node.src[1]->dtype) ? qgemm_scratch_bytes_max() : 0;
}

// Merging the batch into the GEMM's columns (compute_conv2d_merged) pays for small planes, where one image's
// columns leave much of the last column panel empty (7×7 = 49 columns in two 32-wide panels: 23 % wasted).
constexpr int64_t kMergeMaxPlane = 256;
constexpr double kMergeMinWaste = 1.0 / 16.0;

bool merges_batch(const Tensor& node, int nr) {
  const int64_t batch = node.shape[0], plane = node.shape[2] * node.shape[3];
  if (batch < 2 || plane > kMergeMaxPlane || nr <= 0) return false;
  const int64_t padded = (plane + nr - 1) / nr * nr;
  return static_cast<double>(padded - plane) >= kMergeMinWaste * static_cast<double>(padded);
}

size_t merged_output_bytes(const Tensor& node) {
  return static_cast<size_t>(node.numel()) * sizeof(float);
}

// Bytes of ExecContext::shared the pre-quantised input of a tap-major conv takes (QuantizedInput), or 0.
static size_t quantized_input_bytes(const Tensor& node) {
  const Tensor& x = *node.src[0];
  if (!(node.src[1]->flags & kFlagTapMajor)) return 0;
  return static_cast<size_t>(x.shape[0]) * QuantizedInput::bytes_per_item(x.shape[1], x.shape[2] * x.shape[3]);
}

size_t shared_conv2d(const Tensor& node) {
  const Tensor& w = *node.src[1];
  if (quant::is_block_type(w.dtype)) {
    // The Winograd path's V and M, or (without kept filters) the direct path's.
    const size_t direct =
        quantized_input_bytes(node) + qgemm_shared_bytes_max(w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]);
    return std::max(conv2d_winograd_shared_bytes(node), direct);
  }
  // f32/f16 weights: the Winograd path's transforms, or room for the merged GEMM's output when some compiled level
  // would merge.
  if (const size_t winograd = conv2d_winograd_shared_bytes(node)) return winograd;
  const kernels::KernelTable* tables[8];
  const int count = kernels::available_tables(tables, 8);
  for (int i = 0; i < count; ++i) {
    if (merges_batch(node, tables[i]->gemm.nr)) return merged_output_bytes(node);
  }
  return 0;
}

size_t scratch_conv2d(const Tensor& node) {
  return std::max({gemm_scratch_bytes_max(), conv2d_direct_scratch_bytes(node), scratch_conv2d_quantized(node),
                   conv2d_winograd_scratch_bytes(node)});
}

// memcpy with the common whole-panel sizes (nr = 16 or 8 lanes) as constants, so they compile to a few moves
// instead of a call: the copies of quantize_input move 64 bytes at a time.
inline void copy_lanes(void* dst, const void* src, size_t bytes) {
  switch (bytes) {
    case 64: std::memcpy(dst, src, 64); break;
    case 32: std::memcpy(dst, src, 32); break;
    default: std::memcpy(dst, src, bytes);
  }
}

// Quantises every image's (pixel, 32-channel group) once into q (see QuantizedInput), tasks over images, groups
// and runs of pixels; each thread stages kernel.nr pixels of 32 channels as a B panel for kernel.quantize_b.
static void quantize_input(const Tensor& node, const QuantizedInput& q, ExecContext& ctx) {
  const kernels::QGemmMicroKernel& kernel = ctx.kernels.qgemm;
  const int nr = kernel.nr;
  const float* x = node.src[0]->f32();
  const int64_t batch = node.src[0]->shape[0], channels = q.groups * quant::kQuantBlock;
  constexpr int64_t kTaskPixels = 1024;
  // About 0.7 ns per value (perf, AVX-512): below this many, waking the other threads costs more than it saves.
  constexpr int64_t kMinParallelValues = 16384;
  const int64_t pixel_chunks = ceil_div(q.plane, kTaskPixels), tasks = batch * q.groups * pixel_chunks;
  auto quantize = [&](int64_t task, int thread) {
    const int64_t image = task / (q.groups * pixel_chunks), group = task / pixel_chunks % q.groups;
    const int64_t p_begin = task % pixel_chunks * kTaskPixels, p_end = std::min(q.plane, p_begin + kTaskPixels);
    float* stage = reinterpret_cast<float*>(ctx.scratch[thread]);  // [32][nr]
    uint8_t* panel = ctx.scratch[thread] + quant::kQuantBlock * nr * sizeof(float);
    const float* scale_panel = reinterpret_cast<const float*>(panel + quant::kQuantBlock * nr);  // d, s, lo
    const float* src = x + (image * channels + group * quant::kQuantBlock) * q.plane;
    float* words = q.words(image) + group * 8 * q.plane;
    float* scales = q.scales(image) + group * q.plane;
    for (int64_t p0 = p_begin; p0 < p_end; p0 += nr) {
      const int64_t n = std::min<int64_t>(nr, p_end - p0);
      for (int64_t i = 0; i < quant::kQuantBlock; ++i) {
        copy_lanes(stage + i * nr, src + i * q.plane + p0, static_cast<size_t>(n) * sizeof(float));
        std::fill(stage + i * nr + n, stage + (i + 1) * nr, 0.0f);
      }
      kernel.quantize_b(quant::kQuantBlock, stage, panel);
      for (int64_t j = 0; j < 8; ++j)
        copy_lanes(words + j * q.plane + p0, panel + j * nr * 4, static_cast<size_t>(n) * 4);
      for (int64_t f = 0; f < 3; ++f) {
        copy_lanes(scales + f * q.groups * q.plane + p0, scale_panel + f * nr,
                   static_cast<size_t>(n) * sizeof(float));
      }
    }
  };
  if (tasks == 1 || ctx.pool.size() == 1 || batch * channels * q.plane <= kMinParallelValues) {
    for (int64_t task = 0; task < tasks; ++task) quantize(task, 0);
  } else {
    ctx.pool.run(tasks, quantize);
  }
}

// conv2d with a block-quantised weight: the im2col packer feeds the quantised GEMM, or, for tap-major weights with
// room in the shared buffer, the input is quantised once and the GEMM gathers its panels from it.
static Status compute_conv2d_quantized(const Tensor& node, ExecContext& ctx) {
  const Im2col im2col = make_im2col(node, ctx);
  QGemmProblem p;
  set_conv_problem(node, &im2col, &p);
  const size_t input_bytes = quantized_input_bytes(node);
  if (input_bytes == 0 || !ctx.shared || ctx.shared_bytes < input_bytes) {
    run_qgemm(p, ctx);
    return Status();
  }
  const Tensor& x = *node.src[0];
  QuantizedInput q;
  q.geometry = im2col;
  q.groups = x.shape[1] / quant::kQuantBlock;
  q.plane = x.shape[2] * x.shape[3];
  q.base = ctx.shared;
  q.item_bytes = QuantizedInput::bytes_per_item(x.shape[1], q.plane);
  quantize_input(node, q, ctx);
  p.pack_b = nullptr;
  p.pack_quantized_b = pack_quantized_im2col;
  p.pack_b_context = &q;
  ExecContext rest = ctx;  // the GEMM gets the shared buffer past the quantised input
  rest.shared = ctx.shared + input_bytes;
  rest.shared_bytes = ctx.shared_bytes - input_bytes;
  if (rest.shared_bytes == 0) rest.shared = nullptr;
  run_qgemm(p, rest);
  return Status();
}

// The whole batch as one GEMM, C[Co × B·Ho·Wo] = W · [im2col(x_0) … im2col(x_B-1)], into the shared buffer, then
// moved to y [B, Co, Ho, Wo] with the residual added. Every element is the same chain of FMAs and the same bias add
// as per image, then the same residual add: the result is bit-identical to the per-image GEMM.
static void compute_conv2d_merged(const Tensor& node, ExecContext& ctx) {
  Im2col im2col = make_im2col(node, ctx);
  im2col.merged = true;
  im2col.out_height = node.shape[2];
  GemmProblem p;
  set_conv_problem(node, &im2col, &p);
  const int64_t batch = p.batch, plane = p.N;
  float* merged = reinterpret_cast<float*>(ctx.shared);  // [Co, B·plane]
  p.batch = 1;
  p.N = batch * plane;
  p.c = merged;
  p.ldc = p.N;
  p.c_batch_stride = 0;
  p.residual = nullptr;
  p.a_row_stride = p.K;
  p.a_col_stride = 1;
  run_gemm(p, ctx);
  const Tensor* residual = node.src[3];
  float* y = node.f32();
  const int64_t channels = p.M;
  // One task per image and group of channels, a few hundred kB each.
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(channels, 16384 / plane));
  const int64_t groups = (channels + group - 1) / group;
  auto move = [&](int64_t task, int) {
    const int64_t b = task / groups, c0 = (task % groups) * group, c1 = std::min(channels, c0 + group);
    for (int64_t c = c0; c < c1; ++c) {
      const float* src = merged + c * p.N + b * plane;
      float* dst = y + (b * channels + c) * plane;
      if (residual) {
        const float* r = residual->f32() + (b * channels + c) * plane;
        for (int64_t i = 0; i < plane; ++i) dst[i] = src[i] + r[i];
      } else {
        std::memcpy(dst, src, static_cast<size_t>(plane) * sizeof(float));
      }
    }
  };
  ctx.pool.run(batch * groups, move);
}

Status compute_conv2d(const Tensor& node, ExecContext& ctx) {
  if (quant::is_block_type(node.src[1]->dtype)) {
    if (run_conv2d_winograd(node, ctx)) return Status();  // wide 3×3 stride-1 layers of a frozen model
    return compute_conv2d_quantized(node, ctx);
  }
  if (run_conv2d_direct(node, ctx)) return Status();  // few input channels (see conv_direct.cpp)
  if (run_conv2d_winograd(node, ctx)) return Status();  // wide 3×3 stride-1 layers (see conv_winograd.cpp)
  if (merges_batch(node, ctx.kernels.gemm.nr) && ctx.shared && ctx.shared_bytes >= merged_output_bytes(node)) {
    compute_conv2d_merged(node, ctx);
    return Status();
  }
  const Im2col im2col = make_im2col(node, ctx);
  GemmProblem p;
  set_conv_problem(node, &im2col, &p);
  p.a_row_stride = p.K;
  p.a_col_stride = 1;
  run_gemm(p, ctx);
  return Status();
}

}  // namespace ddpm
