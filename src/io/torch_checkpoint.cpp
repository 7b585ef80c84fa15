#include "io/torch_checkpoint.h"

#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "io/tensor_loader.h"
#include "io/zip.h"

namespace ddpm {
namespace {

// pickle.dumps(0x1950a86a20f9469cfc6c): LONG1 with 10 little-endian bytes.
constexpr uint8_t kLegacyMagic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
constexpr int64_t kLegacyProtocolVersion = 1001;
constexpr uint64_t kTarMagicOffset = 257;

std::string printable(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (out.size() >= 80) return out + "...";
    unsigned char u = static_cast<unsigned char>(c);
    out += u < 0x20 || u == 0x7f ? '?' : c;
  }
  return out;
}

// Length of the magic-number pickle at the start of a legacy file, or 0. torch writes it with the protocol the
// caller chose (2 by default); protocol 4+ may wrap it in a FRAME.
uint64_t legacy_magic_length(const uint8_t* data, uint64_t size) {
  uint64_t pos = 0;
  if (size < 2 || data[0] != 0x80 || data[1] < 2 || data[1] > 5) return 0;
  pos = 2;
  if (size - pos >= 9 && data[pos] == 0x95) pos += 9;
  if (size - pos < sizeof kLegacyMagic + 1 || std::memcmp(data + pos, kLegacyMagic, sizeof kLegacyMagic) != 0)
    return 0;
  pos += sizeof kLegacyMagic;
  return data[pos] == '.' ? pos + 1 : 0;
}

bool looks_like_tar(const uint8_t* data, uint64_t size) {
  return size >= kTarMagicOffset + 5 && std::memcmp(data + kTarMagicOffset, "ustar", 5) == 0;
}

Status read_zip_checkpoint(const uint8_t* data, uint64_t size, const std::string& name, TorchCheckpoint* out) {
  std::vector<ZipEntry> entries;
  DDPM_TRY(read_zip_directory(data, size, name, &entries));
  if (entries.empty()) return errorf("%s: empty zip archive, not a torch checkpoint", name.c_str());
  // torch names every record "<archive>/…" with <archive> taken from the file name at save time.
  size_t slash = entries[0].name.find('/');
  if (slash == std::string::npos || slash == 0)
    return errorf("%s: not a torch archive: entry '%s' has no '<archive>/' prefix", name.c_str(),
                  printable(entries[0].name).c_str());
  const std::string prefix = entries[0].name.substr(0, slash + 1);

  std::unordered_map<std::string, const ZipEntry*> by_name;
  for (const ZipEntry& entry : entries) {
    by_name.emplace(entry.name, &entry);
    bool in_archive = entry.name.compare(0, prefix.size(), prefix) == 0;
    if (in_archive && (entry.name == prefix + "constants.pkl" || entry.name.compare(0, prefix.size() + 5,
                                                                                     prefix + "code/") == 0))
      return errorf("%s: TorchScript archive: not supported, save a state_dict with torch.save(model.state_dict())",
                    name.c_str());
  }
  auto record = [&](const char* record_name) -> const ZipEntry* {
    auto found = by_name.find(prefix + record_name);
    return found == by_name.end() ? nullptr : found->second;
  };

  const ZipEntry* pickle_entry = record("data.pkl");
  if (!pickle_entry)
    return errorf("%s: zip archive has no %sdata.pkl record: not a torch checkpoint", name.c_str(),
                  printable(prefix).c_str());
  bool big_endian = false;
  if (const ZipEntry* byteorder = record("byteorder")) {
    std::string order(reinterpret_cast<const char*>(data + byteorder->data_offset), byteorder->size);
    while (!order.empty() && (order.back() == '\n' || order.back() == '\r' || order.back() == ' ')) order.pop_back();
    if (order == "big") {
      big_endian = true;
    } else if (order != "little") {
      return errorf("%s: byteorder record says '%s' (expected 'little' or 'big')", name.c_str(),
                    printable(order).c_str());
    }
  }

  PickleResult pickle;
  DDPM_TRY(parse_pickle(data + pickle_entry->data_offset, pickle_entry->size, name + ": " + pickle_entry->name,
                        &pickle));
  for (const std::shared_ptr<PickleStorage>& storage : pickle.storages) {
    if (storage->legacy_id)
      return errorf("%s: storage '%s' uses a legacy (six-element) persistent id inside a zip archive", name.c_str(),
                    printable(storage->key).c_str());
    const std::string record_name = "data/" + storage->key;
    const ZipEntry* entry = record(record_name.c_str());
    if (!entry)
      return errorf("%s: storage '%s' has no record %s%s", name.c_str(), printable(storage->key).c_str(),
                    printable(prefix).c_str(), printable(record_name).c_str());
    // numel * element_size cannot overflow: the pickle machine checked it.
    uint64_t expected = static_cast<uint64_t>(storage->numel) * static_cast<uint64_t>(storage->element_size);
    if (entry->size != expected)
      return errorf("%s: record %s holds %llu bytes but storage '%s' (%s, %lld elements) needs %llu", name.c_str(),
                    printable(entry->name).c_str(), static_cast<unsigned long long>(entry->size),
                    printable(storage->key).c_str(), storage->type_name.c_str(),
                    static_cast<long long>(storage->numel), static_cast<unsigned long long>(expected));
    storage->resolved = true;
    storage->file_offset = entry->data_offset;
    storage->file_bytes = entry->size;
    storage->big_endian = big_endian;
  }
  out->format = TorchFormat::Zip;
  out->archive_prefix = prefix.substr(0, prefix.size() - 1);
  out->root = std::move(pickle.root);
  out->storages = std::move(pickle.storages);
  out->big_endian = big_endian;
  return Status();
}

uint64_t load_u64(const uint8_t* p, bool big_endian) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[big_endian ? i : 7 - i];
  return v;
}

