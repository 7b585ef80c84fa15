#include "io/tensor_source.h"

#include "ddpm/status.h"

namespace ddpm {

// Names follow the safetensors dtype strings, which is also how users see them in error messages.
const char* source_dtype_name(SourceDType dtype) {
  switch (dtype) {
    case SourceDType::F32: return "F32";
    case SourceDType::F16: return "F16";
    case SourceDType::BF16: return "BF16";
    case SourceDType::F64: return "F64";
    case SourceDType::I64: return "I64";
    case SourceDType::I32: return "I32";
    case SourceDType::I16: return "I16";
    case SourceDType::I8: return "I8";
    case SourceDType::U8: return "U8";
    case SourceDType::BOOL: return "BOOL";
  }
  return "invalid";
}

int source_dtype_size(SourceDType dtype) {
  switch (dtype) {
    case SourceDType::F64:
    case SourceDType::I64: return 8;
    case SourceDType::F32:
    case SourceDType::I32: return 4;
    case SourceDType::F16:
    case SourceDType::BF16:
    case SourceDType::I16: return 2;
    case SourceDType::I8:
    case SourceDType::U8:
    case SourceDType::BOOL: return 1;
  }
  DDPM_ASSERT(!"source_dtype_size: invalid SourceDType");
  return 0;
}

}  // namespace ddpm
