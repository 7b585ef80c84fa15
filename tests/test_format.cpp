// Tests for the .ddpm container (src/model/ddpm_file.*, docs/FORMAT.md) and CRC-32C.
//
// Hostile files are made by mutating a valid one. Mutations that should be caught by a structural check (not just
// by the header checksum) re-seal the header checksum afterwards, using the layout as FORMAT.md states it, so these
// tests also hold the implementation to the document.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "io/crc32c.h"
#include "model/ddpm_file.h"

using namespace ddpm;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/ddpm_format_test_XXXXXX";
    const char* made = mkdtemp(pattern);
    REQUIRE(made != nullptr);
    path_ = made;
  }
  ~TempDir() {
    for (const std::string& name : list()) std::remove((path_ + "/" + name).c_str());
    rmdir(path_.c_str());
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> list() const {
    std::vector<std::string> names;
    DIR* dir = opendir(path_.c_str());
    if (dir == nullptr) return names;
    while (const dirent* entry = readdir(dir)) {
      const std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(dir);
    return names;
  }

 private:
  std::string path_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// ---- The layout as docs/FORMAT.md describes it ----

uint64_t u64_at(const std::vector<uint8_t>& b, size_t off) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b.at(off + i);
  return v;
}
uint32_t u32_at(const std::vector<uint8_t>& b, size_t off) { return static_cast<uint32_t>(u64_at(b, off)); }
void put_u64(std::vector<uint8_t>* b, size_t off, uint64_t v) {
  for (int i = 0; i < 8; ++i) b->at(off + i) = static_cast<uint8_t>(v >> (8 * i));
}
void put_u32(std::vector<uint8_t>* b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b->at(off + i) = static_cast<uint8_t>(v >> (8 * i));
}
void put_u16(std::vector<uint8_t>* b, size_t off, uint16_t v) {
  b->at(off) = static_cast<uint8_t>(v);
  b->at(off + 1) = static_cast<uint8_t>(v >> 8);
}

constexpr size_t kMetadataCount = 16, kMetadataBytes = 24, kTensorCount = 32, kTableBytes = 40, kDataOffset = 48,
                 kDataBytes = 56;

// Recomputes the header checksum: CRC-32C of [0, data_offset) with bytes 12..15 as zeros.
void reseal(std::vector<uint8_t>* b) {
  const uint64_t end = std::min<uint64_t>(u64_at(*b, kDataOffset), b->size());
  put_u32(b, 12, 0);
  put_u32(b, 12, crc32c(b->data(), end));
}

// Offsets of the tensor table entries.
std::vector<size_t> table_entries(const std::vector<uint8_t>& b) {
  std::vector<size_t> entries;
  size_t at = 64 + u64_at(b, kMetadataBytes);
  for (uint64_t i = 0; i < u64_at(b, kTensorCount); ++i) {
    entries.push_back(at);
    at += 56 + (b[at] | (b[at + 1] << 8));
  }
  return entries;
}

// Offsets of the metadata entries (key length field) for a file whose values are all strings or u32.
std::vector<size_t> metadata_entries(const std::vector<uint8_t>& b) {
  std::vector<size_t> entries;
  size_t at = 64;
  for (uint64_t i = 0; i < u64_at(b, kMetadataCount); ++i) {
    entries.push_back(at);
    const size_t key_length = b[at] | (b[at + 1] << 8);
    const uint8_t type = b[at + 2 + key_length];
    at += 2 + key_length + 1;
    if (type == 8) {
      at += 8 + u64_at(b, at);
    } else {
      REQUIRE(type == 2);
      at += 4;
    }
  }
  return entries;
}

// A small valid file: three tensors (f32, f16, i32) and string/u32 metadata.
struct Sample {
  std::vector<float> a = {1.0f, -2.0f, 3.5f, 0.25f, 5.0f, 6.0f};
  std::vector<uint16_t> b = {0x3c00, 0xc000, 0x7bff};
  std::vector<int32_t> c = {7, -8, 9, 10, 11, 12, 13};
  std::vector<uint8_t> bytes;

  Sample() {
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("unet2d")).ok());
    REQUIRE(w.set_metadata("data.channels", MetadataValue::u32(3)).ok());
    REQUIRE(w.set_metadata("provenance.tool", MetadataValue::string("ddpm.cpp test")).ok());
    const int64_t sa[2] = {2, 3}, sb[1] = {3}, sc[3] = {1, 7, 1};
    REQUIRE(w.add_tensor("a.weight", DType::F32, 2, sa, a.data()).ok());
    REQUIRE(w.add_tensor("b", DType::F16, 1, sb, b.data()).ok());
    REQUIRE(w.add_tensor("c.labels", DType::I32, 3, sc, c.data()).ok());
    REQUIRE(w.finish_to_bytes(&bytes).ok());
  }
};

Status parse(const std::vector<uint8_t>& bytes, bool verify = true) {
  DdpmMetadata metadata;
  std::vector<DdpmTensorInfo> tensors;
  return parse_ddpm(bytes.data(), bytes.size(), "x.ddpm", &metadata, &tensors, verify);
}

// Parses a file that must be rejected; returns the message.
std::string rejection(const std::vector<uint8_t>& bytes) {
  Status status = parse(bytes);
  REQUIRE_FALSE(status.ok());
  CHECK(status.message().rfind("x.ddpm: ", 0) == 0);
  CHECK(status.message().find('\n') == std::string::npos);
  return status.message();
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("crc32c: published check values, hardware equals portable, chaining", "[format][crc]") {
  CHECK(crc32c("123456789", 9) == 0xE3069283u);
  CHECK(crc32c_portable("123456789", 9) == 0xE3069283u);
  CHECK(crc32c(nullptr, 0) == 0u);
  // RFC 3720 appendix B.4.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), up(32), down(32);
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<uint8_t>(i);
    down[i] = static_cast<uint8_t>(31 - i);
  }
  CHECK(crc32c(zeros.data(), 32) == 0x8A9136AAu);
  CHECK(crc32c(ones.data(), 32) == 0x62A8AB43u);
  CHECK(crc32c(up.data(), 32) == 0x46DD794Eu);
  CHECK(crc32c(down.data(), 32) == 0x113FDB5Cu);

  const std::vector<uint8_t> data = random_bytes(4096 + 16, 1);
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 1000, 4096}) {
      const uint32_t expected = crc32c_portable(data.data() + offset, n);
      CHECK(crc32c(data.data() + offset, n) == expected);
      for (size_t split : {size_t{0}, n / 3, n}) {
        CHECK(crc32c(data.data() + offset + split, n - split, crc32c(data.data() + offset, split)) == expected);
      }
    }
  }
  INFO("implementation: " << crc32c_implementation());
  CHECK(std::string(crc32c_implementation()).size() > 0);
}

