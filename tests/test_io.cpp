// Tests for the I/O foundation: f16/bf16 conversion, JSON, mapped files, atomic output, safetensors, the loader.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "io/tensor_loader.h"

using namespace ddpm;

namespace {

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A scratch directory removed (with its files) at the end of each test.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/ddpm_io_test_XXXXXX";
    const char* made = mkdtemp(pattern);
    REQUIRE(made != nullptr);
    path_ = made;
  }
  ~TempDir() {
    std::error_code ignored;  // sub-directories and links included
    std::filesystem::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> list() const {
    std::vector<std::string> names;
    std::string command = "ls -A " + path_;
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) return names;
    char line[4096];
    while (std::fgets(line, sizeof line, pipe) != nullptr) {
      std::string name(line);
      while (!name.empty() && name.back() == '\n') name.pop_back();
      if (!name.empty()) names.push_back(name);
    }
    pclose(pipe);
    return names;
  }

 private:
  std::string path_;
};

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool file_exists(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0;
}

// ---- f16 / bf16 oracles, computed independently of core/half.h with plain double arithmetic ----

double f16_value(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0x1f) return (h & 0x8000) ? -HUGE_VAL : HUGE_VAL;  // callers skip NaNs
  double magnitude = exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
  return (h & 0x8000) ? -magnitude : magnitude;
}

// Round-to-nearest-even to f16 by comparing the two neighbouring f16 values.
uint16_t f16_oracle(float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 65520.0) return sign | 0x7c00;
  // Largest magnitude pattern whose value is <= a (patterns 0..0x7bff increase monotonically).
  uint16_t low = 0, high = 0x7bff;
  while (low < high) {
    uint16_t mid = static_cast<uint16_t>((low + high + 1) / 2);
    if (f16_value(mid) <= a) low = mid; else high = static_cast<uint16_t>(mid - 1);
  }
  if (f16_value(low) == a) return sign | low;
  const uint16_t up = static_cast<uint16_t>(low + 1);  // 0x7c00 (infinity) is never chosen: a < 65520
  const double below = a - f16_value(low), above = f16_value(up) - a;
  if (below < above) return sign | low;
  if (above < below) return sign | up;
  return sign | ((low & 1) ? up : low);
}

uint16_t bf16_oracle(float x) {
  const uint32_t b = bits_of(x);
  const uint32_t truncated = b & 0xffff0000u;
  const double a = std::fabs(static_cast<double>(x));
  const double low = std::fabs(static_cast<double>(float_of(truncated)));
  const uint32_t up_bits = truncated + 0x10000u;  // next magnitude (may be infinity)
  const double up = (up_bits & 0x7fffffffu) >= 0x7f800000u ? std::ldexp(1.0, 128) : std::fabs(double(float_of(up_bits)));
  if (a - low < up - a) return static_cast<uint16_t>(truncated >> 16);
  if (up - a < a - low) return static_cast<uint16_t>(up_bits >> 16);
  return static_cast<uint16_t>(((truncated >> 16) & 1) ? up_bits >> 16 : truncated >> 16);
}

}  // namespace

// =================================================================================================================
// f16 / bf16

TEST_CASE("f16 to f32 to f16 is the identity on every non-NaN f16", "[io][half]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t half = static_cast<uint16_t>(h);
    const float f = f16_to_f32(half);
    const bool is_nan = ((half & 0x7c00) == 0x7c00) && (half & 0x3ff);
    if (is_nan) {
      REQUIRE(std::isnan(f));
      REQUIRE(std::signbit(f) == bool(half & 0x8000));
      const uint16_t back = f32_to_f16(f);
      REQUIRE((back & 0x7c00) == 0x7c00);
      REQUIRE((back & 0x3ff) != 0);
    } else {
      REQUIRE(static_cast<double>(f) == f16_value(half));
      REQUIRE(f32_to_f16(f) == half);
    }
  }
}

TEST_CASE("f16 known values", "[io][half]") {
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  CHECK(f16_to_f32(0xc000) == -2.0f);
  CHECK(f16_to_f32(0x7bff) == 65504.0f);
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_to_f32(0x03ff) == 1023 * std::ldexp(1.0f, -24));
  CHECK(f16_to_f32(0x0400) == std::ldexp(1.0f, -14));
  CHECK(std::isinf(f16_to_f32(0x7c00)));
  CHECK(f16_to_f32(0xfc00) < 0);
  CHECK(bits_of(f16_to_f32(0x8000)) == 0x80000000u);
}

TEST_CASE("f32 to f16 rounds to nearest even", "[io][half]") {
  const float ulp_at_one = std::ldexp(1.0f, -10);
  CHECK(f32_to_f16(1.0f + ulp_at_one / 2) == 0x3c00);                      // tie, even is down
  CHECK(f32_to_f16(1.0f + 3 * ulp_at_one / 2) == 0x3c02);                  // tie, even is up
  CHECK(f32_to_f16(1.0f + ulp_at_one / 2 + std::ldexp(1.0f, -23)) == 0x3c01);  // just above the tie
  CHECK(f32_to_f16(1.0f + ulp_at_one / 2 - std::ldexp(1.0f, -23)) == 0x3c00);  // just below the tie
  CHECK(f32_to_f16(65504.0f) == 0x7bff);
  CHECK(f32_to_f16(65519.996f) == 0x7bff);
  CHECK(f32_to_f16(65520.0f) == 0x7c00);  // tie between 65504 and 65536 goes to "even" infinity
  CHECK(f32_to_f16(-1e10f) == 0xfc00);
  CHECK(f32_to_f16(std::numeric_limits<float>::infinity()) == 0x7c00);
  // Subnormal results and their ties.
  const float unit = std::ldexp(1.0f, -24);
  CHECK(f32_to_f16(unit / 2) == 0x0000);
  CHECK(f32_to_f16(std::nextafter(unit / 2, 1.0f)) == 0x0001);
  CHECK(f32_to_f16(1.5f * unit) == 0x0002);
  CHECK(f32_to_f16(2.5f * unit) == 0x0002);
  CHECK(f32_to_f16(-2.5f * unit) == 0x8002);
  CHECK(f32_to_f16(std::ldexp(1.0f, -14) - unit / 2) == 0x0400);  // tie between 0x3ff and the smallest normal
  CHECK(f32_to_f16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(f32_to_f16(-0.0f) == 0x8000);
  // A signalling NaN whose payload lives only in low bits must not become infinity.
  const uint16_t nan = f32_to_f16(float_of(0x7f800001u));
  CHECK((nan & 0x7c00) == 0x7c00);
  CHECK((nan & 0x3ff) != 0);
  CHECK((f32_to_f16(float_of(0xffc00000u)) & 0x8000) != 0);
}

TEST_CASE("f32 to f16 agrees with a nearest-value oracle across the f32 range", "[io][half]") {
  // Every 4099th bit pattern (about a million values, all exponents) plus dense neighbourhoods of f16 midpoints.
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 4099) {
    const float x = float_of(static_cast<uint32_t>(b));
    if (std::isnan(x)) continue;
    INFO("bits " << b);
    REQUIRE(f32_to_f16(x) == f16_oracle(x));
  }
  for (uint32_t h = 0; h < 0x7c00; h += 7) {
    const double mid = (f16_value(static_cast<uint16_t>(h)) + f16_value(static_cast<uint16_t>(h + 1))) / 2;
    const uint32_t center = bits_of(static_cast<float>(mid));
    for (uint32_t d = 0; d < 5; ++d) {
      for (uint32_t b : {center - d, center + d}) {
        const float x = float_of(b);
        INFO("bits " << b);
        REQUIRE(f32_to_f16(x) == f16_oracle(x));
        REQUIRE(f32_to_f16(-x) == f16_oracle(-x));
      }
    }
  }
}

TEST_CASE("bf16 conversions", "[io][half]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    REQUIRE(bits_of(f) == h << 16);
    if (!std::isnan(f)) REQUIRE(f32_to_bf16(f) == h);
  }
  CHECK(f32_to_bf16(float_of(0x3f808000u)) == 0x3f80);  // tie, even down
  CHECK(f32_to_bf16(float_of(0x3f818000u)) == 0x3f82);  // tie, even up
  CHECK(f32_to_bf16(float_of(0x3f808001u)) == 0x3f81);
  CHECK(f32_to_bf16(float_of(0x7f7fffffu)) == 0x7f80);  // rounds up to infinity
  CHECK(f32_to_bf16(float_of(0xff7fffffu)) == 0xff80);
  const uint16_t nan = f32_to_bf16(float_of(0x7f800001u));
  CHECK((nan & 0x7f80) == 0x7f80);
  CHECK((nan & 0x7f) != 0);
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 4099) {
    const float x = float_of(static_cast<uint32_t>(b));
    if (std::isnan(x)) continue;
    INFO("bits " << b);
    REQUIRE(f32_to_bf16(x) == bf16_oracle(x));
  }
}

