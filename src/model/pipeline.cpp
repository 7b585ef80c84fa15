#include "model/pipeline.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/rng.h"

namespace ddpm {
namespace {

constexpr int kDefaultMaxBatch = 8;

// Runs the sampler on images [first, first + n) with one U-Net of batch n (2n under guidance).
Status sample_batch(const Model& model, const GenerateOptions& o, ThreadPool& pool, int first, int n, UNet& net,
                    NoiseSource& noise, float* out, const GenerateProgressFn& progress) {
  const ModelInfo& info = model.info();
  const int64_t c = info.channels, h = info.height, w = info.width;
  const int64_t per_image = c * h * w;
  const int64_t out_channels = info.unet.out_channels;
  const int64_t per_output = out_channels * h * w;
  const bool conditional = info.unet.has_class_table();
  const bool guided = conditional && info.null_class && o.guidance_scale != 1.0f;
  const int64_t net_batch = guided ? 2 * n : n;
  DDPM_ASSERT(net.batch() == net_batch);

  std::vector<int32_t> labels;
  if (conditional) {
    const std::vector<int32_t> cycle = info.sampled_classes();
    for (int k = 0; k < n; ++k) {
      const int image = first + k;
      labels.push_back(o.classes.empty() ? cycle[static_cast<size_t>(image) % cycle.size()] : o.classes[image]);
    }
    if (guided) labels.insert(labels.end(), static_cast<size_t>(n), *info.null_class);
  }
  std::vector<float> input(static_cast<size_t>(net_batch * per_image));
  std::vector<float> output(static_cast<size_t>(net_batch * per_output));
  std::vector<float> timesteps(static_cast<size_t>(net_batch));
  const float s = o.guidance_scale;

  DenoiseFn denoise = [&](const float* x, int64_t t, float* model_output) -> Status {
    std::memcpy(input.data(), x, sizeof(float) * n * per_image);
    if (guided) std::memcpy(input.data() + n * per_image, x, sizeof(float) * n * per_image);
    std::fill(timesteps.begin(), timesteps.end(), static_cast<float>(t));
    DDPM_TRY(net.forward(pool, input.data(), timesteps.data(), conditional ? labels.data() : nullptr, output.data()));
    if (!guided) {
      std::memcpy(model_output, output.data(), sizeof(float) * n * per_output);
      return Status();
    }
    const float* cond = output.data();
    const float* uncond = output.data() + n * per_output;
    for (int64_t i = 0; i < n * per_output; ++i) model_output[i] = uncond[i] + s * (cond[i] - uncond[i]);
    return Status();
  };
  Schedule schedule;
  DDPM_TRY(Schedule::create(info.scheduler, &schedule));
  ProgressFn step_progress = nullptr;
  if (progress) {
    step_progress = [&](int step, int steps, int64_t) {
      GenerateProgress p;
      p.images_done = first;
      p.images_total = o.count;
      p.step = step + 1;
      p.steps = steps;
      return progress(p);
    };
  }
  SamplerSpec spec = o.sampler;
  spec.out_channels = static_cast<int>(out_channels);
  return sample(spec, schedule, n, static_cast<int>(c), static_cast<int>(h), static_cast<int>(w), noise, denoise, out,
                step_progress);
}

}  // namespace

Status generate_images(const Model& model, const GenerateOptions& o, ThreadPool& pool, std::vector<float>* images,
                       const GenerateProgressFn& progress) {
  const ModelInfo& info = model.info();
  if (o.count < 1) return errorf("the image count must be at least 1");
  if (!o.classes.empty() && static_cast<int>(o.classes.size()) != o.count) {
    return errorf("%zu classes given for %d images", o.classes.size(), o.count);
  }
  const bool conditional = info.unet.has_class_table();
  for (int32_t label : o.classes) {
    if (conditional && (label < 0 || label >= info.class_count())) {
      return errorf("class %d is outside the model's %lld classes", label, (long long)info.class_count());
    }
  }
  if (!std::isfinite(o.guidance_scale)) return errorf("the guidance scale must be a finite number");
  const bool guided = conditional && info.null_class && o.guidance_scale != 1.0f;
  int batch = o.batch > 0 ? o.batch : std::min(o.count, kDefaultMaxBatch);
  if (o.noise == NoiseKind::Torch) batch = o.count;  // diffusers draws the whole batch from one generator
  batch = std::min(batch, o.count);
  const int64_t per_image = info.channels * info.height * info.width;
  images->assign(static_cast<size_t>(o.count * per_image), 0.0f);

  std::unique_ptr<UNet> net;
  std::unique_ptr<NoiseSource> torch_noise;
  if (o.noise == NoiseKind::Torch) torch_noise = std::make_unique<TorchNoise>(o.seed);
  for (int first = 0; first < o.count; first += batch) {
    const int n = std::min(batch, o.count - first);
    const int64_t net_batch = guided ? 2 * n : n;
    if (!net || net->batch() != net_batch) {
      net.reset();
      DDPM_TRY(UNet::build(info.unet, model.weights(), net_batch, info.height, info.width, &net));
    }
    PhiloxNoise philox(o.seed, static_cast<uint64_t>(first));
    NoiseSource& noise = o.noise == NoiseKind::Torch ? *torch_noise : static_cast<NoiseSource&>(philox);
    DDPM_TRY(sample_batch(model, o, pool, first, n, *net, noise, images->data() + first * per_image, progress));
  }
  return Status();
}

void images_to_u8(const float* images, int count, int channels, int height, int width, float low, float high,
                  std::vector<uint8_t>* out) {
  out->resize(static_cast<size_t>(count) * channels * height * width);
  const float inv_range = 1.0f / (high - low);
  for (int n = 0; n < count; ++n) {
    for (int c = 0; c < channels; ++c) {
      for (int i = 0; i < height * width; ++i) {
        float v = (images[(static_cast<int64_t>(n) * channels + c) * height * width + i] - low) * inv_range;
        v = std::min(1.0f, std::max(0.0f, v));
        (*out)[(static_cast<int64_t>(n) * height * width + i) * channels + c] =
            static_cast<uint8_t>(std::nearbyint(v * 255.0f));
      }
    }
  }
}

namespace {

int grid_columns(int count, int columns) {
  if (columns <= 0) columns = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(count))));
  return std::max(1, std::min(columns, count));
}

}  // namespace

