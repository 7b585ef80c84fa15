// Tests for io/deflate, io/png and io/idx. Fixtures in data/image/ were written by Python's zlib and a small
// independent PNG writer (data/image/make_fixtures.py); the pixel formulas below must match that script.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "io/deflate.h"
#include "io/idx.h"
#include "io/png.h"

namespace {

using Bytes = std::vector<uint8_t>;
using ddpm::CompressionLevel;
using ddpm::Status;

Bytes read_fixture(const std::string& name) {
  std::ifstream file("data/image/" + name, std::ios::binary);
  INFO("fixture " << name);
  REQUIRE(file.good());
  return Bytes(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string string_of(const Bytes& b) { return std::string(b.begin(), b.end()); }

bool contains(const Status& status, const std::string& needle) {
  return status.message().find(needle) != std::string::npos;
}

Bytes random_bytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes out(size);
  for (auto& b : out) b = uint8_t(rng());
  return out;
}

// A scratch directory removed when the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("ddpm_test_image_" + std::to_string(getpid()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  bool has_temporary_files() const {
    for (const auto& entry : std::filesystem::directory_iterator(path))
      if (entry.path().filename().string().find(".tmp.") != std::string::npos) return true;
    return false;
  }
};

void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(file.good());
}

// Writes DEFLATE bits by hand: plain values least-significant bit first, Huffman codes most-significant first.
class TestBits {
 public:
  void put(uint32_t value, int count) {
    for (int i = 0; i < count; ++i) push((value >> i) & 1);
  }
  void put_code(uint32_t code, int length) {
    for (int i = length - 1; i >= 0; --i) push((code >> i) & 1);
  }
  void align() {
    while (bit_ != 0) push(0);
  }
  void byte(uint8_t b) {
    align();
    bytes_.push_back(b);
  }
  Bytes bytes() {
    align();
    return bytes_;
  }

  // Fixed-Huffman symbols (RFC 1951 3.2.6), written independently of the library's encoder.
  void fixed_literal_length(int symbol) {
    if (symbol < 144)
      put_code(0x30 + symbol, 8);
    else if (symbol < 256)
      put_code(0x190 + symbol - 144, 9);
    else if (symbol < 280)
      put_code(symbol - 256, 7);
    else
      put_code(0xC0 + symbol - 280, 8);
  }
  void fixed_match(int length, int distance) {
    static const int kLengthBase[] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const int kLengthExtra[] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                       2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const int kDistBase[] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                    33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                    1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
    static const int kDistExtra[] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                     6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    int ls = 28;
    while (kLengthBase[ls] > length) ls--;
    if (length == 258) ls = 28;
    fixed_literal_length(257 + ls);
    put(uint32_t(length - kLengthBase[ls]), kLengthExtra[ls]);
    int ds = 29;
    while (kDistBase[ds] > distance) ds--;
    put_code(uint32_t(ds), 5);
    put(uint32_t(distance - kDistBase[ds]), kDistExtra[ds]);
  }

 private:
  void push(uint32_t bit) {
    if (bit_ == 0) bytes_.push_back(0);
    bytes_.back() |= uint8_t(bit << bit_);
    bit_ = (bit_ + 1) & 7;
  }
  Bytes bytes_;
  int bit_ = 0;
};

Status inflate(const Bytes& data, Bytes* out, size_t cap = size_t(1) << 24) {
  return ddpm::inflate_raw(data.data(), data.size(), cap, out);
}

// Dynamic block header: HLIT/HDIST/HCLEN and the code-length code lengths in the RFC's permuted order.
void dynamic_header(TestBits* bits, int hlit, int hdist, const std::vector<int>& code_length_lengths_in_order) {
  bits->put(1, 1);
  bits->put(2, 2);
  bits->put(uint32_t(hlit - 257), 5);
  bits->put(uint32_t(hdist - 1), 5);
  bits->put(uint32_t(code_length_lengths_in_order.size() - 4), 4);
  for (int length : code_length_lengths_in_order) bits->put(uint32_t(length), 3);
}

// The permuted order is 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1 15; these give symbols 18 and 1 one-bit codes
// (18 -> "1", 1 -> "0"), listing 18 entries so that symbol 1 (position 17) is included.
std::vector<int> code_lengths_18_and_1() {
  std::vector<int> v(18, 0);
  v[2] = 1;   // symbol 18
  v[17] = 1;  // symbol 1
  return v;
}

}  // namespace

// ------------------------------------------------------------------------------------------------------------------
// Checksums

TEST_CASE("crc32 and adler32 match their published check values", "[image]") {
  Bytes check = bytes_of("123456789");
  CHECK(ddpm::crc32(check.data(), check.size()) == 0xCBF43926u);
  CHECK(ddpm::crc32(nullptr, 0) == 0u);
  Bytes wiki = bytes_of("Wikipedia");
  CHECK(ddpm::adler32(wiki.data(), wiki.size()) == 0x11E60398u);
  CHECK(ddpm::adler32(nullptr, 0) == 1u);
}