// =================================================================================================================
// JSON

TEST_CASE("JSON parses a document into a tree that keeps key order", "[io][json]") {
  JsonValue doc;
  const char* text = R"( {"b": [1, -2.5, 3e2, true, false, null], "a": {"nested": "x"}, "": "empty key"} )";
  REQUIRE(parse_json(text, &doc).ok());
  REQUIRE(doc.is_object());
  REQUIRE(doc.size() == 3);
  CHECK(doc.members()[0].first == "b");
  CHECK(doc.members()[1].first == "a");
  CHECK(doc.members()[2].first == "");
  const JsonValue* b = doc.find("b");
  REQUIRE(b != nullptr);
  REQUIRE(b->is_array());
  REQUIRE(b->size() == 6);
  int64_t i = 0;
  double d = 0;
  bool flag = false;
  CHECK(b->items()[0].as_int64(&i));
  CHECK(i == 1);
  CHECK(b->items()[1].as_double(&d));
  CHECK(d == -2.5);
  CHECK_FALSE(b->items()[1].as_int64(&i));
  CHECK(b->items()[2].as_double(&d));
  CHECK(d == 300.0);
  CHECK_FALSE(b->items()[2].as_int64(&i));  // written as a float, not an integer
  CHECK(b->items()[3].as_bool(&flag));
  CHECK(flag);
  CHECK(b->items()[5].is_null());
  CHECK_FALSE(b->items()[5].as_double(&d));
  REQUIRE(doc.find("a") != nullptr);
  REQUIRE(doc.find("a")->find("nested") != nullptr);
  CHECK(doc.find("a")->find("nested")->string() == "x");
  CHECK(doc.find("missing") == nullptr);
  CHECK(b->find("x") == nullptr);  // not an object
}

TEST_CASE("JSON integers are exact to 64 bits", "[io][json]") {
  JsonValue v;
  int64_t i = 0;
  uint64_t u = 0;
  REQUIRE(parse_json("9223372036854775807", &v).ok());
  CHECK(v.as_int64(&i));
  CHECK(i == std::numeric_limits<int64_t>::max());
  REQUIRE(parse_json("-9223372036854775808", &v).ok());
  CHECK(v.as_int64(&i));
  CHECK(i == std::numeric_limits<int64_t>::min());
  CHECK_FALSE(v.as_uint64(&u));
  REQUIRE(parse_json("9223372036854775809", &v).ok());
  CHECK_FALSE(v.as_int64(&i));
  CHECK(v.as_uint64(&u));
  CHECK(u == 9223372036854775809ull);
  REQUIRE(parse_json("18446744073709551615", &v).ok());
  CHECK(v.as_uint64(&u));
  CHECK(u == std::numeric_limits<uint64_t>::max());
  REQUIRE(parse_json("18446744073709551616", &v).ok());
  CHECK_FALSE(v.as_uint64(&u));
  double d = 0;
  CHECK(v.as_double(&d));
  CHECK(d == 18446744073709551616.0);
  REQUIRE(parse_json("-0", &v).ok());
  CHECK(v.as_int64(&i));
  CHECK(i == 0);
  REQUIRE(parse_json("1.0", &v).ok());
  CHECK_FALSE(v.as_int64(&i));
  CHECK(v.as_integral(&i));
  CHECK(i == 1);
  // Float-written integers: only integral values a double holds exactly; huge ones are refused, never cast (UB).
  for (const char* refused : {"1.5", "1e300", "-1e300", "9007199254740994.0", "1e19"}) {
    REQUIRE(parse_json(refused, &v).ok());
    CHECK_FALSE(v.as_integral(&i));
  }
  REQUIRE(parse_json("-3e2", &v).ok());
  CHECK(v.as_integral(&i));
  CHECK(i == -300);
  // The literal survives a round trip, so 2^63+1 is not rounded to 2^63.
  REQUIRE(parse_json("[9223372036854775809]", &v).ok());
  CHECK(to_json(v, false) == "[9223372036854775809]");
}

