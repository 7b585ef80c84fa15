// libFuzzer target: the DEFLATE decoder with its zlib and gzip wrappers, the PNG decoder and the IDX decoder, each
// on the same bytes. Output bounds are small so that decompression bombs fail fast.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_common.h"
#include "io/deflate.h"
#include "io/idx.h"
#include "io/png.h"

using namespace ddpm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kMaxOutput = 1 << 20;
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
  return 0;
}
