// Reading a trained checkpoint's tensors, whatever the container: safetensors or PyTorch (zip or legacy) files.
// Readers only parse metadata (src/io/); this class normalises names to current diffusers keys and moves bytes
// through the one tensor loader, converting to the dtype the caller wants.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "ddpm/dtype.h"
#include "ddpm/status.h"
#include "io/mapped_file.h"
#include "io/tensor_source.h"
#include "model/layouts.h"

namespace ddpm {

struct CheckpointOptions {
  std::string key_path;      // torch files: dotted path of the state dict inside the pickle ("" = auto-detect)
  std::string strip_prefix;  // removed from every name that starts with it ("module.", "model.", …); "" = auto
};

class CheckpointReader {
 public:
  Status open(const std::string& path, const CheckpointOptions& options = {});

  const std::string& path() const { return path_; }
  const std::string& format() const { return format_; }  // "safetensors", "torch zip", "torch legacy"
  KeyLayout layout() const { return layout_; }             // as found; names are diffusers keys after open()
  const std::vector<SourceTensor>& tensors() const { return tensors_; }
  const SourceTensor* find(const std::string& name) const;
  // Names renamed on the way in (old → new), e.g. legacy attention keys; for the conversion report.
  const std::vector<std::pair<std::string, std::string>>& renamed() const { return renamed_; }

  // Converts tensor `t` to `dtype` (f32 or f16) into `out` (numel values). Rank-4 [C, C, 1, 1] sources may be
  // read as [C, C]: the element order is the same.
  Status load(const SourceTensor& t, DType dtype, std::vector<uint8_t>* out) const;
  const MappedFile& file() const { return file_; }

 private:
  Status normalise_names(const CheckpointOptions& options);
  KeyLayout layout_ = KeyLayout::Diffusers;
  std::string path_, format_;
  MappedFile file_;
  std::vector<SourceTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::vector<std::pair<std::string, std::string>> renamed_;
};

}  // namespace ddpm
