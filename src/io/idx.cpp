#include "io/idx.h"

#include <algorithm>
#include <utility>

#include "io/deflate.h"
#include "io/mapped_file.h"

namespace ddpm {
namespace {

// IDX allows up to 255 dimensions; nothing real has more than a handful.
constexpr size_t kMaxDims = 255;
constexpr size_t kMaxHeader = 4 + 4 * kMaxDims;
// The largest payload we agree to hold in memory (Fashion-MNIST's training images are 47 MB).
constexpr uint64_t kMaxPayload = uint64_t(1) << 33;

const char* type_name(uint8_t code) {
  switch (code) {
    case 0x08:
      return "unsigned byte";
    case 0x09:
      return "signed byte";
    case 0x0B:
      return "int16";
    case 0x0C:
      return "int32";
    case 0x0D:
      return "float32";
    case 0x0E:
      return "float64";
    default:
      return "unknown";
  }
}

// Parses the header at the start of bytes (which may be only a prefix of the file) into out->dims and
// out->type_code, and sets *header_size and *payload_size (in bytes).
Status parse_header(const uint8_t* bytes, size_t size, const std::string& name, IdxArray* out, size_t* header_size,
                    uint64_t* payload_size) {
  const char* file = name.c_str();
  if (size < 4) return errorf("%s: truncated IDX header (%zu bytes)", file, size);
  if (bytes[0] != 0 || bytes[1] != 0)
    return errorf("%s: not an IDX file (magic starts %02x %02x, expected 00 00)", file, bytes[0], bytes[1]);
  uint8_t type = bytes[2];
  if (type != kIdxTypeUnsignedByte)
    return errorf("%s: IDX element type 0x%02x (%s) is not supported; only 0x08 (unsigned byte) is", file, type,
                  type_name(type));
  size_t ndims = bytes[3];
  if (ndims == 0) return errorf("%s: IDX header declares no dimensions", file);
  if (size < 4 + 4 * ndims)
    return errorf("%s: truncated IDX header (%zu dimensions need %zu bytes, have %zu)", file, ndims, 4 + 4 * ndims,
                  size);
  out->type_code = type;
  out->dims.clear();
  for (size_t i = 0; i < ndims; ++i) {
    const uint8_t* p = bytes + 4 + 4 * i;
    out->dims.push_back(int64_t(uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]));
  }
  // An empty array is valid whatever its other dimensions; otherwise each step is checked before it can wrap.
  bool empty = std::find(out->dims.begin(), out->dims.end(), 0) != out->dims.end();
  uint64_t elements = empty ? 0 : 1;
  for (int64_t dim : out->dims) {
    if (empty) break;
    if (uint64_t(dim) > kMaxPayload / elements)
      return errorf("%s: IDX dimensions describe more than %llu elements", file,
                    static_cast<unsigned long long>(kMaxPayload));
    elements *= uint64_t(dim);
  }
  *header_size = 4 + 4 * ndims;
  *payload_size = elements;  // one byte per element for the only supported type
  return Status();
}

}  // namespace

Status decode_idx(const uint8_t* bytes, size_t size, const std::string& name, IdxArray* out) {
  *out = IdxArray();
  size_t header_size = 0;
  uint64_t payload_size = 0;
  if (!looks_like_gzip(bytes, size)) {
    DDPM_TRY(parse_header(bytes, size, name, out, &header_size, &payload_size));
    if (size - header_size != payload_size)
      return errorf("%s: IDX payload is %zu bytes but the dimensions need %llu", name.c_str(), size - header_size,
                    static_cast<unsigned long long>(payload_size));
    out->data.assign(bytes + header_size, bytes + size);
    return Status();
  }

  // Learn the dimensions from the first bytes, then decompress with exactly that much room: a file whose data is
  // longer than its header says (or a decompression bomb) fails at that bound instead of filling memory.
  std::vector<uint8_t> decoded;
  Status status = gzip_decompress_prefix(bytes, size, kMaxHeader, &decoded);
  if (!status.ok()) return status.with_context(name);
  DDPM_TRY(parse_header(decoded.data(), decoded.size(), name, out, &header_size, &payload_size));
  if (payload_size > SIZE_MAX - header_size) return errorf("%s: IDX array too large for this machine", name.c_str());
  status = gzip_decompress(bytes, size, header_size + size_t(payload_size), &decoded);
  if (!status.ok()) return status.with_context(name);
  if (decoded.size() - header_size != payload_size)
    return errorf("%s: IDX payload is %zu bytes but the dimensions need %llu", name.c_str(),
                  decoded.size() - header_size, static_cast<unsigned long long>(payload_size));
  decoded.erase(decoded.begin(), decoded.begin() + std::ptrdiff_t(header_size));
  out->data = std::move(decoded);
  return Status();
}

Status read_idx(const std::string& path, IdxArray* out) {
  MappedFile file;
  DDPM_TRY(file.open(path));
  if (file.size() > SIZE_MAX) return errorf("%s: file too large for this machine", path.c_str());
  return decode_idx(file.data(), size_t(file.size()), path, out);
}

}  // namespace ddpm
