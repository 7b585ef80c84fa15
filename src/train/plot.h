// The loss-curve PNG: our own small plotter (RGB canvas, lines, a built-in 5×7 bitmap font for tick labels and
// titles) drawing training losses against the step on a log-scale loss axis.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

// Bias-corrected exponential moving average of `values` (what the progress line and the curve show as the smoothed
// loss): s_i = β·s_{i−1} + (1 − β)·v_i, reported as s_i / (1 − β^(i+1)).
std::vector<double> smooth_losses(const std::vector<float>& values, double beta);

// An RGB image with the drawing primitives the plot needs.
class Canvas {
 public:
  Canvas(int width, int height, uint32_t background);
  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<uint8_t>& pixels() const { return pixels_; }  // rows of width·3 bytes, top first

  void set(int x, int y, uint32_t rgb);
  void line(double x0, double y0, double x1, double y1, uint32_t rgb);
  void fill_rect(int x, int y, int w, int h, uint32_t rgb);
  // Text in the 5×7 font, `scale`× enlarged, top-left at (x, y); letters are drawn lower-case, unknown characters
  // as blanks. Returns the width drawn.
  int text(int x, int y, const std::string& s, uint32_t rgb, int scale = 1);
  static int text_width(const std::string& s, int scale = 1);

 private:
  int width_, height_;
  std::vector<uint8_t> pixels_;
};

// Renders the curve: raw per-step losses (light), their smoothed version (dark; a window of ~2% of the run) and
// validation losses (points), with step ticks on x and decade (and 2×, 5×) ticks on the log loss axis.
Canvas plot_losses(const std::vector<float>& losses, const std::vector<std::pair<int64_t, float>>& validation,
                   int width = 800, int height = 480);
Status write_loss_curve(const std::string& path, const std::vector<float>& losses,
                        const std::vector<std::pair<int64_t, float>>& validation);

}  // namespace ddpm
