// libFuzzer target: the .ddpm reader (header, typed metadata, tensor table, checksums) and the U-Net metadata
// validation run on whatever it accepts.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "io/crc32c.h"
#include "model/ddpm_file.h"

using namespace ddpm;

namespace {

// Almost every mutation breaks the header checksum, which the reader checks before it parses metadata and the
// tensor table; the fuzzer cannot forge a CRC, so each input is parsed as it is and again repaired (the field at byte 12 covers bytes
// [0, data_offset) with itself zeroed, data_offset at byte 48: docs/FORMAT.md) to let mutations reach the parsers.
void repair_header_checksum(std::vector<uint8_t>* bytes) {
  if (bytes->size() < 64) return;
  uint64_t data_offset = 0;
  std::memcpy(&data_offset, bytes->data() + 48, 8);
  if (data_offset < 64 || data_offset > bytes->size()) return;
  std::memset(bytes->data() + 12, 0, 4);
  const uint32_t crc = crc32c(bytes->data(), static_cast<size_t>(data_offset));
  std::memcpy(bytes->data() + 12, &crc, 4);
}

void parse(const std::vector<uint8_t>& bytes) {
  for (bool verify : {false, true}) {
    DdpmMetadata metadata;
    std::vector<DdpmTensorInfo> tensors;
    Status s = parse_ddpm(bytes.data(), bytes.size(), "fuzz.ddpm", &metadata, &tensors, verify);
    fuzz::check_status(s);
    if (!s.ok()) {
      (void)sniff_file_kind(bytes.data(), bytes.size());
      break;  // the checksum pass only adds checks
    }
    fuzz::check_status(validate_unet2d_metadata(metadata));
    for (const DdpmTensorInfo& t : tensors) {
      const uint8_t* p = static_cast<const uint8_t*>(t.data);
      if (t.bytes > 0 && (p < bytes.data() || p + t.bytes > bytes.data() + bytes.size()))
        fuzz::violated("tensor data outside the file", t.name);
    }
  }
  DdpmFile file;
  fuzz::check_status(DdpmFile::from_bytes("fuzz.ddpm", bytes, &file));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The reader promises 64-byte aligned tensor data when the image is aligned, as a mapping is; libFuzzer's
  // buffer is not, so copy. The copy is exactly `size` bytes long so that ASan catches any overread.
  std::vector<uint8_t> bytes(data, data + size);
  parse(bytes);
  repair_header_checksum(&bytes);
  if (!std::equal(bytes.begin(), bytes.end(), data)) parse(bytes);
  return 0;
}
