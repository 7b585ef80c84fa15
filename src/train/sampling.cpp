#include "train/sampling.h"

#include <algorithm>
#include <cstring>

namespace ddpm {

Status ForwardNet::build(const NetSpec& spec, const WeightLookup& weights, int64_t batch,
                         std::unique_ptr<ForwardNet>* out) {
  std::unique_ptr<ForwardNet> net(new ForwardNet());
  net->batch_ = batch;
  DDPM_TRY(spec.build(net->graph_, weights, batch, &net->io_));
  DDPM_TRY(net->graph_.plan());
  *out = std::move(net);
  return Status();
}

Status ForwardNet::run(ThreadPool& pool, const float* x, const float* t, const int32_t* labels, float* out) {
  std::memcpy(io_.sample->data, x, sizeof(float) * static_cast<size_t>(io_.sample->numel()));
  std::memcpy(io_.timesteps->data, t, sizeof(float) * static_cast<size_t>(batch_));
  if (io_.class_labels) {
    if (!labels) return errorf("this network is class-conditional: labels are required");
    std::memcpy(io_.class_labels->data, labels, sizeof(int32_t) * static_cast<size_t>(batch_));
  }
  DDPM_TRY(graph_.compute(pool));
  std::memcpy(out, io_.output->data, sizeof(float) * static_cast<size_t>(io_.output->numel()));
  return Status();
}

Status sample_network(const NetSpec& spec, const Schedule& schedule, const WeightLookup& weights, ThreadPool& pool,
                      const SampleRequest& r, std::unique_ptr<ForwardNet>* net, std::vector<float>* out) {
  const bool conditional = spec.class_embeds() > 0;
  if (r.count < 1 || r.max_batch < 1) return errorf("sampling needs at least one image and a positive batch");
  if (conditional != !r.labels.empty() || (conditional && static_cast<int>(r.labels.size()) != r.count)) {
    return errorf("sampling: %zu labels for %d images of a %s network", r.labels.size(), r.count,
                  conditional ? "class-conditional" : "unconditional");
  }
  for (int32_t label : r.labels) {
    if (label < 0 || label >= spec.class_embeds()) return errorf("sampling: class %d is not in the class table", label);
  }
  const bool guided = conditional && r.null_class && r.guidance_scale != 1.0f;
  const int64_t per_image = spec.sample_numel();
  out->assign(static_cast<size_t>(r.count * per_image), 0.0f);
  SamplerSpec sampler = r.sampler;
  sampler.out_channels = 0;  // trained networks predict exactly the input's channels
  for (int first = 0; first < r.count; first += r.max_batch) {
    const int n = std::min(r.max_batch, r.count - first);
    const int64_t net_batch = guided ? 2 * n : n;
    if (!*net || (*net)->batch() != net_batch) {
      net->reset();
      DDPM_TRY(ForwardNet::build(spec, weights, net_batch, net));
    }
    std::vector<int32_t> labels;
    if (conditional) {
      labels.assign(r.labels.begin() + first, r.labels.begin() + first + n);
      if (guided) labels.insert(labels.end(), static_cast<size_t>(n), *r.null_class);
    }
    std::vector<float> input(static_cast<size_t>(net_batch * per_image)), output(input.size());
    std::vector<float> timesteps(static_cast<size_t>(net_batch));
    const float s = r.guidance_scale;
    DenoiseFn denoise = [&](const float* x, int64_t t, float* model_output) -> Status {
      const size_t half = static_cast<size_t>(n * per_image);
      std::memcpy(input.data(), x, sizeof(float) * half);
      if (guided) std::memcpy(input.data() + half, x, sizeof(float) * half);
      std::fill(timesteps.begin(), timesteps.end(), static_cast<float>(t));
      DDPM_TRY((*net)->run(pool, input.data(), timesteps.data(), conditional ? labels.data() : nullptr, output.data()));
      if (!guided) {
        std::memcpy(model_output, output.data(), sizeof(float) * half);
        return Status();
      }
      const float* cond = output.data();
      const float* uncond = output.data() + half;
      for (size_t i = 0; i < half; ++i) model_output[i] = uncond[i] + s * (cond[i] - uncond[i]);
      return Status();
    };
    PhiloxNoise noise(r.seed, static_cast<uint64_t>(first));
    DDPM_TRY(sample(sampler, schedule, n, static_cast<int>(spec.channels), static_cast<int>(spec.height),
                    static_cast<int>(spec.width), noise, denoise, out->data() + first * per_image));
  }
  return Status();
}

}  // namespace ddpm
