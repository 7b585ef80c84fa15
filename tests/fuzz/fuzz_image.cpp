// libFuzzer target: the DEFLATE decoder with its zlib and gzip wrappers, the PNG decoder and the IDX decoder, each
// on the same bytes. Output bounds are small so that decompression bombs fail fast.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "io/deflate.h"
#include "io/idx.h"
#include "io/png.h"

using namespace ddpm;

namespace {

constexpr size_t kMaxOutput = 1 << 20;

uint32_t load_be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
void store_be32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (24 - 8 * i));
}

// Checksums stop nearly every mutation at the first check, long before the code after it; the fuzzer cannot forge
// them, so inputs are also tried with them recomputed. A zlib stream: the Adler-32 after the DEFLATE data.
void repair_zlib(uint8_t* p, size_t size) {
  std::vector<uint8_t> out;
  size_t consumed = 0;
  if (size < 6 || !inflate_raw(p + 2, size - 2, kMaxOutput, &out, &consumed).ok() || consumed + 6 > size) return;
  store_be32(p + 2 + consumed, adler32(out.data(), out.size()));
}

// A PNG: every chunk's CRC-32, and the zlib stream when the image data is a single IDAT chunk.
void repair_png(std::vector<uint8_t>* bytes) {
  static const uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes->size() < 8 || std::memcmp(bytes->data(), kSignature, 8) != 0) return;
  int idat_chunks = 0;
  for (size_t at = 8; at + 12 <= bytes->size();) {
    const size_t length = load_be32(bytes->data() + at);
    if (length > bytes->size() - at - 12) break;
    if (std::memcmp(bytes->data() + at + 4, "IDAT", 4) == 0) ++idat_chunks;
    at += 12 + length;
  }
  for (size_t at = 8; at + 12 <= bytes->size();) {
    uint8_t* chunk = bytes->data() + at;
    const size_t length = load_be32(chunk);
    if (length > bytes->size() - at - 12) break;
    if (idat_chunks == 1 && std::memcmp(chunk + 4, "IDAT", 4) == 0) repair_zlib(chunk + 8, length);
    store_be32(chunk + 8 + length, crc32(chunk + 4, length + 4));
    at += 12 + length;
  }
}

void decode_all(const uint8_t* data, size_t size) {
  std::vector<uint8_t> out;
  size_t consumed = 0;
  fuzz::check_status(inflate_raw(data, size, kMaxOutput, &out));
  Status s = inflate_raw(data, size, kMaxOutput, &out, &consumed);
  fuzz::check_status(s);
  if (s.ok() && consumed > size) fuzz::violated("inflate_raw consumed past the input", "");
  fuzz::check_status(zlib_decompress(data, size, kMaxOutput, &out));
  s = zlib_decompress(data, size, kMaxOutput, &out, &consumed);
  fuzz::check_status(s);
  if (s.ok() && consumed > size) fuzz::violated("zlib_decompress consumed past the input", "");
  s = gzip_decompress(data, size, kMaxOutput, &out);
  fuzz::check_status(s);
  if (s.ok() && out.size() > kMaxOutput) fuzz::violated("gzip output over its bound", "");
  fuzz::check_status(gzip_decompress_prefix(data, size, 16, &out));

  Image image;
  s = decode_png(data, size, "fuzz.png", &image);
  fuzz::check_status(s);
  if (s.ok() && image.pixels.size() != size_t(image.width) * size_t(image.height) * size_t(image.channels))
    fuzz::violated("decoded PNG has the wrong pixel count", "");

  IdxArray idx;
  fuzz::check_status(decode_idx(data, size, "fuzz.idx", &idx));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  decode_all(data, size);
  std::vector<uint8_t> repaired(data, data + size);
  repair_zlib(repaired.data(), repaired.size());
  repair_png(&repaired);
  if (!std::equal(repaired.begin(), repaired.end(), data)) decode_all(repaired.data(), repaired.size());
  return 0;
}
