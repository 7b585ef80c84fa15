#include "io/pickle.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>

#include "io/tensor_loader.h"

namespace ddpm {
namespace {

// Opcode bytes, named as in CPython's Lib/pickle.py.
enum Opcode : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I', BININT = 'J',
  BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R',
  STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i',
  LONG_BINGET = 'j', LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85, TUPLE2 = 0x86,
  TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90,
  FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

const char* opcode_name(uint8_t op) {
  switch (op) {
    case MARK: return "MARK";
    case STOP: return "STOP";
    case POP: return "POP";
    case POP_MARK: return "POP_MARK";
    case DUP: return "DUP";
    case FLOAT: return "FLOAT";
    case INT: return "INT";
    case BININT: return "BININT";
    case BININT1: return "BININT1";
    case LONG: return "LONG";
    case BININT2: return "BININT2";
    case NONE: return "NONE";
    case PERSID: return "PERSID";
    case BINPERSID: return "BINPERSID";
    case REDUCE: return "REDUCE";
    case STRING: return "STRING";
    case BINSTRING: return "BINSTRING";
    case SHORT_BINSTRING: return "SHORT_BINSTRING";
    case UNICODE: return "UNICODE";
    case BINUNICODE: return "BINUNICODE";
    case APPEND: return "APPEND";
    case BUILD: return "BUILD";
    case GLOBAL: return "GLOBAL";
    case DICT: return "DICT";
    case EMPTY_DICT: return "EMPTY_DICT";
    case APPENDS: return "APPENDS";
    case GET: return "GET";
    case BINGET: return "BINGET";
    case INST: return "INST";
    case LONG_BINGET: return "LONG_BINGET";
    case LIST: return "LIST";
    case EMPTY_LIST: return "EMPTY_LIST";
    case OBJ: return "OBJ";
    case PUT: return "PUT";
    case BINPUT: return "BINPUT";
    case LONG_BINPUT: return "LONG_BINPUT";
    case SETITEM: return "SETITEM";
    case TUPLE: return "TUPLE";
    case EMPTY_TUPLE: return "EMPTY_TUPLE";
    case SETITEMS: return "SETITEMS";
    case BINFLOAT: return "BINFLOAT";
    case PROTO: return "PROTO";
    case NEWOBJ: return "NEWOBJ";
    case EXT1: return "EXT1";
    case EXT2: return "EXT2";
    case EXT4: return "EXT4";
    case TUPLE1: return "TUPLE1";
    case TUPLE2: return "TUPLE2";
    case TUPLE3: return "TUPLE3";
    case NEWTRUE: return "NEWTRUE";
    case NEWFALSE: return "NEWFALSE";
    case LONG1: return "LONG1";
    case LONG4: return "LONG4";
    case BINBYTES: return "BINBYTES";
    case SHORT_BINBYTES: return "SHORT_BINBYTES";
    case SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case BINUNICODE8: return "BINUNICODE8";
    case BINBYTES8: return "BINBYTES8";
    case EMPTY_SET: return "EMPTY_SET";
    case ADDITEMS: return "ADDITEMS";
    case FROZENSET: return "FROZENSET";
    case NEWOBJ_EX: return "NEWOBJ_EX";
    case STACK_GLOBAL: return "STACK_GLOBAL";
    case MEMOIZE: return "MEMOIZE";
    case FRAME: return "FRAME";
    case BYTEARRAY8: return "BYTEARRAY8";
    case NEXT_BUFFER: return "NEXT_BUFFER";
    case READONLY_BUFFER: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

// Untrusted strings go into one-line messages: escape control bytes, cut long ones.
std::string printable(const std::string& s, size_t max_length = 80) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= max_length) {
      out += "...";
      break;
    }
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\\') {
      char buffer[8];
      std::snprintf(buffer, sizeof buffer, "\\x%02x", c);
      out += buffer;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// Decodes UTF-8 as Python's unpickler does ("surrogatepass": lone surrogates are accepted). Returns false on
// malformed input. `code_points` may be null when only validating.
bool decode_utf8(const uint8_t* p, uint64_t n, std::vector<uint32_t>* code_points) {
  uint64_t i = 0;
  while (i < n) {
    uint32_t c = p[i];
    uint64_t extra = 0;
    uint32_t min_second = 0x80, max_second = 0xBF;
    if (c < 0x80) {
      extra = 0;
    } else if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
      c &= 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      if (c == 0xE0) min_second = 0xA0;
      c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      if (c == 0xF0) min_second = 0x90;
      if (c == 0xF4) max_second = 0x8F;
      c &= 0x07;
    } else {
      return false;
    }
    if (n - i - 1 < extra) return false;
    for (uint64_t k = 1; k <= extra; ++k) {
      uint32_t b = p[i + k];
      uint32_t lo = k == 1 ? min_second : 0x80, hi = k == 1 ? max_second : 0xBF;
      if (b < lo || b > hi) return false;
      c = (c << 6) | (b & 0x3F);
    }
    if (code_points) code_points->push_back(c);
    i += extra + 1;
  }
  return true;
}

uint64_t load_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct StorageType {
  const char* name;
  SourceDType dtype;
  int element_size;
};

constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", SourceDType::F32, 4},  {"DoubleStorage", SourceDType::F64, 8},
    {"HalfStorage", SourceDType::F16, 2},   {"BFloat16Storage", SourceDType::BF16, 2},
    {"LongStorage", SourceDType::I64, 8},   {"IntStorage", SourceDType::I32, 4},
    {"ShortStorage", SourceDType::I16, 2},  {"CharStorage", SourceDType::I8, 1},
    {"ByteStorage", SourceDType::U8, 1},    {"BoolStorage", SourceDType::BOOL, 1},
    {"UntypedStorage", SourceDType::U8, 1},
};

// Keys of a dict must be hashable; two keys Python would consider equal (1, 1.0, True) map to the same string.
// Returns false for unhashable values or keys too large to be plausible.
bool canonical_key(const PickleValue& v, std::string* out) {
  constexpr size_t kMaxKeyBytes = 4096;
  if (out->size() > kMaxKeyBytes) return false;
  switch (v.kind) {
    case PickleKind::None: *out += 'N'; return true;
    case PickleKind::Bool: *out += v.bool_value ? "i1;" : "i0;"; return true;
    case PickleKind::Int: *out += 'i' + std::to_string(v.int_value) + ';'; return true;
    case PickleKind::Float: {
      double f = v.float_value;
      if (f == f && f >= -9.2e18 && f <= 9.2e18 && static_cast<double>(static_cast<int64_t>(f)) == f) {
        *out += 'i' + std::to_string(static_cast<int64_t>(f)) + ';';
      } else {
        uint64_t bits;
        std::memcpy(&bits, &f, sizeof bits);
        *out += 'f' + std::to_string(bits) + ';';
      }
      return true;
    }
    case PickleKind::String:
    case PickleKind::Bytes:
    case PickleKind::Global:
      if (v.text.size() > kMaxKeyBytes) return false;
      *out += v.kind == PickleKind::String ? 's' : v.kind == PickleKind::Bytes ? 'b' : 'g';
      *out += std::to_string(v.text.size()) + ':' + v.text;
      return true;
    case PickleKind::Tuple:
      *out += 't' + std::to_string(v.items.size()) + '(';
      for (const PickleValuePtr& item : v.items) {
        if (!canonical_key(*item, out)) return false;
      }
      *out += ')';
      return true;
    default: return false;
  }
}

bool is_int(const PickleValue& v) { return v.kind == PickleKind::Int; }
bool is_sequence(const PickleValue& v) { return v.kind == PickleKind::Tuple || v.kind == PickleKind::List; }

class Machine {
 public:
  Machine(const uint8_t* data, uint64_t size, const std::string& name, const PickleLimits& limits)
      : data_(data), name_(name), limits_(limits) {
    size_ = size < limits.max_pickle_bytes ? size : limits.max_pickle_bytes;
    capped_ = size_ < size;
  }