TEST_CASE("metadata of every type round-trips exactly", "[format]") {
  const float nan_f = std::numeric_limits<float>::quiet_NaN();
  const double inf_d = std::numeric_limits<double>::infinity();
  DdpmMetadata m;
  REQUIRE(m.set("ddpm.architecture", MetadataValue::string("unet2d")).ok());
  REQUIRE(m.set("t.u8", MetadataValue::u8(255)).ok());
  REQUIRE(m.set("t.i32", MetadataValue::i32(std::numeric_limits<int32_t>::min())).ok());
  REQUIRE(m.set("t.u32", MetadataValue::u32(0xdeadbeefu)).ok());
  REQUIRE(m.set("t.i64", MetadataValue::i64(-1234567890123456789LL)).ok());
  REQUIRE(m.set("t.u64", MetadataValue::u64(std::numeric_limits<uint64_t>::max())).ok());
  REQUIRE(m.set("t.f32", MetadataValue::f32(-0.0f)).ok());
  REQUIRE(m.set("t.f32_nan", MetadataValue::f32(nan_f)).ok());
  REQUIRE(m.set("t.f64", MetadataValue::f64(0.1)).ok());
  REQUIRE(m.set("t.f64_inf", MetadataValue::f64(-inf_d)).ok());
  REQUIRE(m.set("t.bool_true", MetadataValue::boolean(true)).ok());
  REQUIRE(m.set("t.bool_false", MetadataValue::boolean(false)).ok());
  REQUIRE(m.set("t.string", MetadataValue::string(std::string("caf\xc3\xa9 \"q\"\n\0end", 14))).ok());
  REQUIRE(m.set("t.string_empty", MetadataValue::string("")).ok());
  REQUIRE(m.set("t.a.u8", MetadataValue::u8_array({0, 1, 255})).ok());
  REQUIRE(m.set("t.a.i32", MetadataValue::i32_array({-1, 0, 1 << 30})).ok());
  REQUIRE(m.set("t.a.u32", MetadataValue::u32_array({32, 32})).ok());
  REQUIRE(m.set("t.a.i64", MetadataValue::i64_array({std::numeric_limits<int64_t>::min()})).ok());
  REQUIRE(m.set("t.a.u64", MetadataValue::u64_array({})).ok());
  REQUIRE(m.set("t.a.f32", MetadataValue::f32_array({-1.0f, 1.0f, nan_f})).ok());
  REQUIRE(m.set("t.a.f64", MetadataValue::f64_array({1e-300, -inf_d})).ok());
  REQUIRE(m.set("t.a.bool", MetadataValue::bool_array({true, false, true})).ok());
  REQUIRE(m.set("t.a.string", MetadataValue::string_array({"airplane", "", "truck"})).ok());
  REQUIRE(m.set("t.a.string_empty", MetadataValue::string_array({})).ok());
  REQUIRE(m.set("Z-upper_case.key-9", MetadataValue::u8(1)).ok());

  DdpmWriter w;
  w.set_metadata(m);
  std::vector<uint8_t> bytes;
  REQUIRE(w.finish_to_bytes(&bytes).ok());
  DdpmFile file;
  Status status = DdpmFile::from_bytes("m.ddpm", bytes, &file);
  REQUIRE(status.ok());
  CHECK(file.tensors().empty());
  CHECK(u64_at(bytes, kDataBytes) == 0);
  CHECK(bytes.size() == u64_at(bytes, kDataOffset));

  const DdpmMetadata& r = file.metadata();
  REQUIRE(r.size() == m.size());
  auto it = r.entries().begin();
  for (const auto& [key, value] : m.entries()) {
    INFO(key);
    CHECK(it->first == key);
    CHECK(it->second == value);
    CHECK(it->second.type_name() == value.type_name());
    ++it;
  }

  uint8_t u8 = 0;
  int32_t i32 = 0;
  uint32_t u32 = 0;
  int64_t i64 = 0;
  uint64_t u64 = 0;
  float f32 = 1;
  double f64 = 0;
  bool flag = false;
  std::string text;
  CHECK(r.get_u8("t.u8", &u8).ok());
  CHECK(u8 == 255);
  CHECK(r.get_i32("t.i32", &i32).ok());
  CHECK(i32 == std::numeric_limits<int32_t>::min());
  CHECK(r.get_u32("t.u32", &u32).ok());
  CHECK(u32 == 0xdeadbeefu);
  CHECK(r.get_i64("t.i64", &i64).ok());
  CHECK(i64 == -1234567890123456789LL);
  CHECK(r.get_u64("t.u64", &u64).ok());
  CHECK(u64 == std::numeric_limits<uint64_t>::max());
  CHECK(r.get_f32("t.f32", &f32).ok());
  CHECK((f32 == 0.0f && std::signbit(f32)));
  CHECK(r.get_f32("t.f32_nan", &f32).ok());
  CHECK(std::isnan(f32));
  CHECK(r.get_f64("t.f64", &f64).ok());
  CHECK(f64 == 0.1);
  CHECK(r.get_bool("t.bool_true", &flag).ok());
  CHECK(flag);
  CHECK(r.get_string("t.string", &text).ok());
  CHECK(text == std::string("caf\xc3\xa9 \"q\"\n\0end", 14));

  std::vector<uint8_t> a_u8;
  std::vector<int32_t> a_i32;
  std::vector<uint32_t> a_u32;
  std::vector<int64_t> a_i64;
  std::vector<uint64_t> a_u64 = {9};
  std::vector<float> a_f32;
  std::vector<double> a_f64;
  std::vector<bool> a_bool;
  std::vector<std::string> a_string;
  CHECK(r.get_u8_array("t.a.u8", &a_u8).ok());
  CHECK(a_u8 == std::vector<uint8_t>{0, 1, 255});
  CHECK(r.get_i32_array("t.a.i32", &a_i32).ok());
  CHECK(a_i32 == std::vector<int32_t>{-1, 0, 1 << 30});
  CHECK(r.get_u32_array("t.a.u32", &a_u32).ok());
  CHECK(a_u32 == std::vector<uint32_t>{32, 32});
  CHECK(r.get_i64_array("t.a.i64", &a_i64).ok());
  CHECK(a_i64 == std::vector<int64_t>{std::numeric_limits<int64_t>::min()});
  CHECK(r.get_u64_array("t.a.u64", &a_u64).ok());
  CHECK(a_u64.empty());
  CHECK(r.get_f32_array("t.a.f32", &a_f32).ok());
  REQUIRE(a_f32.size() == 3);
  CHECK((a_f32[0] == -1.0f && a_f32[1] == 1.0f && std::isnan(a_f32[2])));
  CHECK(r.get_f64_array("t.a.f64", &a_f64).ok());
  CHECK(a_f64 == std::vector<double>{1e-300, -inf_d});
  CHECK(r.get_bool_array("t.a.bool", &a_bool).ok());
  CHECK(a_bool == std::vector<bool>{true, false, true});
  CHECK(r.get_string_array("t.a.string", &a_string).ok());
  CHECK(a_string == std::vector<std::string>{"airplane", "", "truck"});
  CHECK(r.find("t.a.string")->array_size() == 3);

  // Wrong types and missing keys: exact messages, *out untouched.
  u32 = 77;
  status = r.get_u32("t.string", &u32);
  CHECK(status.message() == "m.ddpm: metadata key 't.string' has type string, expected u32");
  CHECK(u32 == 77);
  CHECK(r.get_u64("t.u32", &u64).message() == "m.ddpm: metadata key 't.u32' has type u32, expected u64");
  CHECK(r.get_u32_array("t.a.i32", &a_u32).message() ==
        "m.ddpm: metadata key 't.a.i32' has type array of i32, expected array of u32");
  CHECK(r.get_string_array("t.string", &a_string).message() ==
        "m.ddpm: metadata key 't.string' has type string, expected array of string");
  CHECK(r.get_string("data.channels", &text).message() == "m.ddpm: missing metadata key 'data.channels'");
  CHECK(r.has("t.u8"));
  CHECK_FALSE(r.has("t.u9"));
}

