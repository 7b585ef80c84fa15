#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "io/png.h"

namespace ddpm {
namespace {

// 5×7 glyphs, one byte per row, bit 4 = leftmost column.
struct Glyph {
  char c;
  uint8_t rows[7];
};

// clang-format off
const Glyph kFont[] = {
  {'0', {0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110}},
  {'1', {0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110}},
  {'2', {0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111}},
  {'3', {0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110}},
  {'4', {0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010}},
  {'5', {0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110}},
  {'6', {0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110}},
  {'7', {0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000}},
  {'8', {0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110}},
  {'9', {0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100}},
  {'.', {0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100}},
  {'-', {0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000}},
  {'+', {0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000}},
  {'(', {0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010}},
  {')', {0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000}},
  {':', {0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000}},
  {'/', {0b00001, 0b00010, 0b00010, 0b00100, 0b01000, 0b01000, 0b10000}},
  {'=', {0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000}},
  {',', {0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000}},
  {'a', {0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111}},
  {'b', {0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110}},
  {'c', {0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110}},
  {'d', {0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111}},
  {'e', {0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110}},
  {'f', {0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000}},
  {'g', {0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110}},
  {'h', {0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001}},
  {'i', {0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110}},
  {'j', {0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100}},
  {'k', {0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010}},
  {'l', {0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110}},
  {'m', {0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001}},
  {'n', {0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001}},
  {'o', {0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110}},
  {'p', {0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000}},
  {'q', {0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001}},
  {'r', {0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000}},
  {'s', {0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110}},
  {'t', {0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110}},
  {'u', {0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101}},
  {'v', {0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100}},
  {'w', {0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010}},
  {'x', {0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001}},
  {'y', {0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110}},
  {'z', {0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111}},
};
// clang-format on

const Glyph* find_glyph(char c) {
  if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  for (const Glyph& g : kFont) {
    if (g.c == c) return &g;
  }
  return nullptr;
}

constexpr uint32_t kWhite = 0xFFFFFF, kAxis = 0x202020, kGrid = 0xE4E4E4, kMinorGrid = 0xF2F2F2;
constexpr uint32_t kRaw = 0xB8CCE4, kSmooth = 0x1F4E9A, kValidation = 0xD03020;

// Tick label text: shortest %g form ("0.05", "2000", "1e-05").
std::string tick_text(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", v);
  return buffer;
}

// A 1-2-5 step giving about `target` intervals over `span`.
double nice_step(double span, int target) {
  const double raw = span / target;
  const double decade = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0}) {
    if (m * decade >= raw) return m * decade;
  }
  return 10.0 * decade;
}

}  // namespace

std::vector<double> smooth_losses(const std::vector<float>& values, double beta) {
  std::vector<double> out(values.size());
  double s = 0.0, weight = 1.0;
  for (size_t i = 0; i < values.size(); ++i) {
    s = beta * s + (1.0 - beta) * values[i];
    weight *= beta;
    out[i] = s / (1.0 - weight);
  }
  return out;
}

Canvas::Canvas(int width, int height, uint32_t background)
    : width_(width), height_(height), pixels_(static_cast<size_t>(width) * height * 3) {
  fill_rect(0, 0, width, height, background);
}

void Canvas::set(int x, int y, uint32_t rgb) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  uint8_t* p = pixels_.data() + (static_cast<size_t>(y) * width_ + x) * 3;
  p[0] = static_cast<uint8_t>(rgb >> 16);
  p[1] = static_cast<uint8_t>(rgb >> 8);
  p[2] = static_cast<uint8_t>(rgb);
}

void Canvas::line(double x0, double y0, double x1, double y1, uint32_t rgb) {
  // Steps of at most one pixel along the longer axis, every point rounded to its pixel.
  const double dx = x1 - x0, dy = y1 - y0;
  const int steps = static_cast<int>(std::ceil(std::max(std::fabs(dx), std::fabs(dy))));
  if (steps > 100000 || !std::isfinite(dx) || !std::isfinite(dy)) return;
  for (int i = 0; i <= steps; ++i) {
    const double f = steps ? static_cast<double>(i) / steps : 0.0;
    set(static_cast<int>(std::lround(x0 + f * dx)), static_cast<int>(std::lround(y0 + f * dy)), rgb);
  }
}

void Canvas::fill_rect(int x, int y, int w, int h, uint32_t rgb) {
  for (int j = y; j < y + h; ++j) {
    for (int i = x; i < x + w; ++i) set(i, j, rgb);
  }
}

int Canvas::text_width(const std::string& s, int scale) {
  return s.empty() ? 0 : static_cast<int>(s.size()) * 6 * scale - scale;
}

int Canvas::text(int x, int y, const std::string& s, uint32_t rgb, int scale) {
  for (size_t k = 0; k < s.size(); ++k) {
    const Glyph* g = find_glyph(s[k]);
    if (!g) continue;
    const int left = x + static_cast<int>(k) * 6 * scale;
    for (int row = 0; row < 7; ++row) {
      for (int col = 0; col < 5; ++col) {
        if (g->rows[row] & (0x10 >> col)) fill_rect(left + col * scale, y + row * scale, scale, scale, rgb);
      }
    }
  }
  return text_width(s, scale);
}

