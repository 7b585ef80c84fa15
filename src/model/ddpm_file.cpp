#include "model/ddpm_file.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "io/atomic_file.h"
#include "io/crc32c.h"
#include "io/json.h"
#include "quant/blocks.h"

// Tensor data is used in place from the mapping, and every multi-byte field is read with memcpy: both assume the
// host stores numbers as the file does.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the .ddpm reader and writer assume a little-endian host");

namespace ddpm {

// The file stores DType values as dtype codes, so the enum's numbering is part of the format. Pinning it here
// turns an accidental renumbering into a build error instead of silently misread files.
static_assert(static_cast<int>(DType::F32) == 0 && static_cast<int>(DType::F16) == 1 &&
                  static_cast<int>(DType::I32) == 2 && static_cast<int>(DType::Q8_0) == 3 &&
                  static_cast<int>(DType::Q4_0) == 4 && static_cast<int>(DType::Q4_1) == 5 &&
                  static_cast<int>(DType::Q5_0) == 6,
              "DType values are .ddpm dtype codes (docs/FORMAT.md §6): append new types, never renumber");

namespace {

using Type = MetadataValue::Type;

constexpr uint8_t kMagic[4] = {'D', 'D', 'P', 'M'};
constexpr uint32_t kRequiredFlagsMask = 0x0000FFFFu;  // bits a reader must understand
constexpr uint32_t kKnownRequiredFlags = kDdpmFlagTapMajorConvRows;
constexpr uint64_t kChecksumFieldOffset = 12;
constexpr uint64_t kTensorEntryFixedBytes = 56;
// Smallest possible encodings, used to bound declared counts before anything is allocated for them.
constexpr uint64_t kMinMetadataEntryBytes = 2 + 1 + 1 + 1;  // key length, 1-byte key, type, 1-byte value
constexpr uint64_t kMinTensorEntryBytes = kTensorEntryFixedBytes + 1;
constexpr char kRequiredKey[] = "ddpm.architecture";

using ull = unsigned long long;

uint64_t align_up(uint64_t value) { return (value + kDdpmAlignment - 1) & ~(kDdpmAlignment - 1); }

template <typename T>
T load(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof value);
  return value;
}

template <typename T>
void store(uint8_t* p, T value) {
  std::memcpy(p, &value, sizeof value);
}

template <typename T>
void append(std::vector<uint8_t>* out, T value) {
  const size_t at = out->size();
  out->resize(at + sizeof value);
  store(out->data() + at, value);
}

void append_bytes(std::vector<uint8_t>* out, const void* data, size_t size) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  out->insert(out->end(), p, p + size);
}

// Bytes from a file (names, keys, magic) made safe for a one-line message: printable ASCII kept, the rest as \xNN,
// long input cut.
std::string shown(const void* data, size_t size, size_t max_chars = 120) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  std::string out;
  for (size_t i = 0; i < size; ++i) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    const uint8_t c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::string shown(const std::string& s) { return shown(s.data(), s.size()); }

bool is_key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

bool is_valid_key(const char* p, size_t n) {
  if (n == 0 || n > kDdpmMaxKeyBytes) return false;
  bool segment_empty = true;
  for (size_t i = 0; i < n; ++i) {
    if (p[i] == '.') {
      if (segment_empty) return false;
      segment_empty = true;
    } else if (is_key_char(p[i])) {
      segment_empty = false;
    } else {
      return false;
    }
  }
  return !segment_empty;
}

bool is_valid_tensor_name(const char* p, size_t n) {
  if (n == 0 || n > kDdpmMaxTensorNameBytes) return false;
  for (size_t i = 0; i < n; ++i) {
    if (p[i] <= 0x20 || p[i] >= 0x7f) return false;
  }
  return true;
}

constexpr char kKeyRule[] = "keys are 1-256 bytes of dot-separated segments of [A-Za-z0-9_-]";
constexpr char kNameRule[] = "names are 1-512 printable ASCII characters without spaces";

// Bytes of one element of a scalar type; 0 for String, Array and unknown codes.
size_t scalar_size(Type type) {
  switch (type) {
    case Type::U8:
    case Type::Bool:
      return 1;
    case Type::I32:
    case Type::U32:
    case Type::F32:
      return 4;
    case Type::I64:
    case Type::U64:
    case Type::F64:
      return 8;
    case Type::String:
    case Type::Array:
      break;
  }
  return 0;
}

bool is_known_type(uint8_t code) { return code <= static_cast<uint8_t>(Type::Array); }

// Shortest text that reads back as the same float.
std::string float_text(float value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buf[32];
  for (int precision = 6; precision <= 9; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, static_cast<double>(value));
    if (std::strtof(buf, nullptr) == value) break;
  }
  return buf;
}

std::string double_text(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  return json_number_text(value);
}

std::string dims_text(int rank, const int64_t* dims) {
  std::string out = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) out += ", ";
    out += std::to_string(dims[i]);
  }
  return out + "]";
}

// The rules a shape must meet, shared by writer and reader. On failure *problem says why (without the tensor name).
bool shape_bytes(DType dtype, int rank, const int64_t* dims, uint64_t* bytes, std::string* problem) {
  if (rank < 1 || rank > kDdpmMaxRank) {
    *problem = "has rank " + std::to_string(rank) + " (must be 1-4)";
    return false;
  }
  int64_t numel = 1;
  for (int i = 0; i < rank; ++i) {
    if (dims[i] < 1) {
      *problem = "has shape " + dims_text(rank, dims) + ": every dim must be at least 1";
      return false;
    }
    if (numel > std::numeric_limits<int64_t>::max() / dims[i]) {
      *problem = "has shape " + dims_text(rank, dims) + ", too many elements";
      return false;
    }
    numel *= dims[i];
  }
  // Block types store rows (dims[0] of them, or one for rank 1) padded with zeros to whole blocks; see dtype.h.
  const DTypeTraits& traits = dtype_traits(dtype);
  const int64_t rows = rank >= 2 ? dims[0] : 1;
  const uint64_t row_values = static_cast<uint64_t>(numel / rows);
  const uint64_t block_size = static_cast<uint64_t>(traits.block_size);
  const uint64_t blocks = static_cast<uint64_t>(rows) * ((row_values + block_size - 1) / block_size);
  if (blocks > std::numeric_limits<uint64_t>::max() / traits.block_bytes) {
    *problem = "has shape " + dims_text(rank, dims) + ", too many bytes";
    return false;
  }
  *bytes = blocks * traits.block_bytes;
  return true;
}

// Bounds-checked reads within one section [pos, end) of the file.
struct Cursor {
  const uint8_t* base;
  uint64_t pos;
  uint64_t end;

