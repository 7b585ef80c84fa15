#include "io/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <new>

#include "io/mapped_file.h"

namespace ddpm {

// ---------------------------------------------------------------------------------------------------------------
// JsonValue

JsonValue JsonValue::make_bool(bool value) {
  JsonValue v;
  v.type_ = Type::Bool;
  v.bool_ = value;
  return v;
}

JsonValue JsonValue::make_number(double value) {
  JsonValue v;
  v.type_ = Type::Number;
  v.number_ = value;
  v.text_ = json_number_text(value);
  return v;
}

JsonValue JsonValue::make_int(int64_t value) {
  JsonValue v;
  v.type_ = Type::Number;
  v.number_ = static_cast<double>(value);
  v.text_ = std::to_string(value);
  return v;
}

JsonValue JsonValue::make_uint(uint64_t value) {
  JsonValue v;
  v.type_ = Type::Number;
  v.number_ = static_cast<double>(value);
  v.text_ = std::to_string(value);
  return v;
}

JsonValue JsonValue::make_string(std::string value) {
  JsonValue v;
  v.type_ = Type::String;
  v.text_ = std::move(value);
  return v;
}

JsonValue JsonValue::make_array() {
  JsonValue v;
  v.type_ = Type::Array;
  return v;
}

JsonValue JsonValue::make_object() {
  JsonValue v;
  v.type_ = Type::Object;
  return v;
}

bool JsonValue::as_bool(bool* out) const {
  if (type_ != Type::Bool) return false;
  *out = bool_;
  return true;
}

bool JsonValue::as_double(double* out) const {
  if (type_ != Type::Number) return false;
  *out = number_;
  return true;
}

namespace {

bool is_integer_literal(const std::string& text) {
  if (text.empty()) return false;
  size_t start = text[0] == '-' ? 1 : 0;
  if (start == text.size()) return false;
  for (size_t i = start; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  return true;
}

}  // namespace

bool JsonValue::as_int64(int64_t* out) const {
  if (type_ != Type::Number || !is_integer_literal(text_)) return false;
  int64_t value = 0;
  const char* end = text_.data() + text_.size();
  auto result = std::from_chars(text_.data(), end, value);
  if (result.ec != std::errc() || result.ptr != end) return false;
  *out = value;
  return true;
}

bool JsonValue::as_integral(int64_t* out) const {
  if (as_int64(out)) return true;
  double d = 0;
  if (!as_double(&d)) return false;
  constexpr double kExactLimit = 9007199254740992.0;  // 2^53
  if (!(d >= -kExactLimit && d <= kExactLimit) || d != std::floor(d)) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

bool JsonValue::as_uint64(uint64_t* out) const {
  if (type_ != Type::Number || !is_integer_literal(text_)) return false;
  if (text_ == "-0") {
    *out = 0;
    return true;
  }
  uint64_t value = 0;
  const char* end = text_.data() + text_.size();
  auto result = std::from_chars(text_.data(), end, value);  // rejects a leading '-'
  if (result.ec != std::errc() || result.ptr != end) return false;
  *out = value;
  return true;
}

bool JsonValue::as_string(std::string* out) const {
  if (type_ != Type::String) return false;
  *out = text_;
  return true;
}

const std::string& JsonValue::string() const {
  DDPM_ASSERT(type_ == Type::String);
  return text_;
}

const std::string& JsonValue::number_text() const {
  DDPM_ASSERT(type_ == Type::Number);
  return text_;
}

const std::vector<JsonValue>& JsonValue::items() const {
  DDPM_ASSERT(type_ == Type::Array);
  return items_;
}

std::vector<JsonValue>& JsonValue::items() {
  DDPM_ASSERT(type_ == Type::Array);
  return items_;
}

const std::vector<JsonValue::Member>& JsonValue::members() const {
  DDPM_ASSERT(type_ == Type::Object);
  return members_;
}

std::vector<JsonValue::Member>& JsonValue::members() {
  DDPM_ASSERT(type_ == Type::Object);
  return members_;
}

size_t JsonValue::size() const {
  if (type_ == Type::Array) return items_.size();
  if (type_ == Type::Object) return members_.size();
  return 0;
}

const JsonValue* JsonValue::find(std::string_view key) const {
  if (type_ != Type::Object) return nullptr;
  for (const Member& member : members_) {
    if (member.first == key) return &member.second;
  }
  return nullptr;
}

JsonValue* JsonValue::find(std::string_view key) {
  return const_cast<JsonValue*>(static_cast<const JsonValue*>(this)->find(key));
}

void JsonValue::push_back(JsonValue value) {
  DDPM_ASSERT(type_ == Type::Array);
  items_.push_back(std::move(value));
}

void JsonValue::set(std::string key, JsonValue value) {
  DDPM_ASSERT(type_ == Type::Object);
  if (JsonValue* existing = find(key)) {
    *existing = std::move(value);
    return;
  }
  members_.emplace_back(std::move(key), std::move(value));
}

// ---------------------------------------------------------------------------------------------------------------
// UTF-8

namespace {

// Length of the well-formed UTF-8 sequence starting at p (RFC 3629: no overlongs, no surrogates, nothing above
// U+10FFFF), or 0 if the bytes there are not one.
size_t utf8_sequence_length(const unsigned char* p, size_t available) {
  const unsigned char lead = p[0];
  if (lead < 0x80) return 1;
  size_t length;
  unsigned char second_min = 0x80, second_max = 0xbf;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead == 0xe0) second_min = 0xa0;  // overlong
    if (lead == 0xed) second_max = 0x9f;  // UTF-16 surrogates
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead == 0xf0) second_min = 0x90;  // overlong
    if (lead == 0xf4) second_max = 0x8f;  // above U+10FFFF
  } else {
    return 0;
  }
  if (available < length) return 0;
  if (p[1] < second_min || p[1] > second_max) return 0;
  for (size_t i = 2; i < length; ++i) {
    if (p[i] < 0x80 || p[i] > 0xbf) return 0;
  }
  return length;
}

void append_utf8(uint32_t code_point, std::string* out) {
  if (code_point < 0x80) {
    out->push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (code_point >> 6)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  } else if (code_point < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (code_point >> 12)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (code_point >> 18)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  }
}

// Keys and characters quoted in error messages must not smuggle control bytes or megabytes into a one-line message.
std::string printable(std::string_view text) {
  constexpr size_t kMaxShown = 60;
  std::string shown;
  for (size_t i = 0; i < text.size() && i < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    shown.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  if (text.size() > kMaxShown) shown += "...";
  return shown;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Parser

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  Status parse_document(JsonValue* out) {
    if (text_.size() >= 3 && text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;
    DDPM_TRY(parse_value(out, 0));
    skip_whitespace();
    if (pos_ != text_.size()) return fail(pos_, "unexpected %s after the JSON value", describe(pos_).c_str());
    return Status();
  }

 private:
  Status fail(size_t at, const char* format, ...) __attribute__((format(printf, 3, 4))) {
    size_t line = 1, column = 1;
    for (size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    char problem[256];
    va_list args;
    va_start(args, format);
    std::vsnprintf(problem, sizeof problem, format, args);
    va_end(args);
    return errorf("invalid JSON at line %zu, column %zu: %s", line, column, problem);
  }

  std::string describe(size_t at) const {
    if (at >= text_.size()) return "end of input";
    const unsigned char c = static_cast<unsigned char>(text_[at]);
    char buffer[32];
    if (c >= 0x20 && c < 0x7f) {
      std::snprintf(buffer, sizeof buffer, "character '%c'", c);
    } else {
      std::snprintf(buffer, sizeof buffer, "byte 0x%02x", c);
    }
    return buffer;
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  void skip_whitespace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  Status parse_value(JsonValue* out, int depth) {
    skip_whitespace();
    if (at_end()) return fail(pos_, "unexpected end of input, expected a value");
    const char c = peek();
    if (c == '{' || c == '[') {
      if (depth >= kJsonMaxDepth) return fail(pos_, "nesting deeper than %d levels", kJsonMaxDepth);
      return c == '{' ? parse_object(out, depth + 1) : parse_array(out, depth + 1);
    }
    if (c == '"') {
      std::string text;
      DDPM_TRY(parse_string(&text));
      *out = JsonValue::make_string(std::move(text));
      return Status();
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(out);
    if (c == 't') return parse_literal("true", JsonValue::make_bool(true), out);
    if (c == 'f') return parse_literal("false", JsonValue::make_bool(false), out);
    if (c == 'n') return parse_literal("null", JsonValue(), out);
    return fail(pos_, "unexpected %s, expected a value", describe(pos_).c_str());
  }

  Status parse_literal(std::string_view word, JsonValue value, JsonValue* out) {
    if (text_.substr(pos_, word.size()) != word) {
      return fail(pos_, "invalid literal, expected '%.*s'", static_cast<int>(word.size()), word.data());
    }
    pos_ += word.size();
    *out = std::move(value);
    return Status();
  }

  Status parse_array(JsonValue* out, int depth) {
    *out = JsonValue::make_array();
    ++pos_;  // '['
    skip_whitespace();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return Status();
    }
    std::vector<JsonValue>& items = out->items();
    for (;;) {
      items.emplace_back();
      DDPM_TRY(parse_value(&items.back(), depth));
      skip_whitespace();
      if (at_end()) return fail(pos_, "unexpected end of input, expected ',' or ']'");
      if (peek() == ']') {
        ++pos_;
        return Status();
      }
      if (peek() != ',') return fail(pos_, "unexpected %s, expected ',' or ']'", describe(pos_).c_str());
      ++pos_;
      skip_whitespace();
      if (!at_end() && peek() == ']') return fail(pos_, "trailing comma in array");
    }
  }

  Status parse_object(JsonValue* out, int depth) {
    *out = JsonValue::make_object();
    ++pos_;  // '{'
    skip_whitespace();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return Status();
    }
    std::vector<JsonValue::Member>& members = out->members();
    std::vector<size_t> key_positions;
    for (;;) {
      skip_whitespace();
      if (at_end()) return fail(pos_, "unexpected end of input, expected a string key");
      if (peek() != '"') return fail(pos_, "unexpected %s, expected a string key", describe(pos_).c_str());
      key_positions.push_back(pos_);
      members.emplace_back();
      DDPM_TRY(parse_string(&members.back().first));
      skip_whitespace();
      if (at_end() || peek() != ':') return fail(pos_, "unexpected %s, expected ':'", describe(pos_).c_str());
      ++pos_;
      DDPM_TRY(parse_value(&members.back().second, depth));
      skip_whitespace();
      if (at_end()) return fail(pos_, "unexpected end of input, expected ',' or '}'");
      if (peek() == '}') {
        ++pos_;
        break;
      }
      if (peek() != ',') return fail(pos_, "unexpected %s, expected ',' or '}'", describe(pos_).c_str());
      ++pos_;
      skip_whitespace();
      if (!at_end() && peek() == '}') return fail(pos_, "trailing comma in object");
    }
    return check_duplicate_keys(members, key_positions);
  }

  // Sorting indices instead of probing a set per key keeps hostile objects with millions of keys at n log n.
  Status check_duplicate_keys(const std::vector<JsonValue::Member>& members,
                              const std::vector<size_t>& key_positions) {
    if (members.size() < 2) return Status();
    std::vector<size_t> order(members.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      int c = members[a].first.compare(members[b].first);
      return c != 0 ? c < 0 : a < b;
    });
    for (size_t i = 1; i < order.size(); ++i) {
      if (members[order[i]].first == members[order[i - 1]].first) {
        return fail(key_positions[order[i]], "duplicate key \"%s\"", printable(members[order[i]].first).c_str());
      }
    }
    return Status();
  }

  static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // Reads "\uXXXX" at pos_ (pointing at the backslash).
  Status parse_u_escape(uint32_t* unit) {
    if (text_.size() - pos_ < 6) return fail(pos_, "truncated \\u escape");
    uint32_t value = 0;
    for (size_t i = 2; i < 6; ++i) {
      const int digit = hex_value(text_[pos_ + i]);
      if (digit < 0) return fail(pos_ + i, "invalid hex digit in \\u escape");
      value = value * 16 + static_cast<uint32_t>(digit);
    }
    pos_ += 6;
    *unit = value;
    return Status();
  }

  Status parse_string(std::string* out) {
    const size_t open_quote = pos_;
    ++pos_;
    for (;;) {
      // Copy runs of plain ASCII in one go: most keys and values are nothing else.
      const size_t run_start = pos_;
      while (pos_ < text_.size()) {
        const unsigned char c = static_cast<unsigned char>(text_[pos_]);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++pos_;
      }
      out->append(text_.data() + run_start, pos_ - run_start);
      if (at_end()) return fail(open_quote, "unterminated string");
      const unsigned char c = static_cast<unsigned char>(peek());
      if (c == '"') {
        ++pos_;
        return Status();
      }
      if (c < 0x20) return fail(pos_, "unescaped control character 0x%02x in string", c);
      if (c >= 0x80) {
        const size_t length = utf8_sequence_length(reinterpret_cast<const unsigned char*>(text_.data()) + pos_,
                                                   text_.size() - pos_);
        if (length == 0) return fail(pos_, "invalid UTF-8 in string");
        out->append(text_.data() + pos_, length);
        pos_ += length;
        continue;
      }
      DDPM_TRY(parse_escape(out));
    }
  }

  Status parse_escape(std::string* out) {
    const size_t backslash = pos_;
    if (text_.size() - pos_ < 2) return fail(pos_, "unterminated escape sequence");
    const char kind = text_[pos_ + 1];
    char simple = 0;
    switch (kind) {
      case '"': simple = '"'; break;
      case '\\': simple = '\\'; break;
      case '/': simple = '/'; break;
      case 'b': simple = '\b'; break;
      case 'f': simple = '\f'; break;
      case 'n': simple = '\n'; break;
      case 'r': simple = '\r'; break;
      case 't': simple = '\t'; break;
      case 'u': break;
      default: return fail(pos_, "invalid escape sequence '\\%s'", printable(text_.substr(pos_ + 1, 1)).c_str());
    }
    if (kind != 'u') {
      out->push_back(simple);
      pos_ += 2;
      return Status();
    }
    uint32_t unit = 0;
    DDPM_TRY(parse_u_escape(&unit));
    if (unit >= 0xdc00 && unit <= 0xdfff) return fail(backslash, "lone low surrogate \\u%04x", unit);
    if (unit >= 0xd800 && unit <= 0xdbff) {
      if (text_.size() - pos_ < 2 || text_[pos_] != '\\' || text_[pos_ + 1] != 'u') {
        return fail(backslash, "lone high surrogate \\u%04x", unit);
      }
      const size_t second = pos_;
      uint32_t low = 0;
      DDPM_TRY(parse_u_escape(&low));
      if (low < 0xdc00 || low > 0xdfff) {
        return fail(second, "high surrogate \\u%04x followed by \\u%04x instead of a low surrogate", unit, low);
      }
      unit = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
    }
    append_utf8(unit, out);
    return Status();
  }

  Status parse_number(JsonValue* out) {
    const size_t start = pos_;
    auto digit_at = [&](size_t i) { return i < text_.size() && text_[i] >= '0' && text_[i] <= '9'; };
    if (peek() == '-') ++pos_;
    if (!digit_at(pos_)) return fail(pos_, "expected a digit after '-'");
    if (text_[pos_] == '0') {
      ++pos_;
      if (digit_at(pos_)) return fail(start, "leading zeros are not allowed in numbers");
    } else {
      while (digit_at(pos_)) ++pos_;
    }
    if (pos_ < text_.size() && text_[pos_] == '.') {
      ++pos_;
      if (!digit_at(pos_)) return fail(pos_, "expected a digit after the decimal point");
      while (digit_at(pos_)) ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (!digit_at(pos_)) return fail(pos_, "expected a digit in the exponent");
      while (digit_at(pos_)) ++pos_;
    }
    const std::string_view literal = text_.substr(start, pos_ - start);
    double value = 0.0;
    auto result = std::from_chars(literal.data(), literal.data() + literal.size(), value);
    if (result.ec == std::errc::result_out_of_range) {
      if (decimal_magnitude(literal) > 0) return fail(start, "number out of range: %s", printable(literal).c_str());
      value = literal[0] == '-' ? -0.0 : 0.0;  // underflow: IEEE would round it to zero too
    } else if (result.ec != std::errc() || result.ptr != literal.data() + literal.size()) {
      return fail(start, "invalid number");
    }
    // Keep the literal as written so that integers beyond 2^53 stay exact.
    *out = JsonValue();
    out->type_ = JsonValue::Type::Number;
    out->number_ = value;
    out->text_.assign(literal.data(), literal.size());
    return Status();
  }

  // Roughly log10 of a grammar-checked, non-zero literal: only used to tell overflow from underflow, which
  // from_chars reports alike.
  static int64_t decimal_magnitude(std::string_view literal) {
    size_t i = literal[0] == '-' ? 1 : 0;
    int64_t integer_digits = 0;
    int64_t leading_fraction_zeros = 0;
    bool seen_nonzero = false;
    while (i < literal.size() && literal[i] >= '0' && literal[i] <= '9') {
      if (literal[i] != '0') seen_nonzero = true;
      if (seen_nonzero) ++integer_digits;
      ++i;
    }
    if (i < literal.size() && literal[i] == '.') {
      ++i;
      while (i < literal.size() && literal[i] >= '0' && literal[i] <= '9') {
        if (!seen_nonzero) {
          if (literal[i] != '0') {
            seen_nonzero = true;
          } else {
            ++leading_fraction_zeros;
          }
        }
        ++i;
      }
    }
    int64_t exponent = 0;
    if (i < literal.size() && (literal[i] == 'e' || literal[i] == 'E')) {
      ++i;
      bool negative = false;
      if (literal[i] == '+' || literal[i] == '-') negative = literal[i++] == '-';
      for (; i < literal.size(); ++i) {
        if (exponent < 1000000000) exponent = exponent * 10 + (literal[i] - '0');
      }
      if (negative) exponent = -exponent;
    }
    return exponent + (integer_digits > 0 ? integer_digits : -leading_fraction_zeros);
  }

  std::string_view text_;
  size_t pos_ = 0;
};

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Writer

void write_string(const std::string& text, std::string* out) {
  out->push_back('"');
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = bytes[i];
    if (c >= 0x80) {
      const size_t length = utf8_sequence_length(bytes + i, text.size() - i);
      if (length == 0) {
        out->append("\xEF\xBF\xBD");
        ++i;
      } else {
        out->append(text, i, length);
        i += length;
      }
      continue;
    }
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\b': out->append("\\b"); break;
      case '\f': out->append("\\f"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          char escape[8];
          std::snprintf(escape, sizeof escape, "\\u%04x", c);
          out->append(escape);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out->push_back('"');
}

void newline_and_indent(int indent, std::string* out) {
  out->push_back('\n');
  out->append(static_cast<size_t>(indent) * 2, ' ');
}

void write_value(const JsonValue& value, bool pretty, int indent, std::string* out) {
  switch (value.type()) {
    case JsonValue::Type::Null: out->append("null"); return;
    case JsonValue::Type::Bool: {
      bool b = false;
      value.as_bool(&b);
      out->append(b ? "true" : "false");
      return;
    }
    case JsonValue::Type::Number: out->append(value.number_text()); return;
    case JsonValue::Type::String: write_string(value.string(), out); return;
    case JsonValue::Type::Array: {
      const auto& items = value.items();
      out->push_back('[');
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out->push_back(',');
        if (pretty) newline_and_indent(indent + 1, out);
        write_value(items[i], pretty, indent + 1, out);
      }
      if (pretty && !items.empty()) newline_and_indent(indent, out);
      out->push_back(']');
      return;
    }
    case JsonValue::Type::Object: {
      const auto& members = value.members();
      out->push_back('{');
      for (size_t i = 0; i < members.size(); ++i) {
        if (i > 0) out->push_back(',');
        if (pretty) newline_and_indent(indent + 1, out);
        write_string(members[i].first, out);
        out->append(pretty ? ": " : ":");
        write_value(members[i].second, pretty, indent + 1, out);
      }
      if (pretty && !members.empty()) newline_and_indent(indent, out);
      out->push_back('}');
      return;
    }
  }
}

}  // namespace

Status parse_json(std::string_view text, JsonValue* out) {
  // A hostile document can ask for far more nodes than its size suggests fits in memory; fail instead of throwing.
  try {
    JsonValue value;
    DDPM_TRY(JsonParser(text).parse_document(&value));
    *out = std::move(value);
    return Status();
  } catch (const std::bad_alloc&) {
    return errorf("out of memory parsing %zu bytes of JSON", text.size());
  }
}

std::string to_json(const JsonValue& value, bool pretty) {
  std::string out;
  write_value(value, pretty, 0, &out);
  return out;
}

std::string json_number_text(double value) {
  if (!std::isfinite(value)) return "null";
  char buffer[32];
  auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  DDPM_ASSERT(result.ec == std::errc());
  return std::string(buffer, result.ptr);
}

Status read_json_file(const std::string& path, JsonValue* out) {
  MappedFile file;
  DDPM_TRY(file.open(path, 16 * 1024 * 1024));  // a config is kilobytes; anything longer is not one
  return parse_json(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()), out).with_context(path);
}

}  // namespace ddpm
