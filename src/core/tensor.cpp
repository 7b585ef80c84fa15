#include "ddpm/tensor.h"

namespace ddpm {

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = rank - 1; i >= 0; --i) {
    if (shape[i] != 1 && stride[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

std::string Tensor::shape_string() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

const char* op_name(OpKind op) {
  switch (op) {
    case OpKind::Leaf: return "leaf";
    case OpKind::View: return "view";
    case OpKind::Contiguous: return "contiguous";
    case OpKind::Conv2d: return "conv2d";
    case OpKind::Matmul: return "matmul";
    case OpKind::GroupNorm: return "group_norm";
    case OpKind::Unary: return "unary";
    case OpKind::Binary: return "binary";
    case OpKind::Concat: return "concat";
    case OpKind::Upsample2x: return "upsample_nearest2x";
    case OpKind::AvgPool2x: return "avg_pool2x";
    case OpKind::Softmax: return "softmax";
    case OpKind::TimestepEmbedding: return "timestep_embedding";
    case OpKind::GetRows: return "get_rows";
    case OpKind::kCount: break;
  }
  return "?";
}

}  // namespace ddpm