  uint64_t left() const { return end - pos; }
  const uint8_t* take(uint64_t n) {
    if (n > left()) return nullptr;
    const uint8_t* p = base + pos;
    pos += n;
    return p;
  }
  template <typename T>
  bool read(T* out) {
    const uint8_t* p = take(sizeof(T));
    if (p == nullptr) return false;
    *out = load<T>(p);
    return true;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Metadata values.

struct MetadataCodec {
  static MetadataValue scalar(Type type, uint64_t bits) {
    MetadataValue v;
    v.type_ = type;
    v.scalar_ = bits;
    return v;
  }

  template <typename T>
  static MetadataValue packed_array(Type element, const std::vector<T>& values) {
    MetadataValue v;
    v.type_ = Type::Array;
    v.element_ = element;
    v.raw_.resize(values.size() * sizeof(T));
    if (!values.empty()) std::memcpy(v.raw_.data(), values.data(), v.raw_.size());
    return v;
  }

  template <typename T>
  static bool get_scalar(const MetadataValue& v, Type type, T* out) {
    if (v.type_ != type) return false;
    std::memcpy(out, &v.scalar_, sizeof(T));  // the low bytes on a little-endian host
    return true;
  }

  template <typename T>
  static bool get_array(const MetadataValue& v, Type element, std::vector<T>* out) {
    if (v.type_ != Type::Array || v.element_ != element) return false;
    out->resize(v.raw_.size() / sizeof(T));
    if (!v.raw_.empty()) std::memcpy(out->data(), v.raw_.data(), v.raw_.size());
    return true;
  }

  static void encode(const MetadataValue& v, std::vector<uint8_t>* out) {
    out->push_back(static_cast<uint8_t>(v.type_));
    if (v.type_ == Type::String) {
      append<uint64_t>(out, v.text_.size());
      append_bytes(out, v.text_.data(), v.text_.size());
    } else if (v.type_ == Type::Array) {
      out->push_back(static_cast<uint8_t>(v.element_));
      append<uint64_t>(out, v.array_size());
      if (v.element_ == Type::String) {
        for (const std::string& s : v.strings_) {
          append<uint64_t>(out, s.size());
          append_bytes(out, s.data(), s.size());
        }
      } else {
        append_bytes(out, v.raw_.data(), v.raw_.size());
      }
    } else {
      append_bytes(out, &v.scalar_, scalar_size(v.type_));
    }
  }

  // Reads one value of the given type code. On failure *problem says what is wrong with it.
  static bool decode(Cursor* c, uint8_t type_code, MetadataValue* out, std::string* problem) {
    constexpr char kOverrun[] = "runs past the end of the metadata section";
    if (!is_known_type(type_code)) {
      *problem = "has value type code " + std::to_string(type_code) + ", which this ddpm.cpp does not know";
      return false;
    }
    const Type type = static_cast<Type>(type_code);
    out->type_ = type;
    if (type == Type::String) {
      uint64_t length = 0;
      const uint8_t* p = nullptr;
      if (!c->read(&length) || (p = c->take(length)) == nullptr) {
        *problem = kOverrun;
        return false;
      }
      out->text_.assign(reinterpret_cast<const char*>(p), length);
      return true;
    }
    if (type != Type::Array) {
      const uint8_t* p = c->take(scalar_size(type));
      if (p == nullptr) {
        *problem = kOverrun;
        return false;
      }
      std::memcpy(&out->scalar_, p, scalar_size(type));
      if (type == Type::Bool && out->scalar_ > 1) {
        *problem = "has bool value " + std::to_string(out->scalar_) + " (must be 0 or 1)";
        return false;
      }
      return true;
    }
    uint8_t element_code = 0;
    uint64_t count = 0;
    if (!c->read(&element_code) || !c->read(&count)) {
      *problem = kOverrun;
      return false;
    }
    if (!is_known_type(element_code) || element_code == static_cast<uint8_t>(Type::Array)) {
      *problem = "is an array with element type code " + std::to_string(element_code) +
                 " (must be a scalar or string type)";
      return false;
    }
    const Type element = static_cast<Type>(element_code);
    out->element_ = element;
    if (element == Type::String) {
      // Every string needs at least its 8-byte length, so this bounds the reservation by the section size.
      if (count > c->left() / 8) {
        *problem = "declares " + std::to_string(count) + " strings, more than the rest of the section can hold";
        return false;
      }
      out->strings_.reserve(count);
      for (uint64_t i = 0; i < count; ++i) {
        uint64_t length = 0;
        const uint8_t* p = nullptr;
        if (!c->read(&length) || (p = c->take(length)) == nullptr) {
          *problem = kOverrun;
          return false;
        }
        out->strings_.emplace_back(reinterpret_cast<const char*>(p), length);
      }
      return true;
    }
    const size_t element_size = scalar_size(element);
    if (count > c->left() / element_size) {
      *problem = "declares " + std::to_string(count) + " elements, more than the rest of the section can hold";
      return false;
    }
    const uint8_t* p = c->take(count * element_size);
    out->raw_.assign(p, p + count * element_size);
    if (element == Type::Bool) {
      for (uint64_t i = 0; i < count; ++i) {
        if (p[i] > 1) {
          *problem = "has bool element " + std::to_string(i) + " = " + std::to_string(p[i]) + " (must be 0 or 1)";
          return false;
        }
      }
    }
    return true;
  }
};

MetadataValue MetadataValue::u8(uint8_t v) { return MetadataCodec::scalar(Type::U8, v); }
MetadataValue MetadataValue::i32(int32_t v) { return MetadataCodec::scalar(Type::I32, static_cast<uint32_t>(v)); }
MetadataValue MetadataValue::u32(uint32_t v) { return MetadataCodec::scalar(Type::U32, v); }
MetadataValue MetadataValue::i64(int64_t v) { return MetadataCodec::scalar(Type::I64, static_cast<uint64_t>(v)); }
MetadataValue MetadataValue::u64(uint64_t v) { return MetadataCodec::scalar(Type::U64, v); }
MetadataValue MetadataValue::f32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return MetadataCodec::scalar(Type::F32, bits);
}
MetadataValue MetadataValue::f64(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  return MetadataCodec::scalar(Type::F64, bits);
}
MetadataValue MetadataValue::boolean(bool v) { return MetadataCodec::scalar(Type::Bool, v ? 1 : 0); }

MetadataValue MetadataValue::string(std::string v) {
  MetadataValue value;
  value.type_ = Type::String;
  value.text_ = std::move(v);
  return value;
}

MetadataValue MetadataValue::u8_array(const std::vector<uint8_t>& v) { return MetadataCodec::packed_array(Type::U8, v); }
MetadataValue MetadataValue::i32_array(const std::vector<int32_t>& v) {
  return MetadataCodec::packed_array(Type::I32, v);
}
MetadataValue MetadataValue::u32_array(const std::vector<uint32_t>& v) {
  return MetadataCodec::packed_array(Type::U32, v);
}
MetadataValue MetadataValue::i64_array(const std::vector<int64_t>& v) {
  return MetadataCodec::packed_array(Type::I64, v);
}
MetadataValue MetadataValue::u64_array(const std::vector<uint64_t>& v) {
  return MetadataCodec::packed_array(Type::U64, v);
}
MetadataValue MetadataValue::f32_array(const std::vector<float>& v) { return MetadataCodec::packed_array(Type::F32, v); }
MetadataValue MetadataValue::f64_array(const std::vector<double>& v) {
  return MetadataCodec::packed_array(Type::F64, v);
}

MetadataValue MetadataValue::bool_array(const std::vector<bool>& v) {
  std::vector<uint8_t> bytes(v.begin(), v.end());
  return MetadataCodec::packed_array(Type::Bool, bytes);
}

MetadataValue MetadataValue::string_array(std::vector<std::string> v) {
  MetadataValue value;
  value.type_ = Type::Array;
  value.element_ = Type::String;
  value.strings_ = std::move(v);
  return value;
}

size_t MetadataValue::array_size() const {
  if (type_ != Type::Array) return 0;
  return element_ == Type::String ? strings_.size() : raw_.size() / scalar_size(element_);
}

const char* MetadataValue::type_name(Type type) {
  switch (type) {
    case Type::U8: return "u8";
    case Type::I32: return "i32";
    case Type::U32: return "u32";
    case Type::I64: return "i64";
    case Type::U64: return "u64";
    case Type::F32: return "f32";
    case Type::F64: return "f64";
    case Type::Bool: return "bool";
    case Type::String: return "string";
    case Type::Array: return "array";
  }
  return "unknown";
}

std::string MetadataValue::type_name() const {
  if (type_ == Type::Array) return std::string("array of ") + type_name(element_);
  return type_name(type_);
}

bool MetadataValue::get(uint8_t* out) const { return MetadataCodec::get_scalar(*this, Type::U8, out); }
bool MetadataValue::get(int32_t* out) const { return MetadataCodec::get_scalar(*this, Type::I32, out); }
bool MetadataValue::get(uint32_t* out) const { return MetadataCodec::get_scalar(*this, Type::U32, out); }
bool MetadataValue::get(int64_t* out) const { return MetadataCodec::get_scalar(*this, Type::I64, out); }
bool MetadataValue::get(uint64_t* out) const { return MetadataCodec::get_scalar(*this, Type::U64, out); }
bool MetadataValue::get(float* out) const { return MetadataCodec::get_scalar(*this, Type::F32, out); }
bool MetadataValue::get(double* out) const { return MetadataCodec::get_scalar(*this, Type::F64, out); }

bool MetadataValue::get(bool* out) const {
  if (type_ != Type::Bool) return false;
  *out = scalar_ != 0;
  return true;
}

bool MetadataValue::get(std::string* out) const {
  if (type_ != Type::String) return false;
  *out = text_;
  return true;
}

bool MetadataValue::get(std::vector<uint8_t>* out) const { return MetadataCodec::get_array(*this, Type::U8, out); }
bool MetadataValue::get(std::vector<int32_t>* out) const { return MetadataCodec::get_array(*this, Type::I32, out); }
bool MetadataValue::get(std::vector<uint32_t>* out) const { return MetadataCodec::get_array(*this, Type::U32, out); }
bool MetadataValue::get(std::vector<int64_t>* out) const { return MetadataCodec::get_array(*this, Type::I64, out); }
bool MetadataValue::get(std::vector<uint64_t>* out) const { return MetadataCodec::get_array(*this, Type::U64, out); }
bool MetadataValue::get(std::vector<float>* out) const { return MetadataCodec::get_array(*this, Type::F32, out); }
bool MetadataValue::get(std::vector<double>* out) const { return MetadataCodec::get_array(*this, Type::F64, out); }

bool MetadataValue::get(std::vector<bool>* out) const {
  if (type_ != Type::Array || element_ != Type::Bool) return false;
  out->assign(raw_.begin(), raw_.end());
  return true;
}

bool MetadataValue::get(std::vector<std::string>* out) const {
  if (type_ != Type::Array || element_ != Type::String) return false;
  *out = strings_;
  return true;
}

namespace {

std::string scalar_text(Type type, const uint8_t* p) {
  switch (type) {
    case Type::U8: return std::to_string(p[0]);
    case Type::I32: return std::to_string(load<int32_t>(p));
    case Type::U32: return std::to_string(load<uint32_t>(p));
    case Type::I64: return std::to_string(load<int64_t>(p));
    case Type::U64: return std::to_string(load<uint64_t>(p));
    case Type::F32: return float_text(load<float>(p));
    case Type::F64: return double_text(load<double>(p));
    case Type::Bool: return p[0] ? "true" : "false";
    case Type::String:
    case Type::Array:
      break;
  }
  return "?";
}

// A string value as a C-style literal, so a pretty-printed JSON config stays legible on one line.
std::string quoted(const std::string& s, size_t max_chars) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() > max_chars) {
      out += "...";
      break;
    }
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out + "\"";
}

}  // namespace

