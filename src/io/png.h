// PNG reading and writing, our own code on top of io/deflate.
//
// Writing: 8-bit gray, gray+alpha, RGB and RGBA, with per-row adaptive filtering and optional tEXt chunks. Files
// are written atomically (a temporary file renamed into place), so a reader never sees a half-written image.
//
// Reading: every standard colour type and bit depth, palettes (with tRNS transparency), 16-bit samples (reduced to
// 8 bits by keeping the high byte) and Adam7 interlacing, always returned as 8-bit interleaved samples. CRCs are
// checked; unknown critical chunks are refused; tEXt and zTXt text is returned; other ancillary chunks are skipped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

using TextChunks = std::vector<std::pair<std::string, std::string>>;  // keyword, text (Latin-1)

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;             // 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
  std::vector<uint8_t> pixels;  // height rows of width * channels bytes, top row first
  TextChunks text;
};

// Largest image either direction accepts: 16384 on a side and 2^28 pixels in all.
constexpr int kPngMaxSide = 16384;
constexpr int64_t kPngMaxPixels = int64_t(1) << 28;

// pixels: height * width * channels bytes, rows top first. Keywords must be 1-79 printable Latin-1 characters
// without leading, trailing or doubled spaces; text must not contain NUL.
Status encode_png(int width, int height, int channels, const uint8_t* pixels, const TextChunks& text,
                  std::vector<uint8_t>* out);
Status write_png(const std::string& path, int width, int height, int channels, const uint8_t* pixels,
                 const TextChunks& text);

// name is used only in error messages.
Status decode_png(const uint8_t* bytes, size_t size, const std::string& name, Image* out);
Status read_png(const std::string& path, Image* out);

}  // namespace ddpm