TEST_CASE("JSON strings: escapes, surrogate pairs, UTF-8", "[io][json]") {
  JsonValue v;
  REQUIRE(parse_json(R"("\"\\\/\b\f\n\r\t\u0041\u00e9\u20AC\ud83d\ude00")", &v).ok());
  CHECK(v.string() == "\"\\/\b\f\n\r\tA\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  REQUIRE(parse_json(R"("a\u0000b")", &v).ok());
  CHECK(v.string() == std::string("a\0b", 3));
  REQUIRE(parse_json("\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF\"", &v).ok());
  CHECK(v.string() == "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF");
  REQUIRE(parse_json("\"\\uDBFF\\uDFFF\"", &v).ok());
  CHECK(v.string() == "\xF4\x8F\xBF\xBF");
}

TEST_CASE("JSON rejects malformed input with a located error", "[io][json]") {
  const std::vector<std::string> bad = {
      "", " ", "[1,]", "{\"a\":1,}", "[,1]", "{,}", "[01]", "-01", "00", "-", "1.", ".5", "1e", "1e+", "+1",
      "0x10", "NaN", "Infinity", "-Infinity", "[1 2]", "{\"a\" 1}", "{a:1}", "{'a':1}", "['a']", "\"\\x\"",
      "\"\\u12\"", "\"\\u12G4\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud800x\"",
      "\"\\udbff\\ud800\"", "\"abc", "\"a\tb\"", "\"\x01\"", "\"\x7f\xff\"", "\"\xC0\xAF\"", "\"\xE0\x80\xAF\"",
      "\"\xED\xA0\x80\"", "\"\xF4\x90\x80\x80\"", "\"\xE2\x82\"", "\"\xF0\x9F\x98\"", "\"\x80\"", "\"\xF5\x80\x80\x80\"",
      "1e400", "-1e400", "1e99999999999999999999", "[1]x", "{}{}", "1 2", "tru", "nul", "truex", "True", "NULL",
      "[", "{", "{\"a\"", "{\"a\":", "{\"a\":1", "[1", "// c\n1", "/*c*/1", "1 /*c*/", "\f1", "\xC2\xA0" "1",
      "{\"a\":1,\"a\":2}", "{\"a\":{\"x\":1,\"y\":2,\"x\":3}}", "[\"\\", std::string("[1,\0]", 5),
      std::string("\"a\0\"", 4)};
  for (const std::string& text : bad) {
    JsonValue v = JsonValue::make_string("untouched");
    Status status = parse_json(text, &v);
    INFO("input: " << text);
    REQUIRE_FALSE(status.ok());
    CHECK(contains(status.message(), "invalid JSON at line "));
    CHECK(v.is_string());  // output untouched on failure
  }
}

TEST_CASE("JSON error messages name line, column and problem", "[io][json]") {
  JsonValue v;
  Status status = parse_json("{\n  \"a\": 1,\n  \"b\": tru\n}", &v);
  REQUIRE_FALSE(status.ok());
  CHECK(contains(status.message(), "line 3, column 8"));
  status = parse_json("{\"key\": 1,\n \"key\": 2}", &v);
  REQUIRE_FALSE(status.ok());
  CHECK(contains(status.message(), "duplicate key \"key\""));
  CHECK(contains(status.message(), "line 2, column 2"));
  status = parse_json("[1,2,]", &v);
  CHECK(contains(status.message(), "trailing comma"));
  status = parse_json("[007]", &v);
  CHECK(contains(status.message(), "leading zero"));
  status = parse_json("\"\\ud834\"", &v);
  CHECK(contains(status.message(), "lone high surrogate"));
  status = parse_json("1e400", &v);
  CHECK(contains(status.message(), "out of range"));
  status = parse_json("[] x", &v);
  CHECK(contains(status.message(), "column 4"));
  CHECK(contains(status.message(), "'x'"));
}

TEST_CASE("JSON nesting is capped without exhausting the stack", "[io][json]") {
  JsonValue v;
  const std::string ok_depth = std::string(kJsonMaxDepth, '[') + std::string(kJsonMaxDepth, ']');
  CHECK(parse_json(ok_depth, &v).ok());
  const std::string too_deep = std::string(kJsonMaxDepth + 1, '[') + std::string(kJsonMaxDepth + 1, ']');
  Status status = parse_json(too_deep, &v);
  REQUIRE_FALSE(status.ok());
  CHECK(contains(status.message(), "nesting"));
  CHECK_FALSE(parse_json(std::string(1000000, '['), &v).ok());
  std::string objects;
  for (int i = 0; i < 200000; ++i) objects += "{\"a\":";
  CHECK_FALSE(parse_json(objects, &v).ok());
  std::string mixed;
  for (int i = 0; i < kJsonMaxDepth / 2; ++i) mixed += "{\"k\":[";
  mixed += "0";
  for (int i = 0; i < kJsonMaxDepth / 2; ++i) mixed += "]}";
  CHECK(parse_json(mixed, &v).ok());
}

TEST_CASE("JSON edge numbers, whitespace and byte order mark", "[io][json]") {
  JsonValue v;
  double d = 1;
  REQUIRE(parse_json("1e-400", &v).ok());  // underflow is not an error: it is zero
  CHECK(v.as_double(&d));
  CHECK(d == 0.0);
  REQUIRE(parse_json("-1e-400", &v).ok());
  CHECK(v.as_double(&d));
  CHECK((d == 0.0 && std::signbit(d)));
  REQUIRE(parse_json("0.00000000000000000000000000000000000000000000000000000000001e-400", &v).ok());
  // Magnitude, not the exponent's sign, decides between underflow (zero) and overflow (error).
  REQUIRE(parse_json("1" + std::string(400, '0') + "e-800", &v).ok());
  CHECK(v.as_double(&d));
  CHECK(d == 0.0);
  CHECK_FALSE(parse_json("0." + std::string(400, '0') + "1e800", &v).ok());
  CHECK_FALSE(parse_json("1" + std::string(400, '0'), &v).ok());
  REQUIRE(parse_json("1.7976931348623157e308", &v).ok());
  CHECK(v.as_double(&d));
  CHECK(d == std::numeric_limits<double>::max());
  REQUIRE(parse_json("4.9e-324", &v).ok());
  CHECK(v.as_double(&d));
  CHECK(d == std::numeric_limits<double>::denorm_min());
  REQUIRE(parse_json("0E+2", &v).ok());
  REQUIRE(parse_json(" \t\r\n [ \t1 \r\n, 2 ] \n", &v).ok());
  CHECK(v.size() == 2);
  REQUIRE(parse_json("\xEF\xBB\xBF{}", &v).ok());
  CHECK(v.is_object());
  CHECK_FALSE(parse_json("\xEF\xBB\xBF", &v).ok());
}

TEST_CASE("JSON serializer writes escaped compact and pretty forms", "[io][json]") {
  JsonValue doc = JsonValue::make_object();
  doc.set("name", JsonValue::make_string("a\"b\\c\n\t\x01\x1f/\xC3\xA9"));
  JsonValue list = JsonValue::make_array();
  list.push_back(JsonValue::make_int(-3));
  list.push_back(JsonValue::make_number(0.1));
  list.push_back(JsonValue::make_bool(false));
  list.push_back(JsonValue());
  list.push_back(JsonValue::make_array());
  list.push_back(JsonValue::make_object());
  doc.set("list", list);
  doc.set("big", JsonValue::make_uint(18446744073709551615ull));
  doc.set("name", JsonValue::make_string("replaced keeps position \"\\\n\t\x01\x1f/\xC3\xA9"));
  CHECK(to_json(doc, false) ==
        "{\"name\":\"replaced keeps position \\\"\\\\\\n\\t\\u0001\\u001f/\xC3\xA9\",\"list\":[-3,0.1,false,null,[],{}],"
        "\"big\":18446744073709551615}");
  CHECK(to_json(doc, true) ==
        "{\n  \"name\": \"replaced keeps position \\\"\\\\\\n\\t\\u0001\\u001f/\xC3\xA9\",\n  \"list\": [\n    -3,\n"
        "    0.1,\n    false,\n    null,\n    [],\n    {}\n  ],\n  \"big\": 18446744073709551615\n}");
  // Whatever a caller stored, the output stays valid JSON.
  JsonValue odd = JsonValue::make_array();
  odd.push_back(JsonValue::make_string("\xFF\xC3"));
  odd.push_back(JsonValue::make_number(std::nan("")));
  odd.push_back(JsonValue::make_number(-std::numeric_limits<double>::infinity()));
  const std::string written = to_json(odd, false);
  CHECK(written == "[\"\xEF\xBF\xBD\xEF\xBF\xBD\",null,null]");
  JsonValue reparsed;
  CHECK(parse_json(written, &reparsed).ok());
}

TEST_CASE("JSON round trips documents and doubles exactly", "[io][json]") {
  const char* text = R"({"a":[1,2.5,-0,1e+300,"\u00e9\ud83d\ude00\u0000"],"b":{"c":null,"d":true},"e":""})";
  JsonValue doc, again;
  REQUIRE(parse_json(text, &doc).ok());
  const std::string compact = to_json(doc, false);
  REQUIRE(parse_json(compact, &again).ok());
  CHECK(to_json(again, false) == compact);
  REQUIRE(parse_json(to_json(doc, true), &again).ok());
  CHECK(to_json(again, false) == compact);

  CHECK(json_number_text(0.1) == "0.1");
  CHECK(json_number_text(1.0 / 3.0) == "0.3333333333333333");
  CHECK(json_number_text(-0.0) == "-0");
  CHECK(json_number_text(100.0) == "100");
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    uint64_t bits = rng();
    double value;
    std::memcpy(&value, &bits, 8);
    if (!std::isfinite(value)) continue;
    JsonValue parsed;
    const std::string literal = json_number_text(value);
    REQUIRE(parse_json(literal, &parsed).ok());
    double back = 0;
    REQUIRE(parsed.as_double(&back));
    uint64_t back_bits;
    std::memcpy(&back_bits, &back, 8);
    INFO(literal);
    REQUIRE(back_bits == bits);
  }
}

TEST_CASE("JSON reads a real diffusers config", "[io][json]") {
  MappedFile file;
  REQUIRE(file.open("data/io/micro_config.json").ok());
  JsonValue config;
  REQUIRE(parse_json(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()), &config).ok());
  REQUIRE(config.find("_class_name") != nullptr);
  CHECK(config.find("_class_name")->string() == "UNet2DModel");
  const JsonValue* channels = config.find("block_out_channels");
  REQUIRE(channels != nullptr);
  REQUIRE(channels->size() == 2);
  int64_t c0 = 0, c1 = 0;
  CHECK((channels->items()[0].as_int64(&c0) && channels->items()[1].as_int64(&c1)));
  CHECK(c0 == 8);
  CHECK(c1 == 16);
  double eps = 0;
  CHECK(config.find("norm_eps")->as_double(&eps));
  CHECK(eps == 1e-05);
  CHECK(config.find("attn_norm_num_groups")->is_null());
  bool flip = false;
  CHECK(config.find("flip_sin_to_cos")->as_bool(&flip));
  CHECK(flip);
  CHECK(config.find("up_block_types")->items()[0].string() == "AttnUpBlock2D");
}

// =================================================================================================================
// MappedFile and AtomicFile

TEST_CASE("MappedFile maps files, reads special files and reports errors", "[io][mapped_file]") {
  TempDir dir;
  MappedFile file;
  Status status = file.open(dir.file("does_not_exist.bin"));
  REQUIRE_FALSE(status.ok());
  CHECK(contains(status.message(), "does_not_exist.bin"));
  CHECK(contains(status.message(), "No such file"));
  CHECK_FALSE(file.is_open());

  status = file.open(dir.file(""));
  REQUIRE_FALSE(status.ok());
  CHECK(contains(status.message(), "directory"));

  REQUIRE(write_file_atomically(dir.file("empty"), "", 0).ok());
  REQUIRE(file.open(dir.file("empty")).ok());
  CHECK(file.is_open());
  CHECK(file.size() == 0);
  CHECK(file.data() != nullptr);

  const std::string content = "hello mapped world";
  REQUIRE(write_file_atomically(dir.file("hello"), content.data(), content.size()).ok());
  REQUIRE(file.open(dir.file("hello")).ok());
  CHECK(file.is_mapped());
  REQUIRE(file.size() == content.size());
  CHECK(std::memcmp(file.data(), content.data(), content.size()) == 0);
  CHECK(file.path() == dir.file("hello"));

  MappedFile moved(std::move(file));
  CHECK_FALSE(file.is_open());
  CHECK(moved.size() == content.size());
  CHECK(std::memcmp(moved.data(), content.data(), content.size()) == 0);
  MappedFile assigned;
  assigned = std::move(moved);
  CHECK(std::string(reinterpret_cast<const char*>(assigned.data()), assigned.size()) == content);

  if (file_exists("/proc/self/status")) {  // st_size is 0: exercises the read() fallback
    MappedFile proc;
    REQUIRE(proc.open("/proc/self/status").ok());
    CHECK_FALSE(proc.is_mapped());
    CHECK(proc.size() > 0);
    CHECK(contains(std::string(reinterpret_cast<const char*>(proc.data()), proc.size()), "Name:"));
  }

  MappedFile memory = MappedFile::from_bytes("in-memory", {1, 2, 3});
  CHECK(memory.size() == 3);
  CHECK(memory.data()[2] == 3);
  CHECK(memory.path() == "in-memory");
}