TEST_CASE("metadata keys follow the documented rule", "[format]") {
  for (const char* good : {"a", "ddpm.architecture", "training.lr-schedule.warm_up", "A.B9.c_d-e"}) {
    INFO(good);
    CHECK(is_valid_metadata_key(good));
  }
  const std::string longest(256, 'k');
  CHECK(is_valid_metadata_key(longest));
  for (const std::string& bad : {std::string(), std::string(257, 'k'), std::string(".a"), std::string("a."),
                                 std::string("a..b"), std::string("a b"), std::string("a/b"), std::string("caf\xc3\xa9"),
                                 std::string("a\0b", 3)}) {
    INFO(bad);
    CHECK_FALSE(is_valid_metadata_key(bad));
    DdpmMetadata m;
    CHECK(contains(m.set(bad, MetadataValue::u8(0)).message(), "invalid metadata key"));
    CHECK(m.size() == 0);
  }
}

TEST_CASE("describe renders values for listings", "[format]") {
  CHECK(MetadataValue::u32(7).describe() == "7");
  CHECK(MetadataValue::i64(-7).describe() == "-7");
  CHECK(MetadataValue::f32(0.1f).describe() == "0.1");
  CHECK(MetadataValue::f64(0.1).describe() == "0.1");
  CHECK(MetadataValue::boolean(true).describe() == "true");
  CHECK(MetadataValue::string("a\"b\n").describe() == "\"a\\\"b\\n\"");
  CHECK(MetadataValue::u32_array({32, 64}).describe() == "[32, 64]");
  CHECK(MetadataValue::f32_array({-1.0f, 1.0f}).describe() == "[-1, 1]");
  CHECK(MetadataValue::string_array({"cat", "dog"}).describe() == "[\"cat\", \"dog\"]");
  std::vector<uint32_t> many(1000, 123456);
  const std::string cut = MetadataValue::u32_array(many).describe(50);
  CHECK(cut.size() < 90);
  CHECK(contains(cut, "(1000 items)"));
  CHECK(MetadataValue::string(std::string(500, 'x')).describe(40).size() < 50);
}

TEST_CASE("tensors of every dtype round-trip, 64-byte aligned, through a file and through memory", "[format]") {
  struct Case {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  std::vector<Case> cases;
  const int64_t kShapes[][4] = {{1, 0, 0, 0}, {3, 0, 0, 0}, {7, 5, 0, 0}, {2, 3, 5, 0}, {2, 3, 5, 7}, {1, 1, 1, 1},
                                {65, 0, 0, 0}};
  for (int d = 0; d < static_cast<int>(DType::kCount); ++d) {
    const DType dtype = static_cast<DType>(d);
    const int64_t block = dtype_traits(dtype).block_size;
    int shape_index = 0;
    for (const auto& s : kShapes) {
      std::vector<int64_t> shape;
      for (int i = 0; i < 4 && s[i] > 0; ++i) shape.push_back(s[i]);
      shape.back() *= block;  // block types need whole blocks per row
      cases.push_back({std::string("t.") + dtype_name(dtype) + "." + std::to_string(shape_index++), dtype, shape});
    }
  }
  std::vector<std::vector<uint8_t>> payloads;
  DdpmWriter w;
  REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("test")).ok());
  for (size_t i = 0; i < cases.size(); ++i) {
    int64_t numel = 1;
    for (int64_t d : cases[i].shape) numel *= d;
    payloads.push_back(random_bytes(dtype_row_bytes(cases[i].dtype, numel), static_cast<uint32_t>(i)));
    REQUIRE(w.add_tensor(cases[i].name, cases[i].dtype, static_cast<int>(cases[i].shape.size()),
                         cases[i].shape.data(), payloads[i].data(), payloads[i].size())
                .ok());
  }
  CHECK(w.tensor_count() == cases.size());
  TempDir dir;
  const std::string path = dir.file("all.ddpm");
  REQUIRE(w.finish(path).ok());
  std::vector<uint8_t> in_memory;
  REQUIRE(w.finish_to_bytes(&in_memory).ok());
  CHECK(read_bytes(path) == in_memory);
  CHECK(dir.list() == std::vector<std::string>{"all.ddpm"});

  DdpmFile mapped, copied;
  REQUIRE(DdpmFile::open(path, &mapped).ok());
  REQUIRE(DdpmFile::from_bytes("all.ddpm", in_memory, &copied).ok());
  CHECK(mapped.is_mapped());
  CHECK(mapped.file_size() == in_memory.size());
  for (DdpmFile* file : {&mapped, &copied}) {
    DdpmFile moved;
    const DdpmTensorInfo* before = file->find(cases[0].name);
    REQUIRE(before != nullptr);
    const void* data_before = before->data;
    moved = std::move(*file);  // pointers into the mapping survive a move
    REQUIRE(moved.tensors().size() == cases.size());
    CHECK(moved.find(cases[0].name)->data == data_before);
    uint64_t previous_end = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const DdpmTensorInfo& t = moved.tensors()[i];
      INFO(t.name);
      CHECK(t.name == cases[i].name);  // table order is the writer's order
      CHECK(t.dtype == cases[i].dtype);
      REQUIRE(t.rank == static_cast<int>(cases[i].shape.size()));
      for (int d = 0; d < 4; ++d) CHECK(t.shape[d] == (d < t.rank ? cases[i].shape[d] : 0));
      CHECK(t.bytes == payloads[i].size());
      CHECK(t.offset % 64 == 0);
      CHECK(t.offset >= previous_end);
      CHECK(t.offset < previous_end + 64);
      previous_end = t.offset + t.bytes;
      CHECK(reinterpret_cast<uintptr_t>(t.data) % 64 == 0);
      CHECK(std::memcmp(t.data, payloads[i].data(), t.bytes) == 0);
      CHECK(t.checksum == crc32c(payloads[i].data(), payloads[i].size()));
      CHECK(moved.find(t.name) == &t);
      CHECK(moved.verify_tensor(t).ok());
    }
    CHECK(moved.find("no.such.tensor") == nullptr);
    CHECK(moved.verify_data().ok());
  }
}

TEST_CASE("golden file: the writer's bytes match tests/data/format/tiny.ddpm (the FORMAT.md example)", "[format]") {
  // The worked example of docs/FORMAT.md §9, byte for byte.
  DdpmWriter w;
  REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("unet2d")).ok());
  REQUIRE(w.set_metadata("data.channels", MetadataValue::u32(3)).ok());
  const float values[2] = {1.0f, -2.0f};
  const int64_t shape[1] = {2};
  REQUIRE(w.add_tensor("w", DType::F32, 1, shape, values).ok());
  std::vector<uint8_t> bytes;
  REQUIRE(w.finish_to_bytes(&bytes).ok());
  const std::vector<uint8_t> golden = read_bytes("data/format/tiny.ddpm");
  REQUIRE(golden.size() == 200);
  CHECK(bytes == golden);

  // Spot checks straight from the document's tables.
  CHECK(std::memcmp(golden.data(), "DDPM", 4) == 0);
  CHECK(u32_at(golden, 4) == 1);
  CHECK(u32_at(golden, 8) == 0);
  CHECK(u64_at(golden, kMetadataCount) == 2);
  CHECK(u64_at(golden, kTensorCount) == 1);
  CHECK(u64_at(golden, kDataOffset) == 192);
  CHECK(u64_at(golden, kDataBytes) == 8);
  CHECK(u32_at(golden, 12) == 0xD09251ACu);

  DdpmFile file;
  REQUIRE(DdpmFile::open("data/format/tiny.ddpm", &file).ok());
  REQUIRE(file.tensors().size() == 1);
  CHECK(static_cast<const float*>(file.tensors()[0].data)[1] == -2.0f);
}