Status read_legacy_checkpoint(const uint8_t* data, uint64_t size, const std::string& name, TorchCheckpoint* out) {
  uint64_t pos = legacy_magic_length(data, size);
  if (pos == 0) return errorf("%s: not a legacy torch file (magic number missing)", name.c_str());

  PickleResult version;
  DDPM_TRY(parse_pickle(data + pos, size - pos, name + ": protocol version", &version));
  pos += version.consumed;
  if (version.root->kind != PickleKind::Int || version.root->int_value != kLegacyProtocolVersion)
    return errorf("%s: legacy torch file with protocol version %s (expected %lld)", name.c_str(),
                  version.root->describe().c_str(), static_cast<long long>(kLegacyProtocolVersion));

  PickleResult sys_info;
  DDPM_TRY(parse_pickle(data + pos, size - pos, name + ": sys_info", &sys_info));
  pos += sys_info.consumed;
  if (!sys_info.root->is_dict()) return errorf("%s: legacy sys_info is not a dict", name.c_str());
  bool declared_big_endian = false;
  if (const PickleValue* little = sys_info.root->find("little_endian")) {
    if (little->kind != PickleKind::Bool) return errorf("%s: legacy sys_info.little_endian is not a bool", name.c_str());
    declared_big_endian = !little->bool_value;
  }

  PickleResult main;
  DDPM_TRY(parse_pickle(data + pos, size - pos, name + ": object pickle", &main));
  pos += main.consumed;

  PickleResult keys;
  DDPM_TRY(parse_pickle(data + pos, size - pos, name + ": storage keys", &keys));
  pos += keys.consumed;
  if (keys.root->kind != PickleKind::List && keys.root->kind != PickleKind::Tuple)
    return errorf("%s: legacy storage key list is a %s", name.c_str(), pickle_kind_name(keys.root->kind));

  std::unordered_map<std::string, PickleStorage*> by_key;
  for (const std::shared_ptr<PickleStorage>& storage : main.storages) {
    if (!storage->legacy_id)
      return errorf("%s: storage '%s' uses a five-element persistent id in a legacy file", name.c_str(),
                    printable(storage->key).c_str());
    by_key.emplace(storage->key, storage.get());
  }
  // Storages follow in key-list order, each as an int64 element count and the raw elements. Old torch wrote both
  // in the writer's native order, current torch always little-endian; the count must equal the one in the pickle,
  // which tells the two apart (sys_info decides only when both readings agree).
  bool any_big_endian = false;
  for (const PickleValuePtr& key_value : keys.root->items) {
    if (key_value->kind != PickleKind::String)
      return errorf("%s: legacy storage key list holds a %s", name.c_str(), pickle_kind_name(key_value->kind));
    const std::string& key = key_value->text;
    auto found = by_key.find(key);
    if (found == by_key.end())
      return errorf("%s: legacy storage key '%s' is listed but no tensor uses it", name.c_str(),
                    printable(key).c_str());
    PickleStorage* storage = found->second;
    if (storage->resolved)
      return errorf("%s: legacy storage key '%s' is listed twice", name.c_str(), printable(key).c_str());
    if (size - pos < 8)
      return errorf("%s: truncated: storage '%s' is missing its element count", name.c_str(), printable(key).c_str());
    uint64_t little = load_u64(data + pos, false), big = load_u64(data + pos, true);
    uint64_t expected = static_cast<uint64_t>(storage->numel);
    bool big_endian;
    if (little == expected && big == expected) {
      big_endian = declared_big_endian;
    } else if (little == expected || big == expected) {
      big_endian = big == expected;
    } else {
      return errorf("%s: legacy storage '%s' is stored with %llu elements but the pickle declares %lld", name.c_str(),
                    printable(key).c_str(), static_cast<unsigned long long>(little),
                    static_cast<long long>(storage->numel));
    }
    pos += 8;
    uint64_t bytes = expected * static_cast<uint64_t>(storage->element_size);  // checked by the pickle machine
    if (size - pos < bytes)
      return errorf("%s: truncated: storage '%s' needs %llu bytes at offset %llu, the file has %llu", name.c_str(),
                    printable(key).c_str(), static_cast<unsigned long long>(bytes),
                    static_cast<unsigned long long>(pos), static_cast<unsigned long long>(size));
    storage->resolved = true;
    storage->file_offset = pos;
    storage->file_bytes = bytes;
    storage->big_endian = big_endian && storage->element_size > 1;
    any_big_endian = any_big_endian || storage->big_endian;
    pos += bytes;
  }
  for (const std::shared_ptr<PickleStorage>& storage : main.storages) {
    if (!storage->resolved)
      return errorf("%s: storage key '%s' with no record (missing from the legacy storage list)", name.c_str(),
                    printable(storage->key).c_str());
  }
  out->format = TorchFormat::Legacy;
  out->archive_prefix.clear();
  out->root = std::move(main.root);
  out->storages = std::move(main.storages);
  out->big_endian = any_big_endian;
  return Status();
}

