// Tests for the torch checkpoint readers: zip directory, restricted pickle machine, zip/legacy checkpoints,
// state-dict selection, and the hostile corpus. Fixtures come from tests/make_hostile_pickles.py (committed outputs)
// plus a genuine torch.save file (micro.bin) and its safetensors twin.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "io/pickle.h"
#include "io/torch_checkpoint.h"
#include "io/zip.h"

using namespace ddpm;

namespace {

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  INFO("reading " << path);
  REQUIRE(in.good());
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<uint8_t> bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// A string literal with embedded NULs.
template <size_t N>
std::string raw(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

TorchCheckpoint read_ok(const std::vector<uint8_t>& file, const std::string& name) {
  TorchCheckpoint checkpoint;
  Status status = read_torch_checkpoint(file.data(), file.size(), name, &checkpoint);
  INFO(status.message());
  REQUIRE(status.ok());
  return checkpoint;
}

std::map<std::string, SourceTensor> collect_ok(const TorchCheckpoint& checkpoint, const std::string& path = "") {
  std::vector<SourceTensor> tensors;
  Status status = collect_tensors(*checkpoint.root, path, &tensors, nullptr);
  INFO(status.message());
  REQUIRE(status.ok());
  std::map<std::string, SourceTensor> by_name;
  for (const SourceTensor& t : tensors) by_name[t.name] = t;
  REQUIRE(by_name.size() == tensors.size());
  return by_name;
}

float half_to_float(uint16_t h) {
  int exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -24)
                                  : std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  return (h & 0x8000) ? -magnitude : magnitude;
}

int element_size(SourceDType dtype) {
  switch (dtype) {
    case SourceDType::F64:
    case SourceDType::I64: return 8;
    case SourceDType::F32:
    case SourceDType::I32: return 4;
    case SourceDType::F16:
    case SourceDType::BF16:
    case SourceDType::I16: return 2;
    default: return 1;
  }
}

// Element `index` (multi-index) of `t` as a double, decoded from the file bytes the way a loader would.
double element(const std::vector<uint8_t>& file, const SourceTensor& t, const std::vector<int64_t>& index) {
  REQUIRE(index.size() == t.shape.size());
  int64_t e = t.element_offset;
  for (size_t d = 0; d < index.size(); ++d) e += index[d] * t.strides[d];
  const int size = element_size(t.dtype);
  REQUIRE(static_cast<uint64_t>((e + 1) * size) <= t.storage_bytes);
  REQUIRE(t.storage_offset + t.storage_bytes <= file.size());
  uint8_t raw[8];
  std::memcpy(raw, file.data() + t.storage_offset + static_cast<uint64_t>(e * size), static_cast<size_t>(size));
  if (t.big_endian) std::reverse(raw, raw + size);
  switch (t.dtype) {
    case SourceDType::F32: { float f; std::memcpy(&f, raw, 4); return f; }
    case SourceDType::F64: { double f; std::memcpy(&f, raw, 8); return f; }
    case SourceDType::I64: { int64_t v; std::memcpy(&v, raw, 8); return static_cast<double>(v); }
    case SourceDType::F16: return half_to_float(static_cast<uint16_t>(raw[0] | (raw[1] << 8)));
    case SourceDType::BF16: {
      uint32_t bits = static_cast<uint32_t>(raw[0] | (raw[1] << 8)) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case SourceDType::I8: return static_cast<int8_t>(raw[0]);
    case SourceDType::BOOL:
    case SourceDType::U8: return raw[0];
    default: FAIL("dtype not handled by the test"); return 0;
  }
}

// ---- a minimal JSON reader, enough for a safetensors header ----
struct Json {
  enum Kind { Null, Number, String, Array, Object } kind = Null;
  double number = 0;
  std::string text;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;
};

struct JsonParser {
  const std::string& s;
  size_t pos = 0;
  void skip() { while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\n' || s[pos] == '\t' || s[pos] == '\r')) ++pos; }
  std::string string() {
    REQUIRE(s[pos] == '"');
    std::string out;
    for (++pos; s[pos] != '"'; ++pos) {
      REQUIRE(s[pos] != '\\');  // tensor names in our fixture need no escapes
      out += s[pos];
    }
    ++pos;
    return out;
  }
  Json value() {
    skip();
    Json v;
    if (s[pos] == '{') {
      v.kind = Json::Object;
      ++pos;
      skip();
      while (s[pos] != '}') {
        std::string key = string();
        skip();
        REQUIRE(s[pos++] == ':');
        v.members.emplace_back(key, value());
        skip();
        if (s[pos] == ',') ++pos;
        skip();
      }
      ++pos;
    } else if (s[pos] == '[') {
      v.kind = Json::Array;
      ++pos;
      skip();
      while (s[pos] != ']') {
        v.items.push_back(value());
        skip();
        if (s[pos] == ',') ++pos;
        skip();
      }
      ++pos;
    } else if (s[pos] == '"') {
      v.kind = Json::String;
      v.text = string();
    } else {
      v.kind = Json::Number;
      size_t used = 0;
      v.number = std::stod(s.substr(pos, 32), &used);
      pos += used;
    }
    return v;
  }
};

const Json* member(const Json& object, const std::string& key) {
  for (const auto& m : object.members) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t step = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    strides[d] = step;
    step *= shape[d];
  }
  return strides;
}

}  // namespace

TEST_CASE("zip directory of a genuine torch.save file", "[pickle]") {
  std::vector<uint8_t> file = read_file("data/pickle/micro.bin");
  std::vector<ZipEntry> entries;
  Status status = read_zip_directory(file.data(), file.size(), "micro.bin", &entries);
  INFO(status.message());
  REQUIRE(status.ok());
  REQUIRE(entries.size() == 146);  // data.pkl, version, 144 storages
  CHECK(entries[0].name == "diffusion_pytorch_model/data.pkl");
  for (const ZipEntry& entry : entries) {
    CHECK(entry.data_offset % 64 == 0);  // torch aligns record data to 64 bytes
    CHECK(entry.data_offset + entry.size <= file.size());
  }
  const ZipEntry* version = find_zip_entry(entries, "diffusion_pytorch_model/version");
  REQUIRE(version != nullptr);
  CHECK(std::string(file.begin() + static_cast<long>(version->data_offset),
                    file.begin() + static_cast<long>(version->data_offset + version->size)) == "3\n");
  CHECK(find_zip_entry(entries, "diffusion_pytorch_model/data/143") != nullptr);
  CHECK(find_zip_entry(entries, "diffusion_pytorch_model/data/144") == nullptr);
}

TEST_CASE("genuine micro .bin matches its safetensors twin tensor for tensor", "[pickle]") {
  std::vector<uint8_t> bin = read_file("data/pickle/micro.bin");
  std::vector<uint8_t> st = read_file("data/pickle/micro.safetensors");
  CHECK(looks_like_torch_zip(bin.data(), bin.size()));
  CHECK_FALSE(looks_like_torch_legacy(bin.data(), bin.size()));
  TorchCheckpoint checkpoint = read_ok(bin, "micro.bin");
  CHECK(checkpoint.format == TorchFormat::Zip);
  CHECK(checkpoint.archive_prefix == "diffusion_pytorch_model");
  CHECK_FALSE(checkpoint.big_endian);
  CHECK(checkpoint.storages.size() == 144);
  std::vector<std::string> candidates;
  std::vector<SourceTensor> list;
  REQUIRE(collect_tensors(*checkpoint.root, "", &list, &candidates).ok());
  CHECK(candidates == std::vector<std::string>{"/"});
  std::map<std::string, SourceTensor> tensors = collect_ok(checkpoint);
  REQUIRE(tensors.size() == 144);

  // Shapes from config.json: block_out_channels [8, 16], in/out channels 3, time embedding 4 * 8 = 32.
  CHECK(tensors.at("conv_in.weight").shape == std::vector<int64_t>{8, 3, 3, 3});
  CHECK(tensors.at("time_embedding.linear_1.weight").shape == std::vector<int64_t>{32, 8});
  CHECK(tensors.at("conv_out.weight").shape == std::vector<int64_t>{3, 8, 3, 3});

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | st[static_cast<size_t>(i)];
  REQUIRE(header_size < st.size());
  std::string header(st.begin() + 8, st.begin() + 8 + static_cast<long>(header_size));
  JsonParser parser{header};
  Json root = parser.value();
  REQUIRE(root.kind == Json::Object);
  size_t compared = 0;
  for (const auto& m : root.members) {
    if (m.first == "__metadata__") continue;
    INFO("tensor " << m.first);
    REQUIRE(tensors.count(m.first) == 1);
    const SourceTensor& t = tensors.at(m.first);
    REQUIRE(member(m.second, "dtype")->text == "F32");
    CHECK(t.dtype == SourceDType::F32);
    std::vector<int64_t> shape;
    for (const Json& d : member(m.second, "shape")->items) shape.push_back(static_cast<int64_t>(d.number));
    CHECK(t.shape == shape);
    CHECK(t.strides == contiguous_strides(shape));
    const Json* offsets = member(m.second, "data_offsets");
    uint64_t begin = static_cast<uint64_t>(offsets->items[0].number);
    uint64_t end = static_cast<uint64_t>(offsets->items[1].number);
    REQUIRE(end - begin == static_cast<uint64_t>(t.numel()) * 4);
    REQUIRE(t.storage_offset + static_cast<uint64_t>(t.element_offset) * 4 + (end - begin) <= bin.size());
    CHECK(std::memcmp(bin.data() + t.storage_offset + t.element_offset * 4, st.data() + 8 + header_size + begin,
                      end - begin) == 0);
    ++compared;
  }
  CHECK(compared == 144);
}

TEST_CASE("views, transposes, broadcasts, shared storages and every dtype", "[pickle]") {
  for (const char* path : {"data/pickle/views.pt", "data/pickle/views_protocol4.pt", "data/pickle/views_protocol5.pt"}) {
    INFO(path);
    std::vector<uint8_t> file = read_file(path);
    TorchCheckpoint checkpoint = read_ok(file, path);
    std::map<std::string, SourceTensor> t = collect_ok(checkpoint);
    CHECK(t.size() == 15);  // "step" (an int) is skipped
    auto a = [](int64_t i) { return i * 0.5 - 1.0; };

    const SourceTensor& base = t.at("base");
    CHECK(base.shape == std::vector<int64_t>{3, 4});
    CHECK(base.storage_bytes == 48);
    const SourceTensor& transposed = t.at("transposed");
    CHECK(transposed.strides == std::vector<int64_t>{1, 4});
    CHECK(transposed.storage_offset == base.storage_offset);  // one storage, two views
    for (int64_t i = 0; i < 4; ++i) {
      for (int64_t j = 0; j < 3; ++j) {
        CHECK(element(file, transposed, {i, j}) == a(j * 4 + i));
        CHECK(element(file, base, {j, i}) == a(j * 4 + i));
      }
    }
    CHECK(t.at("row1").element_offset == 4);
    CHECK(element(file, t.at("row1"), {3}) == a(7));
    CHECK(element(file, t.at("col2"), {2}) == a(10));
    CHECK(t.at("scalar").shape.empty());
    CHECK(element(file, t.at("scalar"), {}) == a(5));
    CHECK(t.at("empty").numel() == 0);
    CHECK(t.at("empty").element_offset == 12);
    CHECK(t.at("expanded").strides == std::vector<int64_t>{0, 1});
    CHECK(element(file, t.at("expanded"), {1, 3}) == a(11));
    CHECK(element(file, t.at("param"), {1, 1}) == a(6));
    CHECK(element(file, t.at("block.conv.weight"), {1, 0, 0, 0}) == a(2));

    CHECK(t.at("half").dtype == SourceDType::F16);
    CHECK(element(file, t.at("half"), {1, 0}) == 1024.0);
    CHECK(element(file, t.at("half"), {1, 1}) == -0.25);
    CHECK(t.at("bf16").dtype == SourceDType::BF16);
    CHECK(element(file, t.at("bf16"), {2}) == 256.0);
    CHECK(t.at("long").dtype == SourceDType::I64);
    CHECK(element(file, t.at("long"), {1}) == 1099511627776.0);
    CHECK(t.at("mask").dtype == SourceDType::BOOL);
    CHECK(element(file, t.at("mask"), {3}) == 1.0);
    CHECK(element(file, t.at("mask"), {4}) == 0.0);
    CHECK(t.at("double").dtype == SourceDType::F64);
    CHECK(element(file, t.at("double"), {1}) == -1e300);
    CHECK(t.at("int8").dtype == SourceDType::I8);
    CHECK(element(file, t.at("int8"), {0}) == -128.0);

    const PickleValue* step = checkpoint.root->find("step");
    REQUIRE(step != nullptr);
    CHECK(step->kind == PickleKind::Int);
    CHECK(step->int_value == 7);
  }
}

TEST_CASE("Lightning checkpoint: auto mode finds state_dict, the rest stays navigable", "[pickle]") {
  std::vector<uint8_t> file = read_file("data/pickle/lightning.ckpt");
  TorchCheckpoint checkpoint = read_ok(file, "lightning.ckpt");
  CHECK(checkpoint.archive_prefix == "epoch=3-step=1000");
  std::vector<SourceTensor> list;
  std::vector<std::string> candidates;
  Status status = collect_tensors(*checkpoint.root, "", &list, &candidates);
  INFO(status.message());
  REQUIRE(status.ok());
  CHECK(candidates == std::vector<std::string>{"state_dict"});
  REQUIRE(list.size() == 3);
  CHECK(list[0].name == "model.conv.weight");  // insertion order is kept
  CHECK(list[1].name == "model.conv.bias");
  CHECK(list[1].dtype == SourceDType::F16);
  CHECK(element(file, list[1], {3}) == 4.0);
  CHECK(list[2].name == "model.head.weight");
  CHECK(element(file, list[2], {5, 1}) == 11.0);  // transposed view of the conv weight storage

  const PickleValue& root = *checkpoint.root;
  REQUIRE(root.is_dict());
  CHECK(root.find("epoch")->int_value == 3);
  CHECK(root.find("global_step")->int_value == 1000);
  CHECK(root.find("pytorch-lightning_version")->text == "1.9.5");
  CHECK(root.find("loops")->kind == PickleKind::None);
  CHECK(root.find("state_dict")->ordered_dict);
  const PickleValue& hp = *root.find("hyper_parameters");
  CHECK(hp.find("lr")->kind == PickleKind::Float);
  CHECK(hp.find("lr")->float_value == 0.0001);
  CHECK(hp.find("blob")->kind == PickleKind::Bytes);
  CHECK(hp.find("blob")->text == std::string("\x00\xffxyz", 5));
  CHECK(hp.find("empty_blob")->kind == PickleKind::Bytes);
  CHECK(hp.find("empty_blob")->text.empty());
  CHECK(hp.find("device")->text == "cuda:0");
  CHECK(hp.find("dtype")->kind == PickleKind::Global);
  CHECK(hp.find("dtype")->text == "torch.float32");
  CHECK(hp.find("tags")->kind == PickleKind::Set);
  CHECK(hp.find("tags")->items.size() == 2);
  CHECK(hp.find("big")->int_value == (int64_t{1} << 40));
  CHECK(hp.find("neg")->int_value == -5);
  CHECK(hp.find("huge_neg")->int_value == INT64_MIN);
  CHECK(hp.find("ok")->bool_value);
  CHECK(root.find("optimizer_states")->kind == PickleKind::List);

  std::map<std::string, SourceTensor> explicit_path = collect_ok(checkpoint, "state_dict");
  CHECK(explicit_path.size() == 3);
  std::map<std::string, SourceTensor> optimizer = collect_ok(checkpoint, "optimizer_states/0/state/0");
  REQUIRE(optimizer.count("exp_avg") == 1);
  CHECK(element(file, optimizer.at("exp_avg"), {3, 1, 2, 0}) == 0.25);
  std::map<std::string, SourceTensor> everything = collect_ok(checkpoint, "/");  // nested dicts, flattened
  CHECK(everything.count("state_dict.model.conv.weight") == 1);

  std::vector<SourceTensor> none;
  status = collect_tensors(root, "hyper_parameters", &none, nullptr);
  CHECK_FALSE(status.ok());
  CHECK(status.message().find("no tensors") != std::string::npos);
  status = collect_tensors(root, "state_dictionary", &none, nullptr);
  CHECK_FALSE(status.ok());
  CHECK(status.message().find("keys: epoch") != std::string::npos);
  status = collect_tensors(root, "epoch", &none, nullptr);
  CHECK_FALSE(status.ok());
  CHECK(status.message().find("not a dict") != std::string::npos);
}

TEST_CASE("several state dicts: auto mode lists them, a key path picks one", "[pickle]") {
  for (const char* path : {"data/pickle/ema.pt", "data/pickle/zip64_comment.pt"}) {
    INFO(path);
    std::vector<uint8_t> file = read_file(path);
    TorchCheckpoint checkpoint = read_ok(file, path);
    std::vector<SourceTensor> list;
    std::vector<std::string> candidates;
    Status status = collect_tensors(*checkpoint.root, "", &list, &candidates);
    CHECK_FALSE(status.ok());
    CHECK(status.message().find("several state dicts (model, ema)") != std::string::npos);
    CHECK(candidates == std::vector<std::string>{"model", "ema"});
    CHECK(list.empty());
    std::map<std::string, SourceTensor> ema = collect_ok(checkpoint, "ema");
    REQUIRE(ema.count("w") == 1);
    CHECK(element(file, ema.at("w"), {1}) == 4.0);
    std::map<std::string, SourceTensor> model = collect_ok(checkpoint, "model");
    CHECK(element(file, model.at("w"), {0}) == 1.0);
  }
}

TEST_CASE("byteorder record 'big' marks storages big-endian", "[pickle]") {
  std::vector<uint8_t> file = read_file("data/pickle/big_endian.pt");
  TorchCheckpoint checkpoint = read_ok(file, "big_endian.pt");
  CHECK(checkpoint.big_endian);
  std::map<std::string, SourceTensor> t = collect_ok(checkpoint);
  CHECK(t.at("f").big_endian);
  CHECK(element(file, t.at("f"), {0}) == 1.5);
  CHECK(element(file, t.at("f"), {1}) == -2.0);
  CHECK(element(file, t.at("d"), {0}) == 2.5);
}

TEST_CASE("legacy (pre-zip) torch file: storages, views and _rebuild_tensor", "[pickle]") {
  std::vector<uint8_t> file = read_file("data/pickle/legacy.pt");
  CHECK(looks_like_torch_legacy(file.data(), file.size()));
  CHECK_FALSE(looks_like_torch_zip(file.data(), file.size()));
  TorchCheckpoint checkpoint = read_ok(file, "legacy.pt");
  CHECK(checkpoint.format == TorchFormat::Legacy);
  CHECK_FALSE(checkpoint.big_endian);
  std::map<std::string, SourceTensor> t = collect_ok(checkpoint);
  REQUIRE(t.size() == 4);
  CHECK(t.at("weight").shape == std::vector<int64_t>{2, 5});
  CHECK(element(file, t.at("weight"), {1, 4}) == 9.0);
  CHECK(t.at("half").dtype == SourceDType::F16);
  CHECK(element(file, t.at("half"), {2}) == -2.0);
  CHECK(t.at("view_tail").element_offset == 7);  // view offset 6 + tensor offset 1
  CHECK(element(file, t.at("view_tail"), {0}) == 7.0);
  CHECK(element(file, t.at("view_tail"), {2}) == 9.0);
  CHECK(element(file, t.at("old_style"), {1}) == 5.0);
  // The storages sit after the five pickles, each behind its 8-byte element count.
  CHECK(t.at("weight").storage_offset + 40 + 8 == t.at("half").storage_offset);
  CHECK(t.at("half").storage_offset + 6 == file.size());
}

TEST_CASE("hostile corpus: every file is rejected with a precise message and nothing runs", "[pickle]") {
  const char* const kSentinel = "/tmp/ddpm_pwned";
  std::remove(kSentinel);
  struct Case {
    const char* file;
    const char* keyword;
  };
  const Case cases[] = {
      {"os_system", "refusing to call os.system, loaded by GLOBAL at byte 2"},
      {"posix_system", "refusing to call posix.system"},
      {"builtins_eval", "refusing to call builtins.eval"},
      {"builtin_exec_py2", "refusing to call builtins.exec"},
      {"subprocess_popen", "refusing to call subprocess.Popen"},
      {"stack_global_system", "refusing to call os.system, loaded by STACK_GLOBAL"},
      {"stack_global_getattr", "refusing to call builtins.getattr"},
      {"newobj_popen", "refusing to instantiate subprocess.Popen"},
      {"numpy_reconstruct", "refusing to call numpy.core.multiarray._reconstruct"},
      {"call_in_state_dict", "refusing to call os.system"},
      {"inst", "opcode INST is not allowed"},
      {"obj", "opcode OBJ is not allowed"},
      {"ext1", "opcode EXT1 is not allowed"},
      {"persid_text", "text persistent ids"},
      {"build_on_global", "BUILD on a global"},
      {"build_on_list", "BUILD on a list"},
      {"append_to_dict", "appending to a dict"},
      {"reduce_non_global", "refusing to call a None"},
      {"deep_marks", "MARKs nested more than 1000"},
      {"deep_lists", "nested more than 1000 deep"},
      {"deep_tuples", "nested more than 1000 deep"},
      {"huge_string", "truncated"},
      {"huge_unicode8", "truncated"},
      {"huge_frame", "truncated"},
      {"huge_long4", "truncated"},
      {"negative_long4", "negative byte count"},
      {"long_too_big", "does not fit in 64 bits"},
      {"memo_missing", "memo index 5 was never stored"},
      {"memo_missing_long", "memo index 4294967295 was never stored"},
      {"recursive_list", "recursive"},
      {"recursive_dict", "recursive"},
      {"duplicate_key", "duplicate dict key 'w'"},
      {"unhashable_key", "unhashable or oversized dict key"},
      {"stack_underflow", "stack underflow"},
      {"mark_underflow", "stack underflow"},
      {"no_stop", "no STOP"},
      {"unknown_opcode", "unknown opcode"},
      {"text_int", "text opcode INT"},
      {"protocol_6", "unsupported pickle protocol 6"},
      {"bad_utf8", "not valid UTF-8"},
      {"storage_offset_oob", "reaches past its storage"},
      {"stride_oob", "reaches past its storage"},
      {"negative_stride", "negative"},
      {"numel_overflow", "overflows"},
      {"zero_extent_overflow", "overflows"},
      {"extent_overflow", "overflows"},
      {"storage_numel_overflow", "overflows"},
      {"rank_9", "rank 9"},
      {"rebuild_bad_args", "takes 6 or 7 arguments"},
      {"storage_no_record", "storage '7' has no record archive/data/7"},
      {"record_size_mismatch", "holds 12 bytes but storage '0'"},
      {"storage_conflict", "declared twice"},
      {"non_storage_pid", "persistent id of type 'module'"},
      {"pid_not_tuple", "persistent id is a str"},
      {"unknown_storage_type", "unsupported storage type torch.ComplexFloatStorage"},
      {"storage_type_os", "unsupported storage type os.system"},
      {"legacy_pid_in_zip", "six-element"},
      {"torchscript", "TorchScript archive: not supported"},
      {"truncated_zip", "end-of-central-directory record not found"},
      {"truncated_zip_tail", "end-of-central-directory record not found"},
      {"compressed_entry", "'archive/data.pkl' is compressed (method 8)"},
      {"encrypted_entry", "'archive/data.pkl' is encrypted"},
      {"duplicate_entry", "two entries named 'archive/data.pkl'"},
      {"no_data_pkl", "no archive/data.pkl record"},
      {"no_prefix", "no '<archive>/' prefix"},
      {"bad_byteorder", "byteorder record says 'middle'"},
      {"bogus_eocd_offset", "central directory"},
      {"bogus_eocd_count", "central directory holds at most"},
      {"too_many_entries", "(limit 1048576)"},
      {"bogus_zip64_locator", "zip64 end-of-central-directory record at offset"},
      {"bogus_zip64_signature", "bad zip64 end-of-central-directory signature"},
      {"saturated_without_zip64", "zip64 locator is missing"},
      {"fake_eocd_in_comment", "lies outside the file"},
      {"bad_local_signature", "no valid local header"},
      {"local_name_mismatch", "names a different file"},
      {"entry_past_cd", "overruns the file or its central directory"},
      {"entry_size_mismatch", "sizes differ"},
      {"cd_entry_truncated", "overruns the directory"},
      {"overlapping_entries", "overlap"},
      {"legacy_truncated", "truncated"},
      {"legacy_numel_mismatch", "stored with 4 elements but the pickle declares 3"},
      {"legacy_key_not_listed", "with no record"},
      {"legacy_key_unused", "'123' is listed but no tensor uses it"},
      {"legacy_key_twice", "listed twice"},
      {"legacy_bad_version", "protocol version int 1002"},
      {"not_torch", "not a PyTorch checkpoint"},
      {"tar_format", "tar-based"},
      {"empty_file", "not a PyTorch checkpoint"},
  };
  for (const Case& c : cases) {
    const std::string name = std::string(c.file) + ".bin";
    std::vector<uint8_t> file = read_file("data/pickle/hostile/" + name);
    TorchCheckpoint checkpoint;
    Status status = read_torch_checkpoint(file.data(), file.size(), name, &checkpoint);
    INFO(name << ": " << status.message());
    REQUIRE_FALSE(status.ok());
    CHECK(status.message().find(c.keyword) != std::string::npos);
    CHECK(status.message().compare(0, name.size() + 2, name + ": ") == 0);
    CHECK(status.message().find('\n') == std::string::npos);
  }
  CHECK(access(kSentinel, F_OK) != 0);
}

TEST_CASE("truncated and corrupted checkpoints never crash", "[pickle]") {
  for (const char* path : {"data/pickle/views.pt", "data/pickle/legacy.pt", "data/pickle/lightning.ckpt"}) {
    INFO(path);
    const std::vector<uint8_t> file = read_file(path);
    for (size_t length = 0; length < file.size(); ++length) {
      std::vector<uint8_t> prefix(file.begin(), file.begin() + static_cast<long>(length));  // exact-size buffer
      TorchCheckpoint checkpoint;
      CHECK_FALSE(read_torch_checkpoint(prefix.data(), prefix.size(), "cut", &checkpoint).ok());
    }
    std::vector<uint8_t> copy = file;
    for (size_t i = 0; i < copy.size(); ++i) {
      for (uint8_t flip : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xFF}}) {
        copy[i] ^= flip;
        TorchCheckpoint checkpoint;
        if (read_torch_checkpoint(copy.data(), copy.size(), "flipped", &checkpoint).ok()) {
          std::vector<SourceTensor> tensors;
          std::vector<std::string> candidates;
          (void)collect_tensors(*checkpoint.root, "", &tensors, &candidates);
          for (const SourceTensor& t : tensors) CHECK(t.storage_offset + t.storage_bytes <= copy.size());
        }
        copy[i] ^= flip;
      }
    }
  }
}

