// PyTorch checkpoints (torch.save: .bin/.pt/.pth/.ckpt) read without executing anything.
//
// Two container formats exist. The zip format (torch >= 1.6) holds "<archive>/data.pkl" plus one stored record
// "<archive>/data/<key>" per storage. The legacy format (older torch, or _use_new_zipfile_serialization=False) is
// five pickles back to back (magic number, protocol 1001, sys_info, the object, the storage-key list) followed by
// each storage as an int64 element count and raw bytes. Either way the object pickle goes through the restricted
// machine of io/pickle.h, and every storage it names is matched to its bytes and size-checked, so tensors come out
// as SourceTensors pointing into the caller's buffer. Nothing is copied.
//
// The top-level object is kept as a value tree because checkpoints wrap the state dict in many ways
// ({"state_dict": …} from Lightning, {"model": …, "ema": …} from custom trainers); collect_tensors picks one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/status.h"
#include "io/pickle.h"
#include "io/tensor_source.h"

namespace ddpm {

enum class TorchFormat : uint8_t { Zip, Legacy };

struct TorchCheckpoint {
  TorchFormat format = TorchFormat::Zip;
  std::string archive_prefix;  // zip only: "<archive>" in "<archive>/data.pkl"
  PickleValuePtr root;         // the unpickled top-level object
  std::vector<std::shared_ptr<PickleStorage>> storages;  // every storage, resolved to file offsets
  bool big_endian = false;     // storages were written big-endian
};

// Cheap sniffing by magic bytes, for choosing a reader; read_torch_checkpoint does the real validation.
bool looks_like_torch_zip(const uint8_t* data, uint64_t size);
bool looks_like_torch_legacy(const uint8_t* data, uint64_t size);

// Reads a zip or legacy checkpoint held in [data, data + size). Tensors in the result refer to offsets in that
// buffer. `name` labels error messages. Pure function (no global state), suitable for fuzzing.
Status read_torch_checkpoint(const uint8_t* data, uint64_t size, const std::string& name, TorchCheckpoint* out);

// Flattens a dict of tensors into `out`; keys of nested dicts are joined with '.' ("down.0.weight"), and values
// that are neither tensors nor dicts are skipped.
//   key_path "": automatic. The root if it holds tensors directly; otherwise the unique dict holding tensors
//                directly found nearest the root (a few levels down). When several are equally near, a unique one
//                with a conventional name (state_dict, ema, model, module, ema_model, …) wins; otherwise the
//                call fails and lists them.
//   key_path "/": the root itself.
//   otherwise:   a path of keys separated by '/' or '.' ("state_dict", "ema/model"); keys containing dots match
//                whole, and list elements are selected by index.
// `candidates` (may be null) receives the paths of the dicts auto mode considered. Messages do not name the file:
// callers add it with Status::with_context. Tensors must come from read_torch_checkpoint (resolved storages).
Status collect_tensors(const PickleValue& root, const std::string& key_path, std::vector<SourceTensor>* out,
                       std::vector<std::string>* candidates);

}  // namespace ddpm
