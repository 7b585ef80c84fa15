#include "kernels/ref/ref.h"
#include "kernels/registry.h"

namespace ddpm::kernels {

KernelTable make_reference_table() {
  KernelTable t;
  t.isa = Isa::Scalar;
  t.isa_name = "scalar";
  t.gemm = reference_gemm();
  t.qgemm = reference_qgemm();
  t.silu = ref::silu;
  t.add = ref::add;
  t.mul = ref::mul;
  t.add_scalar = ref::add_scalar;
  t.mul_scalar = ref::mul_scalar;
  t.affine = ref::affine;
  t.affine_silu = ref::affine_silu;
  t.stream_copy = ref::stream_copy;
  t.store_fence = ref::store_fence;
  t.sum_f64 = ref::sum_f64;
  t.sum_squared_deviation_f64 = ref::sum_squared_deviation_f64;
  t.max = ref::max;
  t.exp_shifted_sum = ref::exp_shifted_sum;
  t.f16_to_f32 = ref::f16_to_f32;
  t.f32_to_f16 = ref::f32_to_f16;
  t.widen_block_scales = ref::widen_block_scales;
  t.transpose = ref::transpose;
  t.winograd_input = ref::winograd_input;
  t.winograd_output = ref::winograd_output;
  t.conv_direct = ref::conv_direct;
  return t;
}

}  // namespace ddpm::kernels