Canvas plot_losses(const std::vector<float>& losses, const std::vector<std::pair<int64_t, float>>& validation,
                   int width, int height) {
  Canvas c(width, height, kWhite);
  const int left = 64, right = width - 16, top = 36, bottom = height - 40;  // plot area
  // Smoothing over about 2% of the run (5 to 500 steps): enough to read a trend without lagging behind it.
  const double window = std::min(500.0, std::max(5.0, losses.size() / 50.0));
  const std::vector<double> smooth = smooth_losses(losses, 1.0 - 1.0 / window);
  // Loss range over every positive value shown.
  double lo = INFINITY, hi = 0;
  auto include = [&](double v) {
    if (v > 0 && std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  };
  for (float v : losses) include(v);
  for (const auto& p : validation) include(p.second);
  if (!(hi > 0)) {
    lo = 0.1;
    hi = 1;
  }
  const double log_lo = std::floor(std::log10(lo) * 4) / 4, log_hi = std::max(log_lo + 0.25, std::ceil(std::log10(hi) * 4) / 4);
  const double max_step = std::max<double>(1.0, static_cast<double>(std::max<size_t>(losses.size(), 1)));
  auto px = [&](double step) { return left + (right - left) * step / max_step; };
  auto py = [&](double loss) {
    const double l = std::log10(std::max(loss, lo));
    return bottom - (bottom - top) * (l - log_lo) / (log_hi - log_lo);
  };

  // Grid and ticks: decades labelled, 2× and 5× labelled when the axis spans at most two decades.
  const bool label_minor = log_hi - log_lo <= 2.0;
  for (int decade = static_cast<int>(std::floor(log_lo)); decade <= static_cast<int>(std::ceil(log_hi)); ++decade) {
    for (int m = 1; m <= 9; ++m) {
      const double v = m * std::pow(10.0, decade);
      const double l = std::log10(v);
      if (l < log_lo - 1e-9 || l > log_hi + 1e-9) continue;
      const int y = static_cast<int>(std::lround(py(v)));
      c.line(left, y, right, y, m == 1 ? kGrid : kMinorGrid);
      c.line(left - (m == 1 ? 6 : 3), y, left, y, kAxis);
      if (m == 1 || (label_minor && (m == 2 || m == 5))) {
        const std::string label = tick_text(v);
        c.text(left - 8 - Canvas::text_width(label), y - 3, label, kAxis);
      }
    }
  }
  const double step_tick = nice_step(max_step, 8);
  for (double s = 0; s <= max_step + 1e-9; s += step_tick) {
    const int x = static_cast<int>(std::lround(px(s)));
    c.line(x, top, x, bottom, kGrid);
    c.line(x, bottom, x, bottom + 5, kAxis);
    const std::string label = tick_text(s);
    c.text(x - Canvas::text_width(label) / 2, bottom + 9, label, kAxis);
  }
  c.line(left, top, left, bottom, kAxis);
  c.line(left, bottom, right, bottom, kAxis);

  // Curves: x of loss i is step i + 1 (the loss of the i-th update).
  for (size_t i = 1; i < losses.size(); ++i) c.line(px(i), py(losses[i - 1]), px(i + 1.0), py(losses[i]), kRaw);
  for (size_t i = 1; i < smooth.size(); ++i) c.line(px(i), py(smooth[i - 1]), px(i + 1.0), py(smooth[i]), kSmooth);
  for (size_t i = 0; i < validation.size(); ++i) {
    const double x = px(static_cast<double>(validation[i].first)), y = py(validation[i].second);
    if (i > 0) c.line(px(static_cast<double>(validation[i - 1].first)), py(validation[i - 1].second), x, y, kValidation);
    c.fill_rect(static_cast<int>(std::lround(x)) - 2, static_cast<int>(std::lround(y)) - 2, 5, 5, kValidation);
  }

  // Titles and legend.
  c.text(left, 10, "loss (log scale)", kAxis, 2);
  c.text((left + right) / 2 - Canvas::text_width("step") / 2, height - 14, "step", kAxis);
  std::vector<std::pair<std::string, uint32_t>> legend = {{"train", kRaw}, {"smoothed", kSmooth}};
  if (!validation.empty()) legend.push_back({"validation (ema)", kValidation});
  int x = right;
  for (const auto& entry : legend) x -= 30 + Canvas::text_width(entry.first);
  for (const auto& [name, colour] : legend) {
    c.fill_rect(x, 14, 12, 3, colour);
    x += 16;
    x += c.text(x, 12, name, kAxis) + 14;
  }
  return c;
}

Status write_loss_curve(const std::string& path, const std::vector<float>& losses,
                        const std::vector<std::pair<int64_t, float>>& validation) {
  const Canvas c = plot_losses(losses, validation);
  return write_png(path, c.width(), c.height(), 3, c.pixels().data(), {{"Software", "ddpm.cpp train"}});
}

}  // namespace ddpm
