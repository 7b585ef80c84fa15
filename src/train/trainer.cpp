#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>

#include "core/rng.h"
#include "ddpm/autograd.h"
#include "model/ddpm_file.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/scheduler_json.h"

#ifndef DDPM_VERSION
#define DDPM_VERSION "0.1.0"
#endif

namespace ddpm {
namespace {

constexpr char kCheckpointArchitecture[] = "ddpm-train-checkpoint";
constexpr uint32_t kCheckpointVersion = 1;

class Stopwatch {
 public:
  explicit Stopwatch(double* total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~Stopwatch() { *total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  double* total_;
  std::chrono::steady_clock::time_point start_;
};

std::string utc_now() {
  std::time_t now = std::time(nullptr);
  std::tm tm;
  gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The first member of two JSON objects whose values differ, as "key: A there, B here", or "".
std::string first_difference(const JsonValue& there, const JsonValue& here, const char* skip = nullptr) {
  for (const JsonValue::Member& m : here.members()) {
    if (skip && m.first == skip) continue;
    const JsonValue* other = there.find(m.first);
    const std::string a = other ? to_json(*other, false) : "absent", b = to_json(m.second, false);
    if (a != b) return m.first + " is " + a + " there, " + b + " here";
  }
  for (const JsonValue::Member& m : there.members()) {
    if (!here.find(m.first)) return m.first + " is " + to_json(m.second, false) + " there, absent here";
  }
  return "";
}

Status read_number(const JsonValue& j, const char* key, double* out) {
  const JsonValue* v = j.find(key);
  if (!v || !v->as_double(out)) return errorf("training option '%s' is missing or not a number", key);
  return Status();
}

Status read_integer(const JsonValue& j, const char* key, int64_t* out) {
  const JsonValue* v = j.find(key);
  if (!v || !v->as_int64(out)) return errorf("training option '%s' is missing or not an integer", key);
  return Status();
}

Status read_text(const JsonValue& j, const char* key, std::string* out) {
  const JsonValue* v = j.find(key);
  if (!v || !v->as_string(out)) return errorf("training option '%s' is missing or not a string", key);
  return Status();
}

Status read_float_tensor(const DdpmFile& file, const char* name, int64_t count, std::vector<float>* out) {
  const DdpmTensorInfo* t = file.find(name);
  if (!t || t->dtype != DType::F32 || t->rank != 1 || t->shape[0] != count) {
    return errorf("%s: tensor '%s' is missing or is not %lld f32 values", file.path().c_str(), name, (long long)count);
  }
  out->assign(static_cast<const float*>(t->data), static_cast<const float*>(t->data) + count);
  return Status();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Options

Status TrainOptions::validate() const {
  if (steps < 1) return errorf("the step count must be at least 1");
  if (batch < 1 || batch > 65536) return errorf("batch %lld is outside 1..65536", (long long)batch);
  if (!(lr > 0) || !std::isfinite(lr)) return errorf("the learning rate must be a positive number");
  if (warmup < 0) return errorf("warm-up steps cannot be negative");
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) return errorf("the minimum learning-rate ratio must be in 0..1");
  if (!(adamw.beta1 >= 0 && adamw.beta1 < 1) || !(adamw.beta2 >= 0 && adamw.beta2 < 1)) {
    return errorf("AdamW betas must be in [0, 1)");
  }
  if (!(adamw.eps > 0) || !(adamw.weight_decay >= 0)) return errorf("AdamW eps must be positive, weight decay >= 0");
  if (!std::isfinite(grad_clip)) return errorf("the gradient clip norm must be a number");
  if (!(ema >= 0 && ema < 1)) return errorf("the EMA decay must be in [0, 1)");
  if (!(cond_drop >= 0 && cond_drop <= 1)) return errorf("the label-drop probability must be in 0..1");
  if (validation < 0) return errorf("the validation sample count cannot be negative");
  return Status();
}

JsonValue TrainOptions::to_json() const {
  JsonValue j = JsonValue::make_object();
  j.set("steps", JsonValue::make_int(steps));
  j.set("batch", JsonValue::make_int(batch));
  j.set("lr", JsonValue::make_number(lr));
  j.set("warmup", JsonValue::make_int(warmup));
  j.set("lr_schedule", JsonValue::make_string(to_string(lr_schedule)));
  j.set("min_lr_ratio", JsonValue::make_number(min_lr_ratio));
  j.set("adam_beta1", JsonValue::make_number(adamw.beta1));
  j.set("adam_beta2", JsonValue::make_number(adamw.beta2));
  j.set("adam_eps", JsonValue::make_number(adamw.eps));
  j.set("weight_decay", JsonValue::make_number(adamw.weight_decay));
  j.set("grad_clip", JsonValue::make_number(grad_clip));
  j.set("ema", JsonValue::make_number(ema));
  j.set("prediction_type", JsonValue::make_string(to_string(prediction)));
  j.set("cond_drop", JsonValue::make_number(cond_drop));
  j.set("hflip", JsonValue::make_bool(hflip));
  j.set("seed", JsonValue::make_uint(seed));
  j.set("validation", JsonValue::make_int(validation));
  return j;
}

Status TrainOptions::from_json(const JsonValue& j, TrainOptions* out) {
  if (!j.is_object()) return errorf("training options must be a JSON object");
  TrainOptions o;
  std::string text;
  const JsonValue* flag = j.find("hflip");
  const JsonValue* seed = j.find("seed");
  DDPM_TRY(read_integer(j, "steps", &o.steps));
  DDPM_TRY(read_integer(j, "batch", &o.batch));
  DDPM_TRY(read_number(j, "lr", &o.lr));
  DDPM_TRY(read_integer(j, "warmup", &o.warmup));
  DDPM_TRY(read_text(j, "lr_schedule", &text));
  DDPM_TRY(parse_lr_schedule(text, &o.lr_schedule));
  DDPM_TRY(read_number(j, "min_lr_ratio", &o.min_lr_ratio));
  DDPM_TRY(read_number(j, "adam_beta1", &o.adamw.beta1));
  DDPM_TRY(read_number(j, "adam_beta2", &o.adamw.beta2));
  DDPM_TRY(read_number(j, "adam_eps", &o.adamw.eps));
  DDPM_TRY(read_number(j, "weight_decay", &o.adamw.weight_decay));
  DDPM_TRY(read_number(j, "grad_clip", &o.grad_clip));
  DDPM_TRY(read_number(j, "ema", &o.ema));
  DDPM_TRY(read_text(j, "prediction_type", &text));
  DDPM_TRY(parse_prediction_type(text, &o.prediction));
  DDPM_TRY(read_number(j, "cond_drop", &o.cond_drop));
  if (!flag || !flag->as_bool(&o.hflip)) return errorf("training option 'hflip' is missing or not a boolean");
  if (!seed || !seed->as_uint64(&o.seed)) return errorf("training option 'seed' is missing or not an integer");
  DDPM_TRY(read_integer(j, "validation", &o.validation));
  DDPM_TRY(o.validate());
  *out = o;
  return Status();
}

// ---------------------------------------------------------------------------------------------------------------
// Setup

Status Trainer::create(const NetSpec& net, const SchedulerConfig& scheduler, const TrainOptions& options,
                       const Dataset& data, std::unique_ptr<Trainer>* out) {
  DDPM_TRY(net.validate());
  DDPM_TRY(options.validate());
  std::unique_ptr<Trainer> t(new Trainer(data));
  SchedulerConfig trained = scheduler;
  trained.prediction_type = options.prediction;  // what the network learns is what samplers must read
  DDPM_TRY(Schedule::create(trained, &t->schedule_));
  if (data.channels != net.channels || data.height != net.height || data.width != net.width) {
    return errorf("%s: samples are [%lld, %lld, %lld] but the network takes [%lld, %lld, %lld]", data.source.c_str(),
                  (long long)data.channels, (long long)data.height, (long long)data.width, (long long)net.channels,
                  (long long)net.height, (long long)net.width);
  }
  const int64_t rows = net.class_embeds();
  const int64_t classes = static_cast<int64_t>(data.class_names.size());
  if (rows > 0) {
    if (!data.labelled()) {
      return errorf("the network is class-conditional (num_class_embeds %lld) but %s has no labels (give --labels, "
                    "or class sub-folders)", (long long)rows, data.source.c_str());
    }
    if (rows != classes && rows != classes + 1) {
      return errorf("num_class_embeds %lld does not fit the %lld classes of %s (%lld, or %lld with the null class)",
                    (long long)rows, (long long)classes, data.source.c_str(), (long long)classes,
                    (long long)classes + 1);
    }
    if (options.cond_drop > 0 && rows != classes + 1) {
      return errorf("--cond-drop needs a null class: num_class_embeds must be %lld for %lld classes",
                    (long long)classes + 1, (long long)classes);
    }
  }
  DDPM_TRY(split_dataset(data.count, options.validation, &t->split_));
  t->net_ = net;
  t->options_ = options;
  t->class_names_ = data.class_names;
  std::vector<ParamSpec> specs;
  DDPM_TRY(net.parameter_specs(&specs));
  t->layout_ = ParamLayout(std::move(specs));
  const size_t total = static_cast<size_t>(t->layout_.total());
  t->weights_.resize(total);
  init_parameters(t->layout_, options.seed, t->weights_.data());
  t->ema_ = t->weights_;
  t->m_.assign(total, 0.0f);
  t->v_.assign(total, 0.0f);

  // The training graph: forward, loss against the target, backward to every parameter; planned once.
  Graph& g = t->graph_;
  const int64_t b = options.batch;
  DDPM_TRY(net.build(g, t->layout_.lookup(t->weights_.data()), b, &t->io_));
  t->target_ = g.input("target", DType::F32, {b, net.channels, net.height, net.width});
  t->loss_ = mse_loss(g, t->io_.output, t->target_);
  DDPM_TRY(g.status());
  std::vector<Tensor*> wrt;
  std::vector<int> owner(t->layout_.size(), -1);  // parameter → position in wrt
  for (Tensor* node : g.nodes()) {
    if (!(node->flags & kFlagParam)) continue;
    const int i = t->layout_.find(node->name);
    if (i < 0 || node->data != t->weights_.data() + t->layout_.offset(static_cast<size_t>(i))) continue;
    if (owner[static_cast<size_t>(i)] >= 0) return errorf("internal: parameter %s enters the graph twice", node->name.c_str());
    owner[static_cast<size_t>(i)] = static_cast<int>(wrt.size());
    wrt.push_back(node);
  }
  std::vector<Tensor*> grads;
  DDPM_TRY(build_backward(g, t->loss_, wrt, &grads).with_context("building the training graph"));
  g.set_output(t->loss_);
  DDPM_TRY(g.plan());
  t->grads_.assign(t->layout_.size(), nullptr);
  for (size_t i = 0; i < owner.size(); ++i) {
    if (owner[i] >= 0) t->grads_[i] = grads[static_cast<size_t>(owner[i])];
  }
  const size_t n = static_cast<size_t>(b * net.sample_numel());
  t->x0_.resize(n);
  t->noise_.resize(n);
  t->timesteps_.resize(static_cast<size_t>(b));
  *out = std::move(t);
  return Status();
}

Status Trainer::set_class_names(std::vector<std::string> names) {
  if (names.size() != class_names_.size()) {
    return errorf("%zu class names given for %zu classes", names.size(), class_names_.size());
  }
  // `ddpm generate --class` takes a name before an id, and "uncond" for the null class: a name must stay reachable
  // and must not stand for another class.
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    if (name.empty()) return errorf("class %zu has an empty name", i);
    if (name == "uncond") return errorf("'uncond' names the null class, not class %zu", i);
    if (std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
        name != std::to_string(i)) {
      return errorf("class %zu is named '%s', a number other than its own id", i, name.c_str());
    }
    for (size_t j = 0; j < i; ++j) {
      if (names[j] == name) return errorf("classes %zu and %zu are both named '%s'", j, i, name.c_str());
    }
  }
  class_names_ = std::move(names);
  return Status();
}

std::optional<int32_t> Trainer::null_class() const {
  const int64_t rows = net_.class_embeds();
  if (rows > 0 && rows == static_cast<int64_t>(data_.class_names.size()) + 1) return static_cast<int32_t>(rows - 1);
  return std::nullopt;
}

LrConfig Trainer::lr_config() const {
  LrConfig c;
  c.peak = options_.lr;
  c.warmup = options_.warmup;
  c.schedule = options_.lr_schedule;
  c.total_steps = options_.steps;
  c.min_ratio = options_.min_lr_ratio;
  return c;
}

// ---------------------------------------------------------------------------------------------------------------
// Steps

const std::vector<uint32_t>& Trainer::epoch_order(uint64_t epoch) {
  if (epoch != order_epoch_) {
    order_ = philox_permutation(options_.seed, train_stream(TrainStream::Order, epoch),
                                static_cast<uint32_t>(split_.train.size()));
    order_epoch_ = epoch;
  }
  return order_;
}

void Trainer::fill_batch(int64_t step) {
  const int64_t b_count = options_.batch, n = net_.sample_numel();
  const uint64_t seed = options_.seed, s = static_cast<uint64_t>(step);
  const uint64_t train_count = split_.train.size();
  const uint64_t drop_below = static_cast<uint64_t>(options_.cond_drop * 4294967296.0);
  const std::optional<int32_t> null = null_class();
  int32_t* labels = io_.class_labels ? static_cast<int32_t*>(io_.class_labels->data) : nullptr;
  float* t_input = io_.timesteps->f32();
  for (int64_t b = 0; b < b_count; ++b) {
    const uint64_t k = s * static_cast<uint64_t>(b_count) + static_cast<uint64_t>(b);  // global example number
    const uint32_t index = split_.train[epoch_order(k / train_count)[k % train_count]];
    const bool flip = options_.hflip && (philox_word(seed, train_stream(TrainStream::Flip, s), b) & 1);
    data_.sample(index, flip, x0_.data() + b * n);
    if (labels) {
      labels[b] = data_.labels[index];
      if (null && philox_word(seed, train_stream(TrainStream::LabelDrop, s), b) < drop_below) labels[b] = *null;
    }
    const int64_t t = philox_below(seed, train_stream(TrainStream::Timestep, s), b,
                                   static_cast<uint32_t>(schedule_.num_train_timesteps()));
    timesteps_[static_cast<size_t>(b)] = t;
    t_input[b] = static_cast<float>(t);
  }
  PhiloxGenerator(seed).normal(train_stream(TrainStream::Noise, s), 0, noise_.data(), b_count * n);
  const int batch = static_cast<int>(b_count);
  // Cannot fail: timesteps are in range and sizes match by construction.
  (void)add_noise(schedule_, timesteps_.data(), batch, n, x0_.data(), noise_.data(), io_.sample->f32());
  float* target = target_->f32();
  if (options_.prediction == PredictionType::Epsilon) {
    std::memcpy(target, noise_.data(), noise_.size() * sizeof(float));
  } else if (options_.prediction == PredictionType::VPrediction) {
    (void)get_velocity(schedule_, timesteps_.data(), batch, n, x0_.data(), noise_.data(), target);
  } else {
    std::memcpy(target, x0_.data(), x0_.size() * sizeof(float));
  }
}

Status Trainer::step(ThreadPool& pool, StepStats* stats) {
  DDPM_ASSERT(!export_only());  // open_for_export made this trainer: it has no training graph
  Stopwatch watch(&wall_seconds_);
  fill_batch(step_);
  DDPM_TRY(graph_.compute(pool));
  const float loss = loss_->f32()[0];
  GradientList grads(grads_.size(), nullptr);
  for (size_t i = 0; i < grads_.size(); ++i) grads[i] = grads_[i] ? grads_[i]->f32() : nullptr;
  const double norm = gradient_norm(pool, layout_, grads);
  if (!std::isfinite(loss) || !std::isfinite(norm)) {
    return errorf("step %lld: the loss (%g) or the gradient norm (%g) is not finite; training diverged (try a lower "
                  "--lr or a longer --warmup)", (long long)step_ + 1, static_cast<double>(loss), norm);
  }
  const double lr = learning_rate(lr_config(), step_);
  adamw_update(pool, layout_, grads, clip_factor(norm, options_.grad_clip), lr, step_ + 1, options_.adamw,
               weights_.data(), m_.data(), v_.data());
  ema_update(pool, layout_, ema_decay(options_.ema, step_), weights_.data(), ema_.data());
  losses_.push_back(loss);
  ++step_;
  if (stats) {
    stats->loss = loss;
    stats->grad_norm = norm;
    stats->lr = lr;
  }
  return Status();
}

Status Trainer::validation_loss(ThreadPool& pool, double* loss) {
  DDPM_ASSERT(!export_only());  // open_for_export made this trainer: it has no training graph
  Stopwatch watch(&wall_seconds_);
  const int64_t count = static_cast<int64_t>(split_.validation.size());
  if (count == 0) return errorf("no validation samples (set a validation count)");
  const int64_t b_count = std::min(options_.batch, count), n = net_.sample_numel();
  if (!val_graph_) {
    std::unique_ptr<Graph> g(new Graph());
    DDPM_TRY(net_.build(*g, layout_.lookup(ema_.data()), b_count, &val_io_));
    val_target_ = g->input("target", DType::F32, {b_count, net_.channels, net_.height, net_.width});
    val_loss_ = mse_loss(*g, val_io_.output, val_target_);
    g->set_output(val_loss_);
    DDPM_TRY(g->plan());
    val_graph_ = std::move(g);
  }
  const int64_t batches = count / b_count;  // a partial last batch would need its own graph: left out
  std::vector<float> x0(static_cast<size_t>(b_count * n)), noise(x0.size());
  std::vector<int64_t> timesteps(static_cast<size_t>(b_count));
  const PhiloxGenerator normal(kValidationSeed);
  double sum = 0.0;
  for (int64_t j = 0; j < batches; ++j) {
    for (int64_t b = 0; b < b_count; ++b) {
      const int64_t k = j * b_count + b;
      const uint32_t index = split_.validation[static_cast<size_t>(k)];
      data_.sample(index, false, x0.data() + b * n);
      if (val_io_.class_labels) static_cast<int32_t*>(val_io_.class_labels->data)[b] = data_.labels[index];
      timesteps[static_cast<size_t>(b)] = philox_below(kValidationSeed, train_stream(TrainStream::Validation, 0), k,
                                                       static_cast<uint32_t>(schedule_.num_train_timesteps()));
      val_io_.timesteps->f32()[b] = static_cast<float>(timesteps[static_cast<size_t>(b)]);
    }
    normal.normal(train_stream(TrainStream::Validation, 1), static_cast<uint64_t>(j * b_count * n), noise.data(),
                  b_count * n);
    const int batch = static_cast<int>(b_count);
    (void)add_noise(schedule_, timesteps.data(), batch, n, x0.data(), noise.data(), val_io_.sample->f32());
    float* target = val_target_->f32();
    if (options_.prediction == PredictionType::Epsilon) std::memcpy(target, noise.data(), noise.size() * sizeof(float));
    else if (options_.prediction == PredictionType::VPrediction) {
      (void)get_velocity(schedule_, timesteps.data(), batch, n, x0.data(), noise.data(), target);
    } else {
      std::memcpy(target, x0.data(), x0.size() * sizeof(float));
    }
    DDPM_TRY(val_graph_->compute(pool));
    sum += val_loss_->f32()[0];
  }
  *loss = sum / static_cast<double>(batches);
  validation_.push_back({step_, static_cast<float>(*loss)});
  return Status();
}

Status Trainer::sample(ThreadPool& pool, const SampleRequest& request, std::vector<float>* out) {
  DDPM_ASSERT(!export_only());  // open_for_export made this trainer: it has no training graph
  Stopwatch watch(&wall_seconds_);
  return sample_network(net_, schedule_, layout_.lookup(ema_.data()), pool, request, &sampler_net_, out);
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints

Status Trainer::save_checkpoint(const std::string& path) const {
  DDPM_ASSERT(!export_only());  // open_for_export made this trainer: it has no training graph
  DdpmWriter w;
  std::vector<int64_t> val_steps;
  std::vector<float> val_losses;
  for (const auto& [s, l] : validation_) {
    val_steps.push_back(s);
    val_losses.push_back(l);
  }
  DDPM_TRY(w.set_metadata("ddpm.architecture", MetadataValue::string(kCheckpointArchitecture)));
  DDPM_TRY(w.set_metadata("train.version", MetadataValue::u32(kCheckpointVersion)));
  DDPM_TRY(w.set_metadata("train.net", MetadataValue::string(net_.fingerprint())));
  DDPM_TRY(w.set_metadata("train.scheduler", MetadataValue::string(to_json(scheduler_config_to_json(schedule_.config), false))));
  DDPM_TRY(w.set_metadata("train.options", MetadataValue::string(to_json(options_.to_json(), false))));
  DDPM_TRY(w.set_metadata("train.step", MetadataValue::i64(step_)));
  DDPM_TRY(w.set_metadata("train.data_fingerprint", MetadataValue::u32(data_.fingerprint())));
  DDPM_TRY(w.set_metadata("train.data_count", MetadataValue::i64(data_.count)));
  DDPM_TRY(w.set_metadata("train.data_source", MetadataValue::string(base_name(data_.source))));
  DDPM_TRY(w.set_metadata("train.class_names", MetadataValue::string_array(class_names_)));
  DDPM_TRY(w.set_metadata("train.wall_seconds", MetadataValue::f64(wall_seconds_)));
  DDPM_TRY(w.set_metadata("train.losses", MetadataValue::f32_array(losses_)));
  DDPM_TRY(w.set_metadata("train.validation_steps", MetadataValue::i64_array(val_steps)));
  DDPM_TRY(w.set_metadata("train.validation_losses", MetadataValue::f32_array(val_losses)));
  const int64_t shape[1] = {layout_.total()};
  DDPM_TRY(w.add_tensor("weights", DType::F32, 1, shape, weights_.data()));
  DDPM_TRY(w.add_tensor("ema", DType::F32, 1, shape, ema_.data()));
  DDPM_TRY(w.add_tensor("adam_m", DType::F32, 1, shape, m_.data()));
  DDPM_TRY(w.add_tensor("adam_v", DType::F32, 1, shape, v_.data()));
  return w.finish(path);
}

namespace {

Status open_checkpoint(const std::string& path, DdpmFile* file) {
  DDPM_TRY(DdpmFile::open(path, file));
  std::string architecture;
  DDPM_TRY(file->metadata().get_string("ddpm.architecture", &architecture));
  if (architecture != kCheckpointArchitecture) {
    return errorf("%s is not a training checkpoint (ddpm.architecture '%s'); --resume takes a file written by "
                  "--checkpoint", path.c_str(), architecture.c_str());
  }
  uint32_t version = 0;
  DDPM_TRY(file->metadata().get_u32("train.version", &version));
  if (version != kCheckpointVersion) {
    return errorf("%s: checkpoint version %u is not supported (expected %u)", path.c_str(), version, kCheckpointVersion);
  }
  return Status();
}

Status read_setup(const DdpmFile& file, NetSpec* net, SchedulerConfig* scheduler, TrainOptions* options) {
  const DdpmMetadata& m = file.metadata();
  std::string text;
  JsonValue json;
  DDPM_TRY(m.get_string("train.net", &text));
  DDPM_TRY(NetSpec::from_fingerprint(text, net).with_context(file.path() + ": train.net"));
  DDPM_TRY(m.get_string("train.scheduler", &text));
  DDPM_TRY(parse_json(text, &json).with_context(file.path() + ": train.scheduler"));
  DDPM_TRY(scheduler_config_from_json(json, scheduler).with_context(file.path() + ": train.scheduler"));
  DDPM_TRY(m.get_string("train.options", &text));
  DDPM_TRY(parse_json(text, &json).with_context(file.path() + ": train.options"));
  return TrainOptions::from_json(json, options).with_context(file.path() + ": train.options");
}

}  // namespace

Status Trainer::read_checkpoint_setup(const std::string& path, NetSpec* net, SchedulerConfig* scheduler,
                                      TrainOptions* options) {
  DdpmFile file;
  DDPM_TRY(open_checkpoint(path, &file));
  return read_setup(file, net, scheduler, options);
}

Status Trainer::open_for_export(const std::string& checkpoint, std::unique_ptr<Trainer>* out) {
  DdpmFile file;
  DDPM_TRY(open_checkpoint(checkpoint, &file));
  const DdpmMetadata& m = file.metadata();
  std::unique_ptr<Trainer> t(new Trainer());
  SchedulerConfig scheduler;
  DDPM_TRY(read_setup(file, &t->net_, &scheduler, &t->options_));
  scheduler.prediction_type = t->options_.prediction;  // as create() sets it
  DDPM_TRY(Schedule::create(scheduler, &t->schedule_));
  Dataset& data = t->checkpoint_data_;
  data.channels = t->net_.channels;
  data.height = t->net_.height;
  data.width = t->net_.width;
  std::vector<int64_t> val_steps;
  std::vector<float> val_losses;
  const auto read_history = [&]() -> Status {
    DDPM_TRY(m.get_i64("train.data_count", &data.count));
    DDPM_TRY(m.get_string_array("train.class_names", &data.class_names));
    if (!m.get_string("train.data_source", &data.source).ok()) data.source.clear();  // not in older checkpoints
    DDPM_TRY(m.get_i64("train.step", &t->step_));
    DDPM_TRY(m.get_f32_array("train.losses", &t->losses_));
    DDPM_TRY(m.get_i64_array("train.validation_steps", &val_steps));
    DDPM_TRY(m.get_f32_array("train.validation_losses", &val_losses));
    return m.get_f64("train.wall_seconds", &t->wall_seconds_);
  };
  DDPM_TRY(read_history().with_context(checkpoint));
  if (t->step_ < 0 || static_cast<int64_t>(t->losses_.size()) != t->step_ || val_steps.size() != val_losses.size() ||
      data.count < 0) {
    return errorf("%s: step %lld disagrees with its loss history (%zu values)", checkpoint.c_str(),
                  (long long)t->step_, t->losses_.size());
  }
  for (size_t i = 0; i < val_steps.size(); ++i) t->validation_.push_back({val_steps[i], val_losses[i]});
  t->class_names_ = data.class_names;
  DDPM_TRY(split_dataset(data.count, t->options_.validation, &t->split_).with_context(checkpoint));
  std::vector<ParamSpec> specs;
  DDPM_TRY(t->net_.parameter_specs(&specs));
  t->layout_ = ParamLayout(std::move(specs));
  DDPM_TRY(read_float_tensor(file, "ema", t->layout_.total(), &t->ema_));
  *out = std::move(t);
  return Status();
}

Status Trainer::load_checkpoint(const std::string& path) {
  DDPM_ASSERT(!export_only());  // open_for_export made this trainer: it has no training graph
  DdpmFile file;
  DDPM_TRY(open_checkpoint(path, &file));
  const DdpmMetadata& m = file.metadata();
  NetSpec net;
  SchedulerConfig scheduler;
  TrainOptions options;
  DDPM_TRY(read_setup(file, &net, &scheduler, &options));
  if (net.fingerprint() != net_.fingerprint()) {
    JsonValue there, here;
    DDPM_TRY(parse_json(net.fingerprint(), &there));
    DDPM_TRY(parse_json(net_.fingerprint(), &here));
    std::string difference = first_difference(there, here);
    if (there.find("config") && here.find("config") && net.kind == net_.kind) {
      difference = first_difference(*there.find("config"), *here.find("config"));
      if (difference.empty()) difference = first_difference(there, here, "config");
    }
    return errorf("%s holds a different architecture (%s): it cannot resume this run", path.c_str(),
                  difference.c_str());
  }
  const std::string sched_there = to_json(scheduler_config_to_json(scheduler), false);
  const std::string sched_here = to_json(scheduler_config_to_json(schedule_.config), false);
  if (sched_there != sched_here) {
    JsonValue there, here;
    DDPM_TRY(parse_json(sched_there, &there));
    DDPM_TRY(parse_json(sched_here, &here));
    return errorf("%s was trained with another noise schedule (%s)", path.c_str(), first_difference(there, here).c_str());
  }
  // The step count may grow (a longer run continues the same trajectory), except under a cosine schedule, whose
  // shape depends on it.
  const std::string difference = first_difference(options.to_json(), options_.to_json(),
                                                  options_.lr_schedule == LrSchedule::Cosine ? nullptr : "steps");
  if (!difference.empty()) {
    return errorf("%s was trained with other options (%s); resuming with them would not continue the same run",
                  path.c_str(), difference.c_str());
  }
  uint32_t fingerprint = 0;
  int64_t count = 0, step = 0;
  DDPM_TRY(m.get_u32("train.data_fingerprint", &fingerprint));
  DDPM_TRY(m.get_i64("train.data_count", &count));
  if (fingerprint != data_.fingerprint() || count != data_.count) {
    return errorf("%s was trained on other data (%lld samples, checksum %08x; %s has %lld samples, checksum %08x)",
                  path.c_str(), (long long)count, fingerprint, data_.source.c_str(), (long long)data_.count,
                  data_.fingerprint());
  }
  DDPM_TRY(m.get_i64("train.step", &step));
  std::vector<float> losses, val_losses;
  std::vector<int64_t> val_steps;
  std::vector<std::string> class_names;
  double wall = 0;
  DDPM_TRY(m.get_string_array("train.class_names", &class_names));
  if (class_names.size() != class_names_.size()) {
    return errorf("%s: %zu class names for %zu classes", path.c_str(), class_names.size(), class_names_.size());
  }
  DDPM_TRY(m.get_f32_array("train.losses", &losses));
  DDPM_TRY(m.get_i64_array("train.validation_steps", &val_steps));
  DDPM_TRY(m.get_f32_array("train.validation_losses", &val_losses));
  DDPM_TRY(m.get_f64("train.wall_seconds", &wall));
  if (step < 0 || static_cast<int64_t>(losses.size()) != step || val_steps.size() != val_losses.size()) {
    return errorf("%s: step %lld disagrees with its loss history (%zu values)", path.c_str(), (long long)step,
                  losses.size());
  }
  const int64_t total = layout_.total();
  std::vector<float> weights, ema, am, av;
  DDPM_TRY(read_float_tensor(file, "weights", total, &weights));
  DDPM_TRY(read_float_tensor(file, "ema", total, &ema));
  DDPM_TRY(read_float_tensor(file, "adam_m", total, &am));
  DDPM_TRY(read_float_tensor(file, "adam_v", total, &av));
  // The graphs hold pointers into these buffers: copy into them, never replace them.
  std::copy(weights.begin(), weights.end(), weights_.begin());
  std::copy(ema.begin(), ema.end(), ema_.begin());
  std::copy(am.begin(), am.end(), m_.begin());
  std::copy(av.begin(), av.end(), v_.begin());
  step_ = step;
  losses_ = std::move(losses);
  validation_.clear();
  for (size_t i = 0; i < val_steps.size(); ++i) validation_.push_back({val_steps[i], val_losses[i]});
  wall_seconds_ = wall;
  class_names_ = std::move(class_names);
  return Status();
}

// ---------------------------------------------------------------------------------------------------------------
// Export

double Trainer::final_loss() const {
  const size_t tail = std::min(losses_.size(), kFinalLossSteps);
  double sum = 0;
  for (size_t i = losses_.size() - tail; i < losses_.size(); ++i) sum += losses_[i];
  return tail ? sum / static_cast<double>(tail) : 0.0;
}

Status Trainer::export_model(const std::string& path, const ExportOptions& export_options) const {
  DdpmMetadata m;
  const SchedulerConfig& scheduler = schedule_.config;
  if (net_.kind == NetKind::UNet2D) {
    ModelInfo info;
    info.unet = net_.unet;
    info.unet.sample_size = net_.height == net_.width ? std::vector<int64_t>{net_.height}
                                                       : std::vector<int64_t>{net_.height, net_.width};
    info.scheduler = scheduler;
    info.height = net_.height;
    info.width = net_.width;
    info.channels = net_.channels;
    if (net_.class_embeds() > 0) info.class_names = class_names_;
    info.null_class = null_class();
    if (info.null_class) info.default_guidance_scale = export_options.default_guidance_scale;
    info.default_sampler = "ddim";
    info.default_steps = 50;
    DDPM_TRY(model_info_to_metadata(info, &m));
  } else {
    DDPM_TRY(m.set("ddpm.architecture", MetadataValue::string(net_.architecture())));
    DDPM_TRY(m.set("mlp.config", MetadataValue::string(to_json(net_.mlp.to_json(), true))));
    DDPM_TRY(m.set("scheduler.config", MetadataValue::string(to_json(scheduler_config_to_json(scheduler), true))));
    DDPM_TRY(m.set("data.channels", MetadataValue::u32(1)));
  }
  DDPM_TRY(m.set("provenance.tool", MetadataValue::string(std::string("ddpm.cpp ") + DDPM_VERSION + " train")));
  if (!data_.source.empty()) {
    DDPM_TRY(m.set("provenance.source_file", MetadataValue::string(base_name(data_.source))));
  }
  DDPM_TRY(m.set("provenance.created", MetadataValue::string(utc_now())));
  // How the weights came to be.
  DDPM_TRY(m.set("training.weights", MetadataValue::string("ema")));
  DDPM_TRY(m.set("training.steps", MetadataValue::u64(static_cast<uint64_t>(step_))));
  DDPM_TRY(m.set("training.batch", MetadataValue::u32(static_cast<uint32_t>(options_.batch))));
  DDPM_TRY(m.set("training.images_seen", MetadataValue::u64(static_cast<uint64_t>(step_ * options_.batch))));
  DDPM_TRY(m.set("training.lr", MetadataValue::f64(options_.lr)));
  DDPM_TRY(m.set("training.lr_schedule", MetadataValue::string(to_string(options_.lr_schedule))));
  DDPM_TRY(m.set("training.warmup", MetadataValue::u64(static_cast<uint64_t>(options_.warmup))));
  DDPM_TRY(m.set("training.weight_decay", MetadataValue::f64(options_.adamw.weight_decay)));
  DDPM_TRY(m.set("training.grad_clip", MetadataValue::f64(options_.grad_clip)));
  DDPM_TRY(m.set("training.ema_decay", MetadataValue::f64(options_.ema)));
  DDPM_TRY(m.set("training.prediction_type", MetadataValue::string(to_string(options_.prediction))));
  DDPM_TRY(m.set("training.cond_drop", MetadataValue::f64(options_.cond_drop)));
  DDPM_TRY(m.set("training.hflip", MetadataValue::boolean(options_.hflip)));
  DDPM_TRY(m.set("training.seed", MetadataValue::u64(options_.seed)));
  DDPM_TRY(m.set("training.data_samples", MetadataValue::u64(static_cast<uint64_t>(split_.train.size()))));
  DDPM_TRY(m.set("training.final_loss", MetadataValue::f32(static_cast<float>(final_loss()))));
  if (!validation_.empty()) {
    DDPM_TRY(m.set("training.final_validation_loss", MetadataValue::f32(validation_.back().second)));
  }
  DDPM_TRY(m.set("training.wall_seconds", MetadataValue::f64(wall_seconds_)));
  if (net_.kind == NetKind::UNet2D) DDPM_TRY(validate_unet2d_metadata(m));
  DdpmWriter w;
  w.set_metadata(std::move(m));
  for (size_t i = 0; i < layout_.size(); ++i) {
    const ParamSpec& spec = layout_.specs()[i];
    DDPM_TRY(w.add_tensor(spec.name, DType::F32, static_cast<int>(spec.shape.size()), spec.shape.data(),
                          ema_.data() + layout_.offset(i)));
  }
  return w.finish(path);
}

}  // namespace ddpm