  Status run(PickleResult* out);

 private:
  Status error(const char* format, ...) __attribute__((format(printf, 2, 3)));
  Status truncated(uint64_t needed);
  Status read_bytes(uint64_t n, const uint8_t** p);
  Status read_line(std::string* line);
  Status read_uint(int bytes, uint64_t* value);

  Status count_values(uint64_t n);
  Status new_value(PickleKind kind, PickleValuePtr* out);
  Status push(PickleValuePtr value);
  Status pop(PickleValuePtr* value);
  Status top(PickleValuePtr* value);
  Status pop_mark(std::vector<PickleValuePtr>* items);

  Status make_container(PickleKind kind, std::vector<PickleValuePtr> items, PickleValuePtr* out);
  Status adopt(PickleValue* target, const std::vector<PickleValuePtr>& children);
  Status canonical(const PickleValue& key, const char* what, std::string* out);
  Status dict_insert(PickleValue* dict, const PickleValuePtr& key, const PickleValuePtr& value);
  Status set_insert(PickleValue* set, const PickleValuePtr& item);

  Status push_string(PickleKind kind, uint64_t length);
  Status push_global(const std::string& module, const std::string& name, bool from_stack);
  Status call(bool newobj);
  Status call_allowed(const PickleValue& callable, const std::vector<PickleValuePtr>& args, bool newobj,
                      PickleValuePtr* result);
  Status rebuild_tensor(const std::vector<PickleValuePtr>& args, const char* function, bool requires_grad,
                        PickleValuePtr* result);
  Status rebuild_parameter(const std::vector<PickleValuePtr>& args, PickleValuePtr* result);
  Status persistent_load();
  Status build();
  Status memo_put(uint64_t index);
  Status memo_get(uint64_t index);

  const uint8_t* data_;
  uint64_t size_ = 0;
  bool capped_ = false;
  const std::string& name_;
  const PickleLimits& limits_;

  uint64_t pos_ = 0;
  uint64_t op_pos_ = 0;
  uint8_t op_ = 0;
  uint64_t values_ = 0;
  uint64_t key_bytes_ = 0;
  std::vector<PickleValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValuePtr> memo_;
  std::unordered_map<std::string, std::shared_ptr<PickleStorage>> storage_by_key_;
  std::vector<std::shared_ptr<PickleStorage>> storages_;
};

Status Machine::error(const char* format, ...) {
  char buffer[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  const char* op = opcode_name(op_);
  char where[64];
  if (op) {
    std::snprintf(where, sizeof where, "%s at byte %llu", op, static_cast<unsigned long long>(op_pos_));
  } else {
    std::snprintf(where, sizeof where, "opcode 0x%02x at byte %llu", op_, static_cast<unsigned long long>(op_pos_));
  }
  return errorf("%s: pickle: %s (%s)", name_.c_str(), buffer, where);
}

Status Machine::truncated(uint64_t needed) {
  if (capped_)
    return error("larger than the limit of %llu bytes", static_cast<unsigned long long>(size_));
  return error("truncated: needs %llu more bytes, %llu left", static_cast<unsigned long long>(needed),
               static_cast<unsigned long long>(size_ - pos_));
}

Status Machine::read_bytes(uint64_t n, const uint8_t** p) {
  if (size_ - pos_ < n) return truncated(n);
  *p = data_ + pos_;
  pos_ += n;
  return Status();
}

Status Machine::read_line(std::string* line) {
  const void* newline = std::memchr(data_ + pos_, '\n', size_ - pos_);
  if (!newline) return error("truncated: line without a newline");
  uint64_t length = static_cast<const uint8_t*>(newline) - (data_ + pos_);
  line->assign(reinterpret_cast<const char*>(data_ + pos_), length);
  pos_ += length + 1;
  return Status();
}

Status Machine::read_uint(int bytes, uint64_t* value) {
  const uint8_t* p = nullptr;
  DDPM_TRY(read_bytes(static_cast<uint64_t>(bytes), &p));
  *value = load_le(p, bytes);
  return Status();
}

Status Machine::count_values(uint64_t n) {
  if (n > limits_.max_values - values_ || values_ > limits_.max_values)
    return error("more than %llu values: refusing to build such a large object graph",
                 static_cast<unsigned long long>(limits_.max_values));
  values_ += n;
  return Status();
}

Status Machine::new_value(PickleKind kind, PickleValuePtr* out) {
  DDPM_TRY(count_values(1));
  *out = std::make_shared<PickleValue>();
  (*out)->kind = kind;
  return Status();
}

Status Machine::push(PickleValuePtr value) {
  if (stack_.size() >= limits_.max_stack_items)
    return error("stack holds more than %llu items", static_cast<unsigned long long>(limits_.max_stack_items));
  stack_.push_back(std::move(value));
  return Status();
}

// Like CPython, a MARK hides what is below it: popping past the innermost mark is a stack underflow.
Status Machine::pop(PickleValuePtr* value) {
  size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) return error("stack underflow");
  *value = std::move(stack_.back());
  stack_.pop_back();
  return Status();
}

Status Machine::top(PickleValuePtr* value) {
  size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) return error("stack underflow");
  *value = stack_.back();
  return Status();
}