TEST_CASE("crc32 and adler32 agree with bitwise references at every split point", "[image]") {
  Bytes data = random_bytes(70000, 7);  // longer than adler32's 5552-byte reduction run
  auto crc_reference = [&](size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) {
      crc ^= data[i];
      for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
    }
    return ~crc;
  };
  auto adler_reference = [&](size_t n) {
    uint64_t a = 1, b = 0;
    for (size_t i = 0; i < n; ++i) {
      a = (a + data[i]) % 65521;
      b = (b + a) % 65521;
    }
    return uint32_t(b << 16 | a);
  };
  for (size_t n : {size_t(1), size_t(7), size_t(8), size_t(9), size_t(5552), size_t(5553), data.size()}) {
    INFO("n = " << n);
    CHECK(ddpm::crc32(data.data(), n) == crc_reference(n));
    CHECK(ddpm::adler32(data.data(), n) == adler_reference(n));
  }
  for (size_t split : {size_t(0), size_t(3), size_t(13), size_t(5552), size_t(40001)}) {
    uint32_t crc = ddpm::crc32(data.data() + split, data.size() - split, ddpm::crc32(data.data(), split));
    uint32_t adler = ddpm::adler32(data.data() + split, data.size() - split, ddpm::adler32(data.data(), split));
    CHECK(crc == crc_reference(data.size()));
    CHECK(adler == adler_reference(data.size()));
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Inflate: hand-made streams

TEST_CASE("inflate decodes hand-made stored blocks", "[image]") {
  Bytes out;
  Bytes single = {0x01, 0x05, 0x00, 0xFA, 0xFF, 'h', 'e', 'l', 'l', 'o'};
  REQUIRE(inflate(single, &out).ok());
  CHECK(string_of(out) == "hello");

  Bytes two = {0x00, 0x02, 0x00, 0xFD, 0xFF, 'a', 'b', 0x01, 0x00, 0x00, 0xFF, 0xFF};  // "ab" then an empty final
  REQUIRE(inflate(two, &out).ok());
  CHECK(string_of(out) == "ab");
}

TEST_CASE("inflate decodes hand-made fixed Huffman blocks", "[image]") {
  TestBits bits;
  bits.put(1, 1);
  bits.put(1, 2);
  for (char c : std::string("abc")) bits.fixed_literal_length(uint8_t(c));
  bits.fixed_match(6, 3);  // overlapping copy
  bits.fixed_literal_length('x');
  bits.fixed_match(258, 1);   // longest length, run of 'x'
  bits.fixed_match(10, 263);  // distance with extra bits, reaching back to the start
  bits.fixed_literal_length(256);
  Bytes out;
  Status status = inflate(bits.bytes(), &out);
  REQUIRE(status.ok());
  std::string expected = "abcabcabc" + std::string(259, 'x');
  expected += expected.substr(expected.size() - 263, 10);
  CHECK(string_of(out) == expected);
}

TEST_CASE("inflate decodes a hand-made dynamic block", "[image]") {
  // Literal/length code: 'a' -> "0", end of block -> "1"; one distance code (1 bit, unused).
  TestBits bits;
  dynamic_header(&bits, 257, 1, code_lengths_18_and_1());
  bits.put_code(1, 1);
  bits.put(97 - 11, 7);  // 97 zeros
  bits.put_code(0, 1);   // 'a': length 1
  bits.put_code(1, 1);
  bits.put(138 - 11, 7);  // 138 zeros
  bits.put_code(1, 1);
  bits.put(20 - 11, 7);  // 20 zeros
  bits.put_code(0, 1);   // 256: length 1
  bits.put_code(0, 1);   // distance 0: length 1
  for (int i = 0; i < 3; ++i) bits.put_code(0, 1);
  bits.put_code(1, 1);
  Bytes out;
  Status status = inflate(bits.bytes(), &out);
  REQUIRE(status.ok());
  CHECK(string_of(out) == "aaa");
}

namespace {

// Canonical Huffman codes (RFC 1951 3.2.2) for the given lengths, as integers to be written most-significant first.
std::vector<uint32_t> canonical_codes(const std::vector<int>& lengths) {
  std::vector<uint32_t> codes(lengths.size(), 0);
  uint32_t code = 0;
  for (int length = 1; length <= 15; ++length) {
    for (size_t s = 0; s < lengths.size(); ++s)
      if (lengths[s] == length) codes[s] = code++;
    code <<= 1;
  }
  return codes;
}

}  // namespace

TEST_CASE("inflate decodes codes of every length up to 15 bits", "[image]") {
  // Literals 0..13 get lengths 1..14; literal 14 and end-of-block share the two 15-bit codes, so most codes are
  // longer than the decoder's primary table index and go through its secondary tables.
  std::vector<int> literal_lengths(257, 0);
  for (int s = 0; s < 14; ++s) literal_lengths[size_t(s)] = s + 1;
  literal_lengths[14] = 15;
  literal_lengths[256] = 15;
  // Code-length code: symbols 0..12 get 4 bits, 13..18 get 5 bits (13/16 + 6/32 = 1, complete).
  std::vector<int> code_length_lengths(19);
  for (int s = 0; s < 19; ++s) code_length_lengths[size_t(s)] = s < 13 ? 4 : 5;
  static const int kOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  std::vector<int> in_order;
  for (int s : kOrder) in_order.push_back(code_length_lengths[size_t(s)]);
  std::vector<uint32_t> code_length_codes = canonical_codes(code_length_lengths);
  std::vector<uint32_t> literal_codes = canonical_codes(literal_lengths);

  TestBits bits;
  dynamic_header(&bits, 257, 1, in_order);
  std::vector<int> all_lengths = literal_lengths;
  all_lengths.push_back(1);  // the only distance code
  for (int length : all_lengths) bits.put_code(code_length_codes[size_t(length)], code_length_lengths[size_t(length)]);
  Bytes expected;
  for (int s : {14, 13, 12, 11, 10, 0, 1, 14, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 14}) {
    bits.put_code(literal_codes[size_t(s)], literal_lengths[size_t(s)]);
    expected.push_back(uint8_t(s));
  }
  bits.put_code(literal_codes[256], 15);
  Bytes out;
  Status status = inflate(bits.bytes(), &out);
  INFO(status.message());
  REQUIRE(status.ok());
  CHECK(out == expected);
}

// ------------------------------------------------------------------------------------------------------------------
// Inflate: streams written by Python's zlib

TEST_CASE("zlib streams from Python's zlib decode to the expected text", "[image]") {
  const std::string text = string_of(read_fixture("text.txt"));
  REQUIRE(text.size() == 11256);
  for (const char* name : {"text.zlib", "text_stored.zlib", "text_level1.zlib", "text_fixed.zlib", "text_rle.zlib"}) {
    INFO(name);
    Bytes stream = read_fixture(name);
    Bytes out;
    Status status = ddpm::zlib_decompress(stream.data(), stream.size(), text.size(), &out);
    INFO(status.message());
    REQUIRE(status.ok());
    CHECK(string_of(out) == text);
  }
  Bytes hello = read_fixture("hello.zlib");
  Bytes out;
  REQUIRE(ddpm::zlib_decompress(hello.data(), hello.size(), 100, &out).ok());
  CHECK(string_of(out) == "hello, hello, hello world");
}

TEST_CASE("gzip files with every header field and with several members decode", "[image]") {
  const std::string text = string_of(read_fixture("text.txt"));
  Bytes all_flags = read_fixture("text_allflags.gz");
  Bytes out;
  Status status = ddpm::gzip_decompress(all_flags.data(), all_flags.size(), 1 << 20, &out);
  INFO(status.message());
  REQUIRE(status.ok());
  CHECK(string_of(out) == text);

  Bytes multi = read_fixture("multi.gz");
  REQUIRE(ddpm::gzip_decompress(multi.data(), multi.size(), 1 << 20, &out).ok());
  CHECK(string_of(out) == "first member\nsecond member\n");
  // The limit covers all members together.
  CHECK_FALSE(ddpm::gzip_decompress(multi.data(), multi.size(), 20, &out).ok());

  Bytes padded = multi;
  padded.insert(padded.end(), 512, 0);
  CHECK(ddpm::gzip_decompress(padded.data(), padded.size(), 1 << 20, &out).ok());
  Bytes garbage = multi;
  garbage.push_back('x');
  status = ddpm::gzip_decompress(garbage.data(), garbage.size(), 1 << 20, &out);
  CHECK(contains(status, "trailing garbage"));

  REQUIRE(ddpm::gzip_decompress_prefix(all_flags.data(), all_flags.size(), 100, &out).ok());
  CHECK(string_of(out) == text.substr(0, 100));
}

// ------------------------------------------------------------------------------------------------------------------
// Inflate: corrupt input

TEST_CASE("inflate rejects invalid block types, bad lengths and bad distances", "[image]") {
  Bytes out;
  CHECK(contains(inflate({0x07}, &out), "block type 3"));
  CHECK(contains(inflate({0x01, 0x05, 0x00, 0xFA, 0xFE, 'h', 'e', 'l', 'l', 'o'}, &out), "complement"));
  CHECK(contains(inflate({0x01, 0x05, 0x00, 0xFA, 0xFF, 'h', 'e', 'l'}, &out), "truncated"));
  CHECK(contains(inflate({}, &out), "truncated"));

  TestBits too_far;
  too_far.put(1, 1);
  too_far.put(1, 2);
  too_far.fixed_literal_length('a');
  too_far.fixed_match(3, 2);  // only one byte has been written
  too_far.fixed_literal_length(256);
  CHECK(contains(inflate(too_far.bytes(), &out), "distance 2"));

  TestBits bad_length;
  bad_length.put(1, 1);
  bad_length.put(1, 2);
  bad_length.fixed_literal_length(286);
  CHECK(contains(inflate(bad_length.bytes(), &out), "symbol 286"));

  TestBits bad_distance;
  bad_distance.put(1, 1);
  bad_distance.put(1, 2);
  bad_distance.fixed_literal_length('a');
  bad_distance.fixed_literal_length(257);
  bad_distance.put_code(30, 5);
  CHECK(contains(inflate(bad_distance.bytes(), &out), "distance symbol 30"));

  TestBits no_final;  // a complete non-final block, then nothing
  no_final.put(0, 1);
  no_final.put(1, 2);
  no_final.fixed_literal_length(256);
  CHECK(contains(inflate(no_final.bytes(), &out), "truncated"));

  Bytes trailing = {0x01, 0x01, 0x00, 0xFE, 0xFF, 'h', 'x'};
  CHECK(contains(inflate(trailing, &out), "trailing"));
  size_t consumed = 0;
  REQUIRE(ddpm::inflate_raw(trailing.data(), trailing.size(), 10, &out, &consumed).ok());
  CHECK(consumed == 6);
}

TEST_CASE("inflate rejects malformed dynamic block headers", "[image]") {
  Bytes out;
  {
    TestBits bits;  // four one-bit codes: over-subscribed
    dynamic_header(&bits, 257, 1, {1, 1, 1, 1});
    CHECK(contains(inflate(bits.bytes(), &out), "code-length code is over-subscribed"));
  }
  {
    TestBits bits;  // a single two-bit code: incomplete, never allowed for the code-length code
    dynamic_header(&bits, 257, 1, {0, 0, 0, 2});
    CHECK(contains(inflate(bits.bytes(), &out), "code-length code is incomplete"));
  }
  {
    TestBits bits;
    dynamic_header(&bits, 257, 1, {0, 0, 0, 0});
    CHECK(contains(inflate(bits.bytes(), &out), "code-length code is empty"));
  }
  {
    TestBits bits;
    bits.put(1, 1);
    bits.put(2, 2);
    bits.put(30, 5);  // 287 literal/length codes
    bits.put(0, 5);
    bits.put(0, 4);
    for (int i = 0; i < 4; ++i) bits.put(0, 3);
    CHECK(contains(inflate(bits.bytes(), &out), "287 literal/length"));
  }
  {
    TestBits bits;  // symbols 16 and 0 with one-bit codes (0 -> "0", 16 -> "1"); starts with a repeat
    dynamic_header(&bits, 257, 1, {1, 0, 0, 1});
    bits.put_code(1, 1);
    bits.put(0, 2);
    CHECK(contains(inflate(bits.bytes(), &out), "no previous length"));
  }
  {
    TestBits bits;  // 138 + 138 zeros overrun the 258 lengths declared
    dynamic_header(&bits, 257, 1, code_lengths_18_and_1());
    bits.put_code(1, 1);
    bits.put(127, 7);
    bits.put_code(1, 1);
    bits.put(127, 7);
    CHECK(contains(inflate(bits.bytes(), &out), "runs past"));
  }
  {
    TestBits bits;  // all literal/length lengths zero: no end-of-block code
    dynamic_header(&bits, 257, 1, code_lengths_18_and_1());
    bits.put_code(1, 1);
    bits.put(127, 7);
    bits.put_code(1, 1);
    bits.put(120 - 11, 7);
    CHECK(contains(inflate(bits.bytes(), &out), "no end-of-block"));
  }
  {
    TestBits bits;  // 257 literal/length codes of length 1: over-subscribed. Symbols 1 -> "0", 16 -> "1".
    std::vector<int> order(18, 0);
    order[0] = 1;   // symbol 16
    order[17] = 1;  // symbol 1
    dynamic_header(&bits, 257, 1, order);
    bits.put_code(0, 1);
    for (int i = 0; i < 42; ++i) {
      bits.put_code(1, 1);
      bits.put(3, 2);
    }  // 42 x 6 repeats
    bits.put_code(1, 1);
    bits.put(0, 2);       // 3 more: 256 lengths
    bits.put_code(0, 1);  // 257th
    bits.put_code(0, 1);  // the distance code
    CHECK(contains(inflate(bits.bytes(), &out), "literal/length code is over-subscribed"));
  }
  {
    // 'a' and end-of-block with two-bit codes only: incomplete. Code-length code: 18 -> "0", 1 -> "10", 2 -> "11".
    TestBits bits;
    std::vector<int> order(18, 0);
    order[2] = 1;   // symbol 18
    order[15] = 2;  // symbol 2
    order[17] = 2;  // symbol 1
    dynamic_header(&bits, 257, 1, order);
    bits.put_code(0, 1);
    bits.put(97 - 11, 7);
    bits.put_code(3, 2);
    bits.put_code(0, 1);
    bits.put(127, 7);
    bits.put_code(0, 1);
    bits.put(9, 7);
    bits.put_code(3, 2);
    bits.put_code(2, 2);
    CHECK(contains(inflate(bits.bytes(), &out), "literal/length code is incomplete"));
  }
  {
    // A lone one-bit distance code is accepted, but its unused bit pattern "1" is no code. Literal/length:
    // 'a' -> "0", 256 -> "10", 257 -> "11"; code-length code: 18 -> "0", 1 -> "10", 2 -> "11".
    auto header = [](TestBits* bits) {
      std::vector<int> order(18, 0);
      order[2] = 1;   // symbol 18
      order[15] = 2;  // symbol 2
      order[17] = 2;  // symbol 1
      dynamic_header(bits, 258, 1, order);
      bits->put_code(0, 1);
      bits->put(97 - 11, 7);  // 0..96 unused
      bits->put_code(2, 2);   // 'a': 1
      bits->put_code(0, 1);
      bits->put(127, 7);  // 98..235 unused
      bits->put_code(0, 1);
      bits->put(9, 7);       // 236..255 unused
      bits->put_code(3, 2);  // 256: 2
      bits->put_code(3, 2);  // 257: 2
      bits->put_code(2, 2);  // distance 0: 1
      bits->put_code(0, 1);  // 'a'
      bits->put_code(3, 2);  // length 3
    };
    TestBits good;
    header(&good);
    good.put_code(0, 1);  // distance 1
    good.put_code(2, 2);  // end of block
    Status status = inflate(good.bytes(), &out);
    INFO(status.message());
    REQUIRE(status.ok());
    CHECK(string_of(out) == "aaaa");
    TestBits bad;
    header(&bad);
    bad.put_code(1, 1);
    bad.put(0, 16);  // more input, so that the failure cannot be mistaken for truncation
    CHECK(contains(inflate(bad.bytes(), &out), "invalid distance code"));
  }
}

TEST_CASE("every truncation of a valid stream is an error", "[image]") {
  for (const char* name : {"text.zlib", "text_fixed.zlib", "text_stored.zlib", "hello.zlib"}) {
    Bytes stream = read_fixture(name);
    Bytes out;
    for (size_t n = 0; n < stream.size(); ++n) {
      Status status = ddpm::zlib_decompress(stream.data(), n, 1 << 20, &out);
      if (status.ok()) FAIL(name << " truncated to " << n << " bytes decoded without error");
    }
  }
  Bytes gz = read_fixture("text_allflags.gz");
  Bytes out;
  for (size_t n = 0; n < gz.size(); ++n) {
    if (ddpm::gzip_decompress(gz.data(), n, 1 << 20, &out).ok())
      FAIL("text_allflags.gz truncated to " << n << " bytes decoded without error");
  }
}

TEST_CASE("checksum and header errors are reported", "[image]") {
  Bytes out;
  Bytes stream = read_fixture("text.zlib");
  Bytes bad = stream;
  bad.back() ^= 1;
  CHECK(contains(ddpm::zlib_decompress(bad.data(), bad.size(), 1 << 20, &out), "Adler-32 mismatch"));
  bad = stream;
  bad[1] ^= 1;
  CHECK(contains(ddpm::zlib_decompress(bad.data(), bad.size(), 1 << 20, &out), "header check"));
  bad = stream;
  bad[0] = 0x77;  // method 7
  CHECK(contains(ddpm::zlib_decompress(bad.data(), bad.size(), 1 << 20, &out), "method"));
  Bytes dictionary = {0x78, 0xBB, 0, 0, 0, 0};
  CHECK(contains(ddpm::zlib_decompress(dictionary.data(), dictionary.size(), 1 << 20, &out), "dictionar"));
  bad = stream;
  bad.push_back(0);
  CHECK(contains(ddpm::zlib_decompress(bad.data(), bad.size(), 1 << 20, &out), "trailing"));
  size_t consumed = 0;
  REQUIRE(ddpm::zlib_decompress(bad.data(), bad.size(), 1 << 20, &out, &consumed).ok());
  CHECK(consumed == stream.size());

  Bytes gz = read_fixture("text_allflags.gz");
  bad = gz;
  bad[bad.size() - 8] ^= 1;
  CHECK(contains(ddpm::gzip_decompress(bad.data(), bad.size(), 1 << 20, &out), "CRC-32 mismatch"));
  bad = gz;
  bad[bad.size() - 4] ^= 1;
  CHECK(contains(ddpm::gzip_decompress(bad.data(), bad.size(), 1 << 20, &out), "length mismatch"));
  bad = gz;
  bad[20] ^= 1;  // inside the file name: the header CRC no longer matches
  CHECK(contains(ddpm::gzip_decompress(bad.data(), bad.size(), 1 << 20, &out), "header CRC"));
  bad = gz;
  bad[3] |= 0x80;
  CHECK(contains(ddpm::gzip_decompress(bad.data(), bad.size(), 1 << 20, &out), "reserved"));
  bad = gz;
  bad[0] = 0;
  CHECK(contains(ddpm::gzip_decompress(bad.data(), bad.size(), 1 << 20, &out), "magic"));
}

TEST_CASE("a decompression bomb stops at the caller's limit", "[image]") {
  Bytes zeros(size_t(10) << 20, 0);
  Bytes bomb = ddpm::gzip_compress(zeros.data(), zeros.size(), CompressionLevel::Default);
  REQUIRE(bomb.size() < 20000);
  Bytes out;
  Status status = ddpm::gzip_decompress(bomb.data(), bomb.size(), 1 << 20, &out);
  CHECK(contains(status, "limit of 1048576 bytes"));
  CHECK(out.size() <= (size_t(1) << 20));
  REQUIRE(ddpm::gzip_decompress(bomb.data(), bomb.size(), zeros.size(), &out).ok());
  CHECK(out == zeros);
  CHECK_FALSE(ddpm::gzip_decompress(bomb.data(), bomb.size(), zeros.size() - 1, &out).ok());
}

TEST_CASE("corrupted streams fail cleanly or decode within the limit", "[image]") {
  Bytes stream = read_fixture("text.zlib");
  std::mt19937 rng(1234);
  int failures = 0;
  for (int trial = 0; trial < 400; ++trial) {
    Bytes bad = stream;
    int flips = 1 + int(rng() % 4);
    for (int i = 0; i < flips; ++i) bad[rng() % bad.size()] ^= uint8_t(1u << (rng() % 8));
    Bytes out;
    Status status = ddpm::zlib_decompress(bad.data(), bad.size(), 20000, &out);
    if (!status.ok()) failures++;
    CHECK(out.size() <= 20000);
  }
  CHECK(failures > 390);  // Adler-32 catches what the format does not
}

// ------------------------------------------------------------------------------------------------------------------
// Deflate

TEST_CASE("deflate round-trips many sizes and kinds of data at every level", "[image]") {
  std::vector<size_t> sizes = {0, 1, 2, 3, 4, 100, 4095, 65535, 65536, 65537, size_t(1) << 20};
  struct Kind {
    const char* name;
    std::function<Bytes(size_t)> make;
  };
  std::vector<Kind> kinds = {
      {"random", [](size_t n) { return random_bytes(n, uint32_t(n)); }},
      {"zeros", [](size_t n) { return Bytes(n, 0); }},
      {"skewed",
       [](size_t n) {
         // Values with Fibonacci frequencies: strongly skewed statistics, deep Huffman codes.
         std::vector<double> weights;
         for (double a = 1, b = 1; weights.size() < 24; b += a, a = b - a) weights.push_back(a);
         std::discrete_distribution<int> pick(weights.begin(), weights.end());
         std::mt19937 rng{uint32_t(n)};
         Bytes b(n);
         for (auto& v : b) v = uint8_t(pick(rng) * 7);
         return b;
       }},
      {"period 2",
       [](size_t n) {
         Bytes b(n);
         for (size_t i = 0; i < n; ++i) b[i] = "ab"[i % 2];
         return b;
       }},
      {"text",
       [](size_t n) {
         std::mt19937 rng{uint32_t(n)};
         static const char* words[] = {"diffusion ", "model ", "noise ", "step ", "unet ", "sample ", "\n"};
         std::string s;
         while (s.size() < n) s += words[rng() % 7];
         s.resize(n);
         return bytes_of(s);
       }},
  };
  for (const Kind& kind : kinds) {
    for (size_t size : sizes) {
      Bytes data = kind.make(size);
      for (CompressionLevel level :
           {CompressionLevel::Store, CompressionLevel::Fast, CompressionLevel::Default, CompressionLevel::Best}) {
        if (level == CompressionLevel::Best && size > 65537) continue;  // slow by design; covered at smaller sizes
        INFO(kind.name << ", " << size << " bytes, level " << int(level));
        Bytes compressed = ddpm::zlib_compress(data.data(), data.size(), level);
        Bytes out;
        Status status = ddpm::zlib_decompress(compressed.data(), compressed.size(), data.size(), &out);
        INFO(status.message());
        REQUIRE(status.ok());
        REQUIRE(out == data);
        // Incompressible data falls back to stored blocks: a few bytes per 64 KiB.
        CHECK(compressed.size() <= size + 5 * (size / 16384 + 1) + 6);
        const std::string name = kind.name;
        if (level != CompressionLevel::Store && size == (size_t(1) << 20) && name != "random") {
          CHECK(compressed.size() < (name == "skewed" ? size * 9 / 20 : size / 3));  // skewed: entropy 0.31
        }
        if (level != CompressionLevel::Store && size == (size_t(1) << 20) && std::string(kind.name) == "zeros") {
          CHECK(compressed.size() < (level == CompressionLevel::Fast ? 8000u : 2000u));
        }
      }
    }
  }
}

TEST_CASE("Huffman code lengths are optimal when they fit and limited when they do not", "[image]") {
  auto kraft_is_one = [](const std::vector<uint8_t>& lengths) {
    uint64_t sum = 0;  // in units of 2^-15
    for (uint8_t length : lengths)
      if (length > 0) sum += uint64_t(1) << (15 - length);
    return sum == (uint64_t(1) << 15);
  };
  {
    std::vector<uint32_t> frequencies = {1, 1, 2, 3, 5, 0, 8};
    std::vector<uint8_t> lengths(frequencies.size());
    ddpm::build_limited_huffman_lengths(frequencies.data(), int(frequencies.size()), 15, lengths.data());
    CHECK(lengths == std::vector<uint8_t>{5, 5, 4, 3, 2, 0, 1});
    // The same frequencies under a 3-bit limit: six symbols still fit, and the code stays complete.
    ddpm::build_limited_huffman_lengths(frequencies.data(), int(frequencies.size()), 3, lengths.data());
    CHECK(*std::max_element(lengths.begin(), lengths.end()) <= 3);
    CHECK(lengths[5] == 0);
    CHECK(kraft_is_one(lengths));
  }
  {
    // Fibonacci frequencies make the optimal tree a chain 29 deep.
    std::vector<uint32_t> frequencies;
    for (uint32_t a = 1, b = 1; frequencies.size() < 30; b += a, a = b - a) frequencies.push_back(a);
    std::vector<uint8_t> lengths(frequencies.size());
    ddpm::build_limited_huffman_lengths(frequencies.data(), int(frequencies.size()), 15, lengths.data());
    CHECK(*std::max_element(lengths.begin(), lengths.end()) == 15);
    CHECK(*std::min_element(lengths.begin(), lengths.end()) >= 1);
    CHECK(kraft_is_one(lengths));
    for (size_t i = 1; i < lengths.size(); ++i) CHECK(lengths[i] <= lengths[i - 1]);  // commoner, never longer
  }
  {
    std::vector<uint32_t> frequencies(19, 0);
    frequencies[4] = 9;
    std::vector<uint8_t> lengths(19);
    ddpm::build_limited_huffman_lengths(frequencies.data(), 19, 7, lengths.data());
    CHECK(lengths[4] == 1);
    CHECK(std::count(lengths.begin(), lengths.end(), 0) == 18);
  }
}

TEST_CASE("raw deflate and gzip encoders round-trip and are deterministic", "[image]") {
  Bytes data = read_fixture("text.txt");
  Bytes raw = ddpm::deflate_raw(data.data(), data.size(), CompressionLevel::Default);
  Bytes out;
  REQUIRE(ddpm::inflate_raw(raw.data(), raw.size(), data.size(), &out).ok());
  CHECK(out == data);
  CHECK(raw.size() < read_fixture("text_level1.zlib").size());  // at least as good as zlib level 1

  Bytes gz = ddpm::gzip_compress(data.data(), data.size(), CompressionLevel::Fast);
  REQUIRE(ddpm::gzip_decompress(gz.data(), gz.size(), data.size(), &out).ok());
  CHECK(out == data);
  CHECK(gz == ddpm::gzip_compress(data.data(), data.size(), CompressionLevel::Fast));
  CHECK(ddpm::looks_like_gzip(gz.data(), gz.size()));
  CHECK_FALSE(ddpm::looks_like_gzip(raw.data(), 1));
}

// ------------------------------------------------------------------------------------------------------------------
// PNG

namespace {

Bytes encode(int width, int height, int channels, const Bytes& pixels, const ddpm::TextChunks& text = {}) {
  Bytes png;
  Status status = ddpm::encode_png(width, height, channels, pixels.data(), text, &png);
  INFO(status.message());
  REQUIRE(status.ok());
  return png;
}

Status decode(const Bytes& png, ddpm::Image* image) {
  return ddpm::decode_png(png.data(), png.size(), "test.png", image);
}

void put_be32(Bytes* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(uint8_t(v >> (8 * i)));
}

Bytes chunk(const std::string& type, const Bytes& data) {
  Bytes out;
  put_be32(&out, uint32_t(data.size()));
  out.insert(out.end(), type.begin(), type.end());
  out.insert(out.end(), data.begin(), data.end());
  put_be32(&out, ddpm::crc32(out.data() + 4, data.size() + 4));
  return out;
}

Bytes ihdr(uint32_t width, uint32_t height, int depth, int color_type, int interlace = 0) {
  Bytes data;
  put_be32(&data, width);
  put_be32(&data, height);
  data.push_back(uint8_t(depth));
  data.push_back(uint8_t(color_type));
  data.push_back(0);
  data.push_back(0);
  data.push_back(uint8_t(interlace));
  return chunk("IHDR", data);
}

Bytes assemble(const std::vector<Bytes>& chunks) {
  Bytes out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  for (const Bytes& c : chunks) out.insert(out.end(), c.begin(), c.end());
  return out;
}

Bytes idat(const Bytes& scanlines) {
  return chunk("IDAT", ddpm::zlib_compress(scanlines.data(), scanlines.size(), CompressionLevel::Default));
}

// The formulas of make_fixtures.py.
int sample(int x, int y, int c, int modulus) { return (x * 7 + y * 13 + c * 29 + x * y) % modulus; }
int sample16(int x, int y, int c) { return (x * 4099 + y * 3331 + c * 7919 + x * y * 31) % 65536; }
uint8_t palette_component(int i, int c) { return uint8_t(i * (c == 0 ? 37 : c == 1 ? 91 : 13) % 256); }

using PixelFormula = std::function<std::vector<int>(int x, int y)>;

void check_fixture(const std::string& name, int width, int height, int channels, const PixelFormula& expected) {
  INFO(name);
  ddpm::Image image;
  Status status = ddpm::read_png("data/image/" + name, &image);
  INFO(status.message());
  REQUIRE(status.ok());
  REQUIRE(image.width == width);
  REQUIRE(image.height == height);
  REQUIRE(image.channels == channels);
  REQUIRE(image.pixels.size() == size_t(width * height * channels));
  int mismatches = 0;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      std::vector<int> want = expected(x, y);
      for (int c = 0; c < channels; ++c) {
        int got = image.pixels[size_t((y * width + x) * channels + c)];
        if (got != want[size_t(c)] && mismatches++ < 5)
          FAIL_CHECK("pixel " << x << "," << y << " channel " << c << ": " << got << " != " << want[size_t(c)]);
      }
    }
  }
  CHECK(mismatches == 0);
}

}  // namespace

