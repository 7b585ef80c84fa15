#include "train/optim.h"

#include <cmath>

namespace ddpm {

const char* to_string(LrSchedule schedule) { return schedule == LrSchedule::Cosine ? "cosine" : "constant"; }

Status parse_lr_schedule(const std::string& text, LrSchedule* out) {
  if (text == "constant") *out = LrSchedule::Constant;
  else if (text == "cosine") *out = LrSchedule::Cosine;
  else return errorf("learning-rate schedule '%s' is not constant or cosine", text.c_str());
  return Status();
}

double learning_rate(const LrConfig& c, int64_t step) {
  if (step < c.warmup) return c.peak * static_cast<double>(step + 1) / static_cast<double>(c.warmup);
  if (c.schedule == LrSchedule::Constant) return c.peak;
  const double span = static_cast<double>(std::max<int64_t>(1, c.total_steps - c.warmup));
  const double progress = std::min(1.0, static_cast<double>(step - c.warmup) / span);
  const double cosine = 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress));
  return c.peak * (c.min_ratio + (1.0 - c.min_ratio) * cosine);
}

double gradient_norm(ThreadPool& pool, const ParamLayout& layout, const GradientList& grads) {
  const std::vector<ParamLayout::Piece>& pieces = layout.pieces();
  std::vector<double> partial(pieces.size(), 0.0);
  pool.run(static_cast<int64_t>(pieces.size()), [&](int64_t task, int) {
    const ParamLayout::Piece& piece = pieces[static_cast<size_t>(task)];
    const float* g = grads[piece.param];
    if (!g) return;
    const int64_t base = layout.offset(piece.param);  // g is indexed from the parameter's start
    double sum = 0.0;
    for (int64_t i = piece.begin; i < piece.end; ++i) sum += static_cast<double>(g[i - base]) * g[i - base];
    partial[static_cast<size_t>(task)] = sum;
  });
  double total = 0.0;
  for (double s : partial) total += s;
  return std::sqrt(total);
}

float clip_factor(double norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0f;
  const double factor = max_norm / (norm + 1e-6);
  return factor < 1.0 ? static_cast<float>(factor) : 1.0f;
}

void adamw_update(ThreadPool& pool, const ParamLayout& layout, const GradientList& grads, float grad_scale, double lr,
                  int64_t t, const AdamWConfig& c, float* weights, float* m, float* v) {
  const float b1 = static_cast<float>(c.beta1), b2 = static_cast<float>(c.beta2);
  const double correction1 = 1.0 - std::pow(c.beta1, static_cast<double>(t));
  const double correction2 = 1.0 - std::pow(c.beta2, static_cast<double>(t));
  const float step_size = static_cast<float>(lr / correction1);
  const float inv_sqrt_c2 = static_cast<float>(1.0 / std::sqrt(correction2));
  const float eps = static_cast<float>(c.eps);
  const std::vector<ParamLayout::Piece>& pieces = layout.pieces();
  pool.run(static_cast<int64_t>(pieces.size()), [&](int64_t task, int) {
    const ParamLayout::Piece& piece = pieces[static_cast<size_t>(task)];
    const bool decays = layout.specs()[piece.param].shape.size() >= 2;
    const float keep = decays ? static_cast<float>(1.0 - lr * c.weight_decay) : 1.0f;
    const float* g = grads[piece.param];
    const int64_t base = layout.offset(piece.param);
    for (int64_t i = piece.begin; i < piece.end; ++i) {
      const float gi = g ? g[i - base] * grad_scale : 0.0f;
      m[i] = b1 * m[i] + (1.0f - b1) * gi;
      v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
      weights[i] = weights[i] * keep - step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_c2 + eps);
    }
  });
}

double ema_decay(double max_decay, int64_t updates) {
  const double warm = (1.0 + static_cast<double>(updates)) / (10.0 + static_cast<double>(updates));
  return std::min(max_decay, warm);
}

void ema_update(ThreadPool& pool, const ParamLayout& layout, double decay, const float* weights, float* ema) {
  const float d = static_cast<float>(decay), one_minus_d = static_cast<float>(1.0 - decay);
  const std::vector<ParamLayout::Piece>& pieces = layout.pieces();
  pool.run(static_cast<int64_t>(pieces.size()), [&](int64_t task, int) {
    const ParamLayout::Piece& piece = pieces[static_cast<size_t>(task)];
    for (int64_t i = piece.begin; i < piece.end; ++i) ema[i] = d * ema[i] + one_minus_d * weights[i];
  });
}

}  // namespace ddpm
