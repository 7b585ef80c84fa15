#include "kernels/avx512/avx512.h"
#include "kernels/registry.h"

namespace ddpm::kernels {

KernelTable make_avx512_table() {
  KernelTable t = make_avx2_table();  // what AVX-512 does not accelerate runs at the AVX2 level
  t.isa = Isa::Avx512;
  t.isa_name = "avx512";
  t.gemm = avx512_gemm();
  return t;
}

}  // namespace ddpm::kernels
