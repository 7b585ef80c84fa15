// The .ddpm model file: our own container for converted (and later trained and quantised) U-Nets.
//
// One file holds everything needed to sample from a model: typed metadata (architecture, the full diffusers U-Net
// and scheduler configs, data geometry, class names, provenance) and the tensors, each 64-byte aligned so the
// file can be mmapped and its weights used in place. docs/FORMAT.md is the specification; this is its reference
// implementation. Everything a reader takes from a file is validated before use (lengths and offsets against the
// file size with overflow checks, names, dtypes, shapes, overlaps, checksums), and every failure is a one-line
// Status naming the file and the problem, never a crash or an allocation sized by unchecked input.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ddpm/dtype.h"
#include "ddpm/status.h"
#include "io/mapped_file.h"

namespace ddpm {

constexpr uint32_t kDdpmFormatVersion = 1;
constexpr uint64_t kDdpmAlignment = 64;         // data section start and every tensor's data
constexpr uint64_t kDdpmFileHeaderBytes = 64;   // the fixed part at offset 0
constexpr size_t kDdpmMaxKeyBytes = 256;
constexpr size_t kDdpmMaxTensorNameBytes = 512;
constexpr int kDdpmMaxRank = 4;
// Header flag bit 0 (required): every tensor quant::tap_major_eligible accepts (block-typed conv weights with a
// multiple of 32 input channels and more than one tap) stores its rows tap-major (docs/FORMAT.md §6.8).
constexpr uint32_t kDdpmFlagTapMajorConvRows = 0x0001u;

// One metadata value: a scalar, a string, or an array whose elements all have one scalar or string type.
// Arrays of arrays do not exist. Equality is exact (floats compare by bit pattern, so NaN == NaN and 0 != -0).
class MetadataValue {
 public:
  // The numbers are the type codes stored in the file (docs/FORMAT.md §4); never renumber them.
  enum class Type : uint8_t { U8 = 0, I32 = 1, U32 = 2, I64 = 3, U64 = 4, F32 = 5, F64 = 6, Bool = 7, String = 8,
                              Array = 9 };

  MetadataValue() = default;  // u8 0; exists so containers of values can be built
  static MetadataValue u8(uint8_t v);
  static MetadataValue i32(int32_t v);
  static MetadataValue u32(uint32_t v);
  static MetadataValue i64(int64_t v);
  static MetadataValue u64(uint64_t v);
  static MetadataValue f32(float v);
  static MetadataValue f64(double v);
  static MetadataValue boolean(bool v);
  static MetadataValue string(std::string v);
  static MetadataValue u8_array(const std::vector<uint8_t>& v);
  static MetadataValue i32_array(const std::vector<int32_t>& v);
  static MetadataValue u32_array(const std::vector<uint32_t>& v);
  static MetadataValue i64_array(const std::vector<int64_t>& v);
  static MetadataValue u64_array(const std::vector<uint64_t>& v);
  static MetadataValue f32_array(const std::vector<float>& v);
  static MetadataValue f64_array(const std::vector<double>& v);
  static MetadataValue bool_array(const std::vector<bool>& v);
  static MetadataValue string_array(std::vector<std::string> v);

  Type type() const { return type_; }
  Type element_type() const { return element_; }  // arrays only
  size_t array_size() const;                      // 0 for non-arrays
  // "u32", "string", "array of f32", …: the words error messages and FORMAT.md use.
  std::string type_name() const;
  static const char* type_name(Type type);

