#include "kernels/avx2/avx2.h"
#include "kernels/registry.h"

namespace ddpm::kernels {

// The registry builds every table at start-up, on any x86-64 CPU, but this file is compiled with the level's flags:
// without the attribute g++ vectorises the field stores with SSE4.1/AVX/AVX-512 instructions that fault on CPUs
// without them. "no-sse3" (which implies no SSSE3, SSE4, AVX…) leaves the x86-64 baseline.
__attribute__((target("no-sse3"))) KernelTable make_avx2_table() {
  KernelTable t = make_reference_table();
  t.isa = Isa::Avx2;
  t.isa_name = "avx2";
  t.gemm = avx2_gemm();
  t.qgemm = cpu_features().avx_vnni ? avxvnni_qgemm() : avx2_qgemm();
  t.silu = avx2::silu;
  t.add = avx2::add;
  t.mul = avx2::mul;
  t.add_scalar = avx2::add_scalar;
  t.mul_scalar = avx2::mul_scalar;
  t.affine = avx2::affine;
  t.affine_silu = avx2::affine_silu;
  t.stream_copy = avx2::stream_copy;
  t.store_fence = avx2::store_fence;
  t.sum_f64 = avx2::sum_f64;
  t.sum_squared_deviation_f64 = avx2::sum_squared_deviation_f64;
  t.max = avx2::max;
  t.exp_shifted_sum = avx2::exp_shifted_sum;
  t.f16_to_f32 = avx2::f16_to_f32;
  t.f32_to_f16 = avx2::f32_to_f16;
  t.widen_block_scales = avx2::widen_block_scales;
  t.transpose = avx2::transpose;
  t.winograd_input = avx2::winograd_input;
  t.winograd_output = avx2::winograd_output;
  t.conv_direct = avx2::conv_direct;
  return t;
}

}  // namespace ddpm::kernels