TEST_CASE("every truncation of a file is reported as truncated", "[format][hostile]") {
  Sample s;
  CHECK(parse(s.bytes).ok());
  for (size_t n = 0; n < s.bytes.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    const std::vector<uint8_t> prefix(s.bytes.begin(), s.bytes.begin() + n);
    const std::string message = rejection(prefix);
    CHECK(contains(message, n == 0 ? "empty file" : "truncated"));
  }
  const std::vector<uint8_t> header_only(s.bytes.begin(), s.bytes.begin() + 50);
  CHECK(rejection(header_only) ==
        "x.ddpm: truncated: file header needs 64 bytes at offset 0 but the file has 50 (14 bytes short)");
  const size_t table = 64 + u64_at(s.bytes, kMetadataBytes);
  const std::vector<uint8_t> in_table(s.bytes.begin(), s.bytes.begin() + table + 10);
  CHECK(rejection(in_table) == "x.ddpm: truncated: tensor table needs " +
                                   std::to_string(u64_at(s.bytes, kTableBytes)) + " bytes at offset " +
                                   std::to_string(table) + " but the file has " + std::to_string(table + 10) + " (" +
                                   std::to_string(u64_at(s.bytes, kTableBytes) - 10) + " bytes short)");
  std::vector<uint8_t> longer = s.bytes;
  longer.push_back(0);
  CHECK(contains(rejection(longer), "1 unexpected bytes after the end of the data section"));
}

TEST_CASE("every single-bit flip before the data section is rejected", "[format][hostile]") {
  Sample s;
  const size_t header = u64_at(s.bytes, kDataOffset);
  size_t checksum_errors = 0;
  for (size_t bit = 0; bit < header * 8; ++bit) {
    std::vector<uint8_t> bytes = s.bytes;
    bytes[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    INFO("bit " << bit);
    const std::string message = rejection(bytes);
    if (contains(message, "header checksum mismatch")) ++checksum_errors;
  }
  // Flips in the magic, version, flags and section sizes are caught (with their own messages) before the checksum
  // can be computed; everything else must be the checksum.
  CHECK(checksum_errors > header * 8 - 64 * 8);
}

TEST_CASE("files that are not .ddpm are named for what they look like", "[format][hostile]") {
  auto message_for = [](const std::string& content) {
    return rejection(std::vector<uint8_t>(content.begin(), content.end()));
  };
  std::string safetensors(8, '\0');
  safetensors[0] = 2;
  safetensors += "{}";
  CHECK(message_for(std::string("PK\x03\x04", 4) + "archive/data.pkl") ==
        "x.ddpm: not a ddpm.cpp model file (starts with 'PK\\x03\\x04arch': looks like a zip archive, e.g. a "
        "PyTorch .pt/.pth/.ckpt/.bin checkpoint; convert it with `ddpm convert`)");
  CHECK(contains(message_for(std::string("\x80\x02\x8a\x0a", 4) + "legacy"), "looks like a Python pickle"));
  CHECK(contains(message_for(safetensors), "looks like a safetensors file; convert it with `ddpm convert`"));
  CHECK(contains(message_for(std::string("\x1f\x8b\x08\x00", 4)), "gzip-compressed"));
  CHECK(contains(message_for("\xef\xbb\xbf\n  <!DOCTYPE html><html>"), "looks like an HTML page"));
  CHECK(contains(message_for("<html><body>404</body></html>"), "looks like an HTML page"));
  CHECK(contains(message_for("{\"_class_name\": \"UNet2DModel\"}"), "looks like JSON text"));
  CHECK(contains(message_for("GGUF\x03\x00\x00\x00"), "GGUF"));
  CHECK(contains(message_for("version https://git-lfs.github.com/spec/v1\noid sha256:ab"), "git lfs pull"));
  CHECK(contains(message_for("\x93NUMPY\x01\x00"), "NumPy"));
  CHECK(contains(message_for("hello world\n"), "looks like text"));
  CHECK(contains(message_for(std::string("\x01\x02\x03\x04\x00", 5)), "not in any format ddpm.cpp recognises"));
  CHECK(contains(message_for("DDPX"), "not a ddpm.cpp model file (starts with 'DDPX'"));
  CHECK(message_for("") == "x.ddpm: empty file (0 bytes), not a ddpm.cpp model file");
  CHECK(contains(message_for("DDP"), "truncated: file header needs 64 bytes"));
}

TEST_CASE("versions and flags", "[format][hostile]") {
  Sample s;
  std::vector<uint8_t> bytes = s.bytes;
  put_u32(&bytes, 4, 2);
  CHECK(rejection(bytes) == "x.ddpm: format version 2 is newer than this ddpm.cpp supports (1); update ddpm.cpp");
  put_u32(&bytes, 4, 0);
  CHECK(rejection(bytes) == "x.ddpm: invalid format version 0");

  bytes = s.bytes;
  put_u32(&bytes, 8, 0x0004);
  reseal(&bytes);
  CHECK(contains(rejection(bytes), "required flags 0x0004"));
  // The same bits from a damaged byte (the checksum no longer matches) are corruption, not a newer writer; so is a
  // version no format will reach, and a section size a flipped byte made larger than the file.
  bytes = s.bytes;
  put_u32(&bytes, 8, 0x0004);
  CHECK(contains(rejection(bytes), "header checksum mismatch"));
  bytes = s.bytes;
  put_u32(&bytes, 4, 0x01000001);
  CHECK(rejection(bytes) == "x.ddpm: corrupt: its format version field reads 16777217");
  bytes = s.bytes;
  bytes[kMetadataBytes + 2] ^= 0x10;  // + 1 MiB
  CHECK(contains(rejection(bytes), "header checksum mismatch"));
  // Optional flag bits are ignored by readers that do not know them.
  bytes = s.bytes;
  put_u32(&bytes, 8, 0x00020000);
  reseal(&bytes);
  CHECK(parse(bytes).ok());
}

TEST_CASE("tap-major conv rows: header flag bit 0, set only when a tensor is eligible", "[format]") {
  const std::vector<uint8_t> conv3(dtype_tensor_bytes(DType::Q8_0, 4, std::vector<int64_t>{8, 32, 3, 3}.data()));
  const std::vector<uint8_t> conv1(dtype_tensor_bytes(DType::Q8_0, 4, std::vector<int64_t>{8, 32, 1, 1}.data()));
  const std::vector<uint8_t> odd(dtype_tensor_bytes(DType::Q4_0, 4, std::vector<int64_t>{8, 48, 3, 3}.data()));
  const std::vector<float> f32(8 * 32 * 9, 0.5f);
  auto write = [&](bool tap_major, bool with_eligible) {
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("unet2d")).ok());
    w.set_tap_major_conv_rows(tap_major);
    const int64_t s3[4] = {8, 32, 3, 3}, s1[4] = {8, 32, 1, 1}, s48[4] = {8, 48, 3, 3};
    if (with_eligible) REQUIRE(w.add_tensor("conv3.weight", DType::Q8_0, 4, s3, conv3.data()).ok());
    REQUIRE(w.add_tensor("conv1.weight", DType::Q8_0, 4, s1, conv1.data()).ok());
    REQUIRE(w.add_tensor("odd.weight", DType::Q4_0, 4, s48, odd.data()).ok());
    REQUIRE(w.add_tensor("f32.weight", DType::F32, 4, s3, f32.data()).ok());
    std::vector<uint8_t> bytes;
    REQUIRE(w.finish_to_bytes(&bytes).ok());
    return bytes;
  };
  const std::vector<uint8_t> flagged = write(true, true);
  CHECK(u32_at(flagged, 8) == kDdpmFlagTapMajorConvRows);
  DdpmFile file;
  REQUIRE(DdpmFile::from_bytes("t.ddpm", flagged, &file).ok());
  // Only the block-typed 3×3 weight with a multiple of 32 input channels is stored tap-major.
  CHECK(file.find("conv3.weight")->tap_major);
  CHECK(!file.find("conv1.weight")->tap_major);
  CHECK(!file.find("odd.weight")->tap_major);
  CHECK(!file.find("f32.weight")->tap_major);
  // Without an eligible tensor, or not asked for, the flag stays clear: such files remain readable by readers
  // from before the flag.
  CHECK(u32_at(write(true, false), 8) == 0);
  const std::vector<uint8_t> plain = write(false, true);
  CHECK(u32_at(plain, 8) == 0);
  REQUIRE(DdpmFile::from_bytes("p.ddpm", plain, &file).ok());
  CHECK(!file.find("conv3.weight")->tap_major);
}