Status Machine::pop_mark(std::vector<PickleValuePtr>* items) {
  if (marks_.empty()) return error("no MARK on the stack");
  size_t mark = marks_.back();
  marks_.pop_back();
  items->assign(std::make_move_iterator(stack_.begin() + static_cast<ptrdiff_t>(mark)),
                std::make_move_iterator(stack_.end()));
  stack_.resize(mark);
  return Status();
}

// Placing values inside `target` freezes them: a container that is already part of another value can no longer
// change, so no value can ever come to contain itself. The children are frozen before `target` is checked, which
// also catches inserting a container into itself.
Status Machine::adopt(PickleValue* target, const std::vector<PickleValuePtr>& children) {
  uint32_t depth = target->depth;
  for (const PickleValuePtr& child : children) {
    child->frozen = true;
    if (child->depth + 1 > depth) depth = child->depth + 1;
  }
  if (target->frozen)
    return error("a %s is modified after being placed inside another value (recursive structures are not supported)",
                 pickle_kind_name(target->kind));
  if (depth > limits_.max_depth)
    return error("values nested more than %llu deep", static_cast<unsigned long long>(limits_.max_depth));
  target->depth = depth;
  return Status();
}

Status Machine::make_container(PickleKind kind, std::vector<PickleValuePtr> items, PickleValuePtr* out) {
  PickleValuePtr value;
  DDPM_TRY(new_value(kind, &value));
  if (kind == PickleKind::Dict) {
    if (items.size() % 2 != 0) return error("odd number of items for a dict");
    for (size_t i = 0; i < items.size(); i += 2) DDPM_TRY(dict_insert(value.get(), items[i], items[i + 1]));
  } else if (kind == PickleKind::Set) {
    for (const PickleValuePtr& item : items) DDPM_TRY(set_insert(value.get(), item));
  } else {
    if (items.size() > limits_.max_container_items)
      return error("%s of %zu items (limit %llu)", pickle_kind_name(kind), items.size(),
                   static_cast<unsigned long long>(limits_.max_container_items));
    DDPM_TRY(count_values(items.size()));
    DDPM_TRY(adopt(value.get(), items));
    value->items = std::move(items);
  }
  *out = std::move(value);
  return Status();
}

// Memoized strings make large keys cheap to write but not to index, so key bytes have their own budget.
Status Machine::canonical(const PickleValue& key, const char* what, std::string* out) {
  if (!canonical_key(key, out)) return error("unhashable or oversized %s: %s", what, key.describe().c_str());
  key_bytes_ += out->size();
  if (key_bytes_ > limits_.max_key_bytes)
    return error("dict keys and set elements exceed %llu bytes in total",
                 static_cast<unsigned long long>(limits_.max_key_bytes));
  return Status();
}

Status Machine::dict_insert(PickleValue* dict, const PickleValuePtr& key, const PickleValuePtr& value) {
  std::string canonical_text;
  DDPM_TRY(canonical(*key, "dict key", &canonical_text));
  if (dict->dict_size() >= limits_.max_container_items)
    return error("dict of more than %llu items", static_cast<unsigned long long>(limits_.max_container_items));
  DDPM_TRY(count_values(2));
  DDPM_TRY(adopt(dict, {key, value}));
  if (!dict->dict_index) dict->dict_index.reset(new std::unordered_map<std::string, size_t>());
  if (!dict->dict_index->emplace(std::move(canonical_text), dict->dict_size()).second)
    return error("duplicate dict key %s", key->describe().c_str());
  dict->items.push_back(key);
  dict->items.push_back(value);
  return Status();
}

Status Machine::set_insert(PickleValue* set, const PickleValuePtr& item) {
  std::string canonical_text;
  DDPM_TRY(canonical(*item, "set element", &canonical_text));
  if (set->items.size() >= limits_.max_container_items)
    return error("set of more than %llu items", static_cast<unsigned long long>(limits_.max_container_items));
  DDPM_TRY(count_values(1));
  DDPM_TRY(adopt(set, {item}));
  set->items.push_back(item);
  return Status();
}

Status Machine::push_string(PickleKind kind, uint64_t length) {
  const uint8_t* p = nullptr;
  DDPM_TRY(read_bytes(length, &p));
  if (kind == PickleKind::String && !decode_utf8(p, length, nullptr)) return error("string is not valid UTF-8");
  PickleValuePtr value;
  DDPM_TRY(new_value(kind, &value));
  value->text.assign(reinterpret_cast<const char*>(p), length);
  return push(std::move(value));
}