TEST_CASE("PNG round-trips every channel count and odd sizes", "[image]") {
  const int sizes[][2] = {{1, 1}, {3, 7}, {257, 3}, {64, 64}};
  for (int channels = 1; channels <= 4; ++channels) {
    for (const auto& size : sizes) {
      for (int smooth = 0; smooth <= 1; ++smooth) {
        const int width = size[0], height = size[1];
        INFO(width << "x" << height << "x" << channels << (smooth ? " smooth" : " random"));
        Bytes pixels = random_bytes(size_t(width * height * channels), uint32_t(width * 31 + channels));
        if (smooth) {
          for (int y = 0; y < height; ++y)
            for (int x = 0; x < width; ++x)
              for (int c = 0; c < channels; ++c)
                pixels[size_t((y * width + x) * channels + c)] = uint8_t(x * 3 + y * 5 + c * 40);
        }
        ddpm::TextChunks text = {{"Title", "sample grid"}, {"step", std::to_string(width)}};
        Bytes png = encode(width, height, channels, pixels, text);
        ddpm::Image image;
        Status status = decode(png, &image);
        INFO(status.message());
        REQUIRE(status.ok());
        CHECK(image.width == width);
        CHECK(image.height == height);
        CHECK(image.channels == channels);
        CHECK(image.pixels == pixels);
        CHECK(image.text == text);
      }
    }
  }
}