TEST_CASE("release_mapped_pages drops a mapping's pages, which read back the same, and leaves other memory alone",
          "[io][mapped_file]") {
  TempDir dir;
  // Five pages of a known pattern, mapped; the middle pages are released and read again from the file.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::string content(5 * page, '\0');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 7 + 3);
  REQUIRE(write_file_atomically(dir.file("pages"), content.data(), content.size()).ok());
  MappedFile file;
  REQUIRE(file.open(dir.file("pages")).ok());
  REQUIRE(file.is_mapped());
  CHECK(std::memcmp(file.data(), content.data(), content.size()) == 0);  // every page touched
  release_mapped_pages(file.data() + page / 2, 3 * page);
  CHECK(std::memcmp(file.data(), content.data(), content.size()) == 0);
  // Heap memory (anonymous: MADV_DONTNEED would zero it) is never advised, whatever the caller claims.
  std::vector<uint8_t> heap(8 * page, 0x5a);
  release_mapped_pages(heap.data(), heap.size());
  CHECK(std::count(heap.begin(), heap.end(), 0x5a) == static_cast<std::ptrdiff_t>(heap.size()));
}

TEST_CASE("AtomicFile replaces the destination only on commit", "[io][atomic_file]") {
  TempDir dir;
  const std::string target = dir.file("out.bin");
  {
    AtomicFile out;
    REQUIRE(out.open(target).ok());
    REQUIRE(out.write("partial", 7).ok());
    CHECK(file_exists(out.temp_path()));
    CHECK_FALSE(file_exists(target));
  }
  CHECK(dir.list().empty());  // neither the destination nor the temporary remains

  REQUIRE(write_file_atomically(target, "old", 3).ok());
  {
    AtomicFile out;
    REQUIRE(out.open(target).ok());
    REQUIRE(out.write("new contents", 12).ok());
    out.discard();
    CHECK(read_whole_file(target) == "old");
  }
  CHECK(dir.list() == std::vector<std::string>{"out.bin"});

  // Small and large writes across the internal buffer boundary.
  std::string expected;
  AtomicFile out;
  REQUIRE(out.open(target).ok());
  std::mt19937 rng(3);
  for (int i = 0; i < 300; ++i) {
    std::string piece(i % 7 == 0 ? 300000 + rng() % 5000 : rng() % 100, static_cast<char>('a' + i % 26));
    expected += piece;
    REQUIRE(out.write(piece.data(), piece.size()).ok());
  }
  CHECK(out.bytes_written() == expected.size());
  CHECK(read_whole_file(target) == "old");
  REQUIRE(out.commit().ok());
  CHECK(read_whole_file(target) == expected);
  CHECK(dir.list() == std::vector<std::string>{"out.bin"});
  CHECK_FALSE(out.commit().ok());  // already committed
  CHECK_FALSE(out.write("x", 1).ok());

  AtomicFile bad;
  Status status = bad.open(dir.file("no_such_dir/out.ddpm"));
  REQUIRE_FALSE(status.ok());
  CHECK(contains(status.message(), "cannot write " + dir.file("no_such_dir/out.ddpm")));
  CHECK(contains(status.message(), "No such file"));
  CHECK_FALSE(bad.write("x", 1).ok());
  CHECK_FALSE(bad.commit().ok());
}

TEST_CASE("AtomicFile writes what a shell's > would: through links, keeping modes, devices in place",
          "[io][atomic_file]") {
  TempDir dir;
  REQUIRE(mkdir(dir.file("sub").c_str(), 0755) == 0);
  // A link to a file that does not exist yet: the file is created, the link stays a link.
  REQUIRE(symlink("sub/target.bin", dir.file("link.bin").c_str()) == 0);
  REQUIRE(write_file_atomically(dir.file("link.bin"), "one", 3).ok());
  struct stat st;
  REQUIRE(lstat(dir.file("link.bin").c_str(), &st) == 0);
  CHECK(S_ISLNK(st.st_mode));
  CHECK(read_whole_file(dir.file("sub/target.bin")) == "one");
  REQUIRE(write_file_atomically(dir.file("link.bin"), "two", 3).ok());
  REQUIRE(lstat(dir.file("link.bin").c_str(), &st) == 0);
  CHECK(S_ISLNK(st.st_mode));
  CHECK(read_whole_file(dir.file("sub/target.bin")) == "two");
  CHECK(dir.list() == std::vector<std::string>{"link.bin", "sub"});

  // A replaced file keeps its permission bits.
  REQUIRE(chmod(dir.file("sub/target.bin").c_str(), 0600) == 0);
  REQUIRE(write_file_atomically(dir.file("sub/target.bin"), "three", 5).ok());
  REQUIRE(stat(dir.file("sub/target.bin").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);

  // A directory is refused by name, before anything is created.
  Status status = check_can_write(dir.file("sub"));
  CHECK(status.message() == "cannot write " + dir.file("sub") + ": it is a directory");
  AtomicFile into_dir;
  CHECK(into_dir.open(dir.file("sub")).message() == status.message());
  CHECK(check_can_write("").message() == "cannot write a file with an empty name");

  // A device is written in place (a rename would replace /dev/null with a regular file).
  REQUIRE(check_can_write("/dev/null").ok());
  REQUIRE(write_file_atomically("/dev/null", "discarded", 9).ok());
  REQUIRE(stat("/dev/null", &st) == 0);
  CHECK(S_ISCHR(st.st_mode));
  // So is a pipe, named the way /dev/stdout and a shell's >(…) name one: a /proc link that is no text path.
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const std::string pipe_path = "/proc/self/fd/" + std::to_string(fds[1]);
  REQUIRE(check_can_write(pipe_path).ok());
  REQUIRE(write_file_atomically(pipe_path, "through", 7).ok());
  close(fds[1]);
  char got[16] = {};
  CHECK(read(fds[0], got, sizeof got) == 7);
  CHECK(std::string(got) == "through");
  close(fds[0]);

  // A link loop is refused as the shell would refuse it, and nothing replaces the links.
  REQUIRE(symlink("loop_b", dir.file("loop_a").c_str()) == 0);
  REQUIRE(symlink("loop_a", dir.file("loop_b").c_str()) == 0);
  status = write_file_atomically(dir.file("loop_a"), "x", 1);
  CHECK(status.message() == "cannot write " + dir.file("loop_a") + ": Too many levels of symbolic links");
  REQUIRE(lstat(dir.file("loop_a").c_str(), &st) == 0);
  CHECK(S_ISLNK(st.st_mode));
}

TEST_CASE("RemoveOnSignal: an interrupted writer leaves no temporary file", "[io][atomic_file]") {
  TempDir dir;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    const std::string target = dir.file("big.bin");
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // The child starts a write and is stopped by the signal before it commits. (Catch2 handles some signals
      // itself: the child goes back to the defaults a command-line tool starts with.)
      for (int s : {SIGINT, SIGTERM, SIGHUP}) ::signal(s, SIG_DFL);
      RemoveOnSignal::install_handlers();
      AtomicFile out;
      if (!out.open(target).ok() || !out.write("partial", 7).ok()) _exit(3);
      ::raise(sig);
      _exit(4);  // not reached: the handler re-raises with the default action
    }
    int wstatus = 0;
    REQUIRE(waitpid(child, &wstatus, 0) == child);
    CHECK(WIFSIGNALED(wstatus));
    if (WIFSIGNALED(wstatus)) CHECK(WTERMSIG(wstatus) == sig);
    CHECK(dir.list().empty());
  }
  // A program that handles the signal itself (train saves a checkpoint on Ctrl-C) keeps its handler: the temporary
  // is then its destructors' to remove, so here, where the handler exits at once, it stays.
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::signal(SIGTERM, [](int) { _exit(7); });
    RemoveOnSignal::install_handlers();
    AtomicFile out;
    if (!out.open(dir.file("kept.bin")).ok()) _exit(3);
    ::raise(SIGTERM);
    _exit(4);
  }
  int wstatus = 0;
  REQUIRE(waitpid(child, &wstatus, 0) == child);
  CHECK((WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 7));
  CHECK(dir.list().size() == 1);
}