Status Machine::push_global(const std::string& module, const std::string& name, bool from_stack) {
  // Protocol-2 pickles written by Python 3 use Python 2 module names (fix_imports).
  std::string normalized = module == "__builtin__" ? "builtins" : module;
  PickleValuePtr value;
  DDPM_TRY(new_value(PickleKind::Global, &value));
  value->text = normalized + "." + name;
  value->int_value = static_cast<int64_t>(normalized.size());
  value->source_offset = op_pos_;
  value->bool_value = from_stack;
  return push(std::move(value));
}

Status Machine::call(bool newobj) {
  PickleValuePtr callable, args, kwargs;
  if (op_ == NEWOBJ_EX) {
    DDPM_TRY(pop(&kwargs));
    if (kwargs->kind != PickleKind::Dict || kwargs->dict_size() != 0)
      return error("keyword arguments are not supported");
  }
  DDPM_TRY(pop(&args));
  DDPM_TRY(pop(&callable));
  if (callable->kind != PickleKind::Global)
    return error("refusing to call a %s (only allow-listed globals can be called)",
                 pickle_kind_name(callable->kind));
  if (args->kind != PickleKind::Tuple)
    return error("arguments of %s are a %s, not a tuple", printable(callable->text).c_str(),
                 pickle_kind_name(args->kind));
  PickleValuePtr result;
  DDPM_TRY(call_allowed(*callable, args->items, newobj, &result));
  if (!result)
    return error("refusing to %s %s, loaded by %s at byte %llu", newobj ? "instantiate" : "call",
                 printable(callable->text).c_str(), callable->bool_value ? "STACK_GLOBAL" : "GLOBAL",
                 static_cast<unsigned long long>(callable->source_offset));
  return push(std::move(result));
}

// The allow-list. Leaves *result empty for anything not on it; returns an error for allowed callables given bad
// arguments.
Status Machine::call_allowed(const PickleValue& callable, const std::vector<PickleValuePtr>& args, bool newobj,
                             PickleValuePtr* result) {
  const std::string& f = callable.text;
  const size_t n = args.size();
  if (f == "collections.OrderedDict") {
    DDPM_TRY(new_value(PickleKind::Dict, result));
    (*result)->ordered_dict = true;
    if (n == 0) return Status();
    if (n != 1 || newobj || !is_sequence(*args[0])) return error("unsupported arguments to collections.OrderedDict");
    for (const PickleValuePtr& pair : args[0]->items) {
      if (!is_sequence(*pair) || pair->items.size() != 2)
        return error("collections.OrderedDict item is not a (key, value) pair");
      DDPM_TRY(dict_insert(result->get(), pair->items[0], pair->items[1]));
    }
    return Status();
  }
  if (f == "builtins.set" || f == "builtins.frozenset") {
    DDPM_TRY(new_value(PickleKind::Set, result));
    if (n == 1 && (is_sequence(*args[0]) || args[0]->kind == PickleKind::Set)) {
      for (const PickleValuePtr& item : args[0]->items) DDPM_TRY(set_insert(result->get(), item));
    } else if (n != 0) {
      return error("unsupported arguments to %s", f.c_str());
    }
    (*result)->frozen = f == "builtins.frozenset";
    return Status();
  }
  if (f == "torch.Size") {
    if (n == 0) return make_container(PickleKind::Tuple, {}, result);
    if (n != 1 || !is_sequence(*args[0])) return error("unsupported arguments to torch.Size");
    for (const PickleValuePtr& dim : args[0]->items) {
      if (!is_int(*dim)) return error("torch.Size with a non-integer dimension");
    }
    return make_container(PickleKind::Tuple, args[0]->items, result);
  }
  if (newobj) return Status();  // the remaining callables are functions, never classes

  if (f == "torch._utils._rebuild_tensor_v2") {
    if (n != 6 && n != 7) return error("torch._utils._rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", n);
    if (args[4]->kind != PickleKind::Bool) return error("_rebuild_tensor_v2: requires_grad is not a bool");
    return rebuild_tensor(args, "_rebuild_tensor_v2", args[4]->bool_value, result);
  }
  if (f == "torch._utils._rebuild_tensor") {
    if (n != 4) return error("torch._utils._rebuild_tensor takes 4 arguments, got %zu", n);
    return rebuild_tensor(args, "_rebuild_tensor", false, result);
  }
  if (f == "torch._utils._rebuild_parameter") {
    if (n != 3) return error("torch._utils._rebuild_parameter takes 3 arguments, got %zu", n);
    return rebuild_parameter(args, result);
  }
  if (f == "torch._utils._rebuild_parameter_with_state") {
    if (n != 4) return error("torch._utils._rebuild_parameter_with_state takes 4 arguments, got %zu", n);
    return rebuild_parameter(args, result);
  }
  if (f == "_codecs.encode") {
    // Protocol 2 has no bytes opcode; Python 3 writes bytes as _codecs.encode(<latin-1 decoded str>, 'latin1').
    if (n != 2 || args[0]->kind != PickleKind::String || args[1]->kind != PickleKind::String)
      return error("unsupported arguments to _codecs.encode");
    const std::string& encoding = args[1]->text;
    uint32_t max_code_point;
    if (encoding == "latin1" || encoding == "latin-1" || encoding == "iso-8859-1") {
      max_code_point = 0xFF;
    } else if (encoding == "ascii") {
      max_code_point = 0x7F;
    } else if (encoding == "utf-8" || encoding == "utf8") {
      DDPM_TRY(new_value(PickleKind::Bytes, result));
      (*result)->text = args[0]->text;
      return Status();
    } else {
      return error("_codecs.encode with unsupported encoding '%s'", printable(encoding).c_str());
    }
    std::vector<uint32_t> code_points;
    const std::string& text = args[0]->text;
    if (!decode_utf8(reinterpret_cast<const uint8_t*>(text.data()), text.size(), &code_points))
      return error("_codecs.encode of invalid UTF-8");
    DDPM_TRY(new_value(PickleKind::Bytes, result));
    std::string& bytes = (*result)->text;
    bytes.reserve(code_points.size());
    for (uint32_t c : code_points) {
      if (c > max_code_point) return error("_codecs.encode: character U+%04X is not in %s", c, encoding.c_str());
      bytes += static_cast<char>(static_cast<uint8_t>(c));
    }
    return Status();
  }
  if (f == "builtins.bytes") {
    if (n != 0) return error("unsupported arguments to builtins.bytes");
    return new_value(PickleKind::Bytes, result);
  }
  if (f == "torch.device") {
    if ((n != 1 && n != 2) || args[0]->kind != PickleKind::String || (n == 2 && !is_int(*args[1])))
      return error("unsupported arguments to torch.device");
    DDPM_TRY(new_value(PickleKind::String, result));
    (*result)->text = args[0]->text;
    if (n == 2) (*result)->text += ":" + std::to_string(args[1]->int_value);
    return Status();
  }
  return Status();
}

