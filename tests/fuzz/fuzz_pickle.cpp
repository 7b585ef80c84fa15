// libFuzzer target: the restricted pickle machine and the torch checkpoint reader (zip and legacy containers,
// storage resolution, state-dict selection) on the same bytes, then every tensor they describe is loaded.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "io/pickle.h"
#include "io/torch_checkpoint.h"

using namespace ddpm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Tight limits so that deep or wide inputs hit the limit checks quickly instead of just running long.
  PickleLimits limits;
  limits.max_memo_entries = 4096;
  limits.max_depth = 200;
  limits.max_stack_items = 1 << 14;
  limits.max_container_items = 1 << 16;
  limits.max_values = 1 << 16;
  limits.max_key_bytes = 1 << 20;
  PickleResult pickle;
  Status s = parse_pickle(data, size, "fuzz.pkl", limits, &pickle);
  fuzz::check_status(s);
  if (s.ok()) {
    if (!pickle.root) fuzz::violated("parse_pickle succeeded without a root", "");
    if (pickle.consumed == 0 || pickle.consumed > size) fuzz::violated("consumed out of range", "");
    (void)pickle.root->describe();
  }

  // The checkpoint reader runs with the default limits, as `ddpm convert` does.
  TorchCheckpoint checkpoint;
  s = read_torch_checkpoint(data, size, "fuzz.pt", &checkpoint);
  fuzz::check_status(s);
  if (!s.ok()) return 0;
  const MappedFile file = MappedFile::from_bytes("fuzz.pt", std::vector<uint8_t>(data, data + size));
  for (const char* path : {"", "/", "state_dict", "0"}) {
    std::vector<SourceTensor> tensors;
    std::vector<std::string> candidates;
    s = collect_tensors(*checkpoint.root, path, &tensors, &candidates);
    fuzz::check_status(s);
    if (s.ok()) {
      fuzz::load_all(file, tensors);
      fuzz::exercise_layouts(tensors);
    }
  }
  return 0;
}