  // Typed reads: false (and *out untouched) unless the value has exactly that type. No conversions, so a file
  // whose writer chose the wrong type is reported rather than silently reinterpreted.
  bool get(uint8_t* out) const;
  bool get(int32_t* out) const;
  bool get(uint32_t* out) const;
  bool get(int64_t* out) const;
  bool get(uint64_t* out) const;
  bool get(float* out) const;
  bool get(double* out) const;
  bool get(bool* out) const;
  bool get(std::string* out) const;
  bool get(std::vector<uint8_t>* out) const;
  bool get(std::vector<int32_t>* out) const;
  bool get(std::vector<uint32_t>* out) const;
  bool get(std::vector<int64_t>* out) const;
  bool get(std::vector<uint64_t>* out) const;
  bool get(std::vector<float>* out) const;
  bool get(std::vector<double>* out) const;
  bool get(std::vector<bool>* out) const;
  bool get(std::vector<std::string>* out) const;

  // Short human-readable rendering for `ddpm info`-style listings: strings quoted and escaped, long strings and
  // arrays cut to about max_chars with "…".
  std::string describe(size_t max_chars = 120) const;

  bool operator==(const MetadataValue& other) const;
  bool operator!=(const MetadataValue& other) const { return !(*this == other); }

 private:
  friend struct MetadataCodec;  // encodes and decodes the packed form directly

  Type type_ = Type::U8;
  Type element_ = Type::U8;
  uint64_t scalar_ = 0;              // little-endian bit pattern of a numeric or bool scalar
  std::string text_;                 // String
  std::vector<uint8_t> raw_;         // numeric and bool array elements, packed as in the file
  std::vector<std::string> strings_;  // array of string
};

// Keys must be 1–256 bytes of dot-separated segments of [A-Za-z0-9_-] ("unet.config", "training.lr_schedule").
bool is_valid_metadata_key(const std::string& key);

// Key → value, iterated in byte order of the keys (the order the file stores them in).
class DdpmMetadata {
 public:
  // Replaces any value the key had. Fails on keys that break the rule above.
  Status set(const std::string& key, MetadataValue value);
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  const MetadataValue* find(const std::string& key) const;
  bool erase(const std::string& key) { return values_.erase(key) != 0; }
  size_t size() const { return values_.size(); }
  const std::map<std::string, MetadataValue>& entries() const { return values_; }

  // Typed lookups. Errors read "model.ddpm: missing metadata key 'data.channels'" and
  // "model.ddpm: metadata key 'data.channels' has type string, expected u32".
  Status get_u8(const std::string& key, uint8_t* out) const;
  Status get_i32(const std::string& key, int32_t* out) const;
  Status get_u32(const std::string& key, uint32_t* out) const;
  Status get_i64(const std::string& key, int64_t* out) const;
  Status get_u64(const std::string& key, uint64_t* out) const;
  Status get_f32(const std::string& key, float* out) const;
  Status get_f64(const std::string& key, double* out) const;
  Status get_bool(const std::string& key, bool* out) const;
  Status get_string(const std::string& key, std::string* out) const;
  Status get_u8_array(const std::string& key, std::vector<uint8_t>* out) const;
  Status get_i32_array(const std::string& key, std::vector<int32_t>* out) const;
  Status get_u32_array(const std::string& key, std::vector<uint32_t>* out) const;
  Status get_i64_array(const std::string& key, std::vector<int64_t>* out) const;
  Status get_u64_array(const std::string& key, std::vector<uint64_t>* out) const;
  Status get_f32_array(const std::string& key, std::vector<float>* out) const;
  Status get_f64_array(const std::string& key, std::vector<double>* out) const;
  Status get_bool_array(const std::string& key, std::vector<bool>* out) const;
  Status get_string_array(const std::string& key, std::vector<std::string>* out) const;

  // What getters' messages start with: the file the metadata came from (set by the reader), or "metadata".
  const std::string& source() const { return source_; }
  void set_source(std::string source) { source_ = std::move(source); }

 private:
  template <typename T>
  Status get_typed(const std::string& key, const char* expected, T* out) const;