// Reads (storage, storage_offset, size, stride, …): checks that every element the tensor can address lies inside
// the storage (view), with 64-bit overflow checks throughout.
Status Machine::rebuild_tensor(const std::vector<PickleValuePtr>& args, const char* function, bool requires_grad,
                               PickleValuePtr* result) {
  if (args[0]->kind != PickleKind::Storage) return error("%s: first argument is not a storage", function);
  if (!is_int(*args[1]) || args[1]->int_value < 0) return error("%s: bad storage offset", function);
  const PickleValue& size = *args[2];
  const PickleValue& stride = *args[3];
  if (!is_sequence(size) || !is_sequence(stride)) return error("%s: size or stride is not a tuple", function);
  if (size.items.size() != stride.items.size())
    return error("%s: size has %zu dimensions but stride has %zu", function, size.items.size(), stride.items.size());
  if (size.items.size() > static_cast<size_t>(limits_.max_tensor_rank))
    return error("%s: tensor of rank %zu (limit %d)", function, size.items.size(), limits_.max_tensor_rank);
  const PickleStorageView& view = *args[0]->storage;
  auto tensor = std::make_shared<PickleTensor>();
  tensor->storage = view.storage;
  tensor->requires_grad = requires_grad;
  int64_t numel = 0, last = args[1]->int_value;
  for (size_t d = 0; d < size.items.size(); ++d) {
    const PickleValue& extent = *size.items[d];
    const PickleValue& step = *stride.items[d];
    if (!is_int(extent) || !is_int(step) || extent.int_value < 0 || step.int_value < 0)
      return error("%s: dimension %zu has a negative or non-integer size or stride", function, d);
    tensor->shape.push_back(extent.int_value);
    tensor->strides.push_back(step.int_value);
    int64_t reach = 0;
    if (extent.int_value > 0 && (__builtin_mul_overflow(extent.int_value - 1, step.int_value, &reach) ||
                                 __builtin_add_overflow(last, reach, &last)))
      return error("%s: size/stride arithmetic overflows", function);
  }
  // The product of the non-zero extents must fit too, even when a zero extent makes the tensor empty: later stages
  // multiply trailing extents (row sizes) without knowing about the zero.
  if (!checked_numel(tensor->shape, &numel)) return error("%s: size arithmetic overflows", function);
  // An empty tensor addresses nothing; its offset only has to be a position inside the storage.
  bool inside = numel == 0 ? args[1]->int_value <= view.numel : last < view.numel;
  if (!inside)
    return error("%s: tensor (offset %lld, last element %lld) reaches past its storage '%s' of %lld elements",
                 function, static_cast<long long>(args[1]->int_value), static_cast<long long>(last),
                 printable(view.storage->key).c_str(), static_cast<long long>(view.numel));
  tensor->element_offset = view.offset + args[1]->int_value;  // view.offset + view.numel <= storage numel
  DDPM_TRY(new_value(PickleKind::Tensor, result));
  (*result)->tensor = std::move(tensor);
  (*result)->depth = 1;
  return Status();
}

Status Machine::rebuild_parameter(const std::vector<PickleValuePtr>& args, PickleValuePtr* result) {
  if (args[0]->kind != PickleKind::Tensor) return error("parameter data is a %s, not a tensor",
                                                        pickle_kind_name(args[0]->kind));
  if (args[1]->kind != PickleKind::Bool) return error("parameter requires_grad is not a bool");
  DDPM_TRY(new_value(PickleKind::Tensor, result));
  auto tensor = std::make_shared<PickleTensor>(*args[0]->tensor);
  tensor->requires_grad = args[1]->bool_value;
  (*result)->tensor = std::move(tensor);
  (*result)->depth = 1;
  return Status();
}

