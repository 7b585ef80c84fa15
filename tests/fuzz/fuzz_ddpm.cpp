// libFuzzer target: the .ddpm reader (header, typed metadata, tensor table, checksums) and the U-Net metadata
// validation run on whatever it accepts.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_common.h"
#include "model/ddpm_file.h"

using namespace ddpm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The reader promises 64-byte aligned tensor data when the image is aligned, as a mapping is; libFuzzer's
  // buffer is not, so copy. The copy is exactly `size` bytes long so that ASan catches any overread.
  std::vector<uint8_t> bytes(data, data + size);
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
  return 0;
}
