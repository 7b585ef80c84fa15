#include "io/tensor_loader.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "core/half.h"

namespace ddpm {

namespace {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
constexpr bool kHostBigEndian = true;
#else
constexpr bool kHostBigEndian = false;
#endif

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

bool valid_dtype(SourceDType dtype) { return static_cast<uint8_t>(dtype) <= static_cast<uint8_t>(SourceDType::BOOL); }

inline uint16_t byteswap(uint16_t v) { return __builtin_bswap16(v); }
inline uint32_t byteswap(uint32_t v) { return __builtin_bswap32(v); }
inline uint64_t byteswap(uint64_t v) { return __builtin_bswap64(v); }

// Checkpoint data has no alignment guarantee, so every element is loaded with memcpy.
template <typename Bits>
inline Bits load_bits(const uint8_t* p, bool swap) {
  Bits bits;
  std::memcpy(&bits, p, sizeof bits);
  return swap ? byteswap(bits) : bits;
}

template <typename To, typename From>
inline To reinterpret_bits(From from) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}

template <SourceDType D>
inline float read_f32(const uint8_t* p, bool swap) {
  if constexpr (D == SourceDType::F32) {
    return reinterpret_bits<float>(load_bits<uint32_t>(p, swap));
  } else if constexpr (D == SourceDType::F16) {
    return f16_to_f32(load_bits<uint16_t>(p, swap));
  } else if constexpr (D == SourceDType::BF16) {
    return bf16_to_f32(load_bits<uint16_t>(p, swap));
  } else if constexpr (D == SourceDType::F64) {
    return static_cast<float>(reinterpret_bits<double>(load_bits<uint64_t>(p, swap)));
  } else if constexpr (D == SourceDType::I64) {
    return static_cast<float>(reinterpret_bits<int64_t>(load_bits<uint64_t>(p, swap)));
  } else if constexpr (D == SourceDType::I32) {
    return static_cast<float>(reinterpret_bits<int32_t>(load_bits<uint32_t>(p, swap)));
  } else if constexpr (D == SourceDType::I16) {
    return static_cast<float>(reinterpret_bits<int16_t>(load_bits<uint16_t>(p, swap)));
  } else if constexpr (D == SourceDType::I8) {
    return static_cast<float>(static_cast<int8_t>(*p));
  } else if constexpr (D == SourceDType::U8) {
    return static_cast<float>(*p);
  } else {
    static_assert(D == SourceDType::BOOL, "unhandled dtype");
    return *p != 0 ? 1.0f : 0.0f;
  }
}

// Rounds to f32 keeping "inexact" in the lowest bit (round to odd). A following round-to-nearest-even to a format
// with at most 22 significand bits then gives the same result as rounding the double directly, with no double
// rounding error.
inline float f64_to_f32_round_to_odd(double value) {
  const float rounded = static_cast<float>(value);
  if (std::isnan(value) || static_cast<double>(rounded) == value) return rounded;
  uint32_t bits = reinterpret_bits<uint32_t>(rounded);
  if (std::fabs(static_cast<double>(rounded)) > std::fabs(value)) --bits;  // sign-magnitude: one step toward zero
  return reinterpret_bits<float>(bits | 1u);
}

template <SourceDType D>
inline uint16_t read_f16(const uint8_t* p, bool swap) {
  if constexpr (D == SourceDType::F16) {
    return load_bits<uint16_t>(p, swap);
  } else if constexpr (D == SourceDType::F64) {
    return f32_to_f16(f64_to_f32_round_to_odd(reinterpret_bits<double>(load_bits<uint64_t>(p, swap))));
  } else {
    return f32_to_f16(read_f32<D>(p, swap));  // exact for every other dtype that can reach f16's range
  }
}

template <typename Out>
using RowFunction = void (*)(const uint8_t* src, size_t stride_bytes, size_t count, bool swap, Out* dst);

template <SourceDType D>
void row_to_f32(const uint8_t* src, size_t stride_bytes, size_t count, bool swap, float* dst) {
  for (size_t i = 0; i < count; ++i) dst[i] = read_f32<D>(src + i * stride_bytes, swap);
}

template <SourceDType D>
void row_to_f16(const uint8_t* src, size_t stride_bytes, size_t count, bool swap, uint16_t* dst) {
  for (size_t i = 0; i < count; ++i) dst[i] = read_f16<D>(src + i * stride_bytes, swap);
}

template <template <SourceDType> class Pick, typename Out>
RowFunction<Out> select_row_function(SourceDType dtype) {
  switch (dtype) {
    case SourceDType::F32: return Pick<SourceDType::F32>::function;
    case SourceDType::F16: return Pick<SourceDType::F16>::function;
    case SourceDType::BF16: return Pick<SourceDType::BF16>::function;
    case SourceDType::F64: return Pick<SourceDType::F64>::function;
    case SourceDType::I64: return Pick<SourceDType::I64>::function;
    case SourceDType::I32: return Pick<SourceDType::I32>::function;
    case SourceDType::I16: return Pick<SourceDType::I16>::function;
    case SourceDType::I8: return Pick<SourceDType::I8>::function;
    case SourceDType::U8: return Pick<SourceDType::U8>::function;
    case SourceDType::BOOL: return Pick<SourceDType::BOOL>::function;
  }
  DDPM_ASSERT(!"select_row_function: invalid dtype");
  return nullptr;
}

template <SourceDType D>
struct PickF32 {
  static constexpr RowFunction<float> function = row_to_f32<D>;
};

template <SourceDType D>
struct PickF16 {
  static constexpr RowFunction<uint16_t> function = row_to_f16<D>;
};

bool is_row_major(const SourceTensor& t) {
  int64_t expected = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

// Walks the tensor in row-major order, converting one innermost row per call. validate_source_tensor has proven
// that every byte offset formed here lies inside the storage, so no arithmetic below can overflow.
template <typename Out>
void gather(const uint8_t* base, const SourceTensor& t, size_t element_size, bool swap, RowFunction<Out> row,
            Out* dst) {
  const size_t rank = t.shape.size();
  const size_t inner_count = static_cast<size_t>(t.shape[rank - 1]);
  const size_t inner_stride_bytes = static_cast<size_t>(t.strides[rank - 1]) * element_size;
  std::vector<int64_t> index(rank - 1, 0);
  size_t offset_bytes = 0;
  for (;;) {
    row(base + offset_bytes, inner_stride_bytes, inner_count, swap, dst);
    dst += inner_count;
    // Odometer over the outer dimensions.
    size_t dim = rank - 1;
    for (;;) {
      if (dim == 0) return;
      --dim;
      const size_t stride_bytes = static_cast<size_t>(t.strides[dim]) * element_size;
      if (++index[dim] < t.shape[dim]) {
        offset_bytes += stride_bytes;
        break;
      }
      offset_bytes -= static_cast<size_t>(index[dim] - 1) * stride_bytes;
      index[dim] = 0;
    }
  }
}

// `copy_dtype` is the source dtype whose bytes already are the output format: contiguous tensors of it are copied.
template <typename Out>
Status load_tensor(const MappedFile& file, const SourceTensor& t, Out* dst, SourceDType copy_dtype,
                   RowFunction<Out> (*select_row)(SourceDType)) {
  Status status = validate_source_tensor(t, file.size());
  if (!status.ok()) return status.with_context(file.path());
  int64_t numel = 0;
  checked_numel(t.shape, &numel);
  if (numel == 0) return Status();
  DDPM_ASSERT(dst != nullptr);

  const size_t element_size = static_cast<size_t>(source_dtype_size(t.dtype));
  const bool swap = t.big_endian != kHostBigEndian;
  const uint8_t* base = file.data() + t.storage_offset + static_cast<size_t>(t.element_offset) * element_size;
  if (is_row_major(t)) {
    if (t.dtype == copy_dtype && !swap) {
      std::memcpy(dst, base, static_cast<size_t>(numel) * sizeof(Out));
    } else {
      select_row(t.dtype)(base, element_size, static_cast<size_t>(numel), swap, dst);
    }
    return Status();
  }
  gather(base, t, element_size, swap, select_row(t.dtype), dst);
  return Status();
}

}  // namespace

bool checked_numel(const std::vector<int64_t>& shape, int64_t* numel) {
  int64_t product_of_nonzero = 1;
  bool has_zero = false;
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    if (dim == 0) {
      has_zero = true;
      continue;
    }
    if (product_of_nonzero > std::numeric_limits<int64_t>::max() / dim) return false;
    product_of_nonzero *= dim;
  }
  *numel = has_zero ? 0 : product_of_nonzero;
  return true;
}