// ---- collect_tensors ----

const char* const kConventionalNames[] = {
    "state_dict", "model_state_dict", "ema_state_dict", "ema", "ema_model", "model_ema", "model", "module",
    "net", "network", "params", "params_ema", "weights", "unet", "ema_unet", "generator", "g_ema",
};

// A dict shared by several parents is walked once per parent, so a small pickle can describe an exponentially
// large state dict; these bound the work and the output.
constexpr uint64_t kMaxVisits = 16u << 20;
constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxNameBytes = 64u << 20;
constexpr int kAutoSearchDepth = 3;

bool holds_tensors(const PickleValue& value) {
  if (!value.is_dict()) return false;
  for (size_t i = 0; i < value.dict_size(); ++i) {
    if (value.dict_value(i).kind == PickleKind::Tensor) return true;
  }
  return false;
}

bool key_text(const PickleValue& key, std::string* text) {
  if (key.kind == PickleKind::String) {
    *text = key.text;
    return true;
  }
  if (key.kind == PickleKind::Int) {
    *text = std::to_string(key.int_value);
    return true;
  }
  return false;
}

std::string join_path(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

Status to_source_tensor(const std::string& name, const PickleTensor& tensor, SourceTensor* out) {
  const PickleStorage& storage = *tensor.storage;
  if (!storage.resolved)
    return errorf("tensor '%s': storage '%s' was not located in the file", printable(name).c_str(),
                  printable(storage.key).c_str());
  // The pickle machine and the reader already validated all of this; checked again because the value tree is a
  // public structure and this is the last stop before someone reads bytes at these offsets.
  if (tensor.shape.size() != tensor.strides.size() || storage.element_size <= 0 ||
      storage.file_bytes / static_cast<uint64_t>(storage.element_size) < static_cast<uint64_t>(storage.numel) ||
      tensor.element_offset < 0)
    return errorf("tensor '%s': inconsistent storage record", printable(name).c_str());
  int64_t numel = 0, last = tensor.element_offset, reach = 0;
  if (!checked_numel(tensor.shape, &numel))  // (also the non-zero extents' product, whatever a zero extent does)
    return errorf("tensor '%s': bad shape or strides", printable(name).c_str());
  for (size_t d = 0; d < tensor.shape.size(); ++d) {
    if (tensor.strides[d] < 0 ||
        (tensor.shape[d] > 0 && (__builtin_mul_overflow(tensor.shape[d] - 1, tensor.strides[d], &reach) ||
                                 __builtin_add_overflow(last, reach, &last))))
      return errorf("tensor '%s': bad shape or strides", printable(name).c_str());
  }
  if (numel > 0 ? last >= storage.numel : tensor.element_offset > storage.numel)
    return errorf("tensor '%s' reaches past the end of its storage", printable(name).c_str());
  out->name = name;
  out->dtype = storage.dtype;
  out->shape = tensor.shape;
  out->strides = tensor.strides;
  out->storage_offset = storage.file_offset;
  out->storage_bytes = storage.file_bytes;
  out->element_offset = tensor.element_offset;
  out->big_endian = storage.big_endian;
  return Status();
}

struct Flattener {
  std::vector<SourceTensor>* out;
  std::unordered_set<std::string> names;
  uint64_t visits = 0;
  uint64_t name_bytes = 0;

  Status flatten(const PickleValue& dict, const std::string& prefix) {
    for (size_t i = 0; i < dict.dict_size(); ++i) {
      if (++visits > kMaxVisits) return errorf("state dict has more than %llu entries",
                                               static_cast<unsigned long long>(kMaxVisits));
      const PickleValue& value = dict.dict_value(i);
      if (value.kind != PickleKind::Tensor && !value.is_dict()) continue;
      std::string key;
      if (!key_text(dict.dict_key(i), &key))
        return errorf("state dict key %s is not a string", dict.dict_key(i).describe().c_str());
      std::string name = join_path(prefix, key);
      name_bytes += name.size();
      if (out->size() >= kMaxTensors || name_bytes > kMaxNameBytes)
        return errorf("state dict has more than %llu tensors or %llu bytes of names",
                      static_cast<unsigned long long>(kMaxTensors), static_cast<unsigned long long>(kMaxNameBytes));
      if (value.is_dict()) {
        DDPM_TRY(flatten(value, name));
        continue;
      }
      if (!names.insert(name).second) return errorf("two tensors are named '%s'", printable(name).c_str());
      SourceTensor tensor;
      DDPM_TRY(to_source_tensor(name, *value.tensor, &tensor));
      out->push_back(std::move(tensor));
    }
    return Status();
  }
};

bool parse_index(const std::string& text, uint64_t* index) {
  if (text.empty() || text.size() > 18) return false;
  *index = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    *index = *index * 10 + static_cast<uint64_t>(c - '0');
  }
  return true;
}

