#include "train/dataset.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/rng.h"
#include "io/crc32c.h"
#include "io/idx.h"
#include "io/png.h"
#include "train/params.h"

namespace ddpm {
namespace {

bool is_directory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool has_png_extension(const std::string& name) {
  if (name.size() < 5) return false;
  std::string ext = name.substr(name.size() - 4);
  for (char& c : ext) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return ext == ".png";
}

// Sorted names of the entries of `dir` (hidden ones skipped), split into sub-directories and PNG files.
Status list_directory(const std::string& dir, std::vector<std::string>* subdirs, std::vector<std::string>* pngs) {
  DIR* d = opendir(dir.c_str());
  if (!d) return errorf("%s: cannot open the folder: %s", dir.c_str(), std::strerror(errno));
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;
    if (is_directory(dir + "/" + name)) subdirs->push_back(name);
    else if (has_png_extension(name)) pngs->push_back(name);
  }
  closedir(d);
  std::sort(subdirs->begin(), subdirs->end());
  std::sort(pngs->begin(), pngs->end());
  return Status();
}

// HWC pixels with `from` channels → HWC with `to` channels: gray from colour by BT.601 luma (PIL's "L"), gray
// replicated into colour, alpha dropped or made opaque.
std::vector<uint8_t> convert_channels(const uint8_t* src, int64_t pixels, int from, int to) {
  std::vector<uint8_t> out(static_cast<size_t>(pixels * to));
  for (int64_t i = 0; i < pixels; ++i) {
    const uint8_t* p = src + i * from;
    const bool colour = from >= 3;
    const uint8_t r = p[0], g = colour ? p[1] : p[0], b = colour ? p[2] : p[0];
    const uint8_t a = (from == 2 || from == 4) ? p[from - 1] : 255;
    const uint8_t luma = colour ? static_cast<uint8_t>((r * 299 + g * 587 + b * 114 + 500) / 1000) : r;
    uint8_t* q = out.data() + i * to;
    if (to <= 2) {
      q[0] = luma;
      if (to == 2) q[1] = a;
    } else {
      q[0] = r;
      q[1] = g;
      q[2] = b;
      if (to == 4) q[3] = a;
    }
  }
  return out;
}

// Per output pixel of one axis: the source pixels it reads and their weights (summing to 1).
struct Tap {
  int index;
  float weight;
};
using AxisTaps = std::vector<std::vector<Tap>>;

// Output pixel x covers [(x + offset)/scale, (x + offset + 1)/scale) of the source axis.
AxisTaps axis_taps(int src, int dst, double scale, double offset, bool area) {
  AxisTaps taps(static_cast<size_t>(dst));
  for (int x = 0; x < dst; ++x) {
    std::vector<Tap>& t = taps[static_cast<size_t>(x)];
    if (area) {
      const double a = (x + offset) / scale, b = (x + offset + 1) / scale;
      for (int k = std::max(0, static_cast<int>(std::floor(a))); k < std::min(src, static_cast<int>(std::ceil(b))); ++k) {
        const double overlap = std::min(b, k + 1.0) - std::max(a, static_cast<double>(k));
        if (overlap > 0) t.push_back({k, static_cast<float>(overlap / (b - a))});
      }
    } else {
      const double c = (x + offset + 0.5) / scale - 0.5;  // the output pixel's centre in source coordinates
      const int k0 = static_cast<int>(std::floor(c));
      const double f = c - k0;
      const int lo = std::min(std::max(k0, 0), src - 1), hi = std::min(std::max(k0 + 1, 0), src - 1);
      t.push_back({lo, static_cast<float>(1.0 - f)});
      t.push_back({hi, static_cast<float>(f)});
    }
  }
  return taps;
}

Status check_fit(const ImageFit& fit) {
  if (fit.channels < 1 || fit.channels > 4) return errorf("images must have 1 to 4 channels, not %d", fit.channels);
  if (fit.height < 1 || fit.width < 1) return errorf("target image size %dx%d is invalid", fit.width, fit.height);
  return Status();
}

// What the loaders changed to fit the images to the target, as Dataset::adapted words it: a model scored on images
// it was not trained on (another size or colour) is a different experiment, and the user should know.
class FitTally {
 public:
  explicit FitTally(const ImageFit& fit) : fit_(fit) {}

