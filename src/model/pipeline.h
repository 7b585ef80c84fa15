// Image generation: the sampling loop of sampler.h driven by a U-Net, with batching, class conditioning and
// classifier-free guidance. Output images are float NCHW in the model's value range, as the sampler leaves them
// (before clamping), so callers can save them raw or convert them to 8 bits.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ddpm/threadpool.h"
#include "model/model.h"
#include "model/sampler.h"

namespace ddpm {

enum class NoiseKind { Philox, Torch };

struct GenerateOptions {
  int count = 1;
  int batch = 0;  // images per forward pass; 0 = all of them, up to 8. Torch noise always uses one batch of count.
  SamplerSpec sampler;
  uint64_t seed = 0;
  NoiseKind noise = NoiseKind::Philox;
  // Class per image (count entries), or empty: image k gets class k mod K. Ignored by unconditional models.
  std::vector<int32_t> classes;
  float guidance_scale = 1.0f;  // ε = ε_uncond + s·(ε_cond − ε_uncond); 1 = no guidance pass
};

struct GenerateProgress {
  int images_done = 0, images_total = 0;
  int step = 0, steps = 0;  // within the current batch
};

// Called after each sampler step; a failed Status cancels.
using GenerateProgressFn = std::function<Status(const GenerateProgress&)>;

// Fills `images` with count·C·H·W floats.
Status generate_images(const Model& model, const GenerateOptions& options, ThreadPool& pool, std::vector<float>* images,
                       const GenerateProgressFn& progress = nullptr);

// diffusers' conversion to 8 bits: clamp((x − low)/(high − low), 0, 1)·255 rounded half to even, NCHW → NHWC.
void images_to_u8(const float* images, int count, int channels, int height, int width, float low, float high,
                  std::vector<uint8_t>* out);

// Lays `count` HWC images out in a grid of `columns` (≤ 0: ⌈√count⌉) with `gap` pixels of `background` between
// them, each pixel repeated `scale`×`scale` times.
void make_grid(const uint8_t* images, int count, int channels, int height, int width, int columns, int gap,
               uint8_t background, int scale, std::vector<uint8_t>* out, int* out_width, int* out_height);
// The size in pixels of that grid, computed without it (in 64 bits: a large -n times --scale passes int's range), so
// that a tool can refuse one too large to write before it spends minutes sampling.
void grid_size(int count, int height, int width, int columns, int gap, int scale, int64_t* out_width,
               int64_t* out_height);

}  // namespace ddpm