// ('storage', torch.<X>Storage, key, location, numel) from zip archives, plus a sixth element in legacy files:
// None or (view_key, offset, numel) selecting a slice of the root storage.
Status Machine::persistent_load() {
  PickleValuePtr pid;
  DDPM_TRY(pop(&pid));
  if (pid->kind != PickleKind::Tuple || pid->items.empty() || pid->items[0]->kind != PickleKind::String)
    return error("persistent id is a %s, not a ('storage', ...) tuple", pickle_kind_name(pid->kind));
  const std::vector<PickleValuePtr>& id = pid->items;
  if (id[0]->text != "storage")
    return error("persistent id of type '%s' is not supported (only 'storage')", printable(id[0]->text).c_str());
  if (id.size() != 5 && id.size() != 6)
    return error("storage persistent id has %zu elements (expected 5, or 6 in legacy files)", id.size());
  const PickleValue& type = *id[1];
  if (type.kind != PickleKind::Global) return error("storage type is a %s, not a class", pickle_kind_name(type.kind));
  std::string module = type.text.substr(0, static_cast<size_t>(type.int_value));
  std::string type_name = type.text.substr(static_cast<size_t>(type.int_value) + 1);
  SourceDType dtype;
  int element_size;
  if (!pickle_storage_dtype(module, type_name, &dtype, &element_size))
    return error("unsupported storage type %s", printable(type.text).c_str());
  if (id[2]->kind != PickleKind::String) return error("storage key is not a string");
  if (id[3]->kind != PickleKind::String) return error("storage location is not a string");
  if (!is_int(*id[4]) || id[4]->int_value < 0) return error("storage size is not a non-negative integer");
  const std::string& key = id[2]->text;
  int64_t numel = id[4]->int_value;
  int64_t bytes;
  if (__builtin_mul_overflow(numel, static_cast<int64_t>(element_size), &bytes))
    return error("storage '%s' of %lld elements overflows", printable(key).c_str(), static_cast<long long>(numel));

  std::shared_ptr<PickleStorage>& storage = storage_by_key_[key];
  if (!storage) {
    storage = std::make_shared<PickleStorage>();
    storage->key = key;
    storage->type_name = type.text;
    storage->location = id[3]->text;
    storage->dtype = dtype;
    storage->element_size = element_size;
    storage->numel = numel;
    storage->legacy_id = id.size() == 6;
    storages_.push_back(storage);
  } else if (storage->dtype != dtype || storage->numel != numel || storage->legacy_id != (id.size() == 6)) {
    return error("storage '%s' is declared twice with different types or sizes", printable(key).c_str());
  }

  auto view = std::make_shared<PickleStorageView>();
  view->storage = storage;
  view->numel = numel;
  if (id.size() == 6 && id[5]->kind != PickleKind::None) {
    const PickleValue& meta = *id[5];
    if (meta.kind != PickleKind::Tuple || meta.items.size() != 3 || meta.items[0]->kind != PickleKind::String ||
        !is_int(*meta.items[1]) || !is_int(*meta.items[2]))
      return error("storage '%s' has malformed view metadata", printable(key).c_str());
    int64_t offset = meta.items[1]->int_value, count = meta.items[2]->int_value;
    if (offset < 0 || count < 0 || offset > numel || count > numel - offset)
      return error("storage view (offset %lld, %lld elements) lies outside storage '%s' of %lld elements",
                   static_cast<long long>(offset), static_cast<long long>(count), printable(key).c_str(),
                   static_cast<long long>(numel));
    view->offset = offset;
    view->numel = count;
  }
  PickleValuePtr value;
  DDPM_TRY(new_value(PickleKind::Storage, &value));
  value->storage = std::move(view);
  value->depth = 1;
  return push(std::move(value));
}

// Pickled OrderedDicts end with BUILD carrying their __dict__ (torch's `_metadata`); the state is not needed.
Status Machine::build() {
  PickleValuePtr state, target;
  DDPM_TRY(pop(&state));
  DDPM_TRY(top(&target));
  if (target->kind != PickleKind::Dict)
    return error("BUILD on a %s is not allowed (only dict/OrderedDict state is accepted)",
                 pickle_kind_name(target->kind));
  return Status();
}

Status Machine::memo_put(uint64_t index) {
  PickleValuePtr value;
  DDPM_TRY(top(&value));
  auto found = memo_.find(index);
  if (found != memo_.end()) {
    found->second = std::move(value);
    return Status();
  }
  if (memo_.size() >= limits_.max_memo_entries)
    return error("memo holds more than %llu entries", static_cast<unsigned long long>(limits_.max_memo_entries));
  memo_.emplace(index, std::move(value));
  return Status();
}

Status Machine::memo_get(uint64_t index) {
  auto found = memo_.find(index);
  if (found == memo_.end()) return error("memo index %llu was never stored", static_cast<unsigned long long>(index));
  return push(found->second);
}