  void add(int channels, int width, int height) {
    ++count_;
    if (channels != fit_.channels) {
      if (recoloured_++ == 0) first_channels_ = channels;
      mixed_channels_ |= channels != first_channels_;
    }
    if (width != fit_.width || height != fit_.height) {
      if (resized_++ == 0) first_w_ = width, first_h_ = height;
      mixed_sizes_ |= width != first_w_ || height != first_h_;
    }
  }

  // "images converted from 1 to 3 channels and resized from 28x28 to 16x16", "2 of 5 images resized to 8x8", "".
  std::string text() const {
    std::string colour, size;
    char buffer[96];
    if (recoloured_ > 0) {
      const char* unit = fit_.channels == 1 ? "channel" : "channels";
      if (mixed_channels_) std::snprintf(buffer, sizeof buffer, "converted to %d %s", fit_.channels, unit);
      else std::snprintf(buffer, sizeof buffer, "converted from %d to %d %s", first_channels_, fit_.channels, unit);
      colour = buffer;
    }
    if (resized_ > 0) {
      const char* verb = fit_.resize == ResizeMode::Off ? "cropped" : "resized";
      if (mixed_sizes_) {
        std::snprintf(buffer, sizeof buffer, "%s to %dx%d", verb, fit_.width, fit_.height);
      } else {
        std::snprintf(buffer, sizeof buffer, "%s from %dx%d to %dx%d", verb, first_w_, first_h_, fit_.width,
                      fit_.height);
      }
      size = buffer;
    }
    const std::string colour_subject = subject(recoloured_), size_subject = subject(resized_);
    if (colour.empty()) return size.empty() ? "" : size_subject + " " + size;
    if (size.empty()) return colour_subject + " " + colour;
    if (colour_subject == size_subject) return colour_subject + " " + colour + " and " + size;
    return colour_subject + " " + colour + ", " + size_subject + " " + size;
  }

 private:
  std::string subject(int64_t changed) const {
    return changed == count_ ? "images" : std::to_string(changed) + " of " + std::to_string(count_) + " images";
  }

  ImageFit fit_;
  int64_t count_ = 0, recoloured_ = 0, resized_ = 0;
  int first_channels_ = 0, first_w_ = 0, first_h_ = 0;
  bool mixed_channels_ = false, mixed_sizes_ = false;
};

}  // namespace

void Dataset::sample(int64_t i, bool flip, float* out) const {
  const int64_t n = sample_numel();
  const int64_t w = width;
  if (!values.empty()) {
    const float* v = values.data() + i * n;
    for (int64_t k = 0; k < n; ++k) out[k] = flip ? v[k - k % w + (w - 1 - k % w)] : v[k];
    return;
  }
  const uint8_t* p = pixels.data() + i * n;
  for (int64_t k = 0; k < n; ++k) {
    const uint8_t byte = flip ? p[k - k % w + (w - 1 - k % w)] : p[k];
    out[k] = static_cast<float>(byte) * (2.0f / 255.0f) - 1.0f;
  }
}

uint32_t Dataset::fingerprint() const {
  const int64_t shape[4] = {count, channels, height, width};
  uint32_t crc = crc32c(shape, sizeof shape);
  crc = crc32c(pixels.data(), pixels.size(), crc);
  crc = crc32c(values.data(), values.size() * sizeof(float), crc);
  return crc32c(labels.data(), labels.size() * sizeof(int32_t), crc);
}

const char* to_string(ResizeMode mode) {
  switch (mode) {
    case ResizeMode::Auto: return "auto";
    case ResizeMode::Area: return "area";
    case ResizeMode::Bilinear: return "bilinear";
    case ResizeMode::Off: return "off";
  }
  return "?";
}