Status validate_source_tensor(const SourceTensor& t, uint64_t file_size) {
  const std::string shown = shown_name(t.name);
  const char* name = shown.c_str();
  if (!valid_dtype(t.dtype)) return errorf("tensor %s: invalid dtype code %d", name, static_cast<int>(t.dtype));
  if (t.strides.size() != t.shape.size()) {
    return errorf("tensor %s: %zu strides for %zu dimensions", name, t.strides.size(), t.shape.size());
  }
  int64_t numel = 0;
  if (!checked_numel(t.shape, &numel)) return errorf("tensor %s: invalid shape", name);
  for (int64_t stride : t.strides) {
    if (stride < 0) return errorf("tensor %s: negative stride %lld", name, static_cast<long long>(stride));
  }
  if (t.storage_offset > file_size || t.storage_bytes > file_size - t.storage_offset) {
    return errorf("tensor %s: storage [%llu, +%llu) lies outside the file (%llu bytes)", name,
                  static_cast<unsigned long long>(t.storage_offset), static_cast<unsigned long long>(t.storage_bytes),
                  static_cast<unsigned long long>(file_size));
  }
  const uint64_t element_size = static_cast<uint64_t>(source_dtype_size(t.dtype));
  if (t.storage_bytes % element_size != 0) {
    return errorf("tensor %s: storage of %llu bytes does not hold whole %s elements", name,
                  static_cast<unsigned long long>(t.storage_bytes), source_dtype_name(t.dtype));
  }
  if (t.element_offset < 0) {
    return errorf("tensor %s: negative element offset %lld", name, static_cast<long long>(t.element_offset));
  }
  if (numel == 0) return Status();  // addresses nothing

  const uint64_t storage_elements = t.storage_bytes / element_size;
  uint64_t last = static_cast<uint64_t>(t.element_offset);
  bool overflow = false;
  for (size_t i = 0; i < t.shape.size() && !overflow; ++i) {
    const uint64_t extent = static_cast<uint64_t>(t.shape[i] - 1);
    const uint64_t stride = static_cast<uint64_t>(t.strides[i]);
    if (stride != 0 && extent > std::numeric_limits<uint64_t>::max() / stride) {
      overflow = true;
    } else if (extent * stride > std::numeric_limits<uint64_t>::max() - last) {
      overflow = true;
    } else {
      last += extent * stride;
    }
  }
  if (overflow || last >= storage_elements) {
    return errorf("tensor %s: offset and strides address elements beyond its storage of %llu elements", name,
                  static_cast<unsigned long long>(storage_elements));
  }
  return Status();
}

Status load_tensor_f32(const MappedFile& file, const SourceTensor& tensor, float* dst) {
  return load_tensor<float>(file, tensor, dst, SourceDType::F32, select_row_function<PickF32, float>);
}

Status load_tensor_raw_f16(const MappedFile& file, const SourceTensor& tensor, uint16_t* dst) {
  return load_tensor<uint16_t>(file, tensor, dst, SourceDType::F16, select_row_function<PickF16, uint16_t>);
}

}  // namespace ddpm
