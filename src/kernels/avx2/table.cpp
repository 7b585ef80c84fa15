#include "kernels/avx2/avx2.h"
#include "kernels/registry.h"

namespace ddpm::kernels {

KernelTable make_avx2_table() {
  KernelTable t = make_reference_table();
  t.isa = Isa::Avx2;
  t.isa_name = "avx2";
  t.gemm = avx2_gemm();
  return t;
}

}  // namespace ddpm::kernels