Status parse_resize_mode(const std::string& text, ResizeMode* out) {
  for (ResizeMode m : {ResizeMode::Auto, ResizeMode::Area, ResizeMode::Bilinear, ResizeMode::Off}) {
    if (text == to_string(m)) {
      *out = m;
      return Status();
    }
  }
  return errorf("resize mode '%s' is not auto, area, bilinear or off", text.c_str());
}

Status fit_image(const uint8_t* src, int src_w, int src_h, int channels, int out_w, int out_h, ResizeMode mode,
                 std::vector<uint8_t>* out) {
  if (src_w < 1 || src_h < 1 || out_w < 1 || out_h < 1 || channels < 1) return errorf("fit_image: empty image");
  const size_t row = static_cast<size_t>(channels);
  if (mode == ResizeMode::Off || (src_w == out_w && src_h == out_h)) {
    if (src_w < out_w || src_h < out_h) {
      return errorf("image is %dx%d, smaller than the model's %dx%d (resizing is off)", src_w, src_h, out_w, out_h);
    }
    const int x0 = (src_w - out_w) / 2, y0 = (src_h - out_h) / 2;  // centre crop, whole pixels
    out->resize(static_cast<size_t>(out_w) * out_h * row);
    for (int y = 0; y < out_h; ++y) {
      std::memcpy(out->data() + static_cast<size_t>(y) * out_w * row,
                  src + (static_cast<size_t>(y + y0) * src_w + x0) * row, out_w * row);
    }
    return Status();
  }
  // Scale to cover the target, then crop the middle.
  const double scale = std::max(static_cast<double>(out_w) / src_w, static_cast<double>(out_h) / src_h);
  const bool area = mode == ResizeMode::Area || (mode == ResizeMode::Auto && scale < 1.0);
  const AxisTaps xs = axis_taps(src_w, out_w, scale, (src_w * scale - out_w) / 2, area);
  const AxisTaps ys = axis_taps(src_h, out_h, scale, (src_h * scale - out_h) / 2, area);
  // Horizontal pass over every source row: [src_h, out_w, C] floats; then vertical.
  std::vector<float> rows(static_cast<size_t>(src_h) * out_w * row, 0.0f);
  for (int y = 0; y < src_h; ++y) {
    for (int x = 0; x < out_w; ++x) {
      float* o = rows.data() + (static_cast<size_t>(y) * out_w + x) * row;
      for (const Tap& t : xs[static_cast<size_t>(x)]) {
        const uint8_t* s = src + (static_cast<size_t>(y) * src_w + t.index) * row;
        for (size_t c = 0; c < row; ++c) o[c] += t.weight * s[c];
      }
    }
  }
  out->resize(static_cast<size_t>(out_w) * out_h * row);
  for (int y = 0; y < out_h; ++y) {
    for (size_t i = 0; i < static_cast<size_t>(out_w) * row; ++i) {
      float v = 0.0f;
      for (const Tap& t : ys[static_cast<size_t>(y)]) v += t.weight * rows[static_cast<size_t>(t.index) * out_w * row + i];
      (*out)[static_cast<size_t>(y) * out_w * row + i] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, std::nearbyint(v))));
    }
  }
  return Status();
}