  std::map<std::string, MetadataValue> values_;
  std::string source_ = "metadata";
};

// Checks the keys FORMAT.md §5 requires of a U-Net model (ddpm.architecture "unet2d", unet.config and
// scheduler.config holding JSON objects, data.image_size/channels/value_range) and the types and consistency of
// the optional ones it lists (classes.*, sampling.*, provenance.*). The converter calls it before writing, the
// model loader after reading; the container itself only requires ddpm.architecture.
Status validate_unet2d_metadata(const DdpmMetadata& metadata);

// The trainer's checkpoints are .ddpm files too (ddpm.architecture "ddpm-train-checkpoint", FORMAT.md §12): commands
// that take a model refuse one with this error, which says how to export its weights as a model.
constexpr char kTrainingCheckpointArchitecture[] = "ddpm-train-checkpoint";
Status training_checkpoint_error(const std::string& path);

struct DdpmTensorInfo {
  std::string name;
  DType dtype = DType::F32;
  int rank = 0;
  int64_t shape[kDdpmMaxRank] = {0, 0, 0, 0};  // outermost first, as in PyTorch; entries past rank are 0
  uint64_t offset = 0;                           // from the start of the data section; a multiple of 64
  uint64_t bytes = 0;                            // dtype_row_bytes(dtype, numel)
  uint32_t checksum = 0;                         // CRC-32C of the data
  const void* data = nullptr;                    // into the reader's mapping (null on the writer side)
  // Rows in (kh, kw, Ci) order instead of (Ci, kh, kw): the file has kDdpmFlagTapMajorConvRows and the tensor is
  // tap_major_eligible. Set by the reader.
  bool tap_major = false;

  int64_t numel() const;
};

// Validates a complete .ddpm image held in memory and describes it. Tensor data pointers point into `data`
// (64-byte aligned when `data` is). `name` prefixes every message. No allocation is larger than a small multiple of
// `size`, whatever the bytes say. Meant for DdpmFile and for fuzzers.
Status parse_ddpm(const uint8_t* data, uint64_t size, const std::string& name, DdpmMetadata* metadata,
                  std::vector<DdpmTensorInfo>* tensors, bool verify_data_checksums = true);

// Explains what a file that is not a .ddpm looks like instead, for the "not a ddpm.cpp model file" message:
// "looks like a zip archive (a PyTorch .pt/.pth/.ckpt checkpoint?); convert it with `ddpm convert`", etc.
std::string sniff_file_kind(const uint8_t* data, uint64_t size);

// Fills `bytes` bytes at `dst` with one tensor's data as it is stored (little-endian). See DdpmWriter::add_tensor.
using DdpmTensorProducer = std::function<Status(void* dst, uint64_t bytes)>;

// Collects metadata and borrowed (or streamed) tensors, then writes the file in one go:
//   DdpmWriter w;
//   w.set_metadata("ddpm.architecture", MetadataValue::string("unet2d"));
//   w.add_tensor("conv_in.weight", DType::F32, 4, shape, weights);   // weights stay valid until finish()
//   Status s = w.finish("model.ddpm");
// The first failing call's error sticks: finish() returns it without creating anything. finish() writes through
// AtomicFile, so a failed or interrupted write leaves no partial file and any old file at the path untouched.
class DdpmWriter {
 public:
  static constexpr uint64_t kBytesFromShape = ~uint64_t{0};

  Status set_metadata(const std::string& key, MetadataValue value);
  // Replaces all metadata collected so far.
  void set_metadata(DdpmMetadata metadata) { metadata_ = std::move(metadata); }
  const DdpmMetadata& metadata() const { return metadata_; }

