// libFuzzer target: the safetensors header reader (length prefix, JSON header, dtype/shape/offset validation) with
// every accepted tensor loaded and its names put through the layout detection, and the JSON parser directly on the
// same bytes with a write/re-read round trip and a read as a U-Net config.json.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_common.h"
#include "io/json.h"
#include "io/safetensors.h"

using namespace ddpm;

namespace {

// What parse_json returns must serialise to JSON that parses again, and to the same text the second time (the
// writer is a fixed point after one trip: escapes and number literals are kept).
void json_round_trip(const uint8_t* data, size_t size) {
  JsonValue value;
  Status s = parse_json(std::string_view(reinterpret_cast<const char*>(data), size), &value);
  fuzz::check_status(s);
  if (!s.ok()) return;
  // The same tree as a U-Net config.json (user input to `ddpm convert`): read, validated, written back.
  UNetConfig config;
  s = UNetConfig::from_json(value, &config);
  fuzz::check_status(s);
  if (s.ok()) {
    fuzz::check_status(config.validate());
    UNetConfig again;
    if (!UNetConfig::from_json(config.to_json(), &again).ok()) fuzz::violated("UNetConfig::to_json does not read back", "");
  }
  for (bool pretty : {false, true}) {
    const std::string text = to_json(value, pretty);
    JsonValue again;
    s = parse_json(text, &again);
    if (!s.ok()) fuzz::violated("to_json output does not parse", s.message());
    if (to_json(again, pretty) != text) fuzz::violated("JSON round trip changed the text", text.substr(0, 200));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  json_round_trip(data, size);

  const MappedFile file = MappedFile::from_bytes("fuzz.safetensors", std::vector<uint8_t>(data, data + size));
  (void)looks_like_safetensors(file);
  std::vector<SourceTensor> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  Status s = read_safetensors("fuzz.safetensors", file, &tensors, &metadata);
  fuzz::check_status(s);
  if (s.ok()) {
    fuzz::load_all(file, tensors);
    fuzz::exercise_layouts(tensors);
  }
  return 0;
}