std::string MetadataValue::describe(size_t max_chars) const {
  if (max_chars < 8) max_chars = 8;
  if (type_ == Type::String) return quoted(text_, max_chars);
  if (type_ != Type::Array) return scalar_text(type_, reinterpret_cast<const uint8_t*>(&scalar_));
  const size_t n = array_size();
  std::string out = "[";
  for (size_t i = 0; i < n; ++i) {
    if (out.size() >= max_chars) {
      out += "... (" + std::to_string(n) + " items)";
      return out + "]";
    }
    if (i) out += ", ";
    out += element_ == Type::String ? quoted(strings_[i], max_chars)
                                    : scalar_text(element_, raw_.data() + i * scalar_size(element_));
  }
  return out + "]";
}

bool MetadataValue::operator==(const MetadataValue& other) const {
  return type_ == other.type_ && element_ == other.element_ && scalar_ == other.scalar_ && text_ == other.text_ &&
         raw_ == other.raw_ && strings_ == other.strings_;
}

bool is_valid_metadata_key(const std::string& key) { return is_valid_key(key.data(), key.size()); }

// ---------------------------------------------------------------------------------------------------------------
// Metadata maps.

Status DdpmMetadata::set(const std::string& key, MetadataValue value) {
  if (!is_valid_metadata_key(key)) return errorf("invalid metadata key '%s': %s", shown(key).c_str(), kKeyRule);
  values_[key] = std::move(value);
  return Status();
}