TEST_CASE("check_distinct_paths finds one file under two names", "[io][atomic_file]") {
  TempDir dir;
  REQUIRE(write_file_atomically(dir.file("model.ddpm"), "m", 1).ok());
  REQUIRE(write_file_atomically(dir.file("other.ddpm"), "o", 1).ok());
  REQUIRE(symlink("model.ddpm", dir.file("link.ddpm").c_str()) == 0);
  REQUIRE(link(dir.file("model.ddpm").c_str(), dir.file("hard.ddpm").c_str()) == 0);
  REQUIRE(mkdir(dir.file("sub").c_str(), 0755) == 0);
  const std::string model = dir.file("model.ddpm");
  CHECK(check_distinct_paths(model, model, "the model").message() ==
        model + ": is also the model; choose another output path");
  for (const std::string& alias : {dir.file("link.ddpm"), dir.file("hard.ddpm"), dir.file("sub/../model.ddpm"),
                                   dir.file("./model.ddpm")}) {
    CHECK(check_distinct_paths(alias, model, "the model").message() ==
          alias + ": is the same file as the model " + model + "; choose another output path");
  }
  CHECK(check_distinct_paths(dir.file("other.ddpm"), model, "the model").ok());
  CHECK(check_distinct_paths(dir.file("new.png"), model, "the model").ok());
  CHECK(check_distinct_paths("", model, "the model").ok());
  CHECK(check_distinct_paths(model, "", "the model").ok());
  // Two outputs that do not exist yet, spelled differently.
  CHECK_FALSE(check_distinct_paths(dir.file("sub/../a.png"), dir.file("a.png"), "the image").ok());
  CHECK(check_distinct_paths(dir.file("b.png"), dir.file("a.png"), "the image").ok());
  // Two names of one device harm nothing.
  CHECK(check_distinct_paths("/dev/null", "/dev/null", "the image").ok());
}

// =================================================================================================================
// safetensors

namespace {

std::vector<uint8_t> safetensors_bytes(const std::string& header, const std::vector<uint8_t>& data,
                                       uint64_t declared_length) {
  std::vector<uint8_t> bytes(8);
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(declared_length >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

std::vector<uint8_t> safetensors_bytes(const std::string& header, size_t data_bytes) {
  return safetensors_bytes(header, std::vector<uint8_t>(data_bytes, 0x11), header.size());
}

Status read_bytes(const std::vector<uint8_t>& bytes, std::vector<SourceTensor>* tensors = nullptr) {
  MappedFile file = MappedFile::from_bytes("bad.safetensors", bytes);
  std::vector<SourceTensor> local;
  return read_safetensors("bad.safetensors", file, tensors ? tensors : &local, nullptr);
}

std::string read_error(const std::vector<uint8_t>& bytes) {
  Status status = read_bytes(bytes);
  return status.ok() ? std::string("<ok>") : status.message();
}

}  // namespace

TEST_CASE("safetensors writer and reader round trip", "[io][safetensors]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const std::vector<float> weights = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
  const std::vector<uint16_t> halves = {f32_to_f16(1.0f), f32_to_f16(-3.5f), f32_to_f16(65504.0f)};
  const std::vector<uint16_t> bhalves = {f32_to_bf16(2.0f), f32_to_bf16(-0.25f)};
  const std::vector<double> doubles = {0.125, -1e10};
  const std::vector<int64_t> longs = {-5, 1LL << 40};
  const std::vector<int32_t> ints = {-7, 123456};
  const std::vector<int16_t> shorts = {-300};
  const std::vector<int8_t> bytes = {-128, 127, 0};
  const std::vector<uint8_t> ubytes = {255, 1};
  const std::vector<uint8_t> bools = {0, 1};
  const float scalar = 42.0f;
  std::vector<SafetensorsWriteEntry> entries = {
      {"w", SourceDType::F32, {2, 3}, weights.data()},
      {"h", SourceDType::F16, {3}, halves.data()},
      {"bh", SourceDType::BF16, {1, 2}, bhalves.data()},
      {"d", SourceDType::F64, {2}, doubles.data()},
      {"l", SourceDType::I64, {2}, longs.data()},
      {"i", SourceDType::I32, {2, 1}, ints.data()},
      {"s", SourceDType::I16, {1}, shorts.data()},
      {"b", SourceDType::I8, {3}, bytes.data()},
      {"u", SourceDType::U8, {2}, ubytes.data()},
      {"flag", SourceDType::BOOL, {2}, bools.data()},
      {"scalar", SourceDType::F32, {}, &scalar},
      {"empty", SourceDType::F32, {0, 5}, nullptr},
  };
  REQUIRE(write_safetensors(path, entries, {{"format", "pt"}, {"note", "a \"quoted\" value"}}).ok());

  MappedFile file;
  REQUIRE(file.open(path).ok());
  CHECK(looks_like_safetensors(file));
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | file.data()[i];
  CHECK((8 + header_length) % 8 == 0);

  std::vector<SourceTensor> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  REQUIRE(read_safetensors(path, file, &tensors, &metadata).ok());
  REQUIRE(metadata.size() == 2);
  CHECK(metadata[0] == std::make_pair(std::string("format"), std::string("pt")));
  CHECK(metadata[1].second == "a \"quoted\" value");
  REQUIRE(tensors.size() == entries.size());
  // Reference layout: largest element size first, then by name.
  std::vector<std::string> names;
  for (const SourceTensor& t : tensors) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"d", "l", "empty", "i", "scalar", "w", "bh", "h", "s", "b", "flag", "u"});
  for (const SourceTensor& t : tensors) {
    INFO(t.name);
    CHECK(t.storage_offset % source_dtype_size(t.dtype) == 0);  // natural alignment from the padding
    CHECK(t.element_offset == 0);
    CHECK_FALSE(t.big_endian);
  }

  auto find = [&](const std::string& name) -> const SourceTensor& {
    for (const SourceTensor& t : tensors) {
      if (t.name == name) return t;
    }
    FAIL("missing tensor " << name);
    return tensors[0];
  };
  const SourceTensor& w = find("w");
  CHECK(w.dtype == SourceDType::F32);
  CHECK(w.shape == std::vector<int64_t>{2, 3});
  CHECK(w.strides == std::vector<int64_t>{3, 1});
  CHECK(w.storage_bytes == 24);
  CHECK(find("empty").shape == std::vector<int64_t>{0, 5});
  CHECK(find("empty").storage_bytes == 0);
  CHECK(find("scalar").shape.empty());

  auto load = [&](const std::string& name) {
    const SourceTensor& t = find(name);
    std::vector<float> values(static_cast<size_t>(t.numel()));
    REQUIRE(load_tensor_f32(file, t, values.data()).ok());
    return values;
  };
  CHECK(load("w") == weights);
  CHECK(load("h") == std::vector<float>{1.0f, -3.5f, 65504.0f});
  CHECK(load("bh") == std::vector<float>{2.0f, -0.25f});
  CHECK(load("d") == std::vector<float>{0.125f, -1e10f});
  CHECK(load("l") == std::vector<float>{-5.0f, 1099511627776.0f});
  CHECK(load("i") == std::vector<float>{-7.0f, 123456.0f});
  CHECK(load("s") == std::vector<float>{-300.0f});
  CHECK(load("b") == std::vector<float>{-128.0f, 127.0f, 0.0f});
  CHECK(load("u") == std::vector<float>{255.0f, 1.0f});
  CHECK(load("flag") == std::vector<float>{0.0f, 1.0f});
  CHECK(load("scalar") == std::vector<float>{42.0f});
  CHECK(load("empty").empty());
  CHECK(dir.list() == std::vector<std::string>{"model.safetensors"});
}