TEST_CASE("hostile headers and tables are rejected with precise messages", "[format][hostile]") {
  Sample s;
  const std::vector<size_t> entries = table_entries(s.bytes);
  REQUIRE(entries.size() == 3);
  const size_t a = entries[0], b = entries[1], c = entries[2];
  auto mutated = [&](auto change) {
    std::vector<uint8_t> bytes = s.bytes;
    change(&bytes);
    reseal(&bytes);
    return rejection(bytes);
  };

  SECTION("huge declared counts fail before any allocation") {
    CHECK(contains(mutated([](auto* x) { put_u64(x, kMetadataCount, uint64_t{1} << 60); }),
                   "header declares 1152921504606846976 metadata entries, more than its"));
    CHECK(contains(mutated([](auto* x) { put_u64(x, kTensorCount, ~uint64_t{0}); }),
                   "header declares 18446744073709551615 tensors, more than its"));
    // Sizes no file could have are called damaged fields, not missing tails (the checksum is resealed here).
    CHECK(contains(mutated([](auto* x) { put_u64(x, kMetadataBytes, ~uint64_t{0} - 10); }),
                   "corrupt: its header gives the metadata section 18446744073709551605 bytes"));
    CHECK(contains(mutated([](auto* x) { put_u64(x, kTableBytes, ~uint64_t{0}); }),
                   "corrupt: its header gives the tensor table"));
    CHECK(contains(mutated([](auto* x) { put_u64(x, kDataBytes, ~uint64_t{0} - 63); }),
                   "corrupt: its header gives the data section"));
    CHECK(contains(mutated([](auto* x) { put_u64(x, kDataOffset, ~uint64_t{0}); }), "corrupt: its header gives"));
    const uint64_t file_size = s.bytes.size();
    CHECK(contains(mutated([file_size](auto* x) { put_u64(x, kDataBytes, file_size); }),
                   "truncated: data section needs"));
    CHECK(contains(mutated([](auto* x) { put_u64(x, kDataOffset, 64); }), "lies inside the header"));
  }
  SECTION("section sizes must agree with their contents") {
    CHECK(contains(mutated([](auto* x) { put_u64(x, kMetadataCount, 2); }),
                   "unexplained bytes after the last metadata entry"));
    CHECK(contains(mutated([](auto* x) { put_u64(x, kTensorCount, 2); }),
                   "unexplained bytes after the last tensor table entry"));
    CHECK(contains(mutated([](auto* x) { put_u64(x, kDataOffset, u64_at(*x, kDataOffset) + 64); }),
                   "data section starts at 448, expected 384"));
    CHECK(contains(mutated([&](auto* x) { x->at(u64_at(*x, kDataOffset) - 1) = 1; }),
                   "nonzero padding byte"));
  }
  SECTION("metadata entries") {
    const std::vector<size_t> m = metadata_entries(s.bytes);  // data.channels, ddpm.architecture, provenance.tool
    REQUIRE(m.size() == 3);
    CHECK(contains(mutated([&](auto* x) { x->at(m[1] + 2) = 'a'; }), "metadata key 'adpm.architecture' is out of order"));
    CHECK(contains(mutated([&](auto* x) { x->at(m[1] + 3) = ' '; }), "has invalid key 'd pm.architecture'"));
    CHECK(contains(mutated([&](auto* x) { put_u16(x, m[0], 0); }), "has invalid key ''"));
    CHECK(contains(mutated([&](auto* x) { put_u16(x, m[0], 40000); }), "runs past the end of the metadata section"));
    const size_t architecture_type = m[1] + 2 + 17;
    CHECK(contains(mutated([&](auto* x) { x->at(architecture_type) = 42; }),
                   "metadata key 'ddpm.architecture' has value type code 42, which this ddpm.cpp does not know"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, architecture_type + 1, ~uint64_t{0}); }),
                   "metadata key 'ddpm.architecture' runs past the end of the metadata section"));
    // data.channels u32 3 → bool 3 (the following bytes then no longer parse, but the bool is seen first).
    CHECK(contains(mutated([&](auto* x) { x->at(m[0] + 2 + 13) = 7; }), "has bool value 3 (must be 0 or 1)"));
    // Turn ddpm.architecture's string into an array: element type = low byte of the string length (6 = f64).
    CHECK(contains(mutated([&](auto* x) { x->at(architecture_type) = 9; }),
                   "elements, more than the rest of the section can hold"));
    CHECK(contains(mutated([&](auto* x) {
                     x->at(architecture_type) = 9;
                     x->at(architecture_type + 1) = 9;
                   }),
                   "is an array with element type code 9"));
    CHECK(contains(mutated([&](auto* x) {
                     x->at(architecture_type) = 9;
                     x->at(architecture_type + 1) = 8;  // strings
                     put_u64(x, architecture_type + 2, uint64_t{1} << 61);
                   }),
                   "declares 2305843009213693952 strings, more than the rest of the section can hold"));
    CHECK(contains(mutated([&](auto* x) { std::memcpy(x->data() + m[1] + 2, "ddpm.architectura", 17); }),
                   "missing metadata key 'ddpm.architecture'"));
  }
  SECTION("duplicate keys") {
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("x")).ok());
    REQUIRE(w.set_metadata("k1", MetadataValue::u8(1)).ok());
    REQUIRE(w.set_metadata("k2", MetadataValue::u8(2)).ok());
    std::vector<uint8_t> bytes;
    REQUIRE(w.finish_to_bytes(&bytes).ok());
    const size_t k2 = 64 + u64_at(bytes, kMetadataBytes) - 6;  // the last entry: 02 00 'k' '2' 00 02
    REQUIRE(bytes[k2 + 2] == 'k');
    bytes[k2 + 3] = '1';
    reseal(&bytes);
    CHECK(contains(rejection(bytes), "duplicate metadata key 'k1'"));
  }
  SECTION("tensor table entries") {
    CHECK(contains(mutated([&](auto* x) { x->at(b + 2) = 200; }),
                   "tensor 'b' has dtype code 200, which this ddpm.cpp does not know"));
    CHECK(contains(mutated([&](auto* x) { x->at(b + 3) = 0; }), "tensor 'b' has rank 0 (must be 1-4)"));
    CHECK(contains(mutated([&](auto* x) { x->at(b + 3) = 5; }), "tensor 'b' has rank 5 (must be 1-4)"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, b + 8, 0); }), "every dim must be at least 1"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, b + 16, 1); }), "unused dims must be 0"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, b + 8, ~uint64_t{0}); }), "too large"));
    CHECK(contains(mutated([&](auto* x) {
                     x->at(b + 3) = 2;
                     put_u64(x, b + 8, uint64_t{1} << 40);
                     put_u64(x, b + 16, uint64_t{1} << 40);
                   }),
                   "too many elements"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, b + 8, 4); }),
                   "tensor 'b' declares 6 bytes but dtype f16 and shape [4] need 8"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, b + 40, u64_at(*x, b + 40) + 8); }),
                   "data offset 72 is not a multiple of 64"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, c + 40, 1u << 20); }), "runs past the end of the"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, c + 40, ~uint64_t{0} - 63); }), "runs past the end of the"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, b + 40, 0); }),
                   "data of tensor 'b' [0, 6) overlaps tensor 'a.weight' [0, 24)"));
    CHECK(contains(mutated([&](auto* x) { x->at(b + 56) = ' '; }), "invalid name ' '"));
    CHECK(contains(mutated([&](auto* x) { put_u16(x, a, 0); }), "invalid name ''"));
    CHECK(contains(mutated([&](auto* x) { put_u16(x, c, 60000); }), "runs past the end of the tensor table"));
    CHECK(contains(mutated([&](auto* x) { put_u64(x, kDataBytes, u64_at(*x, kDataBytes) - 1); }), "unexpected"));
  }
  SECTION("duplicate tensor names") {
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("x")).ok());
    const float v[1] = {1};
    const int64_t shape[1] = {1};
    REQUIRE(w.add_tensor("p", DType::F32, 1, shape, v).ok());
    REQUIRE(w.add_tensor("q", DType::F32, 1, shape, v).ok());
    std::vector<uint8_t> bytes;
    REQUIRE(w.finish_to_bytes(&bytes).ok());
    const std::vector<size_t> t = table_entries(bytes);
    bytes[t[1] + 56] = 'p';
    reseal(&bytes);
    CHECK(contains(rejection(bytes), "duplicate tensor name 'p' (table entries 0 and 1)"));
  }
  SECTION("tensors may be stored in any order and with gaps") {
    // Move c.labels 128 bytes further out: the gap is legal (and unchecked).
    std::vector<uint8_t> bytes = s.bytes;
    const uint64_t old_offset = u64_at(bytes, c + 40);
    const uint64_t c_bytes = u64_at(bytes, c + 48);
    const uint64_t moved = old_offset + 128;
    const size_t data = u64_at(bytes, kDataOffset);
    bytes.resize(data + moved + c_bytes, 0);
    std::memmove(bytes.data() + data + moved, bytes.data() + data + old_offset, c_bytes);
    put_u64(&bytes, c + 40, moved);
    put_u64(&bytes, kDataBytes, moved + c_bytes);
    reseal(&bytes);
    DdpmFile file;
    REQUIRE(DdpmFile::from_bytes("x.ddpm", bytes, &file).ok());
    CHECK(std::memcmp(file.find("c.labels")->data, s.c.data(), c_bytes) == 0);
  }
}