  // `shape` holds `rank` dims (1–4, each ≥ 1, outermost first); the last must be a multiple of the dtype's block
  // size. When `data_bytes` is given it must equal the size the dtype and shape imply (catches a caller's buffer
  // of the wrong length). Names: 1–512 printable ASCII bytes without spaces, unique.
  Status add_tensor(const std::string& name, DType dtype, int rank, const int64_t* shape, const void* data,
                    uint64_t data_bytes = kBytesFromShape);
  // Streaming form, for data that does not exist yet (a converter's output): instead of borrowing a buffer, the
  // writer calls `producer` during finish() to fill one tensor-sized buffer it owns and reuses, so writing a model
  // holds at most its largest tensor in memory rather than all of them. Because the header, written first, carries
  // every tensor's checksum, each producer is called twice, in tensor order: once for the checksums, once for the
  // bytes written. Both calls must produce the same bytes (a mismatch fails finish()); an error a producer returns
  // fails finish() as it is, and no file is left behind.
  Status add_tensor(const std::string& name, DType dtype, int rank, const int64_t* shape,
                    DdpmTensorProducer producer);
  size_t tensor_count() const { return tensors_.size(); }
  // The tensors' data stores eligible conv weights tap-major (quant::encode_tensor with ConvRows::kTapMajor):
  // the file gets kDdpmFlagTapMajorConvRows when at least one tensor is eligible, so files without such weights
  // stay readable by readers that predate the flag.
  void set_tap_major_conv_rows(bool on) { tap_major_conv_rows_ = on; }

  Status finish(const std::string& path);
  // The same bytes, in memory (tests, fuzz corpora, small files sent elsewhere).
  Status finish_to_bytes(std::vector<uint8_t>* out);

 private:
  struct Pending {
    DdpmTensorInfo info;
    const void* data;              // borrowed, or null when streamed
    DdpmTensorProducer producer;  // streamed
  };
  Status check_new_tensor(const std::string& name, DType dtype, int rank, const int64_t* shape, bool has_data,
                          uint64_t data_bytes, DdpmTensorInfo* info);
  template <typename Sink>
  Status write_all(Sink& sink, const std::string& name);

  DdpmMetadata metadata_;
  std::vector<Pending> tensors_;
  std::unordered_map<std::string, size_t> index_;
  Status error_;
  bool tap_major_conv_rows_ = false;
};

// A validated, opened .ddpm file. Tensor data stays in the mapping (or, for files that cannot be mapped, in one
// 64-byte aligned buffer) for the object's lifetime; moving the object keeps every pointer valid.
class DdpmFile {
 public:
  DdpmFile() = default;
  DdpmFile(DdpmFile&&) = default;
  DdpmFile& operator=(DdpmFile&&) = default;
  DdpmFile(const DdpmFile&) = delete;
  DdpmFile& operator=(const DdpmFile&) = delete;
  ~DdpmFile() = default;

  // Maps and validates. Data checksums cost about 15 ms of CRC per 100 MB where the CPU has CRC instructions, plus
  // touching every page; pass false to skip them (the header checksum is always verified) and call verify_data()
  // later if needed.
  static Status open(const std::string& path, DdpmFile* out, bool verify_data_checksums = true);
  // The same over bytes already in memory; `name` stands in for the path in messages.
  static Status from_bytes(std::string name, const std::vector<uint8_t>& bytes, DdpmFile* out,
                           bool verify_data_checksums = true);

  const DdpmMetadata& metadata() const { return metadata_; }
  const std::vector<DdpmTensorInfo>& tensors() const { return tensors_; }
  const DdpmTensorInfo* find(const std::string& name) const;
  uint64_t file_size() const { return size_; }
  const std::string& path() const { return path_; }
  bool is_mapped() const { return file_.is_mapped(); }

  // Checks every tensor's data checksum (the work open() skips when told to).
  Status verify_data() const;
  Status verify_tensor(const DdpmTensorInfo& tensor) const;

 private:
  struct FreeDeleter {
    void operator()(uint8_t* p) const;
  };
  Status adopt(std::string name, bool verify_data_checksums);

  std::string path_;
  MappedFile file_;
  std::unique_ptr<uint8_t, FreeDeleter> copy_;  // set when the mapping's base was not 64-byte aligned
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  DdpmMetadata metadata_;
  std::vector<DdpmTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace ddpm