TEST_CASE("safetensors writer rejects bad entries", "[io][safetensors]") {
  TempDir dir;
  const float x = 1;
  const std::string path = dir.file("bad.safetensors");
  CHECK_FALSE(write_safetensors(path, {{"a", SourceDType::F32, {1}, &x}, {"a", SourceDType::F32, {1}, &x}}).ok());
  CHECK_FALSE(write_safetensors(path, {{"", SourceDType::F32, {1}, &x}}).ok());
  CHECK_FALSE(write_safetensors(path, {{"__metadata__", SourceDType::F32, {1}, &x}}).ok());
  CHECK_FALSE(write_safetensors(path, {{"a", SourceDType::F32, {2}, nullptr}}).ok());
  CHECK_FALSE(write_safetensors(path, {{"a", SourceDType::F32, {-1}, &x}}).ok());
  CHECK_FALSE(write_safetensors(path, {{"a", SourceDType::F32, {1LL << 62, 1LL << 62}, &x}}).ok());
  CHECK(dir.list().empty());
  CHECK(write_safetensors(path, {}).ok());  // an empty model is a valid file
  std::vector<SourceTensor> tensors(1);
  MappedFile file;
  REQUIRE(file.open(path).ok());
  REQUIRE(read_safetensors(path, file, &tensors, nullptr).ok());
  CHECK(tensors.empty());
}

TEST_CASE("safetensors reads the reference micro model", "[io][safetensors]") {
  const std::string path = "data/io/micro.safetensors";
  MappedFile file;
  REQUIRE(file.open(path).ok());
  CHECK(looks_like_safetensors(file));
  std::vector<SourceTensor> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  REQUIRE(read_safetensors(path, file, &tensors, &metadata).ok());
  REQUIRE(tensors.size() == 144);
  REQUIRE(metadata.size() == 1);
  CHECK(metadata[0].first == "format");
  CHECK(metadata[0].second == "pt");
  uint64_t total = 0;
  int64_t parameters = 0;
  const SourceTensor* conv_in = nullptr;
  const SourceTensor* conv_in_bias = nullptr;
  for (const SourceTensor& t : tensors) {
    CHECK(t.dtype == SourceDType::F32);
    total += t.storage_bytes;
    parameters += t.numel();
    if (t.name == "conv_in.weight") conv_in = &t;
    if (t.name == "conv_in.bias") conv_in_bias = &t;
    if (t.name == "time_embedding.linear_1.weight") CHECK(t.shape == std::vector<int64_t>{32, 8});
    if (t.name == "up_blocks.0.resnets.0.conv_shortcut.weight") CHECK(t.shape == std::vector<int64_t>{16, 32, 1, 1});
    if (t.name == "down_blocks.1.attentions.0.to_q.weight") CHECK(t.shape == std::vector<int64_t>{16, 16});
    if (t.name == "mid_block.attentions.0.group_norm.weight") CHECK(t.shape == std::vector<int64_t>{16});
  }
  CHECK(total == file.size() - 8 - 14088);
  CHECK(parameters * 4 == static_cast<int64_t>(total));
  REQUIRE(conv_in != nullptr);
  CHECK(conv_in->shape == std::vector<int64_t>{8, 3, 3, 3});
  CHECK(conv_in->strides == std::vector<int64_t>{27, 9, 3, 1});
  CHECK(conv_in->storage_offset == 8 + 14088 + 32);
  REQUIRE(conv_in_bias != nullptr);
  std::vector<float> bias(8);
  REQUIRE(load_tensor_f32(file, *conv_in_bias, bias.data()).ok());
  CHECK(bias[0] == -0.0017180483555421233f);
  CHECK(bias[7] == -0.07121464610099792f);
}

TEST_CASE("the fp16 reference file is the f32 one rounded to nearest even", "[io][safetensors]") {
  MappedFile full_file, half_file;
  REQUIRE(full_file.open("data/io/micro.safetensors").ok());
  REQUIRE(half_file.open("data/io/micro.fp16.safetensors").ok());
  std::vector<SourceTensor> full, half;
  REQUIRE(read_safetensors("micro.safetensors", full_file, &full, nullptr).ok());
  REQUIRE(read_safetensors("micro.fp16.safetensors", half_file, &half, nullptr).ok());
  REQUIRE(half.size() == 144);
  REQUIRE(full.size() == half.size());
  for (size_t i = 0; i < half.size(); ++i) {
    INFO(half[i].name);
    REQUIRE(half[i].name == full[i].name);
    REQUIRE(half[i].dtype == SourceDType::F16);
    REQUIRE(half[i].shape == full[i].shape);
    const size_t n = static_cast<size_t>(half[i].numel());
    std::vector<float> reference(n), widened(n), converted_raw(n);
    std::vector<uint16_t> raw(n), rounded(n);
    REQUIRE(load_tensor_f32(full_file, full[i], reference.data()).ok());
    REQUIRE(load_tensor_raw_f16(half_file, half[i], raw.data()).ok());
    REQUIRE(load_tensor_raw_f16(full_file, full[i], rounded.data()).ok());
    REQUIRE(load_tensor_f32(half_file, half[i], widened.data()).ok());
    for (size_t j = 0; j < n; ++j) {
      REQUIRE(raw[j] == f32_to_f16(reference[j]));
      REQUIRE(rounded[j] == raw[j]);
      REQUIRE(widened[j] == f16_to_f32(raw[j]));
    }
  }
}

TEST_CASE("safetensors rejects hostile files with clean errors", "[io][safetensors]") {
  const std::string one = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(read_error(safetensors_bytes(one, 8)) == "<ok>");

  CHECK(contains(read_error({1, 2, 3}), "too short"));
  CHECK(contains(read_error({}), "too short"));
  CHECK(contains(read_error(safetensors_bytes(one, {}, one.size() + 1)), "truncated: its safetensors header needs"));
  CHECK(contains(read_error(safetensors_bytes(one, std::vector<uint8_t>(8), 200000000)), "exceeds the limit"));
  CHECK(contains(read_error(safetensors_bytes(one, std::vector<uint8_t>(8), ~uint64_t{0})), "exceeds the limit"));
  CHECK(contains(read_error(safetensors_bytes("not json", 0)), "invalid JSON"));
  CHECK(contains(read_error(safetensors_bytes("", 0)), "invalid JSON"));
  CHECK(contains(read_error(safetensors_bytes("[]", 0)), "not a JSON object"));
  CHECK(contains(read_error(safetensors_bytes("\"str\"", 0)), "not a JSON object"));
  CHECK(contains(read_error(safetensors_bytes(one + "xx", 8)), "invalid JSON"));
  CHECK(contains(read_error(safetensors_bytes(one + std::string("\0\0", 2), 8)), "invalid JSON"));
  CHECK(read_error(safetensors_bytes(one + "      ", 8)) == "<ok>");  // writers pad with spaces

  // Data section layout.
  CHECK(contains(read_error(safetensors_bytes(one, 12)), "4 trailing bytes"));
  CHECK(contains(read_error(safetensors_bytes(one, 4)), "run past the data section"));
  const std::string overlap = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  CHECK(contains(read_error(safetensors_bytes(overlap, 12)), "overlaps"));
  const std::string same = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  CHECK(contains(read_error(safetensors_bytes(same, 8)), "overlaps"));
  const std::string hole = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  CHECK(contains(read_error(safetensors_bytes(hole, 12)), "belong to no tensor"));
  const std::string late_start = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  CHECK(contains(read_error(safetensors_bytes(late_start, 8)), "belong to no tensor"));
  const std::string inside_zero = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})";
  CHECK(contains(read_error(safetensors_bytes(inside_zero, 8)), "overlaps"));
  const std::string zero_ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("z":{"dtype":"F32","shape":[3,0],"data_offsets":[8,8]}})";
  CHECK(read_error(safetensors_bytes(zero_ok, 8)) == "<ok>");
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)),
                 "end before they begin"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)),
                 "spans 8 bytes but its dtype F32 and shape need 12"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", 8)),
                 "need 4"));
  CHECK(contains(read_error(safetensors_bytes(
                     R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", 8)),
                 "run past"));
  CHECK(contains(read_error(safetensors_bytes(
                     R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})", 8)),
                 "pair of non-negative integers"));

  // Entry contents.
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", 8)),
                 "unsupported dtype F8_E4M3 for tensor w"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"Q7","shape":[8],"data_offsets":[0,8]}})", 8)),
                 "dtype Q7 for tensor w"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", 8)),
                 "dtype f32"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", 8)),
                 "dtype of tensor w is not a string"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8)), "no dtype"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8)), "no shape"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"offsets":[0,8]}})", 8)),
                 "no data_offsets"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":[1,2]})", 8)), "not a JSON object"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)),
                 "not a non-negative integer"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8)),
                 "not a non-negative integer"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8)),
                 "not an array"));
  CHECK(contains(read_error(safetensors_bytes(
                     R"({"w":{"dtype":"F32","shape":[9223372036854775807,2],"data_offsets":[0,8]}})", 8)),
                 "too large"));
  CHECK(contains(read_error(safetensors_bytes(
                     R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8)),
                 "too large"));
  CHECK(contains(read_error(safetensors_bytes(
                     R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],)"
                     R"("data_offsets":[0,0]}})", 0)),
                 "too large"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8)),
                 "pair"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", 8)),
                 "pair"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":"0,8"}})", 8)),
                 "pair"));
  CHECK(contains(read_error(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                              R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
                 "duplicate key \"w\""));
  CHECK(contains(read_error(safetensors_bytes(R"({"__metadata__":{"format":1}})", 0)), "not a string"));
  CHECK(contains(read_error(safetensors_bytes(R"({"__metadata__":[]})", 0)), "__metadata__ is not"));
  CHECK(read_error(safetensors_bytes(R"({"__metadata__":{"format":"pt"}})", 0)) == "<ok>");
  CHECK(read_error(safetensors_bytes("{}", 0)) == "<ok>");
  CHECK(contains(read_error(safetensors_bytes("{\"w\\n\\u0001\":{\"dtype\":\"X\",\"shape\":[],\"data_offsets\":[0,4]}}", 4)),
                 "for tensor w??"));  // control characters never reach the one-line message
  CHECK(contains(read_error(safetensors_bytes(one, 8)), "<ok>"));
}

