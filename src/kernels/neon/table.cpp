#include "kernels/neon/neon.h"
#include "kernels/registry.h"

namespace ddpm::kernels {

KernelTable make_neon_table() {
  KernelTable t = make_reference_table();
  t.isa = Isa::Neon;
  t.isa_name = "neon";
  t.gemm = neon_gemm();
  return t;
}

}  // namespace ddpm::kernels
