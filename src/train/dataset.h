// Training data: images (IDX files as MNIST/Fashion-MNIST ship them, or folders of PNGs with one sub-folder per
// class) brought to the model's size and channel count, or any float samples (the 1-D toy mixture).
//
// Images are kept as 8-bit CHW samples (a quarter of the memory of floats) and turned into the model's range
// [−1, 1] = 2·(p/255) − 1 (diffusers' ToTensor + Normalize(0.5, 0.5)) when a batch is assembled.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

struct Dataset {
  int64_t count = 0;
  int64_t channels = 1, height = 1, width = 1;
  std::vector<uint8_t> pixels;  // count × [C, H, W] 8-bit samples, or empty when `values` holds the data
  std::vector<float> values;    // count × [C, H, W] samples already in model range (non-image data)
  std::vector<int32_t> labels;  // one per sample, in [0, class_names.size()), or empty (unlabelled)
  std::vector<std::string> class_names;
  std::string source;  // where the data came from (messages, provenance)
  // What loading changed to bring the images to [channels, height, width], for messages: "images converted from 1 to
  // 3 channels and resized from 28x28 to 16x16", "2 of 5 images resized to 8x8"; empty when nothing was.
  std::string adapted;

  int64_t sample_numel() const { return channels * height * width; }
  bool labelled() const { return !labels.empty(); }
  // Sample i in model range, mirrored left-right when `flip`: sample_numel() floats.
  void sample(int64_t i, bool flip, float* out) const;
  // CRC-32C of the shape, the samples and the labels: a resumed run checks it is fed the same data.
  uint32_t fingerprint() const;
};

// How images are brought to the model's geometry. The image is scaled (same factor on both axes) until it covers
// the target, then centre-cropped: Area averages the source pixels each target pixel covers (for shrinking),
// Bilinear interpolates (for enlarging), Auto picks by the scale, Off only crops (every image must then have the
// same size, at least the target's).
enum class ResizeMode { Auto, Area, Bilinear, Off };
const char* to_string(ResizeMode mode);
Status parse_resize_mode(const std::string& text, ResizeMode* out);

struct ImageFit {
  int channels = 1;  // gray (1), gray+alpha (2), RGB (3), RGBA (4); other counts are converted (luma BT.601,
  int height = 28;   // gray replicated, alpha dropped or set opaque)
  int width = 28;
  ResizeMode resize = ResizeMode::Auto;
};

// Resizes and crops one HWC 8-bit image (src_channels == channels of the output) to out_h × out_w, HWC.
Status fit_image(const uint8_t* src, int src_w, int src_h, int channels, int out_w, int out_h, ResizeMode mode,
                 std::vector<uint8_t>* out);

// IDX images [N, H, W] or [N, H, W, C] (u8, raw or gzip) with optional IDX labels [N]. Class names are "0" … "K−1"
// for K = the largest label + 1 (callers may rename them).
Status load_idx_dataset(const std::string& images_path, const std::string& labels_path, const ImageFit& fit,
                        Dataset* out);
// A folder of PNGs: either one sub-folder per class (labels = sub-folder names, sorted) or images directly inside
// (unlabelled). Files are read in name order, so the dataset does not depend on the directory's listing order.
Status load_png_folder(const std::string& dir, const ImageFit& fit, Dataset* out);
// A directory → load_png_folder, anything else → load_idx_dataset.
Status load_image_dataset(const std::string& path, const std::string& labels_path, const ImageFit& fit, Dataset* out);

// The toy experiment's data: `count` scalars from ½N(−2, 0.5²) + ½N(2, 0.5²), even indices from the left mode and
// odd ones from the right (exact ½ weights), noise from Philox stream (seed, 0).
void make_mixture_1d(int64_t count, uint64_t seed, Dataset* out);

// A deterministic hold-out: `validation` sample indices chosen by a fixed permutation (the same whatever the
// training seed, so validation losses of different runs compare), the rest for training; both sorted.
struct DataSplit {
  std::vector<uint32_t> train, validation;
};
Status split_dataset(int64_t count, int64_t validation, DataSplit* out);

}  // namespace ddpm
