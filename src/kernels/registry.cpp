#include "kernels/registry.h"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

namespace ddpm::kernels {
namespace {

// Each level's table is built only when the CPU can run that level: a table is assembled by code compiled with
// the level's flags, and the compiler may use the level's instructions even for plain field stores.
struct Registry {
  KernelTable reference = make_reference_table();
  std::optional<KernelTable> avx2, avx512, neon;
  const KernelTable* active = nullptr;
  // DDPM_QGEMM: every level chosen afterwards runs this quantised micro-kernel instead of its own (benchmarks), from
  // a copy of the level's table made once per level, so that each level keeps one address for its lifetime.
  std::optional<QGemmMicroKernel> forced_qgemm;
  std::optional<KernelTable> with_forced_qgemm[4];  // by Isa

  void activate(const KernelTable* table) {
    if (!forced_qgemm) {
      active = table;
      return;
    }
    std::optional<KernelTable>& copy = with_forced_qgemm[static_cast<int>(table->isa)];
    if (!copy) {
      copy = *table;
      copy->qgemm = *forced_qgemm;
    }
    active = &*copy;
  }

  Registry() {
    const CpuFeatures& cpu = cpu_features();
#if !defined(DDPM_NO_SIMD) && defined(__x86_64__)
    if (cpu.avx2_fma_f16c) avx2 = make_avx2_table();
    if (cpu.avx512) avx512 = make_avx512_table();
#endif
#if !defined(DDPM_NO_SIMD) && defined(__aarch64__)
    if (cpu.neon) neon = make_neon_table();
#endif
    (void)cpu;
    active = best();
  }

  const KernelTable* best() const {
    for (Isa isa : {Isa::Avx512, Isa::Avx2, Isa::Neon}) {
      if (const KernelTable* table = find(isa)) return table;
    }
    return &reference;
  }

  const KernelTable* find(Isa isa) const {
    switch (isa) {
      case Isa::Scalar: return &reference;
      case Isa::Avx2: return avx2 ? &*avx2 : nullptr;
      case Isa::Avx512: return avx512 ? &*avx512 : nullptr;
      case Isa::Neon: return neon ? &*neon : nullptr;
    }
    return nullptr;
  }
};

Registry& registry() {
  static Registry instance;
  return instance;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
  }
  return "?";
}

bool isa_from_name(const char* name, Isa* out) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

const KernelTable& active() { return *registry().active; }
const KernelTable& reference() { return registry().reference; }
const KernelTable* table_for(Isa isa) { return registry().find(isa); }

int available_tables(const KernelTable** out, int capacity) {
  int count = 0;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    const KernelTable* table = table_for(isa);
    if (table && count < capacity) out[count++] = table;
  }
  return count;
}

int available_qgemm_kernels(QGemmMicroKernel* out, int capacity) {
  int count = 0;
  auto add = [&](const QGemmMicroKernel& kernel) {
    for (int i = 0; i < count; ++i) {
      if (out[i].run == kernel.run) return;  // a level that inherits another level's kernel
    }
    if (count < capacity) out[count++] = kernel;
  };
  add(reference().qgemm);
  for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (const KernelTable* table = table_for(isa)) add(table->qgemm);
  }
#if !defined(DDPM_NO_SIMD) && defined(__x86_64__)
  // The AVX-512 table holds the VNNI kernel where the CPU has it; the AVX-512BW one must stay tested there too.
  if (table_for(Isa::Avx512)) add(avx512_qgemm());
  // Likewise the AVX2 table's VNNI kernel and the one without; and the AVX-VNNI kernel's arithmetic through its
  // EVEX build, where only AVX-512 VNNI can run it.
  if (table_for(Isa::Avx2)) add(avx2_qgemm());
  if (cpu_features().avx512_vnni) add(avxvnni_evex_qgemm());
#endif
#if !defined(DDPM_NO_SIMD) && defined(__aarch64__)
  // The NEON table holds the dotprod kernel where the CPU has it; the one without must stay tested there too.
  if (table_for(Isa::Neon)) add(neon_qgemm());
#endif
  return count;
}

Status select(const char* name) {
  if (std::strcmp(name, "auto") == 0) {
    registry().activate(registry().best());
    return Status();
  }
  Isa isa;
  if (!isa_from_name(name, &isa)) {
    return errorf("unknown instruction set '%s' (expected auto, scalar, avx2, avx512 or neon)", name);
  }
  const KernelTable* table = table_for(isa);
  if (!table) return errorf("instruction set '%s' is not available on this CPU or in this build", name);
  registry().activate(table);
  return Status();
}

Status init_from_environment() {
  if (const char* qgemm = std::getenv("DDPM_QGEMM"); qgemm && *qgemm) {
    QGemmMicroKernel kernels[16];
    const int count = available_qgemm_kernels(kernels, 16);
    std::string names;
    for (int i = 0; i < count; ++i) {
      if (std::strcmp(kernels[i].name, qgemm) == 0) {
        registry().forced_qgemm = kernels[i];
        const KernelTable* level = table_for(registry().active->isa);
        registry().activate(level ? level : registry().best());
        names.clear();
        break;
      }
      names += (names.empty() ? "" : ", ") + std::string(kernels[i].name);
    }
    if (!names.empty()) {
      return errorf("DDPM_QGEMM: no quantised kernel '%s' on this CPU or in this build (available: %s)", qgemm,
                    names.c_str());
    }
  }
  const char* forced = std::getenv("DDPM_ISA");
  if (!forced || !*forced) return Status();
  Status status = select(forced);
  return status.with_context("DDPM_ISA");
}

}  // namespace ddpm::kernels