TEST_CASE("data corruption is caught by the per-tensor checksum", "[format][hostile]") {
  Sample s;
  const size_t data = u64_at(s.bytes, kDataOffset);
  const std::vector<size_t> t = table_entries(s.bytes);
  const size_t b_data = data + u64_at(s.bytes, t[1] + 40);
  std::vector<uint8_t> bytes = s.bytes;
  bytes[b_data + 3] ^= 0x10;
  const std::string message = rejection(bytes);
  CHECK(contains(message, "x.ddpm: tensor 'b' data checksum mismatch (stored 0x"));
  CHECK(contains(message, "the file is corrupt"));

  DdpmFile file;
  REQUIRE(DdpmFile::from_bytes("x.ddpm", bytes, &file, /*verify_data_checksums=*/false).ok());
  CHECK(file.verify_tensor(*file.find("a.weight")).ok());
  CHECK(contains(file.verify_tensor(*file.find("b")).message(), "tensor 'b' data checksum mismatch"));
  CHECK(contains(file.verify_data().message(), "tensor 'b'"));

  // Bytes in the gaps between tensors belong to nothing and are not checked.
  bytes = s.bytes;
  const size_t gap = data + u64_at(s.bytes, t[0] + 40) + u64_at(s.bytes, t[0] + 48);
  REQUIRE(gap < b_data);
  bytes[gap] = 0xee;
  CHECK(parse(bytes).ok());
}

TEST_CASE("random damage never crashes the reader", "[format][hostile]") {
  // A cheap stand-in for the fuzzer: random byte changes anywhere, half of them re-sealed so that they get past
  // the header checksum and reach the structural checks.
  Sample s;
  std::mt19937 rng(12345);
  size_t accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> bytes = s.bytes;
    const int changes = 1 + static_cast<int>(rng() % 4);
    const size_t header = u64_at(bytes, kDataOffset);
    for (int i = 0; i < changes; ++i) {
      const size_t at = rng() % (round % 3 == 0 ? bytes.size() : header);
      bytes[at] = static_cast<uint8_t>(rng() % 4 == 0 ? 0xff : rng());
    }
    if (round % 5 == 0) bytes.resize(rng() % bytes.size());
    if (round % 2 == 0 && bytes.size() >= 64) reseal(&bytes);
    Status status = parse(bytes);
    if (status.ok()) {
      ++accepted;  // e.g. a change to a gap between tensors, or to a value that stays valid
    } else {
      CHECK(status.message().rfind("x.ddpm: ", 0) == 0);
    }
  }
  CHECK(accepted < 3000 / 4);
}

TEST_CASE("files that cannot be mapped are copied to an aligned buffer", "[format]") {
  Sample s;
  TempDir dir;
  const std::string fifo = dir.file("pipe.ddpm");
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  std::thread writer([&] { write_bytes(fifo, s.bytes); });
  DdpmFile file;
  Status status = DdpmFile::open(fifo, &file);
  writer.join();
  REQUIRE(status.ok());
  CHECK_FALSE(file.is_mapped());
  REQUIRE(file.tensors().size() == 3);
  for (const DdpmTensorInfo& t : file.tensors()) CHECK(reinterpret_cast<uintptr_t>(t.data) % 64 == 0);
  CHECK(std::memcmp(file.find("c.labels")->data, s.c.data(), s.c.size() * 4) == 0);

  CHECK(contains(DdpmFile::open(dir.file("absent.ddpm"), &file).message(), "absent.ddpm"));
  CHECK_FALSE(DdpmFile::open(dir.file(""), &file).ok());
  const std::string empty = dir.file("empty.ddpm");
  write_bytes(empty, {});
  CHECK(DdpmFile::open(empty, &file).message() == empty + ": empty file (0 bytes), not a ddpm.cpp model file");
}