TEST_CASE("PNG filters make smooth images small", "[image]") {
  // Each row is the previous one plus 5: incompressible without the Up filter, nearly free with it.
  const int size = 200;
  Bytes pixels(size * size);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) pixels[size_t(y * size + x)] = uint8_t(x * x / 7 + 5 * y);
  Bytes png = encode(size, size, 1, pixels);
  CHECK(png.size() < 1500);
  ddpm::Image image;
  REQUIRE(decode(png, &image).ok());
  CHECK(image.pixels == pixels);
}

TEST_CASE("PNG encoder validates its arguments", "[image]") {
  Bytes pixels(64, 0);
  Bytes out;
  CHECK(contains(ddpm::encode_png(2, 2, 0, pixels.data(), {}, &out), "channel"));
  CHECK(contains(ddpm::encode_png(2, 2, 5, pixels.data(), {}, &out), "channel"));
  CHECK(contains(ddpm::encode_png(0, 2, 1, pixels.data(), {}, &out), "0x2"));
  CHECK(contains(ddpm::encode_png(16385, 1, 1, pixels.data(), {}, &out), "16384"));
  CHECK_FALSE(ddpm::encode_png(2, 2, 1, nullptr, {}, &out).ok());
  for (const std::string& keyword : {std::string(), std::string(80, 'k'), std::string(" lead"), std::string("trail "),
                                     std::string("two  spaces"), std::string("tab\there"), std::string("del\x7f")}) {
    INFO("keyword \"" << keyword << "\"");
    CHECK(contains(ddpm::encode_png(2, 2, 1, pixels.data(), {{keyword, "v"}}, &out), "keyword"));
  }
  CHECK(contains(ddpm::encode_png(2, 2, 1, pixels.data(), {{"key", std::string("a\0b", 3)}}, &out), "NUL"));
  CHECK(ddpm::encode_png(2, 2, 1, pixels.data(), {{std::string(79, 'k'), "ok"}, {"Caf\xe9 au lait", ""}}, &out).ok());
}

