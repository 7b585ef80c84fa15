#include "train/evaluate.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/sampler.h"
#include "model/schedule.h"
#include "model/unet.h"
#include "train/params.h"

namespace ddpm {
namespace {

std::string folded(std::string name) {
  for (char& c : name) c = c == '/' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

// The model's class id for each of the data's classes. Folder names are matched to the model's class names (case
// aside, and '_' for the '/' no folder name can hold: "T-shirt_top"); a name that is a number is taken as an id
// (IDX labels are "0" … "K−1"). Labelling by the folders' sorted order instead would score every image under
// another class's label whenever the orders differ; it is only the fallback when no folder names a class (a model
// trained with --class-names on these folders), and then says so.
Status model_class_ids(const ModelInfo& info, const Dataset& data, std::vector<int32_t>* ids) {
  ids->clear();
  const std::vector<int32_t> classes = info.sampled_classes();  // the null class is no data's label
  std::vector<std::string> unmatched;
  for (const std::string& name : data.class_names) {
    int32_t id = -1;
    for (int32_t c : classes) {
      if (id < 0 && c < static_cast<int32_t>(info.class_names.size()) && info.class_names[c] == name) id = c;
    }
    for (int32_t c : classes) {
      if (id < 0 && c < static_cast<int32_t>(info.class_names.size()) && folded(info.class_names[c]) == folded(name)) id = c;
    }
    if (id < 0 && !name.empty() && name.size() < 10 &&
        std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      const long long number = std::stoll(name);
      if (std::find(classes.begin(), classes.end(), number) == classes.end()) {
        return errorf("%s: class %lld is not one of the model's %zu classes (ids 0..%zu)", data.source.c_str(), number,
                      classes.size(), classes.size() - 1);
      }
      id = static_cast<int32_t>(number);
    }
    if (id < 0) unmatched.push_back(name);
    ids->push_back(id);
  }
  if (unmatched.empty()) return Status();
  if (unmatched.size() == data.class_names.size() && data.class_names.size() == classes.size()) {
    std::fprintf(stderr, "note: %s: no class folder names a class of the model; they are taken in sorted order as "
                         "classes 0..%zu\n", data.source.c_str(), classes.size() - 1);
    for (size_t i = 0; i < ids->size(); ++i) (*ids)[i] = classes[i];
    return Status();
  }
  std::string names;
  for (size_t i = 0; i < info.class_names.size(); ++i) names += (i ? ", " : "") + info.class_names[i];
  return errorf("%s: class '%s' is none of the model's classes (%s)", data.source.c_str(), unmatched[0].c_str(),
                names.empty() ? "it names none: name the class folders by id" : names.c_str());
}

}  // namespace

Status evaluate_denoising_loss(const Model& model, const Dataset& data, const EvalOptions& o, ThreadPool& pool,
                               EvalResult* out) {
  const ModelInfo& info = model.info();
  if (data.channels != info.channels || data.height != info.height || data.width != info.width) {
    return errorf("%s: samples are [%lld, %lld, %lld] but the model takes [%lld, %lld, %lld]", data.source.c_str(),
                  (long long)data.channels, (long long)data.height, (long long)data.width, (long long)info.channels,
                  (long long)info.height, (long long)info.width);
  }
  if (o.batch < 1) return errorf("the evaluation batch must be at least 1");
  const int64_t count = std::min(o.count, data.count);
  if (count < 1) return errorf("%s: no samples to evaluate", data.source.c_str());
  const bool conditional = info.unet.has_class_table();
  if (conditional && !data.labelled() && !info.null_class) {
    return errorf("%s: the model is class-conditional but the data has no labels and the model no null class",
                  data.source.c_str());
  }
  std::vector<int32_t> class_ids;
  if (conditional && data.labelled()) DDPM_TRY(model_class_ids(info, data, &class_ids));
  Schedule schedule;
  DDPM_TRY(Schedule::create(info.scheduler, &schedule));
  const int64_t n = data.sample_numel();
  const int64_t batch = std::min(o.batch, count);
  std::unique_ptr<UNet> net;
  DDPM_TRY(UNet::build(info.unet, model.weights(), batch, info.height, info.width, &net));

  std::vector<float> x0(static_cast<size_t>(batch * n)), noise(x0.size()), x_t(x0.size()), target(x0.size());
  std::vector<float> prediction(static_cast<size_t>(batch * info.unet.out_channels * info.height * info.width));
  std::vector<int64_t> timesteps(static_cast<size_t>(batch));
  std::vector<float> timesteps_f(static_cast<size_t>(batch));
  std::vector<int32_t> labels(static_cast<size_t>(batch));
  const PhiloxGenerator normal(o.seed);
  double sum = 0.0, sum_squares = 0.0;
  for (int64_t first = 0; first < count; first += batch) {
    // The last batch is padded by repeating sample 0's draw; only the first `valid` losses count.
    const int64_t valid = std::min(batch, count - first);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t k = b < valid ? first + b : 0;
      data.sample(k, false, x0.data() + b * n);
      labels[static_cast<size_t>(b)] = conditional && data.labelled()
                                           ? class_ids[static_cast<size_t>(data.labels[static_cast<size_t>(k)])]
                                           : info.null_class.value_or(0);
      timesteps[static_cast<size_t>(b)] = philox_below(o.seed, train_stream(TrainStream::Validation, 0),
                                                       static_cast<uint64_t>(k),
                                                       static_cast<uint32_t>(schedule.num_train_timesteps()));
      timesteps_f[static_cast<size_t>(b)] = static_cast<float>(timesteps[static_cast<size_t>(b)]);
      normal.normal(train_stream(TrainStream::Validation, 1), static_cast<uint64_t>(k * n), noise.data() + b * n, n);
    }
    const int batch_int = static_cast<int>(batch);
    DDPM_TRY(add_noise(schedule, timesteps.data(), batch_int, n, x0.data(), noise.data(), x_t.data()));
    switch (info.scheduler.prediction_type) {
      case PredictionType::Epsilon: target = noise; break;
      case PredictionType::VPrediction:
        DDPM_TRY(get_velocity(schedule, timesteps.data(), batch_int, n, x0.data(), noise.data(), target.data()));
        break;
      case PredictionType::Sample: target = x0; break;
    }
    DDPM_TRY(net->forward(pool, x_t.data(), timesteps_f.data(), conditional ? labels.data() : nullptr,
                          prediction.data()));
    // learned-variance models predict 2·C channels; the loss is on the first C, as diffusers trains them.
    const int64_t out_per_sample = static_cast<int64_t>(prediction.size()) / batch;
    for (int64_t b = 0; b < valid; ++b) {
      double squared = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(prediction[static_cast<size_t>(b * out_per_sample + i)]) -
                         static_cast<double>(target[static_cast<size_t>(b * n + i)]);
        squared += d * d;
      }
      const double per_sample = squared / static_cast<double>(n);
      sum += per_sample;
      sum_squares += per_sample * per_sample;
    }
  }
  const double mean = sum / static_cast<double>(count);
  const double variance = std::max(0.0, sum_squares / static_cast<double>(count) - mean * mean);
  out->samples = count;
  out->loss = mean;
  out->loss_stderr = count > 1 ? std::sqrt(variance / static_cast<double>(count - 1)) : 0.0;
  return Status();
}

}  // namespace ddpm