TEST_CASE("safetensors survives truncation and byte corruption", "[io][safetensors]") {
  TempDir dir;
  const std::string path = dir.file("small.safetensors");
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> b = {1, 2, 3};
  const std::vector<double> c = {9};
  REQUIRE(write_safetensors(path, {{"alpha", SourceDType::F32, {2, 3}, a.data()},
                                   {"beta", SourceDType::F16, {3}, b.data()},
                                   {"gamma", SourceDType::F64, {1, 1}, c.data()}},
                            {{"format", "pt"}})
              .ok());
  const std::string content = read_whole_file(path);
  const std::vector<uint8_t> valid(content.begin(), content.end());
  REQUIRE(read_error(valid) == "<ok>");
  for (size_t length = 0; length < valid.size(); ++length) {
    INFO("truncated to " << length);
    REQUIRE(read_error(std::vector<uint8_t>(valid.begin(), valid.begin() + static_cast<long>(length))) != "<ok>");
  }
  std::mt19937 rng(11);
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> mutated = valid;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      // Mostly hit the length prefix and the header, where the parser lives.
      const size_t limit = rng() % 4 == 0 ? mutated.size() : std::min<size_t>(mutated.size(), 8 + 200);
      mutated[rng() % limit] = static_cast<uint8_t>(rng());
    }
    MappedFile file = MappedFile::from_bytes("mutated", mutated);
    std::vector<SourceTensor> tensors;
    if (!read_safetensors("mutated", file, &tensors, nullptr).ok()) continue;
    for (const SourceTensor& t : tensors) {  // anything accepted must also load
      std::vector<float> values(static_cast<size_t>(t.numel()));
      REQUIRE(load_tensor_f32(file, t, values.data()).ok());
    }
  }
}

TEST_CASE("looks_like_safetensors sniffs cheaply", "[io][safetensors]") {
  CHECK(looks_like_safetensors(MappedFile::from_bytes("x", safetensors_bytes("  {}", 0))));
  CHECK_FALSE(looks_like_safetensors(MappedFile::from_bytes("x", safetensors_bytes("[]", 0))));
  CHECK_FALSE(looks_like_safetensors(MappedFile::from_bytes("x", {'P', 'K', 3, 4, 0, 0, 0, 0, 0, 0, 0})));
  // A header the file's end cuts short is still recognised, so that the reader can call it truncated.
  CHECK(looks_like_safetensors(MappedFile::from_bytes("x", safetensors_bytes("{}", {}, 100))));
  CHECK_FALSE(looks_like_safetensors(MappedFile::from_bytes("x", safetensors_bytes("[]", {}, 100))));
  CHECK_FALSE(looks_like_safetensors(MappedFile::from_bytes("x", {})));
}

// =================================================================================================================
// Tensor loader

namespace {

// A file whose bytes [16, 16 + storage) hold the given values (little-endian unless told otherwise).
template <typename T>
MappedFile file_with(const std::vector<T>& values, bool big_endian = false) {
  std::vector<uint8_t> bytes(16, 0xEE);
  for (const T& v : values) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof(T));
    if (big_endian) std::reverse(raw, raw + sizeof(T));
    bytes.insert(bytes.end(), raw, raw + sizeof(T));
  }
  bytes.insert(bytes.end(), 8, 0xEE);  // guard bytes after the storage
  return MappedFile::from_bytes("loader.bin", bytes);
}

SourceTensor tensor(SourceDType dtype, std::vector<int64_t> shape, std::vector<int64_t> strides, uint64_t storage_bytes,
                    int64_t element_offset = 0) {
  SourceTensor t;
  t.name = "t";
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.strides = std::move(strides);
  t.storage_offset = 16;
  t.storage_bytes = storage_bytes;
  t.element_offset = element_offset;
  return t;
}

std::vector<float> load_f32(const MappedFile& file, const SourceTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()), -999.0f);
  Status status = load_tensor_f32(file, t, out.data());
  INFO(status.message());
  REQUIRE(status.ok());
  return out;
}

}  // namespace

TEST_CASE("loader honours strides, offsets and shared storage", "[io][loader]") {
  std::vector<float> storage(24);
  for (int i = 0; i < 24; ++i) storage[static_cast<size_t>(i)] = static_cast<float>(i);
  MappedFile file = file_with(storage);
  // Transposed 3x2 view of a 2x3 block starting at element 1.
  CHECK(load_f32(file, tensor(SourceDType::F32, {3, 2}, {1, 3}, 96, 1)) == std::vector<float>{1, 4, 2, 5, 3, 6});
  // Broadcast rows (stride 0).
  CHECK(load_f32(file, tensor(SourceDType::F32, {3, 2}, {0, 1}, 96, 5)) == std::vector<float>{5, 6, 5, 6, 5, 6});
  // Two views of the same storage.
  CHECK(load_f32(file, tensor(SourceDType::F32, {2}, {1}, 96, 22)) == std::vector<float>{22, 23});
  CHECK(load_f32(file, tensor(SourceDType::F32, {2, 2}, {12, 11}, 96, 0)) == std::vector<float>{0, 11, 12, 23});
  CHECK(load_f32(file, tensor(SourceDType::F32, {}, {}, 96, 23)) == std::vector<float>{23});
  // Size-1 dimensions with arbitrary strides still count as contiguous.
  CHECK(load_f32(file, tensor(SourceDType::F32, {1, 4}, {1000, 1}, 96, 2)) == std::vector<float>{2, 3, 4, 5});

  // A permuted 4-D view against direct index arithmetic.
  const std::vector<int64_t> shape = {3, 2, 4, 2}, strides = {2, 1, 6, 0};
  std::vector<float> expected;
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t c = 0; c < 4; ++c)
        for (int64_t d = 0; d < 2; ++d) expected.push_back(storage[static_cast<size_t>(a * 2 + b + c * 6)]);
  CHECK(load_f32(file, tensor(SourceDType::F32, shape, strides, 96)) == expected);

  // Zero elements: nothing is read, even without a destination.
  CHECK(load_tensor_f32(file, tensor(SourceDType::F32, {0, 3}, {3, 1}, 0), nullptr).ok());
}