TEST_CASE("write_png writes atomically and read_png reads it back", "[image]") {
  TempDir dir;
  Bytes pixels = random_bytes(5 * 4 * 3, 99);
  std::string path = dir.file("out.png");
  REQUIRE(ddpm::write_png(path, 5, 4, 3, pixels.data(), {{"Software", "ddpm.cpp"}}).ok());
  ddpm::Image image;
  REQUIRE(ddpm::read_png(path, &image).ok());
  CHECK(image.pixels == pixels);
  REQUIRE(image.text.size() == 1);
  CHECK(image.text[0].second == "ddpm.cpp");

  // Overwriting replaces the file; a failed encode leaves the old one untouched.
  Bytes other = random_bytes(2 * 2 * 1, 5);
  REQUIRE(ddpm::write_png(path, 2, 2, 1, other.data(), {}).ok());
  Status status = ddpm::write_png(path, 2, 2, 7, other.data(), {});
  CHECK(contains(status, path));
  REQUIRE(ddpm::read_png(path, &image).ok());
  CHECK(image.pixels == other);
  CHECK_FALSE(dir.has_temporary_files());

  status = ddpm::write_png(dir.file("missing/dir/out.png"), 2, 2, 1, other.data(), {});
  CHECK_FALSE(status.ok());
  CHECK(contains(status, "missing/dir"));
  CHECK_FALSE(dir.has_temporary_files());

  CHECK(contains(ddpm::read_png(dir.file("absent.png"), &image), "absent.png"));
}