Status Machine::run(PickleResult* out) {
  while (true) {
    op_pos_ = pos_;
    op_ = 0;
    if (pos_ >= size_) {
      if (capped_)
        return errorf("%s: pickle: larger than the limit of %llu bytes", name_.c_str(),
                      static_cast<unsigned long long>(size_));
      return errorf("%s: pickle: truncated: no STOP opcode in %llu bytes", name_.c_str(),
                    static_cast<unsigned long long>(size_));
    }
    op_ = data_[pos_++];
    uint64_t n = 0;
    const uint8_t* p = nullptr;
    PickleValuePtr value, key, item;
    std::vector<PickleValuePtr> items;
    switch (op_) {
      case PROTO:
        DDPM_TRY(read_uint(1, &n));
        if (n > 5) return error("unsupported pickle protocol %llu", static_cast<unsigned long long>(n));
        break;
      case FRAME:
        // Frames only batch I/O; the opcodes inside are read the same way.
        DDPM_TRY(read_uint(8, &n));
        if (n > size_ - pos_) return truncated(n);
        break;
      case STOP:
        DDPM_TRY(pop(&value));
        out->root = std::move(value);
        out->storages = std::move(storages_);
        out->consumed = pos_;
        return Status();

      case MARK:
        if (marks_.size() >= limits_.max_depth)
          return error("MARKs nested more than %llu deep", static_cast<unsigned long long>(limits_.max_depth));
        marks_.push_back(stack_.size());
        break;
      case POP:
        if (stack_.size() > (marks_.empty() ? 0 : marks_.back())) {
          stack_.pop_back();
        } else {
          DDPM_TRY(pop_mark(&items));
        }
        break;
      case POP_MARK: DDPM_TRY(pop_mark(&items)); break;
      case DUP:
        DDPM_TRY(top(&value));
        DDPM_TRY(push(std::move(value)));
        break;

      case NONE:
        DDPM_TRY(new_value(PickleKind::None, &value));
        DDPM_TRY(push(std::move(value)));
        break;
      case NEWTRUE:
      case NEWFALSE:
        DDPM_TRY(new_value(PickleKind::Bool, &value));
        value->bool_value = op_ == NEWTRUE;
        DDPM_TRY(push(std::move(value)));
        break;
      case BININT:
      case BININT1:
      case BININT2: {
        int width = op_ == BININT ? 4 : op_ == BININT1 ? 1 : 2;
        DDPM_TRY(read_uint(width, &n));
        DDPM_TRY(new_value(PickleKind::Int, &value));
        value->int_value = width == 4 ? static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(n)))
                                      : static_cast<int64_t>(n);
        DDPM_TRY(push(std::move(value)));
        break;
      }
      case LONG1:
      case LONG4: {
        DDPM_TRY(read_uint(op_ == LONG1 ? 1 : 4, &n));
        if (op_ == LONG4 && n > 0x7FFFFFFF) return error("negative byte count");
        DDPM_TRY(read_bytes(n, &p));
        // Two's complement, little-endian. Longer encodings are fine if the extra bytes only extend the sign.
        int64_t v = 0;
        if (n > 0) {
          uint64_t low = n < 8 ? n : 8;
          uint64_t bits = load_le(p, static_cast<int>(low));
          bool negative = (p[low - 1] & 0x80) != 0;
          if (low < 8 && negative) bits |= ~uint64_t{0} << (8 * low);
          for (uint64_t i = 8; i < n; ++i) {
            bool high_negative = (p[n - 1] & 0x80) != 0;
            if (p[i] != (high_negative ? 0xFF : 0x00) || high_negative != negative)
              return error("integer of %llu bytes does not fit in 64 bits", static_cast<unsigned long long>(n));
          }
          std::memcpy(&v, &bits, sizeof v);
        }
        DDPM_TRY(new_value(PickleKind::Int, &value));
        value->int_value = v;
        DDPM_TRY(push(std::move(value)));
        break;
      }
      case BINFLOAT: {
        DDPM_TRY(read_bytes(8, &p));
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];  // big-endian, unlike everything else
        DDPM_TRY(new_value(PickleKind::Float, &value));
        std::memcpy(&value->float_value, &bits, sizeof bits);
        DDPM_TRY(push(std::move(value)));
        break;
      }

      case SHORT_BINUNICODE: DDPM_TRY(read_uint(1, &n)); DDPM_TRY(push_string(PickleKind::String, n)); break;
      case BINUNICODE: DDPM_TRY(read_uint(4, &n)); DDPM_TRY(push_string(PickleKind::String, n)); break;
      case BINUNICODE8: DDPM_TRY(read_uint(8, &n)); DDPM_TRY(push_string(PickleKind::String, n)); break;
      // Python 2 str; torch.load decodes these as UTF-8.
      case SHORT_BINSTRING: DDPM_TRY(read_uint(1, &n)); DDPM_TRY(push_string(PickleKind::String, n)); break;
      case BINSTRING:
        DDPM_TRY(read_uint(4, &n));
        if (n > 0x7FFFFFFF) return error("negative byte count");
        DDPM_TRY(push_string(PickleKind::String, n));
        break;
      case SHORT_BINBYTES: DDPM_TRY(read_uint(1, &n)); DDPM_TRY(push_string(PickleKind::Bytes, n)); break;
      case BINBYTES: DDPM_TRY(read_uint(4, &n)); DDPM_TRY(push_string(PickleKind::Bytes, n)); break;
      case BINBYTES8:
      case BYTEARRAY8: DDPM_TRY(read_uint(8, &n)); DDPM_TRY(push_string(PickleKind::Bytes, n)); break;

      case EMPTY_TUPLE:
      case EMPTY_LIST:
      case EMPTY_DICT:
      case EMPTY_SET: {
        PickleKind kind = op_ == EMPTY_TUPLE  ? PickleKind::Tuple
                          : op_ == EMPTY_LIST ? PickleKind::List
                          : op_ == EMPTY_DICT ? PickleKind::Dict
                                              : PickleKind::Set;
        DDPM_TRY(new_value(kind, &value));
        DDPM_TRY(push(std::move(value)));
        break;
      }
      case TUPLE1:
      case TUPLE2:
      case TUPLE3: {
        size_t count = static_cast<size_t>(op_ - TUPLE1 + 1);
        items.resize(count);
        for (size_t i = count; i-- > 0;) DDPM_TRY(pop(&items[i]));
        DDPM_TRY(make_container(PickleKind::Tuple, std::move(items), &value));
        DDPM_TRY(push(std::move(value)));
        break;
      }
      case TUPLE:
      case LIST:
      case DICT:
      case FROZENSET: {
        DDPM_TRY(pop_mark(&items));
        PickleKind kind = op_ == TUPLE ? PickleKind::Tuple
                          : op_ == LIST ? PickleKind::List
                          : op_ == DICT ? PickleKind::Dict
                                        : PickleKind::Set;
        DDPM_TRY(make_container(kind, std::move(items), &value));
        if (op_ == FROZENSET) value->frozen = true;
        DDPM_TRY(push(std::move(value)));
        break;
      }
      case APPEND:
      case APPENDS:
        if (op_ == APPEND) {
          DDPM_TRY(pop(&item));
          items.push_back(std::move(item));
        } else {
          DDPM_TRY(pop_mark(&items));
        }
        DDPM_TRY(top(&value));
        if (value->kind != PickleKind::List)
          return error("appending to a %s is not allowed (only lists)", pickle_kind_name(value->kind));
        if (items.size() > limits_.max_container_items - value->items.size())
          return error("list of more than %llu items", static_cast<unsigned long long>(limits_.max_container_items));
        DDPM_TRY(count_values(items.size()));
        DDPM_TRY(adopt(value.get(), items));
        value->items.insert(value->items.end(), items.begin(), items.end());
        break;
      case SETITEM:
      case SETITEMS:
        if (op_ == SETITEM) {
          items.resize(2);
          DDPM_TRY(pop(&items[1]));
          DDPM_TRY(pop(&items[0]));
        } else {
          DDPM_TRY(pop_mark(&items));
          if (items.size() % 2 != 0) return error("odd number of items");
        }
        DDPM_TRY(top(&value));
        if (value->kind != PickleKind::Dict)
          return error("setting items on a %s is not allowed (only dicts)", pickle_kind_name(value->kind));
        for (size_t i = 0; i < items.size(); i += 2) DDPM_TRY(dict_insert(value.get(), items[i], items[i + 1]));
        break;
      case ADDITEMS:
        DDPM_TRY(pop_mark(&items));
        DDPM_TRY(top(&value));
        if (value->kind != PickleKind::Set)
          return error("adding items to a %s is not allowed (only sets)", pickle_kind_name(value->kind));
        for (const PickleValuePtr& element : items) DDPM_TRY(set_insert(value.get(), element));
        break;

      case BINPUT: DDPM_TRY(read_uint(1, &n)); DDPM_TRY(memo_put(n)); break;
      case LONG_BINPUT: DDPM_TRY(read_uint(4, &n)); DDPM_TRY(memo_put(n)); break;
      case MEMOIZE: DDPM_TRY(memo_put(memo_.size())); break;
      case BINGET: DDPM_TRY(read_uint(1, &n)); DDPM_TRY(memo_get(n)); break;
      case LONG_BINGET: DDPM_TRY(read_uint(4, &n)); DDPM_TRY(memo_get(n)); break;

      case GLOBAL: {
        std::string module, name;
        DDPM_TRY(read_line(&module));
        DDPM_TRY(read_line(&name));
        DDPM_TRY(push_global(module, name, false));
        break;
      }
      case STACK_GLOBAL:
        DDPM_TRY(pop(&value));
        DDPM_TRY(pop(&key));
        if (key->kind != PickleKind::String || value->kind != PickleKind::String)
          return error("module or name is not a string");
        DDPM_TRY(push_global(key->text, value->text, true));
        break;
      case REDUCE: DDPM_TRY(call(false)); break;
      case NEWOBJ:
      case NEWOBJ_EX: DDPM_TRY(call(true)); break;
      case BUILD: DDPM_TRY(build()); break;
      case BINPERSID: DDPM_TRY(persistent_load()); break;

      case INST:
      case OBJ:
        return error("opcode %s is not allowed: it instantiates arbitrary classes", opcode_name(op_));
      case EXT1:
      case EXT2:
      case EXT4:
        return error("opcode %s is not allowed: extension registry lookups can load arbitrary globals",
                     opcode_name(op_));
      case PERSID: return error("text persistent ids are not allowed (torch writes BINPERSID)");
      case NEXT_BUFFER:
      case READONLY_BUFFER: return error("out-of-band buffers are not supported");
      case INT:
      case LONG:
      case FLOAT:
      case STRING:
      case UNICODE:
      case PUT:
      case GET:
        return error("protocol-0 text opcode %s is not supported (torch writes protocol 2 or later)",
                     opcode_name(op_));
      default: return error("unknown opcode");
    }
  }
}

}  // namespace