Status load_idx_dataset(const std::string& images_path, const std::string& labels_path, const ImageFit& fit,
                        Dataset* out) {
  DDPM_TRY(check_fit(fit));
  IdxArray images;
  DDPM_TRY(read_idx(images_path, &images));
  if (images.dims.size() != 3 && images.dims.size() != 4) {
    return errorf("%s: expected IDX images [N, H, W] or [N, H, W, C], got %zu dimensions", images_path.c_str(),
                  images.dims.size());
  }
  const int64_t n = images.dims[0], h = images.dims[1], w = images.dims[2];
  const int64_t c = images.dims.size() == 4 ? images.dims[3] : 1;
  if (n < 1 || h < 1 || w < 1 || c < 1 || c > 4 || h > kPngMaxSide || w > kPngMaxSide) {
    return errorf("%s: IDX image array [%lld, %lld, %lld, %lld] has no images or an unsupported shape",
                  images_path.c_str(), (long long)n, (long long)h, (long long)w, (long long)c);
  }
  Dataset d;
  d.source = images_path;
  d.count = n;
  d.channels = fit.channels;
  d.height = fit.height;
  d.width = fit.width;
  if (!labels_path.empty()) {
    IdxArray labels;
    DDPM_TRY(read_idx(labels_path, &labels));
    if (labels.dims.size() != 1) {
      return errorf("%s: expected IDX labels [N], got %zu dimensions", labels_path.c_str(), labels.dims.size());
    }
    if (labels.dims[0] != n) {
      return errorf("%s holds %lld labels but %s holds %lld images", labels_path.c_str(), (long long)labels.dims[0],
                    images_path.c_str(), (long long)n);
    }
    const uint8_t largest = *std::max_element(labels.data.begin(), labels.data.end());
    d.labels.assign(labels.data.begin(), labels.data.end());
    for (int k = 0; k <= largest; ++k) d.class_names.push_back(std::to_string(k));
  }
  const int64_t per_image = fit.channels * fit.height * fit.width;
  d.pixels.resize(static_cast<size_t>(n * per_image));
  std::vector<uint8_t> fitted;
  FitTally tally(fit);
  for (int64_t i = 0; i < n; ++i) {
    tally.add(static_cast<int>(c), static_cast<int>(w), static_cast<int>(h));
    const uint8_t* src = images.data.data() + i * h * w * c;
    std::vector<uint8_t> converted;
    if (c != fit.channels) {
      converted = convert_channels(src, h * w, static_cast<int>(c), fit.channels);
      src = converted.data();
    }
    Status s = fit_image(src, static_cast<int>(w), static_cast<int>(h), fit.channels, fit.width, fit.height, fit.resize,
                         &fitted);
    if (!s.ok()) return s.with_context(images_path);
    // HWC → CHW
    uint8_t* dst = d.pixels.data() + i * per_image;
    for (int64_t p = 0; p < fit.height * fit.width; ++p) {
      for (int ch = 0; ch < fit.channels; ++ch) dst[ch * fit.height * fit.width + p] = fitted[p * fit.channels + ch];
    }
  }
  d.adapted = tally.text();
  *out = std::move(d);
  return Status();
}