TEST_CASE("PNGs written by an independent encoder decode to the expected pixels", "[image]") {
  auto gray = [](int depth) {
    return [depth](int x, int y) {
      int m = (1 << depth) - 1;
      return std::vector<int>{sample(x, y, 0, m + 1) * 255 / m};
    };
  };
  for (int depth : {1, 2, 4, 8}) check_fixture("gray" + std::to_string(depth) + ".png", 13, 7, 1, gray(depth));
  check_fixture("gray16.png", 13, 7, 1, [](int x, int y) { return std::vector<int>{sample16(x, y, 0) >> 8}; });
  auto wide = [](int channels) {
    return [channels](int x, int y) {
      std::vector<int> v;
      for (int c = 0; c < channels; ++c) v.push_back(sample16(x, y, c) >> 8);
      return v;
    };
  };
  auto narrow = [](int channels) {
    return [channels](int x, int y) {
      std::vector<int> v;
      for (int c = 0; c < channels; ++c) v.push_back(sample(x, y, c, 256));
      return v;
    };
  };
  check_fixture("rgb16.png", 9, 5, 3, wide(3));
  check_fixture("rgba16.png", 9, 5, 4, wide(4));
  check_fixture("ga8.png", 9, 5, 2, narrow(2));
  check_fixture("rgb8.png", 9, 5, 3, narrow(3));
  check_fixture("rgba8.png", 9, 5, 4, narrow(4));
  auto palette = [](int entries, int alpha_entries) {
    return [=](int x, int y) {
      int i = sample(x, y, 0, entries);
      std::vector<int> v = {palette_component(i, 0), palette_component(i, 1), palette_component(i, 2)};
      if (alpha_entries > 0) v.push_back(i < alpha_entries ? i * 50 % 256 : 255);
      return v;
    };
  };
  check_fixture("palette1.png", 11, 6, 3, palette(2, 0));
  check_fixture("palette4_trns.png", 11, 6, 4, palette(16, 5));
  check_fixture("palette8.png", 11, 6, 3, palette(200, 0));
  check_fixture("gray8_trns.png", 13, 7, 2, [](int x, int y) {
    int v = sample(x, y, 0, 64);
    return std::vector<int>{v, v == 20 ? 0 : 255};
  });
  check_fixture("rgb8_trns.png", 9, 5, 4, [](int x, int y) {
    std::vector<int> v;
    bool key = true;
    for (int c = 0; c < 3; ++c) {
      v.push_back(sample(x, y, c, 4));
      key = key && v.back() == sample(1, 1, c, 4);
    }
    v.push_back(key ? 0 : 255);
    return v;
  });
  check_fixture("interlaced_rgb8.png", 19, 11, 3, narrow(3));
  check_fixture("interlaced_gray2.png", 10, 9, 1, gray(2));
  check_fixture("interlaced_rgba16.png", 7, 7, 4, wide(4));
  check_fixture("interlaced_1x1.png", 1, 1, 1, narrow(1));
  check_fixture("text.png", 5, 4, 3, narrow(3));

  ddpm::Image image;
  REQUIRE(ddpm::read_png("data/image/text.png", &image).ok());
  ddpm::TextChunks expected = {{"Title", "a small test"}, {"Comment", "compressed comment text"}};
  CHECK(image.text == expected);
}

