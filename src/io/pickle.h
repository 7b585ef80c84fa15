// Restricted pickle machine: turns the pickles inside PyTorch checkpoints into an inert value tree, never calling
// anything.
//
// Python's pickle format is a small stack language whose REDUCE/NEWOBJ/BUILD/INST/OBJ opcodes call arbitrary
// importable functions, so loading a checkpoint with `pickle` runs whatever the file says. This machine implements
// the same opcodes (protocols 2–5) but builds only plain values (None, bool, int, float, str, bytes, tuple, list,
// dict, set) plus the handful of constructors a state dict needs, which it interprets itself:
//   collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter /
//   _rebuild_parameter_with_state, _codecs.encode (protocol-2 bytes), builtins.bytes/set/frozenset, torch.Size
//   (→ tuple), torch.device (→ string).
// A GLOBAL by itself is an inert name (a dtype such as torch.float32 may legitimately appear as a value); calling any
// other global is an error naming it and the byte where it was loaded. Persistent ids must be
// ('storage', torch.<X>Storage, key, location, numel[, legacy view]); they become PickleStorage records which the
// checkpoint reader later resolves to file offsets.
//
// Hostile input is expected: every length is checked against the remaining input before anything is allocated,
// stack/mark/value nesting, memo size, container sizes and the total number of values are bounded, and a container
// becomes immutable once it is placed inside another value, which makes reference cycles (and unbounded recursion
// when freeing or walking the tree) impossible.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ddpm/status.h"
#include "io/tensor_source.h"

namespace ddpm {

enum class PickleKind : uint8_t {
  None,
  Bool,
  Int,
  Float,
  String,   // text (UTF-8)
  Bytes,
  Tuple,
  List,
  Dict,     // dict or collections.OrderedDict; insertion order kept
  Set,      // set or frozenset
  Global,   // an uncalled module.name reference, e.g. torch.float32
  Storage,  // a persistent-id storage seen outside a tensor
  Tensor,
};

const char* pickle_kind_name(PickleKind kind);

// One storage named by the persistent ids of a pickle. Tensors sharing a key share this record.
struct PickleStorage {
  std::string key;        // "0", "1", … in zip archives; a decimal pointer value in legacy files
  std::string type_name;  // e.g. "torch.FloatStorage"
  std::string location;   // "cpu", "cuda:0", …
  SourceDType dtype = SourceDType::U8;
  int element_size = 1;
  int64_t numel = 0;  // elements, as declared by the persistent id
  bool legacy_id = false;  // declared by a six-element persistent id (legacy, non-zip files)

  // Set by the checkpoint reader once it has located and size-checked the bytes.
  bool resolved = false;
  uint64_t file_offset = 0;
  uint64_t file_bytes = 0;
  bool big_endian = false;
};

struct PickleTensor {
  std::shared_ptr<PickleStorage> storage;
  int64_t element_offset = 0;  // into the whole storage, in elements (legacy views already folded in)
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  bool requires_grad = false;
};

// A (legacy) storage view: elements [offset, offset + numel) of `storage`. Modern files always have the whole
// storage (offset 0, numel = storage->numel).
struct PickleStorageView {
  std::shared_ptr<PickleStorage> storage;
  int64_t offset = 0;
  int64_t numel = 0;
};

struct PickleValue;
using PickleValuePtr = std::shared_ptr<PickleValue>;

struct PickleValue {
  PickleKind kind = PickleKind::None;

  bool bool_value = false;  // Bool; for Global whether it came from STACK_GLOBAL (else GLOBAL)
  int64_t int_value = 0;  // Int; for Global the length of the module part of `text`
  double float_value = 0.0;
  std::string text;  // String: UTF-8 text; Bytes: raw bytes; Global: "module.name"

  // Tuple/List/Set: the elements. Dict: keys and values interleaved (key0, value0, key1, value1, …).
  std::vector<PickleValuePtr> items;
  bool ordered_dict = false;  // Dict built by collections.OrderedDict

  std::shared_ptr<const PickleTensor> tensor;        // Tensor
  std::shared_ptr<const PickleStorageView> storage;  // Storage

  // Bookkeeping of the machine, meaningful while parsing: a frozen container is already inside another value and
  // may no longer change; depth is the nesting depth (scalars 0).
  bool frozen = false;
  uint32_t depth = 0;
  uint64_t source_offset = 0;  // Global: byte of the GLOBAL/STACK_GLOBAL opcode, for messages
  // Dict: canonical key → index of the pair; rejects duplicates and gives O(1) lookups. Allocated on demand
  // because most values are not dicts.
  std::unique_ptr<std::unordered_map<std::string, size_t>> dict_index;

  bool is_dict() const { return kind == PickleKind::Dict; }
  size_t dict_size() const { return items.size() / 2; }
  const PickleValue& dict_key(size_t i) const { return *items[2 * i]; }
  const PickleValue& dict_value(size_t i) const { return *items[2 * i + 1]; }
  // Value stored under the string key `key`, or nullptr (also when this is not a dict).
  const PickleValue* find(const std::string& key) const;
  // Short description for messages: "dict of 3 items", "int 5", "str 'abc'".
  std::string describe() const;
};

struct PickleLimits {
  uint64_t max_pickle_bytes = 256ull << 20;  // bytes from the start of the pickle to its STOP
  uint64_t max_memo_entries = 1000000;
  uint64_t max_depth = 1000;                 // MARK nesting, and nesting of values inside values
  uint64_t max_stack_items = 1u << 20;
  uint64_t max_container_items = 10000000;   // elements of one tuple/list/set, pairs of one dict
  uint64_t max_values = 8u << 20;            // values created plus container insertions: bounds memory (~1 GB)
  uint64_t max_key_bytes = 64u << 20;        // total size of the canonical strings indexing dict keys and sets
  int max_tensor_rank = 8;
};

struct PickleResult {
  PickleValuePtr root;
  std::vector<std::shared_ptr<PickleStorage>> storages;  // one per distinct key, in first-seen order
  uint64_t consumed = 0;                                 // bytes read, up to and including STOP
};

// Runs the restricted machine over [data, data + size) until STOP; bytes after STOP are not read (legacy torch
// files hold several pickles back to back). `name` labels error messages. Pure function: no global state.
Status parse_pickle(const uint8_t* data, uint64_t size, const std::string& name, const PickleLimits& limits,
                    PickleResult* out);
Status parse_pickle(const uint8_t* data, uint64_t size, const std::string& name, PickleResult* out);

// Maps "FloatStorage" etc. (with module "torch" or "torch.cuda") to a dtype; false for unknown or unsupported
// (complex, quantized) storage types.
bool pickle_storage_dtype(const std::string& module, const std::string& type, SourceDType* dtype, int* element_size);

}  // namespace ddpm