void grid_size(int count, int height, int width, int columns, int gap, int scale, int64_t* out_width,
               int64_t* out_height) {
  columns = grid_columns(count, columns);
  const int64_t rows = (count + columns - 1) / columns;
  *out_width = columns * (int64_t{width} * scale) + (columns - 1) * int64_t{gap};
  *out_height = rows * (int64_t{height} * scale) + (rows - 1) * int64_t{gap};
}

void make_grid(const uint8_t* images, int count, int channels, int height, int width, int columns, int gap,
               uint8_t background, int scale, std::vector<uint8_t>* out, int* out_width, int* out_height) {
  columns = grid_columns(count, columns);
  const int cell_w = width * scale, cell_h = height * scale;
  int64_t grid_width, grid_height;
  grid_size(count, height, width, columns, gap, scale, &grid_width, &grid_height);
  DDPM_ASSERT(grid_width <= INT32_MAX && grid_height <= INT32_MAX && "make_grid: callers bound the size (grid_size)");
  *out_width = static_cast<int>(grid_width);
  *out_height = static_cast<int>(grid_height);
  out->assign(static_cast<size_t>(*out_width) * *out_height * channels, background);
  for (int k = 0; k < count; ++k) {
    const int x0 = (k % columns) * (cell_w + gap), y0 = (k / columns) * (cell_h + gap);
    const uint8_t* image = images + static_cast<int64_t>(k) * height * width * channels;
    for (int y = 0; y < cell_h; ++y) {
      for (int x = 0; x < cell_w; ++x) {
        const uint8_t* src = image + (static_cast<int64_t>(y / scale) * width + x / scale) * channels;
        uint8_t* dst = out->data() + (static_cast<int64_t>(y0 + y) * *out_width + x0 + x) * channels;
        std::memcpy(dst, src, channels);
      }
    }
  }
}

}  // namespace ddpm