// Dict lookup by string key, falling back to an integer key for decimal text (optimizer states use int keys).
const PickleValue* find_key(const PickleValue& dict, const std::string& text) {
  if (const PickleValue* found = dict.find(text)) return found;
  uint64_t index = 0;
  if (!parse_index(text, &index)) return nullptr;
  for (size_t i = 0; i < dict.dict_size(); ++i) {
    const PickleValue& key = dict.dict_key(i);
    if (key.kind == PickleKind::Int && key.int_value >= 0 && static_cast<uint64_t>(key.int_value) == index)
      return &dict.dict_value(i);
  }
  return nullptr;
}

// Follows a path of dict keys / list indices. Keys may themselves contain '.', so at each level the longest
// prefix of the remaining path that names an existing key wins.
Status follow_path(const PickleValue& root, const std::string& path, const PickleValue** result) {
  const PickleValue* current = &root;
  size_t start = 0;
  while (start < path.size()) {
    const PickleValue* next = nullptr;
    size_t next_start = path.size() + 1;
    if (current->is_dict()) {
      for (size_t end = path.size() + 1; end-- > start;) {
        if (end != path.size() && path[end] != '/' && path[end] != '.') continue;
        next = find_key(*current, path.substr(start, end - start));
        if (next) {
          next_start = end + 1;
          break;
        }
      }
    } else if (current->kind == PickleKind::List || current->kind == PickleKind::Tuple) {
      size_t end = path.find_first_of("/.", start);
      if (end == std::string::npos) end = path.size();
      uint64_t index = 0;
      if (parse_index(path.substr(start, end - start), &index) && index < current->items.size()) {
        next = current->items[index].get();
        next_start = end + 1;
      }
    }
    if (!next) {
      std::string keys;
      if (current->is_dict()) {
        for (size_t i = 0; i < current->dict_size() && i < 12; ++i) {
          std::string key;
          if (key_text(current->dict_key(i), &key)) keys += (keys.empty() ? "" : ", ") + printable(key);
        }
        if (current->dict_size() > 12) keys += ", ...";
      }
      return errorf("key path '%s': nothing at '%s' in a %s%s%s%s", printable(path).c_str(),
                    printable(path.substr(start)).c_str(), current->describe().c_str(),
                    keys.empty() ? "" : " (keys: ", keys.c_str(), keys.empty() ? "" : ")");
    }
    current = next;
    start = next_start;
  }
  *result = current;
  return Status();
}

