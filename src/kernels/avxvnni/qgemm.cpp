// AVX-VNNI quantised GEMM (6×8 tile, kernels/avx2/qgemm_vnni.h): for CPUs with AVX2 and the VEX-encoded VNNI
// but no AVX-512 (Intel client CPUs since Alder Lake, 2021). Compiled with -mavxvnni and no AVX-512 flag, so
// nothing here can be EVEX-encoded (tests/check_isa_objects.sh looks at the object); the registry hands this kernel
// to the AVX2 table only when cpu_features().avx_vnni. QEMU cannot run AVX-VNNI, so CI tests this source through
// its EVEX build (avx512vnni/qgemm_ymm.cpp) on AVX-512 VNNI machines: the two differ in the vpdpbusd encoding only.
#include "kernels/avx2/qgemm_vnni.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx2 {
namespace {

void run_avxvnni(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc, bool accumulate,
                 const GemmEpilogue* epilogue) {
  run_vnni256(kc, a, q_panel, c, ldc, accumulate, epilogue,
              [](__m256i acc, __m256i u, __m256i w) { return _mm256_dpbusd_avx_epi32(acc, u, w); });
}

}  // namespace
}  // namespace ddpm::kernels::avx2

namespace ddpm::kernels {

__attribute__((target("no-sse3"))) QGemmMicroKernel avxvnni_qgemm() {
  return avx2::vnni256_kernel("avxvnni", avx2::run_avxvnni);
}

}  // namespace ddpm::kernels