Status load_png_folder(const std::string& dir, const ImageFit& fit, Dataset* out) {
  DDPM_TRY(check_fit(fit));
  std::vector<std::string> subdirs, top_pngs;
  DDPM_TRY(list_directory(dir, &subdirs, &top_pngs));
  // (file, label) in a fixed order: classes by name, files by name.
  std::vector<std::pair<std::string, int32_t>> files;
  Dataset d;
  if (!subdirs.empty()) {
    if (!top_pngs.empty()) {
      return errorf("%s: holds both PNG files (%s) and class sub-folders (%s); use one or the other", dir.c_str(),
                    top_pngs[0].c_str(), subdirs[0].c_str());
    }
    for (size_t k = 0; k < subdirs.size(); ++k) {
      std::vector<std::string> nested, pngs;
      const std::string class_dir = dir + "/" + subdirs[k];
      DDPM_TRY(list_directory(class_dir, &nested, &pngs));
      if (pngs.empty()) return errorf("%s: class folder has no PNG images", class_dir.c_str());
      for (const std::string& p : pngs) files.push_back({class_dir + "/" + p, static_cast<int32_t>(k)});
      d.class_names.push_back(subdirs[k]);
    }
  } else {
    if (top_pngs.empty()) return errorf("%s: no PNG images and no class sub-folders", dir.c_str());
    for (const std::string& p : top_pngs) files.push_back({dir + "/" + p, -1});
  }
  d.source = dir;
  d.count = static_cast<int64_t>(files.size());
  d.channels = fit.channels;
  d.height = fit.height;
  d.width = fit.width;
  const int64_t per_image = fit.channels * fit.height * fit.width;
  d.pixels.resize(static_cast<size_t>(d.count * per_image));
  int first_w = 0, first_h = 0;
  std::vector<uint8_t> fitted;
  FitTally tally(fit);
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string& path = files[i].first;
    Image image;
    DDPM_TRY(read_png(path, &image));
    tally.add(image.channels, image.width, image.height);
    if (i == 0) {
      first_w = image.width;
      first_h = image.height;
    } else if (fit.resize == ResizeMode::Off && (image.width != first_w || image.height != first_h)) {
      return errorf("%s is %dx%d but %s is %dx%d: sizes differ and resizing is off (--resize auto)", path.c_str(),
                    image.width, image.height, files[0].first.c_str(), first_w, first_h);
    }
    std::vector<uint8_t> converted;
    const uint8_t* src = image.pixels.data();
    if (image.channels != fit.channels) {
      converted = convert_channels(src, static_cast<int64_t>(image.width) * image.height, image.channels, fit.channels);
      src = converted.data();
    }
    Status s = fit_image(src, image.width, image.height, fit.channels, fit.width, fit.height, fit.resize, &fitted);
    if (!s.ok()) return s.with_context(path);
    uint8_t* dst = d.pixels.data() + static_cast<int64_t>(i) * per_image;
    for (int64_t p = 0; p < fit.height * fit.width; ++p) {
      for (int ch = 0; ch < fit.channels; ++ch) dst[ch * fit.height * fit.width + p] = fitted[p * fit.channels + ch];
    }
    if (files[i].second >= 0) d.labels.push_back(files[i].second);
  }
  d.adapted = tally.text();
  *out = std::move(d);
  return Status();
}

Status load_image_dataset(const std::string& path, const std::string& labels_path, const ImageFit& fit, Dataset* out) {
  if (is_directory(path)) {
    if (!labels_path.empty()) {
      return errorf("%s is a PNG folder: its labels are the sub-folder names, so --labels %s cannot be used",
                    path.c_str(), labels_path.c_str());
    }
    return load_png_folder(path, fit, out);
  }
  return load_idx_dataset(path, labels_path, fit, out);
}

void make_mixture_1d(int64_t count, uint64_t seed, Dataset* out) {
  Dataset d;
  d.source = "1-D mixture 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2)";
  d.count = count;
  d.values.resize(static_cast<size_t>(count));
  PhiloxGenerator(seed).normal(0, 0, d.values.data(), count);
  for (int64_t i = 0; i < count; ++i) d.values[static_cast<size_t>(i)] = (i % 2 ? 2.0f : -2.0f) + 0.5f * d.values[static_cast<size_t>(i)];
  *out = std::move(d);
}

Status split_dataset(int64_t count, int64_t validation, DataSplit* out) {
  if (count < 1 || count > 0xFFFFFFFFll) return errorf("a dataset of %lld samples cannot be split", (long long)count);
  if (validation < 0 || validation >= count) {
    return errorf("%lld validation samples leave nothing to train on among %lld", (long long)validation,
                  (long long)count);
  }
  // A fixed key: the split must not move with the training seed.
  constexpr uint64_t kSplitSeed = 0x5EED5EED;
  const std::vector<uint32_t> order =
      philox_permutation(kSplitSeed, train_stream(TrainStream::Split, 0), static_cast<uint32_t>(count));
  DataSplit split;
  split.validation.assign(order.begin(), order.begin() + validation);
  split.train.assign(order.begin() + validation, order.end());
  std::sort(split.validation.begin(), split.validation.end());
  std::sort(split.train.begin(), split.train.end());
  *out = std::move(split);
  return Status();
}

}  // namespace ddpm