// Breadth-first search for the dicts that hold tensors directly, stopping at the first level that has any.
Status find_state_dicts(const PickleValue& root, std::vector<std::pair<std::string, const PickleValue*>>* found) {
  std::vector<std::pair<std::string, const PickleValue*>> level{{"", &root}};
  uint64_t visits = 0, path_bytes = 0;
  for (int depth = 0; depth <= kAutoSearchDepth && !level.empty() && found->empty(); ++depth) {
    std::vector<std::pair<std::string, const PickleValue*>> next;
    for (const auto& entry : level) {
      if (holds_tensors(*entry.second)) {
        found->push_back(entry);
        continue;
      }
      for (size_t i = 0; i < entry.second->dict_size(); ++i) {
        std::string key;
        const PickleValue& child = entry.second->dict_value(i);
        if (!child.is_dict() || !key_text(entry.second->dict_key(i), &key)) continue;
        std::string path = entry.first.empty() ? key : entry.first + "/" + key;
        path_bytes += path.size();
        if (++visits > kMaxVisits || path_bytes > kMaxNameBytes)
          return errorf("checkpoint has too many nested dicts to search: give a key path");
        next.emplace_back(std::move(path), &child);
      }
    }
    level = std::move(next);
  }
  return Status();
}

}  // namespace

bool looks_like_torch_zip(const uint8_t* data, uint64_t size) {
  return size >= 4 && data[0] == 'P' && data[1] == 'K' && data[2] == 3 && data[3] == 4;
}

bool looks_like_torch_legacy(const uint8_t* data, uint64_t size) { return legacy_magic_length(data, size) != 0; }

Status read_torch_checkpoint(const uint8_t* data, uint64_t size, const std::string& name, TorchCheckpoint* out) {
  *out = TorchCheckpoint();
  if (looks_like_torch_zip(data, size)) return read_zip_checkpoint(data, size, name, out);
  if (looks_like_torch_legacy(data, size)) return read_legacy_checkpoint(data, size, name, out);
  if (looks_like_tar(data, size))
    return errorf("%s: tar-based torch checkpoint (torch < 0.4): not supported; re-save it with a newer torch",
                  name.c_str());
  return errorf("%s: not a PyTorch checkpoint (neither a zip archive nor a legacy torch pickle)", name.c_str());
}

Status collect_tensors(const PickleValue& root, const std::string& key_path, std::vector<SourceTensor>* out,
                       std::vector<std::string>* candidates) {
  out->clear();
  if (candidates) candidates->clear();
  const PickleValue* selected = &root;
  std::string selected_name = "/";
  if (key_path.empty()) {
    std::vector<std::pair<std::string, const PickleValue*>> found;
    DDPM_TRY(find_state_dicts(root, &found));
    if (candidates) {
      for (const auto& entry : found) candidates->push_back(entry.first.empty() ? "/" : entry.first);
    }
    if (found.empty()) return errorf("no dict of tensors found in the checkpoint (top level is a %s)",
                                     root.describe().c_str());
    if (found.size() > 1) {
      std::vector<std::pair<std::string, const PickleValue*>> conventional;
      for (const auto& entry : found) {
        std::string last = entry.first.substr(entry.first.rfind('/') + 1);
        for (const char* known : kConventionalNames) {
          if (last == known) conventional.push_back(entry);
        }
      }
      if (conventional.size() != 1) {
        std::string list;
        for (const auto& entry : found) list += (list.empty() ? "" : ", ") + printable(entry.first);
        return errorf("checkpoint holds several state dicts (%s): choose one with --key (a dotted key path)", list.c_str());
      }
      found = conventional;
    }
    selected = found[0].second;
    selected_name = found[0].first.empty() ? "/" : found[0].first;
  } else if (key_path != "/") {
    DDPM_TRY(follow_path(root, key_path, &selected));
    selected_name = key_path;
  }
  if (!selected->is_dict())
    return errorf("'%s' is a %s, not a dict of tensors", printable(selected_name).c_str(),
                  selected->describe().c_str());
  Flattener flattener{out, {}, 0};
  Status status = flattener.flatten(*selected, "");
  if (!status.ok()) {
    out->clear();
    return status.with_context(printable(selected_name));
  }
  if (out->empty()) return errorf("'%s' holds no tensors", printable(selected_name).c_str());
  return Status();
}

}  // namespace ddpm