TEST_CASE("the writer validates its input and never leaves a file behind on failure", "[format][writer]") {
  TempDir dir;
  const float v[8] = {};
  const int64_t shape[2] = {2, 4};

  SECTION("unwritable destination") {
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("x")).ok());
    REQUIRE(w.add_tensor("v", DType::F32, 2, shape, v).ok());
    Status status = w.finish(dir.file("missing_dir/model.ddpm"));
    CHECK_FALSE(status.ok());
    CHECK(contains(status.message(), dir.file("missing_dir/model.ddpm")));
    CHECK(dir.list().empty());
  }
  SECTION("errors stick, and an existing file is left as it was") {
    const std::string path = dir.file("model.ddpm");
    write_bytes(path, {'o', 'l', 'd'});
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("x")).ok());
    REQUIRE(w.add_tensor("v", DType::F32, 2, shape, v).ok());
    CHECK(w.add_tensor("v", DType::F32, 2, shape, v).message() == "duplicate tensor name 'v'");
    // A later valid call reports the first error rather than carrying on.
    CHECK(w.add_tensor("w", DType::F32, 2, shape, v).message() == "duplicate tensor name 'v'");
    CHECK(w.finish(path).message() == "cannot write " + path + ": duplicate tensor name 'v'");
    std::vector<uint8_t> bytes;
    CHECK_FALSE(w.finish_to_bytes(&bytes).ok());
    CHECK(read_bytes(path) == std::vector<uint8_t>{'o', 'l', 'd'});
    CHECK(dir.list() == std::vector<std::string>{"model.ddpm"});
  }
  SECTION("each rule of add_tensor") {
    const int64_t zero[2] = {2, 0}, rank5[5] = {1, 1, 1, 1, 1};
    const int64_t huge[4] = {int64_t{1} << 31, int64_t{1} << 31, int64_t{1} << 31, 8};
    struct Bad {
      std::string name;
      DType dtype;
      int rank;
      const int64_t* shape;
      const void* data;
      uint64_t bytes;
      const char* message;
    } bad[] = {
        {"", DType::F32, 2, shape, v, DdpmWriter::kBytesFromShape, "invalid tensor name ''"},
        {"has space", DType::F32, 2, shape, v, DdpmWriter::kBytesFromShape, "invalid tensor name 'has space'"},
        {std::string(513, 'n'), DType::F32, 2, shape, v, DdpmWriter::kBytesFromShape, "invalid tensor name"},
        {"t", DType::kCount, 2, shape, v, DdpmWriter::kBytesFromShape, "tensor 't': invalid dtype"},
        {"t", DType::F32, 0, shape, v, DdpmWriter::kBytesFromShape, "tensor 't' has rank 0 (must be 1-4)"},
        {"t", DType::F32, 5, rank5, v, DdpmWriter::kBytesFromShape, "tensor 't' has rank 5 (must be 1-4)"},
        {"t", DType::F32, 2, zero, v, DdpmWriter::kBytesFromShape, "has shape [2, 0]: every dim must be at least 1"},
        {"t", DType::F32, 4, huge, v, DdpmWriter::kBytesFromShape, "too many elements"},
        {"t", DType::F32, 2, shape, nullptr, DdpmWriter::kBytesFromShape, "tensor 't': no data given"},
        {"t", DType::F32, 2, nullptr, v, DdpmWriter::kBytesFromShape, "tensor 't': no shape given"},
        {"t", DType::F32, 2, shape, v, 16, "tensor 't': 16 bytes of data given, but dtype f32 and shape [2, 4] need 32"},
    };
    for (const Bad& x : bad) {
      INFO(x.message);
      DdpmWriter w;
      CHECK(contains(w.add_tensor(x.name, x.dtype, x.rank, x.shape, x.data, x.bytes).message(), x.message));
      CHECK_FALSE(w.finish(dir.file("bad.ddpm")).ok());
      CHECK(dir.list().empty());
    }
    // A 512-byte name is the longest allowed.
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("x")).ok());
    CHECK(w.add_tensor(std::string(512, 'n'), DType::F32, 2, shape, v).ok());
    CHECK(w.finish(dir.file("long.ddpm")).ok());
  }
  SECTION("block types store rows padded to whole blocks") {
    // A conv weight [3, 2, 3, 3] is 3 rows of 18 values, each padded to one block of 32.
    for (DType dtype : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0}) {
      const int64_t block = dtype_traits(dtype).block_size;
      const int64_t conv[4] = {3, 2, 3, 3};
      CHECK(dtype_tensor_bytes(dtype, 4, conv) == 3 * dtype_traits(dtype).block_bytes);
      const int64_t rows[2] = {2, block + 1};
      CHECK(dtype_tensor_bytes(dtype, 2, rows) == 2 * 2 * dtype_traits(dtype).block_bytes);
      const int64_t vector[1] = {block * 3};
      CHECK(dtype_tensor_bytes(dtype, 1, vector) == 3 * dtype_traits(dtype).block_bytes);
      std::vector<uint8_t> data(dtype_tensor_bytes(dtype, 4, conv));
      DdpmWriter w;
      CHECK(w.add_tensor("q", dtype, 4, conv, data.data()).ok());
    }
  }
  SECTION("ddpm.architecture is required") {
    DdpmWriter w;
    REQUIRE(w.add_tensor("v", DType::F32, 2, shape, v).ok());
    CHECK(contains(w.finish(dir.file("anon.ddpm")).message(), "metadata key 'ddpm.architecture' (a string) is required"));
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::u32(1)).ok());
    CHECK_FALSE(w.finish(dir.file("anon.ddpm")).ok());
    CHECK(dir.list().empty());
    CHECK(contains(w.set_metadata("bad key", MetadataValue::u8(1)).message(), "invalid metadata key 'bad key'"));
  }
}