const MetadataValue* DdpmMetadata::find(const std::string& key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

template <typename T>
Status DdpmMetadata::get_typed(const std::string& key, const char* expected, T* out) const {
  const MetadataValue* value = find(key);
  if (value == nullptr) return errorf("%s: missing metadata key '%s'", source_.c_str(), shown(key).c_str());
  if (!value->get(out)) {
    return errorf("%s: metadata key '%s' has type %s, expected %s", source_.c_str(), shown(key).c_str(),
                  value->type_name().c_str(), expected);
  }
  return Status();
}

Status DdpmMetadata::get_u8(const std::string& k, uint8_t* o) const { return get_typed(k, "u8", o); }
Status DdpmMetadata::get_i32(const std::string& k, int32_t* o) const { return get_typed(k, "i32", o); }
Status DdpmMetadata::get_u32(const std::string& k, uint32_t* o) const { return get_typed(k, "u32", o); }
Status DdpmMetadata::get_i64(const std::string& k, int64_t* o) const { return get_typed(k, "i64", o); }
Status DdpmMetadata::get_u64(const std::string& k, uint64_t* o) const { return get_typed(k, "u64", o); }
Status DdpmMetadata::get_f32(const std::string& k, float* o) const { return get_typed(k, "f32", o); }
Status DdpmMetadata::get_f64(const std::string& k, double* o) const { return get_typed(k, "f64", o); }
Status DdpmMetadata::get_bool(const std::string& k, bool* o) const { return get_typed(k, "bool", o); }
Status DdpmMetadata::get_string(const std::string& k, std::string* o) const { return get_typed(k, "string", o); }
Status DdpmMetadata::get_u8_array(const std::string& k, std::vector<uint8_t>* o) const {
  return get_typed(k, "array of u8", o);
}
Status DdpmMetadata::get_i32_array(const std::string& k, std::vector<int32_t>* o) const {
  return get_typed(k, "array of i32", o);
}
Status DdpmMetadata::get_u32_array(const std::string& k, std::vector<uint32_t>* o) const {
  return get_typed(k, "array of u32", o);
}
Status DdpmMetadata::get_i64_array(const std::string& k, std::vector<int64_t>* o) const {
  return get_typed(k, "array of i64", o);
}
Status DdpmMetadata::get_u64_array(const std::string& k, std::vector<uint64_t>* o) const {
  return get_typed(k, "array of u64", o);
}
Status DdpmMetadata::get_f32_array(const std::string& k, std::vector<float>* o) const {
  return get_typed(k, "array of f32", o);
}
Status DdpmMetadata::get_f64_array(const std::string& k, std::vector<double>* o) const {
  return get_typed(k, "array of f64", o);
}
Status DdpmMetadata::get_bool_array(const std::string& k, std::vector<bool>* o) const {
  return get_typed(k, "array of bool", o);
}
Status DdpmMetadata::get_string_array(const std::string& k, std::vector<std::string>* o) const {
  return get_typed(k, "array of string", o);
}

// ---------------------------------------------------------------------------------------------------------------
// The U-Net model keys (docs/FORMAT.md §5).

namespace {

// The keys every scheduler.config must spell out (diffusers fills them from defaults; we never rely on defaults).
constexpr const char* kSchedulerKeys[] = {
    "num_train_timesteps", "beta_start",      "beta_end",   "beta_schedule",
    "trained_betas",       "prediction_type", "variance_type", "clip_sample",
    "clip_sample_range",   "thresholding",    "dynamic_thresholding_ratio", "sample_max_value",
    "timestep_spacing",    "steps_offset",    "set_alpha_to_one", "rescale_betas_zero_snr"};
// The structural keys of unet.config a model cannot be built without; the writer stores every key, these are the
// ones a reader checks.
constexpr const char* kUnetKeys[] = {"sample_size",        "in_channels",   "out_channels",
                                     "down_block_types",   "up_block_types", "block_out_channels",
                                     "layers_per_block",   "norm_num_groups", "act_fn"};

Status json_object_key(const DdpmMetadata& m, const char* key, const char* const* required, size_t required_count,
                       JsonValue* out) {
  std::string text;
  DDPM_TRY(m.get_string(key, &text));
  Status status = parse_json(text, out);
  if (!status.ok()) return errorf("%s: metadata key '%s' is not valid JSON: %s", m.source().c_str(), key,
                                  status.message().c_str());
  if (!out->is_object()) return errorf("%s: metadata key '%s' is not a JSON object", m.source().c_str(), key);
  for (size_t i = 0; i < required_count; ++i) {
    if (out->find(required[i]) == nullptr) {
      return errorf("%s: metadata key '%s' lacks \"%s\" (the config must list every key, defaults filled in)",
                    m.source().c_str(), key, required[i]);
    }
  }
  return Status();
}

bool is_lower_hex(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// "2026-08-21T12:34:56Z", optionally with fractional seconds before the Z.
bool is_iso8601_utc(const std::string& s) {
  static const char kPattern[] = "dddd-dd-ddTdd:dd:dd";
  if (s.size() < 20 || s.back() != 'Z') return false;
  for (size_t i = 0; i < 19; ++i) {
    const bool digit = s[i] >= '0' && s[i] <= '9';
    if (kPattern[i] == 'd' ? !digit : s[i] != kPattern[i]) return false;
  }
  if (s.size() == 20) return true;
  if (s[19] != '.' || s.size() == 21) return false;
  for (size_t i = 20; i + 1 < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return true;
}

}  // namespace

Status training_checkpoint_error(const std::string& path) {
  return errorf("%s: is a training checkpoint, not a model; `ddpm train --resume %s --export-only -o MODEL.ddpm` "
                "writes its EMA weights as one",
                path.c_str(), path.c_str());
}

Status validate_unet2d_metadata(const DdpmMetadata& m) {
  const char* src = m.source().c_str();
  std::string architecture;
  DDPM_TRY(m.get_string("ddpm.architecture", &architecture));
  if (architecture != "unet2d") {
    return errorf("%s: ddpm.architecture is '%s', expected 'unet2d'", src, shown(architecture).c_str());
  }
  JsonValue unet, scheduler;
  DDPM_TRY(json_object_key(m, "unet.config", kUnetKeys, sizeof kUnetKeys / sizeof kUnetKeys[0], &unet));
  DDPM_TRY(json_object_key(m, "scheduler.config", kSchedulerKeys, sizeof kSchedulerKeys / sizeof kSchedulerKeys[0],
                           &scheduler));

  std::vector<uint32_t> image_size;
  DDPM_TRY(m.get_u32_array("data.image_size", &image_size));
  if (image_size.size() != 2 || image_size[0] == 0 || image_size[1] == 0) {
    return errorf("%s: data.image_size must be [H, W] with both at least 1, not %s", src,
                  m.find("data.image_size")->describe().c_str());
  }
  uint32_t channels = 0;
  DDPM_TRY(m.get_u32("data.channels", &channels));
  if (channels == 0) return errorf("%s: data.channels is 0", src);
  std::vector<float> range;
  DDPM_TRY(m.get_f32_array("data.value_range", &range));
  if (range.size() != 2 || !std::isfinite(range[0]) || !std::isfinite(range[1]) || !(range[0] < range[1])) {
    return errorf("%s: data.value_range must be [lo, hi] with finite lo < hi, not %s", src,
                  m.find("data.value_range")->describe().c_str());
  }

  if (m.has("classes.names")) {
    std::vector<std::string> names;
    DDPM_TRY(m.get_string_array("classes.names", &names));
    if (names.empty()) return errorf("%s: classes.names is an empty list", src);
  }
  if (m.has("classes.null_index")) {
    int32_t null_index = 0;
    DDPM_TRY(m.get_i32("classes.null_index", &null_index));
    int64_t embeds = 0;
    const JsonValue* num_class_embeds = unet.find("num_class_embeds");
    if (null_index < 0) return errorf("%s: classes.null_index is negative (%d)", src, null_index);
    if (num_class_embeds != nullptr && num_class_embeds->as_int64(&embeds) && null_index >= embeds) {
      return errorf("%s: classes.null_index %d is outside the %lld class embeddings of unet.config", src,
                    null_index, static_cast<long long>(embeds));
    }
  }
  if (m.has("sampling.default_guidance_scale")) {
    float scale = 0;
    DDPM_TRY(m.get_f32("sampling.default_guidance_scale", &scale));
    if (!std::isfinite(scale)) return errorf("%s: sampling.default_guidance_scale is not finite", src);
  }
  if (m.has("sampling.default_sampler")) {
    std::string sampler;
    DDPM_TRY(m.get_string("sampling.default_sampler", &sampler));
    if (sampler.empty()) return errorf("%s: sampling.default_sampler is empty", src);
  }
  if (m.has("sampling.default_steps")) {
    uint32_t steps = 0;
    DDPM_TRY(m.get_u32("sampling.default_steps", &steps));
    if (steps == 0) return errorf("%s: sampling.default_steps is 0", src);
  }
  if (m.has("quant.int8_winograd")) {
    bool on = false;
    DDPM_TRY(m.get_bool("quant.int8_winograd", &on));
  }
  for (const char* key : {"provenance.tool", "provenance.source_file", "provenance.source_sha256",
                          "provenance.dtype_recipe", "provenance.created", "quant.calibration"}) {
    if (!m.has(key)) continue;
    std::string text;
    DDPM_TRY(m.get_string(key, &text));
    if (std::strcmp(key, "provenance.source_sha256") == 0 && (text.size() != 64 || !is_lower_hex(text))) {
      return errorf("%s: provenance.source_sha256 is not 64 lower-case hex digits", src);
    }
    if (std::strcmp(key, "provenance.created") == 0 && !is_iso8601_utc(text)) {
      return errorf("%s: provenance.created '%s' is not an ISO-8601 UTC time like 2026-08-21T12:34:56Z", src,
                    shown(text).c_str());
    }
  }
  return Status();
}

int64_t DdpmTensorInfo::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= shape[i];
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Recognising what a file is when it is not ours.

namespace {

bool starts_with(const uint8_t* data, uint64_t size, const char* prefix, size_t n) {
  return size >= n && std::memcmp(data, prefix, n) == 0;
}

bool starts_with_nocase(const uint8_t* data, uint64_t size, const char* prefix) {
  const size_t n = std::strlen(prefix);
  if (size < n) return false;
  for (size_t i = 0; i < n; ++i) {
    const char c = static_cast<char>(data[i]);
    if ((c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c) != prefix[i]) return false;
  }
  return true;
}

}  // namespace

std::string sniff_file_kind(const uint8_t* data, uint64_t size) {
#define DDPM_STARTS(lit) starts_with(data, size, lit, sizeof(lit) - 1)
  constexpr char kConvert[] = "; convert it with `ddpm convert`";
  if (size == 0) return "is empty";
  if (DDPM_STARTS("PK\x03\x04") || DDPM_STARTS("PK\x05\x06")) {
    return std::string("looks like a zip archive, e.g. a PyTorch .pt/.pth/.ckpt/.bin checkpoint") + kConvert;
  }
  if (size >= 2 && data[0] == 0x80 && data[1] >= 2 && data[1] <= 5) {
    return std::string("looks like a Python pickle, e.g. a legacy (pre-1.6) PyTorch checkpoint") + kConvert;
  }
  if (size >= 10 && data[8] == '{' && load<uint64_t>(data) <= size - 8) {
    return std::string("looks like a safetensors file") + kConvert;
  }
  if (DDPM_STARTS("\x1f\x8b")) return "looks like gzip-compressed data; decompress it first";
  if (DDPM_STARTS("GGUF")) {
    return "looks like a GGUF file (ggml/llama.cpp), which ddpm.cpp does not read; convert the original diffusers "
           "checkpoint with `ddpm convert`";
  }
  if (DDPM_STARTS("version https://git-lfs")) {
    return "is a Git LFS pointer, not the model itself; fetch the real file with `git lfs pull`";
  }
  if (DDPM_STARTS("\x93NUMPY")) return "looks like a NumPy .npy array, not a model";
  if (DDPM_STARTS("\x89HDF")) return "looks like an HDF5 file (Keras/TensorFlow weights?), which ddpm.cpp does not read";
  if (DDPM_STARTS("\x89PNG")) return "looks like a PNG image, not a model";
  if (DDPM_STARTS("\xff\xd8\xff")) return "looks like a JPEG image, not a model";
  if (DDPM_STARTS("BZh") || DDPM_STARTS("\xfd" "7zXZ") || DDPM_STARTS("7z\xbc\xaf") || DDPM_STARTS("\x28\xb5\x2f\xfd")) {
    return "looks like compressed data (bzip2/xz/7z/zstd); decompress it first";
  }
#undef DDPM_STARTS
  // Text: skip a UTF-8 byte order mark and leading whitespace before looking at the first character.
  uint64_t i = starts_with(data, size, "\xef\xbb\xbf", 3) ? 3 : 0;
  while (i < size && i < 4096 && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n')) ++i;
  const uint8_t* text = data + i;
  const uint64_t text_size = size - i;
  if (starts_with_nocase(text, text_size, "<!doctype html") || starts_with_nocase(text, text_size, "<html") ||
      starts_with_nocase(text, text_size, "<head") || starts_with_nocase(text, text_size, "<!--")) {
    return "looks like an HTML page, not a model (a failed download, or a web page saved instead of the file?)";
  }
  if (starts_with_nocase(text, text_size, "<?xml") || starts_with_nocase(text, text_size, "<")) {
    return "looks like XML/HTML text, not a model (a failed download?)";
  }
  if (text_size > 0 && (text[0] == '{' || text[0] == '[')) {
    return "looks like JSON text (a config file?), not model weights";
  }
  const uint64_t probe = std::min<uint64_t>(size, 512);
  uint64_t printable = 0;
  for (uint64_t k = 0; k < probe; ++k) {
    const uint8_t c = data[k];
    if ((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\r' || c == '\t' || c >= 0x80) ++printable;
  }
  if (printable == probe) return "looks like text, not a model";
  return "is not in any format ddpm.cpp recognises";
}

// ---------------------------------------------------------------------------------------------------------------
// Reading.

namespace {

struct Header {
  uint32_t version, flags, checksum;
  uint64_t metadata_count, metadata_bytes, tensor_count, table_bytes, data_offset, data_bytes;
};

Header decode_header(const uint8_t* p) {
  Header h;
  h.version = load<uint32_t>(p + 4);
  h.flags = load<uint32_t>(p + 8);
  h.checksum = load<uint32_t>(p + 12);
  h.metadata_count = load<uint64_t>(p + 16);
  h.metadata_bytes = load<uint64_t>(p + 24);
  h.tensor_count = load<uint64_t>(p + 32);
  h.table_bytes = load<uint64_t>(p + 40);
  h.data_offset = load<uint64_t>(p + 48);
  h.data_bytes = load<uint64_t>(p + 56);
  return h;
}

// CRC-32C of [0, end) with the checksum field counted as zeros (it cannot cover itself).
uint32_t header_checksum(const uint8_t* data, uint64_t end) {
  static const uint8_t kZeros[4] = {0, 0, 0, 0};
  uint32_t crc = crc32c(data, kChecksumFieldOffset);
  crc = crc32c(kZeros, 4, crc);
  return crc32c(data + kChecksumFieldOffset + 4, end - kChecksumFieldOffset - 4, crc);
}

Status truncated(const char* name, const char* what, uint64_t needed, uint64_t offset, uint64_t size) {
  // No download stops short of 256 TiB: such a size is a damaged field, not a missing tail.
  if (needed >= (uint64_t{1} << 48)) {
    return errorf("%s: corrupt: its header gives the %s %llu bytes", name, what, static_cast<ull>(needed));
  }
  // Callers found needed > size - offset; the difference is what a re-download would add.
  return errorf("%s: truncated: %s needs %llu bytes at offset %llu but the file has %llu (%llu bytes short)", name,
                what, static_cast<ull>(needed), static_cast<ull>(offset), static_cast<ull>(size),
                static_cast<ull>(needed - (size - offset)));
}

std::string checksum_mismatch(uint32_t stored, uint32_t computed) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "checksum mismatch (stored 0x%08x, computed 0x%08x)", stored, computed);
  return buf;
}

Status parse_metadata(const char* name, const uint8_t* data, const Header& h, DdpmMetadata* metadata) {
  const uint64_t begin = kDdpmFileHeaderBytes;
  if (h.metadata_count > h.metadata_bytes / kMinMetadataEntryBytes) {
    return errorf("%s: header declares %llu metadata entries, more than its %llu-byte metadata section can hold",
                  name, static_cast<ull>(h.metadata_count), static_cast<ull>(h.metadata_bytes));
  }
  Cursor c{data, begin, begin + h.metadata_bytes};
  std::string previous;
  for (uint64_t i = 0; i < h.metadata_count; ++i) {
    const uint64_t entry_offset = c.pos;
    uint16_t key_length = 0;
    const uint8_t* key = nullptr;
    if (!c.read(&key_length) || (key = c.take(key_length)) == nullptr) {
      return errorf("%s: metadata entry %llu (at offset %llu) runs past the end of the metadata section", name,
                    static_cast<ull>(i), static_cast<ull>(entry_offset));
    }
    const std::string key_text(reinterpret_cast<const char*>(key), key_length);
    if (!is_valid_key(key_text.data(), key_text.size())) {
      return errorf("%s: metadata entry %llu has invalid key '%s' (%s)", name, static_cast<ull>(i),
                    shown(key_text).c_str(), kKeyRule);
    }
    if (i > 0 && key_text <= previous) {
      return errorf(key_text == previous ? "%s: duplicate metadata key '%s'"
                                         : "%s: metadata key '%s' is out of order (keys must be sorted)",
                    name, key_text.c_str());
    }
    uint8_t type_code = 0;
    MetadataValue value;
    std::string problem = "runs past the end of the metadata section";
    if (!c.read(&type_code) || !MetadataCodec::decode(&c, type_code, &value, &problem)) {
      return errorf("%s: metadata key '%s' %s", name, key_text.c_str(), problem.c_str());
    }
    DDPM_TRY(metadata->set(key_text, std::move(value)));
    previous = key_text;
  }
  if (c.left() != 0) {
    return errorf("%s: %llu unexplained bytes after the last metadata entry", name, static_cast<ull>(c.left()));
  }
  const MetadataValue* architecture = metadata->find(kRequiredKey);
  if (architecture == nullptr) {
    return errorf("%s: missing metadata key '%s' (every .ddpm file says what it holds)", name, kRequiredKey);
  }
  if (architecture->type() != Type::String) {
    return errorf("%s: metadata key '%s' has type %s, expected string", name, kRequiredKey,
                  architecture->type_name().c_str());
  }
  return Status();
}

Status parse_tensor_table(const char* name, const uint8_t* data, const Header& h,
                          std::vector<DdpmTensorInfo>* tensors) {
  const uint64_t begin = kDdpmFileHeaderBytes + h.metadata_bytes;
  if (h.tensor_count > h.table_bytes / kMinTensorEntryBytes) {
    return errorf("%s: header declares %llu tensors, more than its %llu-byte tensor table can hold", name,
                  static_cast<ull>(h.tensor_count), static_cast<ull>(h.table_bytes));
  }
  Cursor c{data, begin, begin + h.table_bytes};
  tensors->reserve(h.tensor_count);
  std::unordered_map<std::string, size_t> seen;
  seen.reserve(h.tensor_count);
  for (uint64_t i = 0; i < h.tensor_count; ++i) {
    const uint64_t entry_offset = c.pos;
    const uint8_t* fixed = c.take(kTensorEntryFixedBytes);
    const uint16_t name_length = fixed ? load<uint16_t>(fixed) : 0;
    const uint8_t* name_bytes = fixed ? c.take(name_length) : nullptr;
    if (name_bytes == nullptr) {
      return errorf("%s: tensor table entry %llu (at offset %llu) runs past the end of the tensor table", name,
                    static_cast<ull>(i), static_cast<ull>(entry_offset));
    }
    DdpmTensorInfo t;
    t.name.assign(reinterpret_cast<const char*>(name_bytes), name_length);
    const std::string tensor = shown(t.name);
    if (!is_valid_tensor_name(t.name.data(), t.name.size())) {
      return errorf("%s: tensor table entry %llu has invalid name '%s' (%s)", name, static_cast<ull>(i),
                    tensor.c_str(), kNameRule);
    }
    auto inserted = seen.emplace(t.name, i);
    if (!inserted.second) {
      return errorf("%s: duplicate tensor name '%s' (table entries %llu and %llu)", name, tensor.c_str(),
                    static_cast<ull>(inserted.first->second), static_cast<ull>(i));
    }
    const uint8_t dtype_code = fixed[2];
    const uint8_t rank = fixed[3];
    t.checksum = load<uint32_t>(fixed + 4);
    if (dtype_code >= static_cast<uint8_t>(DType::kCount)) {
      return errorf("%s: tensor '%s' has dtype code %u, which this ddpm.cpp does not know (it knows 0-%d); "
                    "update ddpm.cpp",
                    name, tensor.c_str(), dtype_code, static_cast<int>(DType::kCount) - 1);
    }
    t.dtype = static_cast<DType>(dtype_code);
    if (rank < 1 || rank > kDdpmMaxRank) {
      return errorf("%s: tensor '%s' has rank %u (must be 1-4)", name, tensor.c_str(), rank);
    }
    t.rank = rank;
    for (int d = 0; d < kDdpmMaxRank; ++d) {
      const uint64_t dim = load<uint64_t>(fixed + 8 + 8 * d);
      if (d >= rank && dim != 0) {
        return errorf("%s: tensor '%s' of rank %u has a nonzero dim %d (unused dims must be 0)", name,
                      tensor.c_str(), rank, d);
      }
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return errorf("%s: tensor '%s' has dim %d = %llu, too large", name, tensor.c_str(), d,
                      static_cast<ull>(dim));
      }
      t.shape[d] = static_cast<int64_t>(dim);
    }
    uint64_t expected_bytes = 0;
    std::string problem;
    if (!shape_bytes(t.dtype, t.rank, t.shape, &expected_bytes, &problem)) {
      return errorf("%s: tensor '%s' %s", name, tensor.c_str(), problem.c_str());
    }
    t.offset = load<uint64_t>(fixed + 40);
    t.bytes = load<uint64_t>(fixed + 48);
    if (t.bytes != expected_bytes) {
      return errorf("%s: tensor '%s' declares %llu bytes but dtype %s and shape %s need %llu", name,
                    tensor.c_str(), static_cast<ull>(t.bytes), dtype_name(t.dtype),
                    dims_text(t.rank, t.shape).c_str(), static_cast<ull>(expected_bytes));
    }
    if (t.offset % kDdpmAlignment != 0) {
      return errorf("%s: tensor '%s' data offset %llu is not a multiple of %llu", name, tensor.c_str(),
                    static_cast<ull>(t.offset), static_cast<ull>(kDdpmAlignment));
    }
    if (t.bytes > h.data_bytes || t.offset > h.data_bytes - t.bytes) {
      return errorf("%s: tensor '%s' data [%llu, +%llu) runs past the end of the %llu-byte data section", name,
                    tensor.c_str(), static_cast<ull>(t.offset), static_cast<ull>(t.bytes),
                    static_cast<ull>(h.data_bytes));
    }
    t.data = data + h.data_offset + t.offset;
    t.tap_major = (h.flags & kDdpmFlagTapMajorConvRows) && quant::tap_major_eligible(t.dtype, t.rank, t.shape);
    tensors->push_back(std::move(t));
  }
  if (c.left() != 0) {
    return errorf("%s: %llu unexplained bytes after the last tensor table entry", name, static_cast<ull>(c.left()));
  }

  // Tensors may sit in any order, but no byte may belong to two of them.
  std::vector<const DdpmTensorInfo*> by_offset;
  by_offset.reserve(tensors->size());
  for (const DdpmTensorInfo& t : *tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const DdpmTensorInfo* a, const DdpmTensorInfo* b) {
              return a->offset != b->offset ? a->offset < b->offset : a < b;  // ties in table order
            });
  uint64_t end = 0;
  for (size_t i = 0; i < by_offset.size(); ++i) {
    const DdpmTensorInfo& t = *by_offset[i];
    if (i > 0 && t.offset < end) {
      const DdpmTensorInfo& prev = *by_offset[i - 1];
      return errorf("%s: data of tensor '%s' [%llu, %llu) overlaps tensor '%s' [%llu, %llu)", name,
                    shown(t.name).c_str(), static_cast<ull>(t.offset), static_cast<ull>(t.offset + t.bytes),
                    shown(prev.name).c_str(), static_cast<ull>(prev.offset), static_cast<ull>(end));
    }
    end = t.offset + t.bytes;
  }
  if (end != h.data_bytes) {
    return errorf("%s: data section is %llu bytes but its last tensor ends at %llu", name,
                  static_cast<ull>(h.data_bytes), static_cast<ull>(end));
  }
  return Status();
}

Status verify_checksum(const char* name, const DdpmTensorInfo& t) {
  const uint32_t computed = crc32c(t.data, t.bytes);
  if (computed != t.checksum) {
    return errorf("%s: tensor '%s' data %s: the file is corrupt", name, shown(t.name).c_str(),
                  checksum_mismatch(t.checksum, computed).c_str());
  }
  return Status();
}

}  // namespace

Status parse_ddpm(const uint8_t* data, uint64_t size, const std::string& file_name, DdpmMetadata* metadata,
                  std::vector<DdpmTensorInfo>* tensors, bool verify_data_checksums) {
  DDPM_ASSERT(metadata != nullptr && tensors != nullptr && (data != nullptr || size == 0));
  const char* name = file_name.c_str();
  *metadata = DdpmMetadata();
  metadata->set_source(file_name);
  tensors->clear();

  // Identify the file before judging its length, so that a short foreign file is called foreign, not truncated.
  const uint64_t magic_seen = std::min<uint64_t>(size, 4);
  if (size == 0) return errorf("%s: empty file (0 bytes), not a ddpm.cpp model file", name);
  if (std::memcmp(data, kMagic, magic_seen) != 0) {
    return errorf("%s: not a ddpm.cpp model file (starts with '%s': %s)", name,
                  shown(data, std::min<uint64_t>(size, 8)).c_str(), sniff_file_kind(data, size).c_str());
  }
  if (size < kDdpmFileHeaderBytes) return truncated(name, "file header", kDdpmFileHeaderBytes, 0, size);

  const Header h = decode_header(data);
  // A damaged header can pass for a file of unknown features or a truncated one. Where its checksum can be
  // computed (the data offset lies in the file) the checksum tells which. Not for the version: a newer format may
  // define the checksum otherwise, and its versions are small numbers.
  auto corrupt_or = [&](const Status& otherwise) {
    if (h.data_offset >= kDdpmFileHeaderBytes && h.data_offset <= size) {
      const uint32_t computed = header_checksum(data, h.data_offset);
      if (computed != h.checksum) {
        return errorf("%s: header %s: the file is corrupt", name, checksum_mismatch(h.checksum, computed).c_str());
      }
    }
    return otherwise;
  };
  if (h.version == 0) return errorf("%s: invalid format version 0", name);
  if (h.version > kDdpmFormatVersion && h.version < 256) {
    return errorf("%s: format version %u is newer than this ddpm.cpp supports (%u); update ddpm.cpp", name,
                  h.version, kDdpmFormatVersion);
  }
  if (h.version > kDdpmFormatVersion) return errorf("%s: corrupt: its format version field reads %u", name, h.version);
  if ((h.flags & kRequiredFlagsMask & ~kKnownRequiredFlags) != 0) {
    return corrupt_or(
        errorf("%s: uses format features this ddpm.cpp does not know (required flags 0x%04x); update ddpm.cpp", name,
               h.flags & kRequiredFlagsMask & ~kKnownRequiredFlags));
  }

  // Sections in file order; each comparison is arranged so that nothing can overflow.
  uint64_t at = kDdpmFileHeaderBytes;
  if (h.metadata_bytes > size - at) return corrupt_or(truncated(name, "metadata section", h.metadata_bytes, at, size));
  at += h.metadata_bytes;
  if (h.table_bytes > size - at) return corrupt_or(truncated(name, "tensor table", h.table_bytes, at, size));
  at += h.table_bytes;
  const uint64_t header_end = at;
  if (h.data_offset < header_end) {
    return errorf("%s: data section offset %llu lies inside the header, which ends at %llu", name,
                  static_cast<ull>(h.data_offset), static_cast<ull>(header_end));
  }
  if (h.data_offset > size) {
    return truncated(name, "padding before the data section", h.data_offset - header_end, header_end, size);
  }
  const uint32_t computed = header_checksum(data, h.data_offset);
  if (computed != h.checksum) {
    return errorf("%s: header %s: the file is corrupt", name, checksum_mismatch(h.checksum, computed).c_str());
  }
  if (h.data_offset != align_up(header_end)) {
    return errorf("%s: data section starts at %llu, expected %llu (the first multiple of 64 after the tensor table)",
                  name, static_cast<ull>(h.data_offset), static_cast<ull>(align_up(header_end)));
  }
  for (uint64_t i = header_end; i < h.data_offset; ++i) {
    if (data[i] != 0) return errorf("%s: nonzero padding byte at offset %llu", name, static_cast<ull>(i));
  }
  if (h.data_bytes > size - h.data_offset) {
    return truncated(name, "data section", h.data_bytes, h.data_offset, size);
  }
  if (h.data_bytes < size - h.data_offset) {
    return errorf("%s: %llu unexpected bytes after the end of the data section (offset %llu)", name,
                  static_cast<ull>(size - h.data_offset - h.data_bytes),
                  static_cast<ull>(h.data_offset + h.data_bytes));
  }

  Status status;
  try {
    status = parse_metadata(name, data, h, metadata);
    if (status.ok()) status = parse_tensor_table(name, data, h, tensors);
  } catch (const std::bad_alloc&) {
    status = errorf("%s: out of memory while reading the header", name);
  }
  if (status.ok() && verify_data_checksums) {
    for (const DdpmTensorInfo& t : *tensors) {
      status = verify_checksum(name, t);
      if (!status.ok()) break;
    }
  }
  if (!status.ok()) {
    *metadata = DdpmMetadata();
    metadata->set_source(file_name);
    tensors->clear();
  }
  return status;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing.

Status DdpmWriter::set_metadata(const std::string& key, MetadataValue value) {
  if (!error_.ok()) return error_;
  Status status = metadata_.set(key, std::move(value));
  if (!status.ok()) error_ = status;
  return status;
}

Status DdpmWriter::check_new_tensor(const std::string& name, DType dtype, int rank, const int64_t* shape,
                                    bool has_data, uint64_t data_bytes, DdpmTensorInfo* info) {
  if (!error_.ok()) return error_;
  const std::string tensor = shown(name);
  std::string problem;
  if (!is_valid_tensor_name(name.data(), name.size())) {
    error_ = errorf("invalid tensor name '%s' (%s)", tensor.c_str(), kNameRule);
  } else if (index_.count(name) != 0) {
    error_ = errorf("duplicate tensor name '%s'", tensor.c_str());
  } else if (dtype >= DType::kCount) {
    error_ = errorf("tensor '%s': invalid dtype %d", tensor.c_str(), static_cast<int>(dtype));
  } else if (shape == nullptr || !has_data) {
    error_ = errorf("tensor '%s': no %s given", tensor.c_str(), shape == nullptr ? "shape" : "data");
  } else if (!shape_bytes(dtype, rank, shape, &info->bytes, &problem)) {
    error_ = errorf("tensor '%s' %s", tensor.c_str(), problem.c_str());
  } else if (data_bytes != kBytesFromShape && data_bytes != info->bytes) {
    error_ = errorf("tensor '%s': %llu bytes of data given, but dtype %s and shape %s need %llu", tensor.c_str(),
                    static_cast<ull>(data_bytes), dtype_name(dtype), dims_text(rank, shape).c_str(),
                    static_cast<ull>(info->bytes));
  }
  if (!error_.ok()) return error_;
  info->name = name;
  info->dtype = dtype;
  info->rank = rank;
  for (int i = 0; i < rank; ++i) info->shape[i] = shape[i];
  return Status();
}

Status DdpmWriter::add_tensor(const std::string& name, DType dtype, int rank, const int64_t* shape,
                              const void* data, uint64_t data_bytes) {
  DdpmTensorInfo info;
  DDPM_TRY(check_new_tensor(name, dtype, rank, shape, data != nullptr, data_bytes, &info));
  index_.emplace(name, tensors_.size());
  tensors_.push_back(Pending{std::move(info), data, nullptr});
  return Status();
}

Status DdpmWriter::add_tensor(const std::string& name, DType dtype, int rank, const int64_t* shape,
                              DdpmTensorProducer producer) {
  DdpmTensorInfo info;
  DDPM_TRY(check_new_tensor(name, dtype, rank, shape, static_cast<bool>(producer), kBytesFromShape, &info));
  index_.emplace(name, tensors_.size());
  tensors_.push_back(Pending{std::move(info), nullptr, std::move(producer)});
  return Status();
}

namespace {

struct VectorSink {
  std::vector<uint8_t>* out;
  Status write(const void* data, size_t size) {
    append_bytes(out, data, size);
    return Status();
  }
};

}  // namespace

template <typename Sink>
Status DdpmWriter::write_all(Sink& sink, const std::string& name) {
  if (!error_.ok()) return Status(error_).with_context("cannot write " + name);
  const MetadataValue* architecture = metadata_.find(kRequiredKey);
  if (architecture == nullptr || architecture->type() != Type::String) {
    return errorf("cannot write %s: metadata key '%s' (a string) is required", name.c_str(), kRequiredKey);
  }

  std::vector<uint8_t> header(kDdpmFileHeaderBytes, 0);
  for (const auto& entry : metadata_.entries()) {
    append<uint16_t>(&header, static_cast<uint16_t>(entry.first.size()));
    append_bytes(&header, entry.first.data(), entry.first.size());
    MetadataCodec::encode(entry.second, &header);
  }
  const uint64_t metadata_bytes = header.size() - kDdpmFileHeaderBytes;

  // One buffer, reused, for the streamed tensors (see add_tensor): the largest of them.
  uint64_t stream_bytes = 0;
  for (const Pending& p : tensors_) {
    if (p.producer) stream_bytes = std::max(stream_bytes, p.info.bytes);
  }
  std::unique_ptr<uint8_t[]> stream;
  if (stream_bytes > 0) {
    if (stream_bytes <= std::numeric_limits<size_t>::max()) {
      stream.reset(new (std::nothrow) uint8_t[static_cast<size_t>(stream_bytes)]);
    }
    if (!stream) {
      return errorf("cannot write %s: out of memory for a tensor of %llu bytes", name.c_str(),
                    static_cast<ull>(stream_bytes));
    }
  }

  uint64_t data_end = 0;
  for (Pending& p : tensors_) {
    DdpmTensorInfo& t = p.info;
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - kDdpmAlignment;
    if (data_end > limit || t.bytes > limit - align_up(data_end)) {
      return errorf("cannot write %s: tensors total more than 2^64 bytes", name.c_str());
    }
    t.offset = align_up(data_end);
    data_end = t.offset + t.bytes;
    if (p.producer) {
      DDPM_TRY(p.producer(stream.get(), t.bytes));
      t.checksum = crc32c(stream.get(), t.bytes);
    } else {
      t.checksum = crc32c(p.data, t.bytes);
    }
    const size_t at = header.size();
    header.resize(at + kTensorEntryFixedBytes, 0);
    uint8_t* fixed = header.data() + at;
    store<uint16_t>(fixed, static_cast<uint16_t>(t.name.size()));
    fixed[2] = static_cast<uint8_t>(t.dtype);
    fixed[3] = static_cast<uint8_t>(t.rank);
    store<uint32_t>(fixed + 4, t.checksum);
    for (int d = 0; d < t.rank; ++d) store<uint64_t>(fixed + 8 + 8 * d, static_cast<uint64_t>(t.shape[d]));
    store<uint64_t>(fixed + 40, t.offset);
    store<uint64_t>(fixed + 48, t.bytes);
    append_bytes(&header, t.name.data(), t.name.size());
  }
  const uint64_t table_bytes = header.size() - kDdpmFileHeaderBytes - metadata_bytes;
  const uint64_t data_offset = align_up(header.size());
  header.resize(data_offset, 0);

  uint8_t* fixed = header.data();
  std::memcpy(fixed, kMagic, 4);
  store<uint32_t>(fixed + 4, kDdpmFormatVersion);
  bool tap_major = false;
  for (const Pending& t : tensors_) {
    tap_major = tap_major ||
                (tap_major_conv_rows_ && quant::tap_major_eligible(t.info.dtype, t.info.rank, t.info.shape));
  }
  store<uint32_t>(fixed + 8, tap_major ? kDdpmFlagTapMajorConvRows : 0u);
  store<uint64_t>(fixed + 16, metadata_.size());
  store<uint64_t>(fixed + 24, metadata_bytes);
  store<uint64_t>(fixed + 32, tensors_.size());
  store<uint64_t>(fixed + 40, table_bytes);
  store<uint64_t>(fixed + 48, data_offset);
  store<uint64_t>(fixed + 56, data_end);
  store<uint32_t>(fixed + kChecksumFieldOffset, header_checksum(fixed, data_offset));

  DDPM_TRY(sink.write(header.data(), header.size()));
  static const uint8_t kZeros[kDdpmAlignment] = {};
  uint64_t written = 0;
  for (const Pending& p : tensors_) {
    DDPM_TRY(sink.write(kZeros, p.info.offset - written));
    if (p.producer) {
      DDPM_TRY(p.producer(stream.get(), p.info.bytes));
      if (crc32c(stream.get(), p.info.bytes) != p.info.checksum) {
        return errorf("cannot write %s: tensor '%s' changed between its checksum and its write", name.c_str(),
                      shown(p.info.name).c_str());
      }
      DDPM_TRY(sink.write(stream.get(), p.info.bytes));
    } else {
      DDPM_TRY(sink.write(p.data, p.info.bytes));
    }
    written = p.info.offset + p.info.bytes;
  }
  return Status();
}

Status DdpmWriter::finish(const std::string& path) {
  // Nothing is created until the contents are known to be writable.
  if (!error_.ok()) return Status(error_).with_context("cannot write " + path);
  AtomicFile file;
  DDPM_TRY(file.open(path));
  Status status = write_all(file, path);
  if (!status.ok()) return status;  // the AtomicFile destructor removes the temporary
  return file.commit();
}

Status DdpmWriter::finish_to_bytes(std::vector<uint8_t>* out) {
  DDPM_ASSERT(out != nullptr);
  out->clear();
  VectorSink sink{out};
  try {
    return write_all(sink, "memory");
  } catch (const std::bad_alloc&) {
    out->clear();
    return errorf("cannot write .ddpm to memory: out of memory");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Opened files.

void DdpmFile::FreeDeleter::operator()(uint8_t* p) const { std::free(p); }

Status DdpmFile::adopt(std::string name, bool verify_data_checksums) {
  path_ = std::move(name);
  metadata_ = DdpmMetadata();
  tensors_.clear();
  index_.clear();
  Status status = parse_ddpm(base_, size_, path_, &metadata_, &tensors_, verify_data_checksums);
  if (!status.ok()) return status;
  index_.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return Status();
}

namespace {

// A 64-byte aligned copy; null when memory runs out.
uint8_t* aligned_copy(const uint8_t* data, uint64_t size) {
  const uint64_t rounded = align_up(std::max<uint64_t>(size, 1));
  if (rounded < size) return nullptr;
  void* p = std::aligned_alloc(kDdpmAlignment, rounded);
  if (p != nullptr && size > 0) std::memcpy(p, data, size);
  return static_cast<uint8_t*>(p);
}

}  // namespace

Status DdpmFile::open(const std::string& path, DdpmFile* out, bool verify_data_checksums) {
  DDPM_ASSERT(out != nullptr);
  DdpmFile file;
  DDPM_TRY(file.file_.open(path));
  file.base_ = file.file_.data();
  file.size_ = file.file_.size();
  // A mapping is page aligned; a file that had to be read into memory may not be, and tensors are promised
  // 64-byte aligned addresses, so such a file is copied once.
  if (reinterpret_cast<uintptr_t>(file.base_) % kDdpmAlignment != 0) {
    file.copy_.reset(aligned_copy(file.base_, file.size_));
    if (!file.copy_) return errorf("%s: out of memory (%llu bytes)", path.c_str(), static_cast<ull>(file.size_));
    file.file_.close();
    file.base_ = file.copy_.get();
  }
  DDPM_TRY(file.adopt(path, verify_data_checksums));
  *out = std::move(file);
  return Status();
}

Status DdpmFile::from_bytes(std::string name, const std::vector<uint8_t>& bytes, DdpmFile* out,
                            bool verify_data_checksums) {
  DDPM_ASSERT(out != nullptr);
  DdpmFile file;
  file.copy_.reset(aligned_copy(bytes.data(), bytes.size()));
  if (!file.copy_) return errorf("%s: out of memory (%zu bytes)", name.c_str(), bytes.size());
  file.base_ = file.copy_.get();
  file.size_ = bytes.size();
  DDPM_TRY(file.adopt(std::move(name), verify_data_checksums));
  *out = std::move(file);
  return Status();
}

const DdpmTensorInfo* DdpmFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status DdpmFile::verify_tensor(const DdpmTensorInfo& tensor) const { return verify_checksum(path_.c_str(), tensor); }

Status DdpmFile::verify_data() const {
  for (const DdpmTensorInfo& t : tensors_) DDPM_TRY(verify_tensor(t));
  return Status();
}

}  // namespace ddpm