TEST_CASE("pickle machine: scalars, containers and opcodes of every protocol", "[pickle]") {
  PickleResult result;
  // PROTO 2, MARK, LONG1 -1, LONG1 2^63-1 (8 bytes), LONG1 -2^63 padded to 9 bytes, BINFLOAT 1.5, TUPLE, STOP.
  std::vector<uint8_t> p = bytes(raw("\x80\x02(\x8a\x01\xff\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f"
                                     "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\xff"
                                     "G\x3f\xf8\x00\x00\x00\x00\x00\x00t.trailing"));
  Status status = parse_pickle(p.data(), p.size(), "t", &result);
  INFO(status.message());
  REQUIRE(status.ok());
  CHECK(result.consumed == 38);
  REQUIRE(result.root->kind == PickleKind::Tuple);
  REQUIRE(result.root->items.size() == 4);
  CHECK(result.root->items[0]->int_value == -1);
  CHECK(result.root->items[1]->int_value == INT64_MAX);
  CHECK(result.root->items[2]->int_value == INT64_MIN);
  CHECK(result.root->items[3]->float_value == 1.5);

  // Everything inside one MARK … LIST so that each value comes back.
  std::string q = "\x80\x04(";
  q += "(\x8c\x01""a" "K\x01" "\x8c\x01""b" "](K\x02" "2e" "d";  // {"a": 1, "b": [2, 2]}: DICT, DUP, APPENDS
  q += "\x94";                                                // MEMOIZE → memo[0]
  q += "N0";                                                  // POP
  q += "(NN1";                                                // POP_MARK
  q += "\x8f(K\x01K\x02\x90";                                 // {1, 2}: EMPTY_SET, ADDITEMS
  q += "(K\x03\x91";                                          // frozenset({3})
  q += "\x8c\x0b""collections\x8c\x0bOrderedDict\x93)\x81";   // NEWOBJ OrderedDict()
  q += "\x8c\x0b""collections\x8c\x0bOrderedDict\x93((K\x01K\x02ll\x85R";  // OrderedDict([[1, 2]])
  q += raw("C\x02\x00\x01");                                  // SHORT_BINBYTES
  q += "c_codecs\nencode\n\x8c\x02\xc3\xbf\x8c\x06latin1\x86R";  // _codecs.encode('\xff', 'latin1')
  q += raw("h\x00");                                          // BINGET memo[0]
  q += "l.";
  std::vector<uint8_t> qb = bytes(q);
  status = parse_pickle(qb.data(), qb.size(), "q", &result);
  INFO(status.message());
  REQUIRE(status.ok());
  REQUIRE(result.root->kind == PickleKind::List);
  const std::vector<PickleValuePtr>& items = result.root->items;
  REQUIRE(items.size() == 8);
  CHECK(items[0]->is_dict());
  CHECK(items[0]->find("a")->int_value == 1);
  CHECK(items[0]->find("b")->items.size() == 2);
  CHECK(items[1]->kind == PickleKind::Set);
  CHECK(items[1]->items.size() == 2);
  CHECK(items[2]->kind == PickleKind::Set);
  CHECK(items[3]->is_dict());
  CHECK(items[3]->ordered_dict);
  CHECK(items[4]->dict_size() == 1);
  CHECK(items[5]->kind == PickleKind::Bytes);
  CHECK(items[5]->text == std::string("\x00\x01", 2));
  CHECK(items[6]->text == "\xff");
  CHECK(items[7] == items[0]);  // memo shares the object
}