TEST_CASE("validate_unet2d_metadata checks the documented model keys", "[format]") {
  const std::string unet =
      "{\"sample_size\": 32, \"in_channels\": 3, \"out_channels\": 3, \"down_block_types\": [\"DownBlock2D\"], "
      "\"up_block_types\": [\"UpBlock2D\"], \"block_out_channels\": [32], \"layers_per_block\": 1, "
      "\"norm_num_groups\": 8, \"act_fn\": \"silu\", \"num_class_embeds\": 11}";
  const std::string scheduler =
      "{\"num_train_timesteps\": 1000, \"beta_start\": 0.0001, \"beta_end\": 0.02, \"beta_schedule\": \"linear\", "
      "\"trained_betas\": null, \"prediction_type\": \"epsilon\", \"variance_type\": \"fixed_small\", "
      "\"clip_sample\": true, \"clip_sample_range\": 1.0, \"thresholding\": false, "
      "\"dynamic_thresholding_ratio\": 0.995, \"sample_max_value\": 1.0, \"timestep_spacing\": \"leading\", "
      "\"steps_offset\": 0, \"set_alpha_to_one\": true, \"rescale_betas_zero_snr\": false}";
  DdpmMetadata good;
  good.set_source("m.ddpm");
  REQUIRE(good.set("ddpm.architecture", MetadataValue::string("unet2d")).ok());
  REQUIRE(good.set("unet.config", MetadataValue::string(unet)).ok());
  REQUIRE(good.set("scheduler.config", MetadataValue::string(scheduler)).ok());
  REQUIRE(good.set("data.image_size", MetadataValue::u32_array({32, 32})).ok());
  REQUIRE(good.set("data.channels", MetadataValue::u32(3)).ok());
  REQUIRE(good.set("data.value_range", MetadataValue::f32_array({-1.0f, 1.0f})).ok());
  REQUIRE(good.set("classes.names", MetadataValue::string_array({"a", "b"})).ok());
  REQUIRE(good.set("classes.null_index", MetadataValue::i32(10)).ok());
  REQUIRE(good.set("sampling.default_guidance_scale", MetadataValue::f32(3.0f)).ok());
  REQUIRE(good.set("sampling.default_sampler", MetadataValue::string("ddim")).ok());
  REQUIRE(good.set("sampling.default_steps", MetadataValue::u32(50)).ok());
  REQUIRE(good.set("provenance.tool", MetadataValue::string("ddpm.cpp 0.1.0")).ok());
  REQUIRE(good.set("provenance.source_sha256", MetadataValue::string(std::string(64, 'a'))).ok());
  REQUIRE(good.set("provenance.created", MetadataValue::string("2026-08-21T12:34:56Z")).ok());
  REQUIRE(good.set("training.anything", MetadataValue::f64(1.5)).ok());
  CHECK(validate_unet2d_metadata(good).ok());

  auto without = [&](const char* key) {
    DdpmMetadata m = good;
    m.erase(key);
    return validate_unet2d_metadata(m).message();
  };
  auto with = [&](const char* key, MetadataValue value) {
    DdpmMetadata m = good;
    REQUIRE(m.set(key, std::move(value)).ok());
    return validate_unet2d_metadata(m).message();
  };
  for (const char* key : {"ddpm.architecture", "unet.config", "scheduler.config", "data.image_size", "data.channels",
                          "data.value_range"}) {
    CHECK(without(key) == std::string("m.ddpm: missing metadata key '") + key + "'");
  }
  for (const char* key : {"classes.names", "classes.null_index", "sampling.default_sampler", "provenance.tool",
                          "provenance.created"}) {
    CHECK(without(key).empty());
  }
  CHECK(with("ddpm.architecture", MetadataValue::string("vae")) ==
        "m.ddpm: ddpm.architecture is 'vae', expected 'unet2d'");
  CHECK(contains(with("unet.config", MetadataValue::string("{")), "metadata key 'unet.config' is not valid JSON"));
  CHECK(contains(with("unet.config", MetadataValue::string("[]")), "is not a JSON object"));
  CHECK(contains(with("scheduler.config", MetadataValue::string("{\"num_train_timesteps\": 1000}")),
                 "metadata key 'scheduler.config' lacks \"beta_start\""));
  CHECK(contains(with("data.image_size", MetadataValue::u32_array({32})), "data.image_size must be [H, W]"));
  CHECK(contains(with("data.image_size", MetadataValue::i32_array({32, 32})), "has type array of i32"));
  CHECK(contains(with("data.channels", MetadataValue::u32(0)), "data.channels is 0"));
  CHECK(contains(with("data.value_range", MetadataValue::f32_array({1.0f, -1.0f})), "finite lo < hi"));
  CHECK(contains(with("classes.null_index", MetadataValue::i32(11)), "outside the 11 class embeddings"));
  CHECK(contains(with("classes.names", MetadataValue::string_array({})), "classes.names is an empty list"));
  CHECK(contains(with("sampling.default_steps", MetadataValue::u32(0)), "sampling.default_steps is 0"));
  CHECK(contains(with("sampling.default_steps", MetadataValue::i32(5)), "has type i32, expected u32"));
  CHECK(contains(with("provenance.source_sha256", MetadataValue::string("ABC")), "64 lower-case hex"));
  CHECK(contains(with("provenance.created", MetadataValue::string("2026-08-21 12:34")), "ISO-8601"));
  CHECK(with("provenance.created", MetadataValue::string("2026-08-21T12:34:56.123Z")).empty());
  CHECK(contains(with("quant.int8_winograd", MetadataValue::string("yes")), "has type string, expected bool"));
  CHECK(with("quant.int8_winograd", MetadataValue::boolean(false)).empty());
  CHECK(contains(with("quant.calibration", MetadataValue::u32(1)), "has type u32, expected string"));
}

TEST_CASE("streamed tensors: same bytes as borrowed ones, one reused buffer, producer errors stop the write",
          "[format][writer]") {
  const int64_t small[2] = {3, 5}, big[3] = {4, 8, 16}, row[1] = {64};
  const std::vector<uint8_t> a = random_bytes(3 * 5 * 4, 11), b = random_bytes(4 * 8 * 16 * 2, 12),
                             c = random_bytes(64 * 4, 13);
  auto writer_with = [&](DdpmWriter* w, bool stream, std::vector<const void*>* buffers, int* calls) {
    REQUIRE(w->set_metadata("ddpm.architecture", MetadataValue::string("test")).ok());
    auto producer = [buffers, calls](const std::vector<uint8_t>& src) {
      return [&src, buffers, calls](void* dst, uint64_t bytes) {
        REQUIRE(bytes == src.size());
        std::memcpy(dst, src.data(), src.size());
        buffers->push_back(dst);
        ++*calls;
        return Status();
      };
    };
    if (stream) {
      REQUIRE(w->add_tensor("a", DType::F32, 2, small, producer(a)).ok());
      REQUIRE(w->add_tensor("b", DType::F16, 3, big, producer(b)).ok());
    } else {
      REQUIRE(w->add_tensor("a", DType::F32, 2, small, a.data()).ok());
      REQUIRE(w->add_tensor("b", DType::F16, 3, big, b.data()).ok());
    }
    REQUIRE(w->add_tensor("c", DType::F32, 1, row, c.data()).ok());  // borrowed and streamed mix
  };
  std::vector<const void*> buffers;
  int calls = 0;
  DdpmWriter borrowed, streamed;
  writer_with(&borrowed, false, &buffers, &calls);
  writer_with(&streamed, true, &buffers, &calls);
  std::vector<uint8_t> expected, got;
  REQUIRE(borrowed.finish_to_bytes(&expected).ok());
  REQUIRE(streamed.finish_to_bytes(&got).ok());
  CHECK(got == expected);
  CHECK(calls == 4);  // twice per streamed tensor: checksum, then write
  REQUIRE(buffers.size() == 4);
  CHECK((buffers[0] == buffers[1] && buffers[1] == buffers[2] && buffers[2] == buffers[3]));

  TempDir dir;
  const std::string path = dir.file("model.ddpm");
  REQUIRE(streamed.finish(path).ok());
  CHECK(read_bytes(path) == expected);

  SECTION("a producer's error fails finish() as it is and leaves no file") {
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("test")).ok());
    REQUIRE(w.add_tensor("a", DType::F32, 2, small, [](void*, uint64_t) { return errorf("source.bin: bad tensor"); })
                .ok());
    CHECK(w.finish(dir.file("failed.ddpm")).message() == "source.bin: bad tensor");
    CHECK(dir.list() == std::vector<std::string>{"model.ddpm"});
  }
  SECTION("a producer that changes its bytes between the two calls is caught") {
    DdpmWriter w;
    REQUIRE(w.set_metadata("ddpm.architecture", MetadataValue::string("test")).ok());
    int n = 0;
    REQUIRE(w.add_tensor("a", DType::F32, 2, small, [&n](void* dst, uint64_t bytes) {
                 std::memset(dst, n++, static_cast<size_t>(bytes));
                 return Status();
               }).ok());
    CHECK(w.finish(dir.file("changed.ddpm")).message() ==
          "cannot write " + dir.file("changed.ddpm") + ": tensor 'a' changed between its checksum and its write");
    CHECK(dir.list() == std::vector<std::string>{"model.ddpm"});
  }
  SECTION("an empty producer is no data") {
    DdpmWriter w;
    CHECK(w.add_tensor("a", DType::F32, 2, small, DdpmTensorProducer()).message() == "tensor 'a': no data given");
  }
}
