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
    case OpKind::MseLoss: return "mse_loss";
    case OpKind::MseLossGrad: return "mse_loss_grad";
    case OpKind::SumTo: return "sum_to";
    case OpKind::ViewGrad: return "view_grad";
    case OpKind::Conv2dGradInput: return "conv2d_grad_input";
    case OpKind::Conv2dGradWeight: return "conv2d_grad_weight";
    case OpKind::GroupNormGradInput: return "group_norm_grad_input";
    case OpKind::GroupNormGradParams: return "group_norm_grad_params";
    case OpKind::SiluGrad: return "silu_grad";
    case OpKind::SoftmaxGrad: return "softmax_grad";
    case OpKind::Upsample2xGrad: return "upsample_nearest2x_grad";
    case OpKind::AvgPool2xGrad: return "avg_pool2x_grad";
    case OpKind::GetRowsGrad: return "get_rows_grad";
    case OpKind::kCount: break;
  }
  return "?";
}

}  // namespace ddpm