const char* pickle_kind_name(PickleKind kind) {
  switch (kind) {
    case PickleKind::None: return "None";
    case PickleKind::Bool: return "bool";
    case PickleKind::Int: return "int";
    case PickleKind::Float: return "float";
    case PickleKind::String: return "str";
    case PickleKind::Bytes: return "bytes";
    case PickleKind::Tuple: return "tuple";
    case PickleKind::List: return "list";
    case PickleKind::Dict: return "dict";
    case PickleKind::Set: return "set";
    case PickleKind::Global: return "global";
    case PickleKind::Storage: return "storage";
    case PickleKind::Tensor: return "tensor";
  }
  return "?";
}

const PickleValue* PickleValue::find(const std::string& key) const {
  if (kind != PickleKind::Dict || !dict_index) return nullptr;
  auto found = dict_index->find('s' + std::to_string(key.size()) + ':' + key);
  return found == dict_index->end() ? nullptr : &dict_value(found->second);
}

std::string PickleValue::describe() const {
  switch (kind) {
    case PickleKind::Bool: return bool_value ? "True" : "False";
    case PickleKind::Int: return "int " + std::to_string(int_value);
    case PickleKind::String: return "'" + printable(text) + "'";
    case PickleKind::Bytes: return "bytes of length " + std::to_string(text.size());
    case PickleKind::Global: return "global " + printable(text);
    case PickleKind::Tuple:
    case PickleKind::List:
    case PickleKind::Set: return std::string(pickle_kind_name(kind)) + " of " + std::to_string(items.size()) + " items";
    case PickleKind::Dict: return "dict of " + std::to_string(dict_size()) + " items";
    default: return pickle_kind_name(kind);
  }
}

bool pickle_storage_dtype(const std::string& module, const std::string& type, SourceDType* dtype, int* element_size) {
  // torch.cuda.<X>Storage appears in very old files saved from a GPU; the location string carries the device.
  if (module != "torch" && module != "torch.cuda" && module != "torch.storage") return false;
  for (const StorageType& known : kStorageTypes) {
    if (type == known.name) {
      *dtype = known.dtype;
      *element_size = known.element_size;
      return true;
    }
  }
  return false;
}

Status parse_pickle(const uint8_t* data, uint64_t size, const std::string& name, const PickleLimits& limits,
                    PickleResult* out) {
  *out = PickleResult();
  Machine machine(data, size, name, limits);
  return machine.run(out);
}

Status parse_pickle(const uint8_t* data, uint64_t size, const std::string& name, PickleResult* out) {
  return parse_pickle(data, size, name, PickleLimits(), out);
}

}  // namespace ddpm
