#include "kernels/neon/neon.h"
#include "kernels/registry.h"

namespace ddpm::kernels {

KernelTable make_neon_table() {
  KernelTable t = make_reference_table();
  t.isa = Isa::Neon;
  t.isa_name = "neon";
  t.gemm = neon_gemm();
  // sdot is an ARMv8.2 option: the Cortex-A72 (Raspberry Pi 4) lacks it and would fault on it, so the kernel built
  // with it is taken only when Linux reports the extension (HWCAP_ASIMDDP, see cpu_features.cpp).
  t.qgemm = cpu_features().neon_dotprod ? neon_dotprod_qgemm() : neon_qgemm();
  t.silu = neon::silu;
  t.add = neon::add;
  t.mul = neon::mul;
  t.add_scalar = neon::add_scalar;
  t.mul_scalar = neon::mul_scalar;
  t.affine = neon::affine;
  t.affine_silu = neon::affine_silu;
  t.sum_f64 = neon::sum_f64;
  t.sum_squared_deviation_f64 = neon::sum_squared_deviation_f64;
  t.max = neon::max;
  t.exp_shifted_sum = neon::exp_shifted_sum;
  t.f16_to_f32 = neon::f16_to_f32;
  t.f32_to_f16 = neon::f32_to_f16;
  t.widen_block_scales = neon::widen_block_scales;
  t.transpose = neon::transpose;
  t.winograd_input = neon::winograd_input;
  t.winograd_output = neon::winograd_output;
  t.conv_direct = neon::conv_direct;
  return t;
}

}  // namespace ddpm::kernels