TEST_CASE("pickle machine: limits are enforced and configurable", "[pickle]") {
  PickleResult result;
  PickleLimits limits;
  auto fails_with = [&](const std::string& pickle, const char* keyword) {
    std::vector<uint8_t> data = bytes(pickle);
    Status status = parse_pickle(data.data(), data.size(), "limits", limits, &result);
    INFO(pickle.size() << " bytes: " << status.message());
    REQUIRE_FALSE(status.ok());
    CHECK(status.message().find(keyword) != std::string::npos);
  };
  limits.max_memo_entries = 3;
  fails_with("\x80\x02Nq\x01q\x02q\x01q\x03q\x04.", "memo holds more than 3");
  limits = PickleLimits();
  limits.max_stack_items = 4;
  fails_with("\x80\x02NNNNN.", "stack holds more than 4");
  limits = PickleLimits();
  limits.max_depth = 3;
  fails_with("\x80\x02((((N.", "MARKs nested more than 3");
  fails_with("\x80\x02N\x85\x85\x85\x85.", "nested more than 3 deep");
  limits = PickleLimits();
  limits.max_container_items = 3;
  fails_with("\x80\x02](NNNNe.", "list of more than 3");
  fails_with("\x80\x02}(K\x01NK\x02NK\x03NK\x04Nu.", "dict of more than 3");
  limits = PickleLimits();
  limits.max_values = 10;
  fails_with("\x80\x02](NNNNNNNNNNNNe.", "more than 10 values");
  limits = PickleLimits();
  limits.max_pickle_bytes = 4;
  fails_with("\x80\x02NNN.", "larger than the limit of 4 bytes");
  limits = PickleLimits();
  limits.max_tensor_rank = 1;
  std::vector<uint8_t> views = read_file("data/pickle/views.pt");
  std::vector<ZipEntry> entries;
  REQUIRE(read_zip_directory(views.data(), views.size(), "views.pt", &entries).ok());
  const ZipEntry* pkl = find_zip_entry(entries, "views/data.pkl");
  REQUIRE(pkl != nullptr);
  Status status = parse_pickle(views.data() + pkl->data_offset, pkl->size, "views", limits, &result);
  CHECK(status.message().find("rank 2 (limit 1)") != std::string::npos);
  // Python treats 1, 1.0 and True as the same key.
  limits = PickleLimits();
  fails_with("\x80\x02}(K\x01N\x88Nu.", "duplicate dict key");
}

TEST_CASE("pickle machine: every strict prefix of a real pickle fails cleanly", "[pickle]") {
  std::vector<uint8_t> file = read_file("data/pickle/lightning.ckpt");
  std::vector<ZipEntry> entries;
  REQUIRE(read_zip_directory(file.data(), file.size(), "lightning.ckpt", &entries).ok());
  const ZipEntry* pkl = find_zip_entry(entries, "epoch=3-step=1000/data.pkl");
  REQUIRE(pkl != nullptr);
  std::vector<uint8_t> pickle(file.begin() + static_cast<long>(pkl->data_offset),
                              file.begin() + static_cast<long>(pkl->data_offset + pkl->size));
  PickleResult result;
  REQUIRE(parse_pickle(pickle.data(), pickle.size(), "full", &result).ok());
  CHECK(result.consumed == pickle.size());
  CHECK(result.storages.size() == 3);
  for (size_t length = 0; length < pickle.size(); ++length) {
    std::vector<uint8_t> prefix(pickle.begin(), pickle.begin() + static_cast<long>(length));
    CHECK_FALSE(parse_pickle(prefix.data(), prefix.size(), "cut", &result).ok());
  }
}
