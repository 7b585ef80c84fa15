// Helpers shared by the libFuzzer targets in this directory (see run.sh).
//
// Every target only checks what the parsers promise: no crash, leak or undefined behaviour on any input, a failed
// Status always carrying a message, and whatever a parser accepts being usable by the next stage without another
// check (a tensor it describes loads, a JSON tree it returns serialises and parses again to the same text).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ddpm/status.h"
#include "io/mapped_file.h"
#include "io/tensor_loader.h"
#include "io/tensor_source.h"
#include "model/layouts.h"
#include "model/unet_config.h"

namespace ddpm::fuzz {

// A broken promise of the code under test: abort, so that libFuzzer records the input as a crash.
[[noreturn]] inline void violated(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz invariant violated: %s: %s\n", what, detail.c_str());
  std::abort();
}

inline void check_status(const Status& s) {
  if (!s.ok() && s.message().empty()) violated("failed Status without a message", "");
}

// Loads every tensor a reader described, in both element types the converter produces. The readers validate
// offsets, shapes and strides against the file, so each load must succeed; broadcast (zero-stride) views can
// address far more elements than the input holds, so big ones are skipped to keep executions fast.
inline void load_all(const MappedFile& file, const std::vector<SourceTensor>& tensors) {
  constexpr int64_t kMaxElements = 1 << 16;
  std::vector<float> f32;
  std::vector<uint16_t> f16;
  for (const SourceTensor& t : tensors) {
    int64_t numel = 0;
    if (!checked_numel(t.shape, &numel)) violated("reader accepted a shape whose size overflows", t.name);
    if (numel > kMaxElements) continue;
    f32.assign(static_cast<size_t>(numel), 0.0f);
    f16.assign(static_cast<size_t>(numel), 0);
    Status s = load_tensor_f32(file, t, f32.data());
    if (!s.ok()) violated("load_tensor_f32 failed on a tensor the reader accepted", s.message());
    s = load_tensor_raw_f16(file, t, f16.data());
    if (!s.ok()) violated("load_tensor_raw_f16 failed on a tensor the reader accepted", s.message());
  }
}

// What the converter does with a checkpoint's names before it reads any data: layout detection, the original-DDPM
// renaming and the config inferred from shapes, whose result must pass the config's own validation or fail cleanly.
inline void exercise_layouts(std::vector<SourceTensor> tensors) {
  if (detect_key_layout(tensors) != KeyLayout::OriginalDdpm) return;
  Status s = rename_original_ddpm(&tensors);
  check_status(s);
  if (!s.ok()) return;
  for (int image_size : {0, 32}) {
    UNetConfig config;
    std::vector<std::string> notes;
    s = infer_original_ddpm_config(tensors, image_size, &config, &notes);
    check_status(s);
    if (s.ok()) check_status(config.validate());
  }
}

}  // namespace ddpm::fuzz
