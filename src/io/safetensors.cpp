#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "io/atomic_file.h"
#include "io/json.h"
#include "io/tensor_loader.h"

namespace ddpm {

namespace {

constexpr char kMetadataKey[] = "__metadata__";

// Tensor names come from the file; keep messages on one line and of sane length whatever they contain.
std::string shown_name(const std::string& name) {
  constexpr size_t kMaxShown = 200;
  std::string shown;
  for (size_t i = 0; i < name.size() && i < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    shown.push_back(c < 0x20 || c == 0x7f ? '?' : static_cast<char>(c));
  }
  if (name.size() > kMaxShown) shown += "...";
  return shown;
}

uint64_t read_u64_le(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

void append_u64_le(uint64_t value, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

bool known_unsupported_dtype(std::string_view name) {
  static const char* const kNames[] = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "U16",
                                       "U32",     "U64",     "C64",     "F4",          "F6_E2M3",     "F6_E3M2"};
  for (const char* known : kNames) {
    if (name == known) return true;
  }
  return false;
}

struct ParsedEntry {
  SourceTensor tensor;
  uint64_t begin = 0;
  uint64_t end = 0;
};

Status parse_metadata(const std::string& path, const JsonValue& value,
                      std::vector<std::pair<std::string, std::string>>* metadata) {
  if (value.is_null()) return Status();
  if (!value.is_object()) return errorf("%s: __metadata__ is not a JSON object", path.c_str());
  for (const auto& member : value.members()) {
    if (!member.second.is_string()) {
      return errorf("%s: __metadata__ value of \"%s\" is not a string", path.c_str(),
                    shown_name(member.first).c_str());
    }
    metadata->emplace_back(member.first, member.second.string());
  }
  return Status();
}

Status parse_tensor_entry(const std::string& path, const std::string& name, const JsonValue& value,
                          uint64_t data_bytes, uint64_t data_start, ParsedEntry* entry) {
  const std::string shown = shown_name(name);
  const char* file = path.c_str();
  const char* tensor = shown.c_str();
  if (!value.is_object()) return errorf("%s: entry for tensor %s is not a JSON object", file, tensor);

  const JsonValue* dtype_value = value.find("dtype");
  const JsonValue* shape_value = value.find("shape");
  const JsonValue* offsets_value = value.find("data_offsets");
  if (dtype_value == nullptr) return errorf("%s: tensor %s has no dtype", file, tensor);
  if (shape_value == nullptr) return errorf("%s: tensor %s has no shape", file, tensor);
  if (offsets_value == nullptr) return errorf("%s: tensor %s has no data_offsets", file, tensor);

  if (!dtype_value->is_string()) return errorf("%s: dtype of tensor %s is not a string", file, tensor);
  SourceTensor& t = entry->tensor;
  t.name = name;
  if (!safetensors_dtype_from_name(dtype_value->string(), &t.dtype)) {
    return errorf("%s: %s dtype %s for tensor %s", file,
                  known_unsupported_dtype(dtype_value->string()) ? "unsupported" : "unknown",
                  shown_name(dtype_value->string()).c_str(), tensor);
  }

  if (!shape_value->is_array()) return errorf("%s: shape of tensor %s is not an array", file, tensor);
  for (const JsonValue& dim_value : shape_value->items()) {
    uint64_t dim = 0;
    if (!dim_value.as_uint64(&dim) || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return errorf("%s: shape of tensor %s has an entry that is not a non-negative integer", file, tensor);
    }
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  int64_t numel = 0;
  if (!checked_numel(t.shape, &numel)) return errorf("%s: shape of tensor %s is too large", file, tensor);
  const uint64_t element_size = static_cast<uint64_t>(source_dtype_size(t.dtype));
  if (static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / element_size) {
    return errorf("%s: shape of tensor %s is too large", file, tensor);
  }
  const uint64_t expected_bytes = static_cast<uint64_t>(numel) * element_size;

  if (!offsets_value->is_array() || offsets_value->size() != 2 ||
      !offsets_value->items()[0].as_uint64(&entry->begin) || !offsets_value->items()[1].as_uint64(&entry->end)) {
    return errorf("%s: data_offsets of tensor %s is not a pair of non-negative integers", file, tensor);
  }
  if (entry->end < entry->begin) {
    return errorf("%s: data_offsets of tensor %s end before they begin ([%llu, %llu])", file, tensor,
                  static_cast<unsigned long long>(entry->begin), static_cast<unsigned long long>(entry->end));
  }
  if (entry->end > data_bytes) {
    return errorf("%s: data_offsets of tensor %s ([%llu, %llu]) run past the data section (%llu bytes)", file,
                  tensor, static_cast<unsigned long long>(entry->begin), static_cast<unsigned long long>(entry->end),
                  static_cast<unsigned long long>(data_bytes));
  }
  if (entry->end - entry->begin != expected_bytes) {
    return errorf("%s: tensor %s spans %llu bytes but its dtype %s and shape need %llu", file, tensor,
                  static_cast<unsigned long long>(entry->end - entry->begin), source_dtype_name(t.dtype),
                  static_cast<unsigned long long>(expected_bytes));
  }

  t.strides.assign(t.shape.size(), 1);
  for (size_t i = t.shape.size(); i-- > 1;) t.strides[i - 1] = t.strides[i] * std::max<int64_t>(t.shape[i], 1);
  t.storage_offset = data_start + entry->begin;  // cannot overflow: data_start + end <= file size
  t.storage_bytes = expected_bytes;
  t.element_offset = 0;
  t.big_endian = false;
  return Status();
}

// The data sections must tile [0, data_bytes) exactly, as the reference reader demands.
Status check_coverage(const std::string& path, const std::vector<ParsedEntry>& entries, uint64_t data_bytes) {
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (entries[a].begin != entries[b].begin) return entries[a].begin < entries[b].begin;
    return entries[a].end < entries[b].end;
  });
  uint64_t covered = 0;
  const ParsedEntry* previous = nullptr;
  for (size_t index : order) {
    const ParsedEntry& entry = entries[index];
    if (entry.begin < covered) {
      return errorf("%s: data of tensor %s overlaps tensor %s", path.c_str(),
                    shown_name(entry.tensor.name).c_str(), shown_name(previous->tensor.name).c_str());
    }
    if (entry.begin > covered) {
      return errorf("%s: bytes [%llu, %llu) of the data section belong to no tensor (before tensor %s)",
                    path.c_str(), static_cast<unsigned long long>(covered),
                    static_cast<unsigned long long>(entry.begin), shown_name(entry.tensor.name).c_str());
    }
    covered = entry.end;
    previous = &entry;
  }
  if (covered != data_bytes) {
    return errorf("%s: %llu trailing bytes after the last tensor's data", path.c_str(),
                  static_cast<unsigned long long>(data_bytes - covered));
  }
  return Status();
}

}  // namespace

bool safetensors_dtype_from_name(std::string_view name, SourceDType* out) {
  static const std::pair<const char*, SourceDType> kDTypes[] = {
      {"F32", SourceDType::F32}, {"F16", SourceDType::F16}, {"BF16", SourceDType::BF16}, {"F64", SourceDType::F64},
      {"I64", SourceDType::I64}, {"I32", SourceDType::I32}, {"I16", SourceDType::I16},   {"I8", SourceDType::I8},
      {"U8", SourceDType::U8},   {"BOOL", SourceDType::BOOL}};
  for (const auto& entry : kDTypes) {
    if (name == entry.first) {
      *out = entry.second;
      return true;
    }
  }
  return false;
}

Status read_safetensors(const std::string& path, const MappedFile& file, std::vector<SourceTensor>* tensors,
                        std::vector<std::pair<std::string, std::string>>* metadata) {
  DDPM_ASSERT(tensors != nullptr);
  const uint64_t file_size = file.size();
  if (file_size < 8) {
    return errorf("%s: too short for a safetensors file (%llu bytes)", path.c_str(),
                  static_cast<unsigned long long>(file_size));
  }
  const uint64_t header_bytes = read_u64_le(file.data());
  if (header_bytes > kSafetensorsMaxHeaderBytes) {
    return errorf("%s: safetensors header length %llu exceeds the limit of %llu bytes", path.c_str(),
                  static_cast<unsigned long long>(header_bytes),
                  static_cast<unsigned long long>(kSafetensorsMaxHeaderBytes));
  }
  if (header_bytes > file_size - 8) {
    return errorf("%s: truncated: its safetensors header needs %llu bytes but the file has %llu", path.c_str(),
                  static_cast<unsigned long long>(8 + header_bytes), static_cast<unsigned long long>(file_size));
  }
  const uint64_t data_start = 8 + header_bytes;
  const uint64_t data_bytes = file_size - data_start;

  JsonValue header;
  const std::string_view header_text(reinterpret_cast<const char*>(file.data() + 8),
                                     static_cast<size_t>(header_bytes));
  Status status = parse_json(header_text, &header);
  if (!status.ok()) return status.with_context(path + ": safetensors header");
  if (!header.is_object()) return errorf("%s: safetensors header is not a JSON object", path.c_str());

  std::vector<ParsedEntry> entries;
  std::vector<std::pair<std::string, std::string>> parsed_metadata;
  entries.reserve(header.size());
  // Duplicate tensor names (and a second __metadata__) are already rejected by the JSON parser.
  for (const auto& member : header.members()) {
    if (member.first == kMetadataKey) {
      DDPM_TRY(parse_metadata(path, member.second, &parsed_metadata));
      continue;
    }
    entries.emplace_back();
    DDPM_TRY(parse_tensor_entry(path, member.first, member.second, data_bytes, data_start, &entries.back()));
  }
  DDPM_TRY(check_coverage(path, entries, data_bytes));

  tensors->clear();
  tensors->reserve(entries.size());
  for (ParsedEntry& entry : entries) tensors->push_back(std::move(entry.tensor));
  if (metadata != nullptr) *metadata = std::move(parsed_metadata);
  return Status();
}

bool looks_like_safetensors(const MappedFile& file) {
  if (file.size() < 10) return false;
  const uint64_t header_bytes = read_u64_le(file.data());
  if (header_bytes < 2 || header_bytes > kSafetensorsMaxHeaderBytes) return false;
  // A header cut short by the end of the file still starts like one: a truncated download is named as such by
  // read_safetensors, not called an unknown format.
  for (uint64_t i = 8; i < 8 + std::min<uint64_t>(header_bytes, file.size() - 8); ++i) {
    const uint8_t c = file.data()[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    return c == '{';
  }
  return false;
}

Status write_safetensors(const std::string& path, const std::vector<SafetensorsWriteEntry>& entries,
                         const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<size_t> order(entries.size());
  std::vector<uint64_t> byte_counts(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const SafetensorsWriteEntry& entry = entries[i];
    order[i] = i;
    if (entry.name.empty()) return errorf("%s: cannot write a tensor with an empty name", path.c_str());
    if (entry.name == kMetadataKey) return errorf("%s: \"%s\" cannot name a tensor", path.c_str(), kMetadataKey);
    int64_t numel = 0;
    if (!checked_numel(entry.shape, &numel)) {
      return errorf("%s: tensor %s has an invalid shape", path.c_str(), shown_name(entry.name).c_str());
    }
    const uint64_t element_size = static_cast<uint64_t>(source_dtype_size(entry.dtype));
    if (static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / element_size) {
      return errorf("%s: tensor %s is too large", path.c_str(), shown_name(entry.name).c_str());
    }
    byte_counts[i] = static_cast<uint64_t>(numel) * element_size;
    if (byte_counts[i] > 0 && entry.data == nullptr) {
      return errorf("%s: tensor %s has no data", path.c_str(), shown_name(entry.name).c_str());
    }
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const int size_a = source_dtype_size(entries[a].dtype), size_b = source_dtype_size(entries[b].dtype);
    if (size_a != size_b) return size_a > size_b;
    return entries[a].name < entries[b].name;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    if (entries[order[i]].name == entries[order[i - 1]].name) {
      return errorf("%s: tensor name %s appears twice", path.c_str(), shown_name(entries[order[i]].name).c_str());
    }
  }

  JsonValue header = JsonValue::make_object();
  if (!metadata.empty()) {
    JsonValue metadata_object = JsonValue::make_object();
    for (const auto& item : metadata) {
      if (metadata_object.find(item.first) != nullptr) {
        return errorf("%s: metadata key %s appears twice", path.c_str(), shown_name(item.first).c_str());
      }
      metadata_object.set(item.first, JsonValue::make_string(item.second));
    }
    header.set(kMetadataKey, std::move(metadata_object));
  }
  uint64_t offset = 0;
  for (size_t index : order) {
    const SafetensorsWriteEntry& entry = entries[index];
    JsonValue info = JsonValue::make_object();
    info.set("dtype", JsonValue::make_string(source_dtype_name(entry.dtype)));
    JsonValue shape = JsonValue::make_array();
    for (int64_t dim : entry.shape) shape.push_back(JsonValue::make_int(dim));
    info.set("shape", std::move(shape));
    JsonValue offsets = JsonValue::make_array();
    offsets.push_back(JsonValue::make_uint(offset));
    if (byte_counts[index] > std::numeric_limits<uint64_t>::max() - offset) {
      return errorf("%s: tensors too large for one file", path.c_str());
    }
    offset += byte_counts[index];
    offsets.push_back(JsonValue::make_uint(offset));
    info.set("data_offsets", std::move(offsets));
    header.members().emplace_back(entry.name, std::move(info));
  }

  std::string header_text = to_json(header, false);
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  if (header_text.size() > kSafetensorsMaxHeaderBytes) {
    return errorf("%s: safetensors header would be %zu bytes, above the limit of %llu", path.c_str(),
                  header_text.size(), static_cast<unsigned long long>(kSafetensorsMaxHeaderBytes));
  }
  std::string prefix;
  append_u64_le(header_text.size(), &prefix);

  AtomicFile out;
  DDPM_TRY(out.open(path));
  DDPM_TRY(out.write(prefix.data(), prefix.size()));
  DDPM_TRY(out.write(header_text.data(), header_text.size()));
  for (size_t index : order) {
    const char* bytes = static_cast<const char*>(entries[index].data);
    uint64_t remaining = byte_counts[index];
    // write() takes size_t; chunking keeps 32-bit builds correct for multi-GiB tensors.
    while (remaining > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(remaining, uint64_t{1} << 30));
      DDPM_TRY(out.write(bytes, chunk));
      bytes += chunk;
      remaining -= chunk;
    }
  }
  return out.commit();
}

}  // namespace ddpm
