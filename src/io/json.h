// A strict RFC 8259 JSON reader and writer for configs, checkpoint headers and reports.
//
// Strict because its input is untrusted (safetensors headers, user configs): trailing commas, comments, leading
// zeros, NaN/Infinity, invalid UTF-8, lone surrogates, control characters in strings and duplicate object keys are
// all rejected, nesting is capped, and every error names the line and column. A leading UTF-8 byte order mark is
// skipped (RFC 8259 allows that) because editors on some systems add one.
//
// Numbers keep the exact text they were parsed from next to the double, so integers beyond 2^53 (safetensors byte
// offsets, seeds) are read exactly with as_int64/as_uint64 and written back unchanged.
// Objects keep their key order, so a file that is read and written again stays diffable.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

class JsonValue {
 public:
  enum class Type : uint8_t { Null, Bool, Number, String, Array, Object };
  using Member = std::pair<std::string, JsonValue>;

  JsonValue() = default;  // null
  static JsonValue make_bool(bool value);
  static JsonValue make_number(double value);   // non-finite values serialise as null (JSON has no NaN/Infinity)
  static JsonValue make_int(int64_t value);
  static JsonValue make_uint(uint64_t value);
  static JsonValue make_string(std::string value);
  static JsonValue make_array();
  static JsonValue make_object();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed reads: false (and *out untouched) when the value is of another type or does not fit.
  bool as_bool(bool* out) const;
  bool as_double(double* out) const;
  // Only numbers written as integers ("42", "-7"; not "42.0" or "4.2e1") count as integers, read exactly.
  bool as_int64(int64_t* out) const;
  bool as_uint64(uint64_t* out) const;
  // Like as_int64, but also accepts integral values written as floats ("1.0", "3e2"), as some exporters
  // write them; values outside ±2^53 are refused since a double no longer holds every integer there.
  bool as_integral(int64_t* out) const;
  bool as_string(std::string* out) const;

  // Unchecked accessors: asserting on the type is for the caller's own logic, not for input validation.
  const std::string& string() const;
  const std::string& number_text() const;  // the literal as parsed or as it will be written
  const std::vector<JsonValue>& items() const;
  std::vector<JsonValue>& items();
  const std::vector<Member>& members() const;
  std::vector<Member>& members();

  // Array length or object member count; 0 for scalars.
  size_t size() const;
  // Object lookup (linear; objects here are small). nullptr when absent or when this is not an object.
  const JsonValue* find(std::string_view key) const;
  JsonValue* find(std::string_view key);

  // Building. push_back needs an array; set needs an object and replaces the value of an existing key in place.
  void push_back(JsonValue value);
  void set(std::string key, JsonValue value);

 private:
  friend class JsonParser;  // sets a number's value and literal together without reformatting it

  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string text_;  // string contents, or a number's literal
  std::vector<JsonValue> items_;
  std::vector<Member> members_;
};

constexpr int kJsonMaxDepth = 64;

// Parses exactly one JSON value (surrounded by optional whitespace) from `text`. The caller bounds the input size
// and adds the file name: parse_json(text, &value).with_context(path). Errors read
// "invalid JSON at line L, column C: <problem>" with a 1-based byte column. The tree costs about 100 bytes per
// value, so a document of tiny values ("[0,0,0,...]") needs some 50 times its size in memory; running out of memory
// is reported as an error, not thrown.
Status parse_json(std::string_view text, JsonValue* out);

// The JSON file at `path` (a config: at most 16 MB), parsed; errors name the file. Directories, devices and
// unreadable files are refused with the reason.
Status read_json_file(const std::string& path, JsonValue* out);

// Compact form has no whitespace at all; pretty form indents by two spaces and ends without a newline. Strings are
// escaped so that the output is always valid JSON; invalid UTF-8 bytes in a string become U+FFFD.
std::string to_json(const JsonValue& value, bool pretty);

// Shortest decimal text that reads back as the same double ("0.1", "1e+20", "-0"); "null" for NaN and infinities.
std::string json_number_text(double value);

}  // namespace ddpm
