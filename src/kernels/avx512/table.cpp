#include "kernels/avx512/avx512.h"
#include "kernels/registry.h"

namespace ddpm::kernels {

// The registry builds every table at start-up, on any x86-64 CPU, but this file is compiled with the level's flags:
// without the attribute g++ vectorises the field stores with SSE4.1/AVX/AVX-512 instructions that fault on CPUs
// without them. "no-sse3" (which implies no SSSE3, SSE4, AVX…) leaves the x86-64 baseline.
__attribute__((target("no-sse3"))) KernelTable make_avx512_table() {
  KernelTable t = make_avx2_table();  // what AVX-512 does not accelerate runs at the AVX2 level
  t.isa = Isa::Avx512;
  t.isa_name = "avx512";
  t.gemm = avx512_gemm();
  t.qgemm = cpu_features().avx512_vnni ? avx512vnni_qgemm() : avx512_qgemm();
  t.silu = avx512::silu;
  t.add = avx512::add;
  t.mul = avx512::mul;
  t.add_scalar = avx512::add_scalar;
  t.mul_scalar = avx512::mul_scalar;
  t.affine = avx512::affine;
  t.affine_silu = avx512::affine_silu;
  t.sum_f64 = avx512::sum_f64;
  t.sum_squared_deviation_f64 = avx512::sum_squared_deviation_f64;
  t.max = avx512::max;
  t.exp_shifted_sum = avx512::exp_shifted_sum;
  t.f16_to_f32 = avx512::f16_to_f32;
  t.f32_to_f16 = avx512::f32_to_f16;
  t.widen_block_scales = avx512::widen_block_scales;
  t.transpose = avx512::transpose;
  t.winograd_input = avx512::winograd_input;
  t.winograd_output = avx512::winograd_output;
  t.conv_direct = avx512::conv_direct;
  return t;
}

}  // namespace ddpm::kernels