TEST_CASE("malformed PNGs are rejected with a message naming the problem", "[image]") {
  ddpm::Image image;
  const Bytes good = encode(3, 2, 3, random_bytes(18, 3));
  REQUIRE(decode(good, &image).ok());

  Bytes bad = good;
  bad[0] = 0x88;
  CHECK(contains(decode(bad, &image), "signature"));
  bad = good;
  bad[16] ^= 1;  // inside IHDR's width
  CHECK(contains(decode(bad, &image), "CRC mismatch in IHDR"));
  for (size_t n = 0; n < good.size(); ++n) {
    Bytes cut(good.begin(), good.begin() + std::ptrdiff_t(n));
    Status status = decode(cut, &image);
    if (status.ok()) FAIL("PNG truncated to " << n << " bytes decoded without error");
    CHECK(contains(status, "test.png"));
    CHECK(image.pixels.empty());
  }

  Bytes row_data = {0, 1, 2, 3, 0, 4, 5, 6};  // 3x2 gray: two scanlines with filter 0
  CHECK(decode(assemble({ihdr(3, 2, 8, 0), idat(row_data), chunk("IEND", {})}), &image).ok());
  CHECK(contains(decode(assemble({ihdr(20000, 2, 8, 0), idat(row_data), chunk("IEND", {})}), &image), "16384"));
  CHECK(contains(decode(assemble({ihdr(3, 0, 8, 0), idat(row_data), chunk("IEND", {})}), &image), "3x0"));
  CHECK(contains(decode(assemble({idat(row_data), chunk("IEND", {})}), &image), "not IHDR"));
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), chunk("IEND", {})}), &image), "no IDAT"));
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), idat(row_data)}), &image), "no IEND"));
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), chunk("ABCD", {1, 2}), idat(row_data), chunk("IEND", {})}), &image),
                 "unknown critical chunk ABCD"));
  CHECK(decode(assemble({ihdr(3, 2, 8, 0), chunk("abCd", {1, 2}), idat(row_data), chunk("IEND", {})}), &image).ok());
  CHECK(contains(decode(assemble({ihdr(3, 2, 4, 2), idat(row_data), chunk("IEND", {})}), &image), "bit depth 4"));
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 5), idat(row_data), chunk("IEND", {})}), &image), "colour type 5"));
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0, 2), idat(row_data), chunk("IEND", {})}), &image), "interlace"));
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), ihdr(3, 2, 8, 0), idat(row_data), chunk("IEND", {})}), &image),
                 "second IHDR"));

  Bytes bad_filter = {0, 1, 2, 3, 5, 4, 5, 6};
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), idat(bad_filter), chunk("IEND", {})}), &image), "filter type 5"));
  Bytes short_data(row_data.begin(), row_data.end() - 1);
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), idat(short_data), chunk("IEND", {})}), &image), "ends early"));
  Bytes long_data = row_data;
  long_data.push_back(0);
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), idat(long_data), chunk("IEND", {})}), &image), "limit"));

  // A truncated IDAT: the chunk claims more bytes than the file has.
  Bytes truncated_idat = assemble({ihdr(3, 2, 8, 0), idat(row_data)});
  truncated_idat.resize(truncated_idat.size() - 6);
  CHECK(contains(decode(truncated_idat, &image), "IDAT chunk at byte 33 is truncated"));
  // IDAT split with another chunk in between.
  Bytes stream = ddpm::zlib_compress(row_data.data(), row_data.size(), CompressionLevel::Default);
  Bytes first(stream.begin(), stream.begin() + 4), second(stream.begin() + 4, stream.end());
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), chunk("IDAT", first), chunk("tEXt", {'a', 0, 'b'}),
                                  chunk("IDAT", second), chunk("IEND", {})}),
                        &image),
                 "not consecutive"));
  CHECK(decode(assemble({ihdr(3, 2, 8, 0), chunk("IDAT", first), chunk("IDAT", second), chunk("IEND", {})}), &image)
            .ok());

  // Palettes.
  Bytes palette_rows = {0, 0, 1, 2, 0, 2, 1, 0};
  Bytes plte = {10, 11, 12, 20, 21, 22, 30, 31, 32};
  REQUIRE(
      decode(assemble({ihdr(3, 2, 8, 3), chunk("PLTE", plte), idat(palette_rows), chunk("IEND", {})}), &image).ok());
  CHECK(image.channels == 3);
  CHECK(image.pixels[3] == 20);
  CHECK(
      contains(decode(assemble({ihdr(3, 2, 8, 3), idat(palette_rows), chunk("IEND", {})}), &image), "without a PLTE"));
  Bytes short_plte(plte.begin(), plte.begin() + 6);
  CHECK(contains(
      decode(assemble({ihdr(3, 2, 8, 3), chunk("PLTE", short_plte), idat(palette_rows), chunk("IEND", {})}), &image),
      "palette index 2"));
  CHECK(contains(
      decode(assemble({ihdr(3, 2, 8, 3), chunk("PLTE", {1, 2}), idat(palette_rows), chunk("IEND", {})}), &image),
      "PLTE chunk length 2"));
  CHECK(contains(decode(assemble({ihdr(3, 2, 8, 0), chunk("PLTE", plte), idat(row_data), chunk("IEND", {})}), &image),
                 "grayscale"));
}

