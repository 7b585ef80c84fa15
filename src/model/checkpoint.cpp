#include "model/checkpoint.h"

#include <algorithm>
#include <cstring>

#include "core/half.h"
#include "io/safetensors.h"
#include "io/tensor_loader.h"
#include "io/torch_checkpoint.h"

namespace ddpm {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Attention sub-layer names written before diffusers' Attention refactor (§2.4) → current names.
std::string current_attention_name(const std::string& name) {
  if (name.find(".attentions.") == std::string::npos) return name;
  static const std::pair<const char*, const char*> renames[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  for (const auto& [old_part, new_part] : renames) {
    const size_t pos = name.rfind(old_part);
    if (pos != std::string::npos && (ends_with(name, "weight") || ends_with(name, "bias"))) {
      return name.substr(0, pos) + new_part + name.substr(pos + std::strlen(old_part));
    }
  }
  return name;
}

std::string sniff_description(const MappedFile& f) {
  const uint8_t* d = f.data();
  const uint64_t n = f.size();
  if (n >= 4 && std::memcmp(d, "DDPM", 4) == 0) {
    return "a ddpm.cpp file: a model needs no converting, a training checkpoint is exported by `ddpm train --resume "
           "F --export-only`";
  }
  if (n >= 2 && d[0] == 0x1f && d[1] == 0x8b) return "a gzip file";
  if (n >= 5 && (std::memcmp(d, "<!DOC", 5) == 0 || std::memcmp(d, "<html", 5) == 0)) return "an HTML page (a failed download?)";
  if (n >= 1 && d[0] == '{') return "a JSON file";
  return "an unknown format";
}

}  // namespace

Status CheckpointReader::open(const std::string& path, const CheckpointOptions& options) {
  path_ = path;
  DDPM_TRY(file_.open(path));
  tensors_.clear();
  if (file_.size() == 0) return errorf("%s: empty file (0 bytes), not a checkpoint", path.c_str());
  if (looks_like_safetensors(file_)) {
    format_ = "safetensors";
    if (!options.key_path.empty()) {
      return errorf("%s: --key walks the dictionaries of a PyTorch checkpoint; a safetensors file has none (its "
                    "tensors are at the top level)", path.c_str());
    }
    DDPM_TRY(read_safetensors(path, file_, &tensors_, nullptr));
  } else if (looks_like_torch_zip(file_.data(), file_.size()) || looks_like_torch_legacy(file_.data(), file_.size())) {
    format_ = looks_like_torch_zip(file_.data(), file_.size()) ? "torch zip" : "torch legacy";
    TorchCheckpoint checkpoint;
    DDPM_TRY(read_torch_checkpoint(file_.data(), file_.size(), path, &checkpoint));
    std::vector<std::string> candidates;
    Status collected = collect_tensors(*checkpoint.root, options.key_path, &tensors_, &candidates);
    if (!collected.ok()) return collected.with_context(path);
  } else {
    return errorf("%s: not a safetensors or PyTorch checkpoint (looks like %s)", path.c_str(),
                  sniff_description(file_).c_str());
  }
  return normalise_names(options).with_context(path);
}

Status CheckpointReader::normalise_names(const CheckpointOptions& options) {
  std::string prefix = options.strip_prefix;
  if (!prefix.empty() && std::none_of(tensors_.begin(), tensors_.end(),
                                      [&](const SourceTensor& t) { return t.name.rfind(prefix, 0) == 0; })) {
    return errorf("--strip-prefix '%s' begins no tensor's name (the first is '%s')", prefix.c_str(),
                  tensors_.empty() ? "" : tensors_[0].name.c_str());
  }
  if (prefix.empty()) {
    // Wrappers add one prefix to every key (DataParallel "module.", Lightning "model.", EMA helpers "ema_model.").
    for (const char* candidate : {"module.", "model.", "ema_model.", "ema.", "unet."}) {
      bool all = !tensors_.empty();
      for (const SourceTensor& t : tensors_) all = all && t.name.rfind(candidate, 0) == 0;
      if (all) {
        prefix = candidate;
        break;
      }
    }
  }
  index_.clear();
  renamed_.clear();
  std::vector<std::string> original_names;
  for (SourceTensor& t : tensors_) {
    original_names.push_back(t.name);
    if (!prefix.empty() && t.name.rfind(prefix, 0) == 0) t.name = t.name.substr(prefix.size());
  }
  layout_ = detect_key_layout(tensors_);
  if (layout_ == KeyLayout::OriginalDdpm) DDPM_TRY(rename_original_ddpm(&tensors_));
  for (size_t i = 0; i < tensors_.size(); ++i) {
    SourceTensor& t = tensors_[i];
    t.name = current_attention_name(t.name);
    if (t.name != original_names[i]) renamed_.push_back({original_names[i], t.name});
    if (index_.count(t.name)) return errorf("two tensors map to the name '%s'", t.name.c_str());
    index_[t.name] = i;
  }
  return Status();
}

const SourceTensor* CheckpointReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status CheckpointReader::load(const SourceTensor& t, DType dtype, std::vector<uint8_t>* out) const {
  const int64_t n = t.numel();
  if (dtype == DType::F16) {
    out->resize(static_cast<size_t>(n) * 2);
    return load_tensor_raw_f16(file_, t, reinterpret_cast<uint16_t*>(out->data()));
  }
  if (dtype != DType::F32) return errorf("%s: cannot load tensor %s as %s", path_.c_str(), t.name.c_str(), dtype_name(dtype));
  out->resize(static_cast<size_t>(n) * 4);
  return load_tensor_f32(file_, t, reinterpret_cast<float*>(out->data()));
}

}  // namespace ddpm
