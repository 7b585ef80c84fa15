#include "io/png.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "io/atomic_file.h"
#include "io/deflate.h"
#include "io/mapped_file.h"

namespace ddpm {
namespace {

constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
constexpr size_t kMaxIdatChunk = size_t(1) << 20;
constexpr size_t kMaxCompressedText = size_t(1) << 24;

enum ColorType : uint8_t { kGray = 0, kRgb = 2, kPalette = 3, kGrayAlpha = 4, kRgba = 6 };

uint32_t load32_be(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

void append32_be(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(uint8_t(v >> (8 * i)));
}

void append_chunk(std::vector<uint8_t>* out, const char type[4], const uint8_t* data, size_t size) {
  append32_be(out, uint32_t(size));
  size_t crc_start = out->size();
  out->insert(out->end(), type, type + 4);
  if (size > 0) out->insert(out->end(), data, data + size);
  append32_be(out, crc32(out->data() + crc_start, size + 4));
}

// The Paeth predictor (PNG spec 9.4): whichever of left, up and upper-left is closest to left + up - upper-left,
// ties broken in that order.
uint8_t paeth(int left, int up, int upper_left) {
  int estimate = left + up - upper_left;
  int to_left = std::abs(estimate - left);
  int to_up = std::abs(estimate - up);
  int to_upper_left = std::abs(estimate - upper_left);
  if (to_left <= to_up && to_left <= to_upper_left) return uint8_t(left);
  if (to_up <= to_upper_left) return uint8_t(up);
  return uint8_t(upper_left);
}

// Value filter `type` subtracts from row[i]; earlier bytes of `row` and all of `previous` are unfiltered.
inline uint8_t prediction(int type, const uint8_t* row, const uint8_t* previous, size_t i, size_t bpp) {
  int left = i >= bpp ? row[i - bpp] : 0;
  int up = previous[i];
  int upper_left = i >= bpp ? previous[i - bpp] : 0;
  switch (type) {
    case 1:
      return uint8_t(left);
    case 2:
      return uint8_t(up);
    case 3:
      return uint8_t((left + up) >> 1);
    case 4:
      return paeth(left, up, upper_left);
    default:
      return 0;
  }
}

void unfilter_row(int type, uint8_t* row, const uint8_t* previous, size_t size, size_t bpp) {
  if (type == 0) return;
  if (type == 2) {
    for (size_t i = 0; i < size; ++i) row[i] = uint8_t(row[i] + previous[i]);
    return;
  }
  for (size_t i = 0; i < size; ++i) row[i] = uint8_t(row[i] + prediction(type, row, previous, i, bpp));
}

bool is_keyword_char(uint8_t c) { return (c >= 32 && c <= 126) || c >= 161; }

Status validate_keyword(const std::string& keyword) {
  if (keyword.empty() || keyword.size() > 79)
    return errorf("PNG text keyword \"%s\" must be 1 to 79 characters long (it is %zu)", keyword.c_str(),
                  keyword.size());
  for (size_t i = 0; i < keyword.size(); ++i) {
    uint8_t c = uint8_t(keyword[i]);
    if (!is_keyword_char(c))
      return errorf("PNG text keyword \"%s\" contains byte 0x%02x, not a printable Latin-1 character", keyword.c_str(),
                    c);
    if (c == ' ' && (i == 0 || i + 1 == keyword.size() || keyword[i + 1] == ' '))
      return errorf("PNG text keyword \"%s\" has leading, trailing or consecutive spaces", keyword.c_str());
  }
  return Status();
}

Status validate_dimensions(int64_t width, int64_t height) {
  if (width < 1 || height < 1 || width > kPngMaxSide || height > kPngMaxSide || width * height > kPngMaxPixels)
    return errorf("PNG size %lldx%lld is outside the supported range (1 to %d per side, at most %lld pixels)",
                  static_cast<long long>(width), static_cast<long long>(height), kPngMaxSide,
                  static_cast<long long>(kPngMaxPixels));
  return Status();
}

// ------------------------------------------------------------------------------------------------------------------
// Decoding.

struct Header {
  uint32_t width = 0;
  uint32_t height = 0;
  int bit_depth = 0;
  int color_type = 0;
  bool interlaced = false;
  int file_channels = 0;  // samples per pixel as stored
  int bits_per_pixel = 0;
};

struct Transparency {
  bool present = false;
  uint16_t gray = 0;     // colour type 0
  uint16_t rgb[3] = {};  // colour type 2
};

struct Pass {
  uint32_t x0, y0, dx, dy;
};

// Adam7: seven passes over an 8x8 grid, coarse to fine.
constexpr Pass kAdam7[7] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                            {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
constexpr Pass kWholeImage = {0, 0, 1, 1};

uint32_t pass_extent(uint32_t size, uint32_t start, uint32_t step) {
  return size > start ? (size - start + step - 1) / step : 0;
}

class PngDecoder {
 public:
  PngDecoder(const uint8_t* bytes, size_t size, const std::string& name) : bytes_(bytes), size_(size), name_(name) {}

  Status decode(Image* out) {
    DDPM_TRY(read_chunks());
    DDPM_TRY(decode_pixels(out));
    out->text = std::move(text_);
    return Status();
  }

 private:
  const char* name() const { return name_.c_str(); }

  Status read_chunks() {
    if (size_ < 8 || std::memcmp(bytes_, kSignature, 8) != 0)
      return errorf("%s: not a PNG file (bad signature)", name());
    size_t pos = 8;
    bool have_header = false, have_palette = false, seen_image_data = false, image_data_ended = false;
    for (;;) {
      if (size_ - pos < 12) return errorf("%s: truncated at byte %zu (no IEND chunk)", name(), pos);
      uint32_t length = load32_be(bytes_ + pos);
      const uint8_t* type_bytes = bytes_ + pos + 4;
      for (int i = 0; i < 4; ++i) {
        uint8_t c = type_bytes[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
          return errorf("%s: invalid chunk type at byte %zu", name(), pos);
      }
      char type[5] = {char(type_bytes[0]), char(type_bytes[1]), char(type_bytes[2]), char(type_bytes[3]), 0};
      if (length > 0x7FFFFFFFu)
        return errorf("%s: %s chunk at byte %zu has invalid length %u", name(), type, pos, length);
      if (size_ - pos - 12 < length)
        return errorf("%s: %s chunk at byte %zu is truncated (%u bytes declared, %zu present)", name(), type, pos,
                      length, size_ - pos - 12);
      const uint8_t* data = bytes_ + pos + 8;
      uint32_t stored_crc = load32_be(data + length);
      uint32_t actual_crc = crc32(type_bytes, size_t(length) + 4);
      if (stored_crc != actual_crc)
        return errorf("%s: CRC mismatch in %s chunk at byte %zu (stored %08x, computed %08x)", name(), type, pos,
                      stored_crc, actual_crc);
      const size_t chunk_pos = pos;
      pos += size_t(length) + 12;

      if (!have_header && std::strcmp(type, "IHDR") != 0)
        return errorf("%s: first chunk is %s, not IHDR", name(), type);
      if (seen_image_data && std::strcmp(type, "IDAT") != 0) image_data_ended = true;

      if (std::strcmp(type, "IHDR") == 0) {
        if (have_header) return errorf("%s: second IHDR chunk at byte %zu", name(), chunk_pos);
        DDPM_TRY(parse_header(data, length));
        have_header = true;
      } else if (std::strcmp(type, "PLTE") == 0) {
        if (have_palette) return errorf("%s: second PLTE chunk at byte %zu", name(), chunk_pos);
        if (seen_image_data) return errorf("%s: PLTE chunk after image data", name());
        DDPM_TRY(parse_palette(data, length));
        have_palette = true;
      } else if (std::strcmp(type, "IDAT") == 0) {
        if (image_data_ended)
          return errorf("%s: IDAT chunks are not consecutive (another at byte %zu)", name(), chunk_pos);
        compressed_.insert(compressed_.end(), data, data + length);
        seen_image_data = true;
      } else if (std::strcmp(type, "IEND") == 0) {
        break;  // anything after IEND is not part of the image
      } else if ((type_bytes[0] & 0x20) == 0) {
        return errorf("%s: unknown critical chunk %s at byte %zu", name(), type, chunk_pos);
      } else if (std::strcmp(type, "tRNS") == 0) {
        if (!seen_image_data) parse_transparency(data, length, have_palette);
      } else if (std::strcmp(type, "tEXt") == 0) {
        parse_text(data, length);
      } else if (std::strcmp(type, "zTXt") == 0) {
        parse_compressed_text(data, length);
      }
      // Other ancillary chunks (gAMA, pHYs, ...) do not change the samples we return.
    }
    if (!seen_image_data) return errorf("%s: no IDAT chunk", name());
    if (header_.color_type == kPalette && !have_palette)
      return errorf("%s: palette image without a PLTE chunk", name());
    return Status();
  }

  Status parse_header(const uint8_t* data, uint32_t length) {
    if (length != 13) return errorf("%s: IHDR chunk has length %u, expected 13", name(), length);
    header_.width = load32_be(data);
    header_.height = load32_be(data + 4);
    header_.bit_depth = data[8];
    header_.color_type = data[9];
    Status dimensions = validate_dimensions(header_.width, header_.height);
    if (!dimensions.ok()) return dimensions.with_context(name_);
    int depth = header_.bit_depth;
    bool valid = false;
    switch (header_.color_type) {
      case kGray:
        valid = depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16;
        header_.file_channels = 1;
        break;
      case kPalette:
        valid = depth == 1 || depth == 2 || depth == 4 || depth == 8;
        header_.file_channels = 1;
        break;
      case kRgb:
        valid = depth == 8 || depth == 16;
        header_.file_channels = 3;
        break;
      case kGrayAlpha:
        valid = depth == 8 || depth == 16;
        header_.file_channels = 2;
        break;
      case kRgba:
        valid = depth == 8 || depth == 16;
        header_.file_channels = 4;
        break;
      default:
        return errorf("%s: invalid colour type %d", name(), header_.color_type);
    }
    if (!valid) return errorf("%s: bit depth %d is not allowed for colour type %d", name(), depth, header_.color_type);
    if (data[10] != 0) return errorf("%s: unknown compression method %u", name(), data[10]);
    if (data[11] != 0) return errorf("%s: unknown filter method %u", name(), data[11]);
    if (data[12] > 1) return errorf("%s: unknown interlace method %u", name(), data[12]);
    header_.interlaced = data[12] == 1;
    header_.bits_per_pixel = header_.file_channels * depth;
    return Status();
  }

  Status parse_palette(const uint8_t* data, uint32_t length) {
    if (header_.color_type == kGray || header_.color_type == kGrayAlpha)
      return errorf("%s: PLTE chunk in a grayscale image", name());
    int max_entries = header_.color_type == kPalette ? 1 << header_.bit_depth : 256;
    if (length == 0 || length % 3 != 0 || int(length / 3) > max_entries)
      return errorf("%s: PLTE chunk length %u is not 3 x (1 to %d) entries", name(), length, max_entries);
    palette_size_ = int(length / 3);
    for (int i = 0; i < palette_size_; ++i) {
      std::memcpy(palette_[i], data + 3 * i, 3);
      palette_[i][3] = 255;
    }
    return Status();
  }

  // tRNS is ancillary: a malformed one is ignored rather than failing the image.
  void parse_transparency(const uint8_t* data, uint32_t length, bool have_palette) {
    if (header_.color_type == kPalette) {
      if (!have_palette || int(length) > palette_size_) return;
      for (uint32_t i = 0; i < length; ++i) palette_[i][3] = data[i];
      transparency_.present = true;
    } else if (header_.color_type == kGray && length == 2) {
      transparency_.gray = uint16_t(data[0] << 8 | data[1]);
      transparency_.present = true;
    } else if (header_.color_type == kRgb && length == 6) {
      for (int c = 0; c < 3; ++c) transparency_.rgb[c] = uint16_t(data[2 * c] << 8 | data[2 * c + 1]);
      transparency_.present = true;
    }
  }

  // Splits "keyword\0rest"; false when there is no valid keyword.
  static bool split_keyword(const uint8_t* data, uint32_t length, std::string* keyword, size_t* rest) {
    const void* terminator = std::memchr(data, 0, length);
    if (terminator == nullptr) return false;
    size_t keyword_size = size_t(static_cast<const uint8_t*>(terminator) - data);
    if (keyword_size < 1 || keyword_size > 79) return false;
    keyword->assign(reinterpret_cast<const char*>(data), keyword_size);
    *rest = keyword_size + 1;
    return true;
  }

  void parse_text(const uint8_t* data, uint32_t length) {
    std::string keyword;
    size_t rest = 0;
    if (!split_keyword(data, length, &keyword, &rest)) return;
    text_.emplace_back(std::move(keyword), std::string(reinterpret_cast<const char*>(data) + rest, length - rest));
  }

  void parse_compressed_text(const uint8_t* data, uint32_t length) {
    std::string keyword;
    size_t rest = 0;
    if (!split_keyword(data, length, &keyword, &rest) || rest >= length || data[rest] != 0) return;
    std::vector<uint8_t> text;
    if (!zlib_decompress(data + rest + 1, length - rest - 1, kMaxCompressedText, &text).ok()) return;
    text_.emplace_back(std::move(keyword), std::string(text.begin(), text.end()));
  }

  int output_channels() const {
    switch (header_.color_type) {
      case kGray:
        return transparency_.present ? 2 : 1;
      case kRgb:
      case kPalette:
        return transparency_.present ? 4 : 3;
      case kGrayAlpha:
        return 2;
      default:
        return 4;
    }
  }

  // Converts one unfiltered scanline of `count` pixels to 8-bit samples with output_channels() per pixel.
  Status expand_row(const uint8_t* row, uint32_t count, uint8_t* out) const {
    const int depth = header_.bit_depth;
    const int channels = output_channels();
    if (depth < 8) {
      const uint32_t mask = (1u << depth) - 1;
      for (uint32_t i = 0; i < count; ++i) {
        size_t bit = size_t(i) * depth;
        uint32_t value = (row[bit / 8] >> (8 - depth - bit % 8)) & mask;
        uint8_t* pixel = out + size_t(i) * channels;
        if (header_.color_type == kPalette) {
          if (int(value) >= palette_size_) return palette_error(value);
          std::memcpy(pixel, palette_[value], size_t(channels));
        } else {
          pixel[0] = uint8_t(value * (255 / mask));  // replicate the bits: 1 -> 255, 0b10 -> 0b10101010
          if (channels == 2) pixel[1] = transparency_.gray == value ? 0 : 255;
        }
      }
      return Status();
    }
    const int file_channels = header_.file_channels;
    if (header_.color_type == kPalette) {
      for (uint32_t i = 0; i < count; ++i) {
        if (row[i] >= palette_size_) return palette_error(row[i]);
        std::memcpy(out + size_t(i) * channels, palette_[row[i]], size_t(channels));
      }
      return Status();
    }
    const size_t sample_bytes = size_t(depth) / 8;
    if (channels == file_channels && sample_bytes == 1) {
      std::memcpy(out, row, size_t(count) * channels);
      return Status();
    }
    for (uint32_t i = 0; i < count; ++i) {
      const uint8_t* in_pixel = row + size_t(i) * file_channels * sample_bytes;
      uint8_t* pixel = out + size_t(i) * channels;
      for (int c = 0; c < file_channels; ++c) pixel[c] = in_pixel[c * sample_bytes];  // high byte of 16-bit samples
      if (channels > file_channels) {
        // A colour key: the one exact sample value (at full depth) that tRNS marks transparent.
        bool matches = true;
        for (int c = 0; c < file_channels; ++c) {
          uint32_t sample = sample_bytes == 2 ? uint32_t(in_pixel[2 * c] << 8 | in_pixel[2 * c + 1]) : in_pixel[c];
          uint32_t key = header_.color_type == kGray ? transparency_.gray : transparency_.rgb[c];
          matches = matches && sample == key;
        }
        pixel[file_channels] = matches ? 0 : 255;
      }
    }
    return Status();
  }

  Status palette_error(uint32_t index) const {
    return errorf("%s: palette index %u is out of range (the palette has %d entries)", name(), index, palette_size_);
  }

  Status decode_pixels(Image* out) {
    const uint32_t width = header_.width, height = header_.height;
    const Pass* passes = header_.interlaced ? kAdam7 : &kWholeImage;
    const int pass_count = header_.interlaced ? 7 : 1;
    const size_t filter_bpp = size_t(std::max(1, header_.bits_per_pixel / 8));
    // Sizes are bounded by the dimension limits (at most 2^28 pixels of 8 bytes), so 64-bit sums cannot overflow.
    uint64_t expected = 0;
    for (int p = 0; p < pass_count; ++p) {
      uint64_t pass_width = pass_extent(width, passes[p].x0, passes[p].dx);
      uint64_t pass_height = pass_extent(height, passes[p].y0, passes[p].dy);
      if (pass_width == 0 || pass_height == 0) continue;
      expected += pass_height * (1 + (pass_width * uint64_t(header_.bits_per_pixel) + 7) / 8);
    }
    if (expected > SIZE_MAX) return errorf("%s: image too large for this machine", name());

    std::vector<uint8_t> raw;
    size_t consumed = 0;  // some writers leave junk after the zlib stream; like libpng, we let it pass
    Status status = zlib_decompress(compressed_.data(), compressed_.size(), size_t(expected), &raw, &consumed);
    if (!status.ok()) return status.with_context(name_ + ": image data");
    if (raw.size() != expected)
      return errorf("%s: image data ends early (%zu of %llu bytes)", name(), raw.size(),
                    static_cast<unsigned long long>(expected));

    const int channels = output_channels();
    const size_t out_row_bytes = size_t(width) * size_t(channels);
    try {
      out->pixels.assign(out_row_bytes * height, 0);
    } catch (const std::bad_alloc&) {
      return errorf("%s: out of memory for a %ux%u image", name(), width, height);
    }
    out->width = int(width);
    out->height = int(height);
    out->channels = channels;

    std::vector<uint8_t> zero_row;
    std::vector<uint8_t> expanded(out_row_bytes);
    size_t offset = 0;
    for (int p = 0; p < pass_count; ++p) {
      const Pass& pass = passes[p];
      const uint32_t pass_width = pass_extent(width, pass.x0, pass.dx);
      const uint32_t pass_height = pass_extent(height, pass.y0, pass.dy);
      if (pass_width == 0 || pass_height == 0) continue;
      const size_t row_bytes = (size_t(pass_width) * size_t(header_.bits_per_pixel) + 7) / 8;
      zero_row.assign(row_bytes, 0);
      const uint8_t* previous = zero_row.data();
      for (uint32_t y = 0; y < pass_height; ++y) {
        int filter = raw[offset];
        uint8_t* row = raw.data() + offset + 1;
        if (filter > 4)
          return errorf("%s: invalid filter type %d in scanline %u%s", name(), filter, y,
                        header_.interlaced ? (" of interlace pass " + std::to_string(p + 1)).c_str() : "");
        unfilter_row(filter, row, previous, row_bytes, filter_bpp);
        const uint32_t out_y = pass.y0 + y * pass.dy;
        uint8_t* out_row = out->pixels.data() + size_t(out_y) * out_row_bytes;
        if (pass.dx == 1) {
          DDPM_TRY(expand_row(row, pass_width, out_row));
        } else {
          DDPM_TRY(expand_row(row, pass_width, expanded.data()));
          for (uint32_t i = 0; i < pass_width; ++i)
            std::memcpy(out_row + size_t(pass.x0 + i * pass.dx) * channels, expanded.data() + size_t(i) * channels,
                        size_t(channels));
        }
        previous = row;
        offset += row_bytes + 1;
      }
    }
    return Status();
  }

  const uint8_t* bytes_;
  size_t size_;
  const std::string& name_;
  Header header_;
  Transparency transparency_;
  uint8_t palette_[256][4] = {};
  int palette_size_ = 0;
  std::vector<uint8_t> compressed_;
  TextChunks text_;
};

}  // namespace

Status encode_png(int width, int height, int channels, const uint8_t* pixels, const TextChunks& text,
                  std::vector<uint8_t>* out) {
  out->clear();
  if (channels < 1 || channels > 4) return errorf("PNG channel count %d is not 1 to 4", channels);
  DDPM_TRY(validate_dimensions(width, height));
  if (pixels == nullptr) return errorf("PNG pixel buffer is null");
  for (const auto& entry : text) {
    DDPM_TRY(validate_keyword(entry.first));
    if (entry.second.find('\0') != std::string::npos)
      return errorf("PNG text for keyword \"%s\" contains a NUL byte", entry.first.c_str());
  }

  // Filtering: per row, the filter whose output has the smallest sum of absolute values (bytes read as signed),
  // the heuristic the PNG specification suggests; small residuals compress best.
  const size_t bpp = size_t(channels);
  const size_t row_bytes = size_t(width) * bpp;
  std::vector<uint8_t> filtered;
  filtered.reserve(size_t(height) * (row_bytes + 1));
  std::vector<uint8_t> zero_row(row_bytes, 0);
  std::vector<uint8_t> candidate(row_bytes), best(row_bytes);
  for (int y = 0; y < height; ++y) {
    const uint8_t* row = pixels + size_t(y) * row_bytes;
    const uint8_t* previous = y > 0 ? row - row_bytes : zero_row.data();
    uint64_t best_cost = UINT64_MAX;
    int best_type = 0;
    for (int type = 0; type <= 4; ++type) {
      uint64_t cost = 0;
      for (size_t i = 0; i < row_bytes; ++i) {
        uint8_t residual = uint8_t(row[i] - prediction(type, row, previous, i, bpp));
        candidate[i] = residual;
        cost += uint64_t(std::abs(int(int8_t(residual))));
      }
      if (cost < best_cost) {
        best_cost = cost;
        best_type = type;
        best.swap(candidate);
      }
    }
    filtered.push_back(uint8_t(best_type));
    filtered.insert(filtered.end(), best.begin(), best.end());
  }
  std::vector<uint8_t> compressed = zlib_compress(filtered.data(), filtered.size(), CompressionLevel::Default);

  static const uint8_t kColorTypeForChannels[5] = {0, kGray, kGrayAlpha, kRgb, kRgba};
  out->assign(kSignature, kSignature + 8);
  std::vector<uint8_t> header;
  append32_be(&header, uint32_t(width));
  append32_be(&header, uint32_t(height));
  header.push_back(8);
  header.push_back(kColorTypeForChannels[channels]);
  header.push_back(0);  // compression: zlib
  header.push_back(0);  // filtering: adaptive
  header.push_back(0);  // not interlaced
  append_chunk(out, "IHDR", header.data(), header.size());
  for (const auto& entry : text) {
    std::vector<uint8_t> body(entry.first.begin(), entry.first.end());
    body.push_back(0);
    body.insert(body.end(), entry.second.begin(), entry.second.end());
    append_chunk(out, "tEXt", body.data(), body.size());
  }
  for (size_t pos = 0; pos < compressed.size(); pos += kMaxIdatChunk)
    append_chunk(out, "IDAT", compressed.data() + pos, std::min(kMaxIdatChunk, compressed.size() - pos));
  append_chunk(out, "IEND", nullptr, 0);
  return Status();
}

Status write_png(const std::string& path, int width, int height, int channels, const uint8_t* pixels,
                 const TextChunks& text) {
  std::vector<uint8_t> bytes;
  Status status = encode_png(width, height, channels, pixels, text, &bytes);
  if (!status.ok()) return status.with_context(path);
  return write_file_atomically(path, bytes.data(), bytes.size());
}

Status decode_png(const uint8_t* bytes, size_t size, const std::string& name, Image* out) {
  *out = Image();
  Status status = PngDecoder(bytes, size, name).decode(out);
  if (!status.ok()) *out = Image();
  return status;
}

Status read_png(const std::string& path, Image* out) {
  MappedFile file;
  DDPM_TRY(file.open(path));
  if (file.size() > SIZE_MAX) return errorf("%s: file too large for this machine", path.c_str());
  return decode_png(file.data(), size_t(file.size()), path, out);
}

}  // namespace ddpm
