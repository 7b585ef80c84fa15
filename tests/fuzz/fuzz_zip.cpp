// libFuzzer target: the zip central-directory reader used for torch.save archives. Whatever it accepts must
// describe entries inside the file that do not overlap.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_common.h"
#include "io/zip.h"

using namespace ddpm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<ZipEntry> entries;
  Status s = read_zip_directory(data, size, "fuzz.zip", &entries);
  fuzz::check_status(s);
  if (!s.ok()) return 0;
  std::vector<const ZipEntry*> sorted;
  for (const ZipEntry& e : entries) {
    if (e.data_offset > size || e.size > size - e.data_offset) fuzz::violated("entry outside the file", e.name);
    if (find_zip_entry(entries, e.name) == nullptr) fuzz::violated("listed entry not found by name", e.name);
    // Touch the bytes so that ASan sees any read the offsets would make.
    volatile uint8_t sink = 0;
    if (e.size > 0) sink = data[e.data_offset] ^ data[e.data_offset + e.size - 1];
    (void)sink;
    sorted.push_back(&e);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const ZipEntry* a, const ZipEntry* b) { return a->data_offset < b->data_offset; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    const ZipEntry& prev = *sorted[i - 1];
    if (prev.size > 0 && sorted[i]->size > 0 && prev.data_offset + prev.size > sorted[i]->data_offset)
      fuzz::violated("overlapping entries", prev.name + " / " + sorted[i]->name);
  }
  return 0;
}