TEST_CASE("loader converts every dtype and byte order", "[io][loader]") {
  {
    const std::vector<uint16_t> halves = {f32_to_f16(1.5f), f32_to_f16(-0.25f), 0x7c00, 0x0001};
    CHECK(load_f32(file_with(halves), tensor(SourceDType::F16, {4}, {1}, 8)) ==
          std::vector<float>{1.5f, -0.25f, std::numeric_limits<float>::infinity(), std::ldexp(1.0f, -24)});
    SourceTensor big = tensor(SourceDType::F16, {2, 2}, {1, 2}, 8);
    big.big_endian = true;
    CHECK(load_f32(file_with(halves, true), big) ==
          std::vector<float>{1.5f, std::numeric_limits<float>::infinity(), -0.25f, std::ldexp(1.0f, -24)});
  }
  {
    const std::vector<uint16_t> bf = {f32_to_bf16(3.0f), f32_to_bf16(-1.0e30f)};
    CHECK(load_f32(file_with(bf), tensor(SourceDType::BF16, {2}, {1}, 4)) ==
          std::vector<float>{3.0f, bf16_to_f32(f32_to_bf16(-1.0e30f))});
  }
  {
    const std::vector<float> floats = {1.0f, -2.0f, 0.5f};
    SourceTensor t = tensor(SourceDType::F32, {3}, {1}, 12);
    t.big_endian = true;
    CHECK(load_f32(file_with(floats, true), t) == floats);
  }
  {
    const std::vector<double> doubles = {0.1, -1e300, 3.0};
    SourceTensor t = tensor(SourceDType::F64, {3}, {1}, 24);
    t.big_endian = true;
    CHECK(load_f32(file_with(doubles, true), t) ==
          std::vector<float>{0.1f, -std::numeric_limits<float>::infinity(), 3.0f});
    CHECK(load_f32(file_with(doubles), tensor(SourceDType::F64, {2}, {2}, 24)) == std::vector<float>{0.1f, 3.0f});
  }
  CHECK(load_f32(file_with(std::vector<int64_t>{-3, int64_t{1} << 40}), tensor(SourceDType::I64, {2}, {1}, 16)) ==
        std::vector<float>{-3.0f, 1099511627776.0f});
  {
    SourceTensor t = tensor(SourceDType::I32, {2}, {1}, 8);
    t.big_endian = true;
    CHECK(load_f32(file_with(std::vector<int32_t>{-70000, 5}, true), t) == std::vector<float>{-70000.0f, 5.0f});
  }
  CHECK(load_f32(file_with(std::vector<int16_t>{-2, 300}), tensor(SourceDType::I16, {2}, {1}, 4)) ==
        std::vector<float>{-2.0f, 300.0f});
  CHECK(load_f32(file_with(std::vector<int8_t>{-128, 7}), tensor(SourceDType::I8, {2}, {1}, 2)) ==
        std::vector<float>{-128.0f, 7.0f});
  CHECK(load_f32(file_with(std::vector<uint8_t>{200, 7}), tensor(SourceDType::U8, {2}, {1}, 2)) ==
        std::vector<float>{200.0f, 7.0f});
  CHECK(load_f32(file_with(std::vector<uint8_t>{0, 1, 2}), tensor(SourceDType::BOOL, {3}, {1}, 3)) ==
        std::vector<float>{0.0f, 1.0f, 1.0f});
}

TEST_CASE("raw f16 loading copies f16 exactly and rounds others once", "[io][loader]") {
  const std::vector<uint16_t> halves = {0x3c00, 0x7e01, 0xfd55, 0x0001, 0x8000, 0x7bff};  // NaN payloads kept
  std::vector<uint16_t> out(6, 0);
  REQUIRE(load_tensor_raw_f16(file_with(halves), tensor(SourceDType::F16, {6}, {1}, 12), out.data()).ok());
  CHECK(out == halves);
  std::vector<uint16_t> strided(3, 0);
  REQUIRE(load_tensor_raw_f16(file_with(halves), tensor(SourceDType::F16, {3}, {2}, 12), strided.data()).ok());
  CHECK(strided == std::vector<uint16_t>{0x3c00, 0xfd55, 0x8000});
  SourceTensor big = tensor(SourceDType::F16, {2}, {1}, 12, 1);
  big.big_endian = true;
  REQUIRE(load_tensor_raw_f16(file_with(halves, true), big, strided.data()).ok());
  CHECK(strided[0] == 0x7e01);
  CHECK(strided[1] == 0xfd55);

  const std::vector<float> floats = {1.0f + std::ldexp(1.0f, -11), 65520.0f, 0.1f};
  REQUIRE(load_tensor_raw_f16(file_with(floats), tensor(SourceDType::F32, {3}, {1}, 12), strided.data()).ok());
  CHECK(strided == std::vector<uint16_t>{0x3c00, 0x7c00, f32_to_f16(0.1f)});

  // 1 + 2^-11 + 2^-40 lies just above an f16 tie; rounding to f32 first would land on the tie and round down.
  const std::vector<double> doubles = {1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40),
                                       1.0 + std::ldexp(1.0, -11) - std::ldexp(1.0, -40), 1.0 + std::ldexp(1.0, -11),
                                       1e300, -1e-300, 65519.99999999};
  std::vector<uint16_t> rounded(6, 0);
  REQUIRE(load_tensor_raw_f16(file_with(doubles), tensor(SourceDType::F64, {6}, {1}, 48), rounded.data()).ok());
  CHECK(rounded == std::vector<uint16_t>{0x3c01, 0x3c00, 0x3c00, 0x7c00, 0x8000, 0x7bff});

  const std::vector<uint16_t> bf = {f32_to_bf16(1.0f + std::ldexp(1.0f, -7))};
  REQUIRE(load_tensor_raw_f16(file_with(bf), tensor(SourceDType::BF16, {1}, {1}, 2), rounded.data()).ok());
  CHECK(rounded[0] == f32_to_f16(1.0f + std::ldexp(1.0f, -7)));
  REQUIRE(load_tensor_raw_f16(file_with(std::vector<int32_t>{-2048, 70000}), tensor(SourceDType::I32, {2}, {1}, 8),
                              rounded.data())
              .ok());
  CHECK(rounded[0] == f32_to_f16(-2048.0f));
  CHECK(rounded[1] == 0x7c00);
}

TEST_CASE("loader rejects tensors that address bytes outside their storage", "[io][loader]") {
  const std::vector<float> storage(6, 1.0f);
  MappedFile file = file_with(storage);
  std::vector<float> out(64);
  auto error = [&](const SourceTensor& t) {
    Status status = load_tensor_f32(file, t, out.data());
    std::vector<uint16_t> halves(64);
    Status half_status = load_tensor_raw_f16(file, t, halves.data());
    CHECK(half_status.ok() == status.ok());
    return status.ok() ? std::string("<ok>") : status.message();
  };
  SourceTensor named = tensor(SourceDType::F32, {2, 3}, {3, 1}, 24);
  named.name = "down.0.weight";
  CHECK(error(named) == "<ok>");
  named.shape = {2, 4};
  named.strides = {3, 1};
  CHECK(contains(error(named), "loader.bin: tensor down.0.weight: "));
  CHECK(contains(error(named), "beyond its storage of 6 elements"));
  CHECK(contains(error(tensor(SourceDType::F32, {2, 3}, {3, 1}, 24, 1)), "beyond its storage"));
  CHECK(contains(error(tensor(SourceDType::F32, {3}, {3}, 24)), "beyond its storage"));
  CHECK(error(tensor(SourceDType::F32, {2}, {5}, 24)) == "<ok>");  // elements 0 and 5: the last one fits
  CHECK(contains(error(tensor(SourceDType::F32, {3}, {std::numeric_limits<int64_t>::max()}, 24)), "beyond"));
  CHECK(contains(error(tensor(SourceDType::F32, {3, 3}, {int64_t{1} << 62, int64_t{1} << 62}, 24)), "beyond"));
  CHECK(contains(error(tensor(SourceDType::F32, {1}, {1}, 24, std::numeric_limits<int64_t>::max())), "beyond"));
  CHECK(contains(error(tensor(SourceDType::F32, {2}, {-1}, 24, 3)), "negative stride"));
  CHECK(contains(error(tensor(SourceDType::F32, {2}, {1}, 24, -1)), "negative element offset"));
  CHECK(contains(error(tensor(SourceDType::F32, {2, 3}, {1}, 24)), "1 strides for 2 dimensions"));
  CHECK(contains(error(tensor(SourceDType::F32, {-2}, {1}, 24)), "invalid shape"));
  CHECK(contains(error(tensor(SourceDType::F32, {2}, {1}, 22)), "whole F32 elements"));
  CHECK(contains(error(tensor(SourceDType::F32, {2}, {1}, 33)), "outside the file"));  // storage passes the end
  SourceTensor far = tensor(SourceDType::F32, {1}, {1}, 4);
  far.storage_offset = std::numeric_limits<uint64_t>::max() - 1;
  CHECK(contains(error(far), "outside the file"));
  SourceTensor bad_dtype = tensor(SourceDType::F32, {1}, {1}, 4);
  bad_dtype.dtype = static_cast<SourceDType>(99);
  CHECK(contains(error(bad_dtype), "invalid dtype"));
  // Zero-element tensors need no addressable element.
  CHECK(error(tensor(SourceDType::F32, {0}, {1}, 0, 100)) == "<ok>");
}
