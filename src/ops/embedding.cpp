// Sinusoidal timestep embedding (diffusers `Timesteps`) and table lookup (class embeddings).
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "ddpm/ops.h"
#include "ops/op_exec.h"

namespace ddpm {

Tensor* timestep_embedding(Graph& g, Tensor* t, int dim, bool flip_sin_to_cos, float freq_shift) {
  if (!t) return nullptr;
  if (t->rank != 1 || t->dtype != DType::F32) {
    return g.fail(errorf("timestep_embedding: expected timesteps [B] f32, got %s", t->shape_string().c_str()));
  }
  if (dim < 2 || static_cast<float>(dim / 2) == freq_shift) {
    return g.fail(errorf("timestep_embedding: dim %d with freq_shift %g divides by zero", dim, freq_shift));
  }
  const int64_t shape[2] = {t->shape[0], dim};
  Tensor* y = g.new_node(OpKind::TimestepEmbedding, DType::F32, 2, shape, {t});
  y->iparams[0] = flip_sin_to_cos ? 1 : 0;
  y->fparams[0] = freq_shift;
  return y;
}

Status compute_timestep_embedding(const Tensor& node, ExecContext&) {
  const Tensor& t = *node.src[0];
  const int64_t batch = node.shape[0], dim = node.shape[1], half = dim / 2;
  const bool flip = node.iparams[0] != 0;
  const float shift = node.fparams[0];
  // diffusers evaluates in f32 in this order: (−ln 10000)·k, ÷ (half − shift), exp, × t.
  const float neg_log_period = -std::log(10000.0f);
  for (int64_t b = 0; b < batch; ++b) {
    float* out = node.f32() + b * dim;
    const float timestep = t.f32()[b];
    for (int64_t k = 0; k < half; ++k) {
      const float exponent = (neg_log_period * static_cast<float>(k)) / (static_cast<float>(half) - shift);
      const float angle = timestep * std::exp(exponent);
      const float s = std::sin(angle), c = std::cos(angle);
      out[k] = flip ? c : s;
      out[half + k] = flip ? s : c;
    }
    if (dim % 2) out[dim - 1] = 0.0f;
  }
  return Status();
}

Tensor* get_rows(Graph& g, Tensor* table, Tensor* indices) {
  if (!table || !indices) return nullptr;
  if (table->rank != 2 || (table->dtype != DType::F32 && table->dtype != DType::F16) || indices->rank != 1 ||
      indices->dtype != DType::I32) {
    return g.fail(errorf("get_rows: expected table [R, D] f32|f16 and indices [B] i32, got %s and %s",
                         table->shape_string().c_str(), indices->shape_string().c_str()));
  }
  const int64_t shape[2] = {indices->shape[0], table->shape[1]};
  return g.new_node(OpKind::GetRows, DType::F32, 2, shape, {table, contiguous(g, indices)});
}

Status compute_get_rows(const Tensor& node, ExecContext&) {
  const Tensor& table = *node.src[0];
  const Tensor& indices = *node.src[1];
  const int64_t rows = table.shape[0], dim = table.shape[1];
  for (int64_t i = 0; i < node.shape[0]; ++i) {
    const int32_t index = static_cast<const int32_t*>(indices.data)[i];
    if (index < 0 || index >= rows) return errorf("index %d is outside the table's %lld rows", index, (long long)rows);
    float* out = node.f32() + i * dim;
    if (table.dtype == DType::F16) {
      const uint16_t* row = static_cast<const uint16_t*>(table.data) + index * table.stride[0];
      for (int64_t d = 0; d < dim; ++d) out[d] = f16_to_f32(row[d * table.stride[1]]);
    } else {
      const float* row = table.f32() + index * table.stride[0];
      for (int64_t d = 0; d < dim; ++d) out[d] = row[d * table.stride[1]];
    }
  }
  return Status();
}

}  // namespace ddpm
