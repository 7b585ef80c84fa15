#include "io/crc32c.h"

#include <array>
#include <cstring>

#if !defined(DDPM_NO_SIMD) && defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#define DDPM_CRC32C_X86 1
#elif !defined(DDPM_NO_SIMD) && defined(__aarch64__) && defined(__linux__)
#include <arm_acle.h>
#include <sys/auxv.h>
#define DDPM_CRC32C_ARM64 1
#endif

namespace ddpm {

namespace {

constexpr uint32_t kPolynomial = 0x82F63B78u;  // reflected 0x1EDC6F41

using Tables = std::array<std::array<uint32_t, 256>, 8>;

// Table k gives a byte's contribution when k more bytes follow it, so eight bytes fold in with eight independent
// lookups rather than a serial chain of eight.
constexpr Tables make_tables() {
  Tables tables{};
  for (uint32_t byte = 0; byte < 256; ++byte) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ kPolynomial : crc >> 1;
    tables[0][byte] = crc;
  }
  for (size_t k = 1; k < 8; ++k) {
    for (size_t byte = 0; byte < 256; ++byte) {
      const uint32_t previous = tables[k - 1][byte];
      tables[k][byte] = (previous >> 8) ^ tables[0][previous & 0xFF];
    }
  }
  return tables;
}

constexpr Tables kTables = make_tables();

// The update functions work on the raw register (before the final inversion).
uint32_t update_portable(uint32_t crc, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint32_t low, high;
    std::memcpy(&low, p, 4);  // all supported targets are little-endian (see ddpm_file.cpp)
    std::memcpy(&high, p + 4, 4);
    low ^= crc;
    crc = kTables[7][low & 0xFF] ^ kTables[6][(low >> 8) & 0xFF] ^ kTables[5][(low >> 16) & 0xFF] ^
          kTables[4][low >> 24] ^ kTables[3][high & 0xFF] ^ kTables[2][(high >> 8) & 0xFF] ^
          kTables[1][(high >> 16) & 0xFF] ^ kTables[0][high >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = kTables[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(DDPM_CRC32C_X86)
// This file is built without -msse4.2 (the binary must start on any x86-64), so the instruction set is enabled
// for this one function and it is only called after CPUID said yes.
__attribute__((target("sse4.2"))) uint32_t update_hardware(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  crc = static_cast<uint32_t>(c);
  while (n-- > 0) crc = _mm_crc32_u8(crc, *p++);
  return crc;
}

bool detect_hardware() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & (1u << 20)) != 0;  // SSE4.2
}

constexpr const char* kHardwareName = "sse4.2";
#elif defined(DDPM_CRC32C_ARM64)
__attribute__((target("+crc"))) uint32_t update_hardware(uint32_t crc, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    crc = __crc32cd(crc, v);
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = __crc32cb(crc, *p++);
  return crc;
}

// The extension is optional in ARMv8.0 (the Raspberry Pi 3's Cortex-A53 has it, but not every v8.0 core does).
bool detect_hardware() { return (getauxval(AT_HWCAP) & (1ul << 7)) != 0; }  // HWCAP_CRC32

constexpr const char* kHardwareName = "arm64-crc";
#else
uint32_t update_hardware(uint32_t crc, const uint8_t* p, size_t n) { return update_portable(crc, p, n); }
bool detect_hardware() { return false; }
constexpr const char* kHardwareName = "portable";
#endif

bool has_hardware() {
  static const bool available = detect_hardware();
  return available;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t previous) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const uint32_t crc = has_hardware() ? update_hardware(~previous, p, size) : update_portable(~previous, p, size);
  return ~crc;
}

uint32_t crc32c_portable(const void* data, size_t size, uint32_t previous) {
  return ~update_portable(~previous, static_cast<const uint8_t*>(data), size);
}

const char* crc32c_implementation() { return has_hardware() ? kHardwareName : "portable"; }

}  // namespace ddpm
