// The AVX-VNNI kernel's source (kernels/avx2/qgemm_vnni.h) built with AVX-512 VL+VNNI, whose EVEX vpdpbusd on ymm
// registers computes exactly what AVX-VNNI's VEX one does. Production never picks it (a CPU with AVX-512 VNNI runs
// the 16-column kernel); it exists so that the tests, and `DDPM_QGEMM=avxvnni-evex` benchmarks, can run the
// AVX-VNNI kernel's arithmetic on machines without AVX-VNNI, QEMU included.
#include "kernels/avx2/qgemm_vnni.h"
#include "kernels/registry.h"

namespace ddpm::kernels::avx2 {
namespace {

void run_avxvnni_evex(int64_t kc, const QGemmPanelA& a, const uint8_t* q_panel, float* c, int64_t ldc,
                      bool accumulate, const GemmEpilogue* epilogue) {
  run_vnni256(kc, a, q_panel, c, ldc, accumulate, epilogue,
              [](__m256i acc, __m256i u, __m256i w) { return _mm256_dpbusd_epi32(acc, u, w); });
}

}  // namespace
}  // namespace ddpm::kernels::avx2

namespace ddpm::kernels {

__attribute__((target("no-sse3"))) QGemmMicroKernel avxvnni_evex_qgemm() {
  return avx2::vnni256_kernel("avxvnni-evex", avx2::run_avxvnni_evex);
}

}  // namespace ddpm::kernels