// ------------------------------------------------------------------------------------------------------------------
// IDX

namespace {

Bytes idx_file(uint8_t type, const std::vector<uint32_t>& dims, size_t payload_size) {
  Bytes out = {0, 0, type, uint8_t(dims.size())};
  for (uint32_t d : dims) put_be32(&out, d);
  for (size_t i = 0; i < payload_size; ++i) out.push_back(uint8_t(i * 7 + 1));
  return out;
}

Bytes gzipped(const Bytes& data) { return ddpm::gzip_compress(data.data(), data.size(), CompressionLevel::Default); }

Status decode_idx(const Bytes& bytes, ddpm::IdxArray* out) {
  return ddpm::decode_idx(bytes.data(), bytes.size(), "test.idx", out);
}

}  // namespace

TEST_CASE("IDX files decode raw and gzipped", "[image]") {
  Bytes raw = idx_file(0x08, {3, 2, 4}, 24);
  for (const Bytes& file : {raw, gzipped(raw)}) {
    ddpm::IdxArray array;
    Status status = decode_idx(file, &array);
    INFO(status.message());
    REQUIRE(status.ok());
    CHECK(array.dims == std::vector<int64_t>{3, 2, 4});
    CHECK(array.type_code == 0x08);
    REQUIRE(array.data.size() == 24);
    CHECK(array.data[0] == 1);
    CHECK(array.data[23] == uint8_t(23 * 7 + 1));
  }
  TempDir dir;
  Bytes labels = idx_file(0x08, {5}, 5);
  write_bytes(dir.file("labels.idx1-ubyte"), labels);
  write_bytes(dir.file("labels.idx1-ubyte.gz"), gzipped(labels));
  for (const char* name : {"labels.idx1-ubyte", "labels.idx1-ubyte.gz"}) {
    ddpm::IdxArray array;
    REQUIRE(ddpm::read_idx(dir.file(name), &array).ok());
    CHECK(array.dims == std::vector<int64_t>{5});
    CHECK(array.data == Bytes(labels.begin() + 8, labels.end()));
  }
  ddpm::IdxArray empty;
  REQUIRE(decode_idx(idx_file(0x08, {0, 28}, 0), &empty).ok());
  CHECK(empty.data.empty());
  CHECK(contains(ddpm::read_idx(dir.file("absent.idx"), &empty), "absent.idx"));
}

TEST_CASE("malformed IDX files are rejected", "[image]") {
  ddpm::IdxArray array;
  Bytes bad = idx_file(0x08, {2, 2}, 4);
  bad[1] = 8;
  CHECK(contains(decode_idx(bad, &array), "not an IDX file"));
  CHECK(contains(decode_idx(idx_file(0x0D, {2, 2}, 16), &array), "0x0d (float32)"));
  CHECK(contains(decode_idx(idx_file(0x08, {}, 0), &array), "no dimensions"));
  CHECK(contains(decode_idx({0, 0, 8}, &array), "truncated"));
  Bytes cut_header = idx_file(0x08, {2, 2}, 0);
  cut_header.resize(9);
  CHECK(contains(decode_idx(cut_header, &array), "truncated"));
  CHECK(contains(decode_idx(idx_file(0x08, {2, 2}, 3), &array), "payload is 3 bytes but the dimensions need 4"));
  CHECK(contains(decode_idx(idx_file(0x08, {2, 2}, 5), &array), "payload is 5 bytes"));
  CHECK(contains(decode_idx(idx_file(0x08, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, 0), &array), "more than"));
  CHECK(contains(decode_idx(gzipped(idx_file(0x08, {2, 2}, 3)), &array), "payload is 3 bytes"));
  Status status = decode_idx(gzipped(idx_file(0x08, {2, 2}, 500)), &array);
  INFO(status.message());
  CHECK(contains(status, "limit of 16 bytes"));  // 12 header bytes + 2 x 2
  Bytes corrupt = gzipped(idx_file(0x08, {4, 4}, 16));
  corrupt[corrupt.size() - 6] ^= 0x10;
  CHECK(contains(decode_idx(corrupt, &array), "test.idx: gzip: CRC-32"));
  Bytes cut_gzip = gzipped(idx_file(0x08, {4, 4}, 16));
  cut_gzip.resize(cut_gzip.size() - 3);
  CHECK(contains(decode_idx(cut_gzip, &array), "test.idx: gzip"));
}

TEST_CASE("Fashion-MNIST files read when installed", "[image]") {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  if (!std::filesystem::exists(dir + "t10k-labels-idx1-ubyte.gz")) {
    WARN("Fashion-MNIST not installed in " << dir << " (apt-get install dataset-fashion-mnist); skipped");
    return;
  }
  struct Expected {
    const char* file;
    std::vector<int64_t> dims;
  };
  for (const Expected& e :
       {Expected{"train-images-idx3-ubyte.gz", {60000, 28, 28}}, Expected{"train-labels-idx1-ubyte.gz", {60000}},
        Expected{"t10k-images-idx3-ubyte.gz", {10000, 28, 28}}, Expected{"t10k-labels-idx1-ubyte.gz", {10000}}}) {
    INFO(e.file);
    ddpm::IdxArray array;
    Status status = ddpm::read_idx(dir + e.file, &array);
    INFO(status.message());
    REQUIRE(status.ok());
    CHECK(array.dims == e.dims);
    if (e.dims.size() == 1) {
      // Fashion-MNIST is balanced: every class has a tenth of the examples.
      std::vector<int64_t> counts(10, 0);
      bool in_range = true;
      for (uint8_t label : array.data) {
        if (label < 10)
          counts[label]++;
        else
          in_range = false;
      }
      CHECK(in_range);
      CHECK(counts == std::vector<int64_t>(10, e.dims[0] / 10));
    } else {
      CHECK(*std::max_element(array.data.begin(), array.data.end()) == 255);
      CHECK(*std::min_element(array.data.begin(), array.data.end()) == 0);
    }
  }
}
