// CRC-32C (Castagnoli), the checksum of .ddpm files.
//
// Chosen over gzip's CRC-32 (io/deflate.h) because x86-64 (SSE4.2) and ARM64 (the CRC32 extension, standard from
// ARMv8.1 and present on every Cortex-A53 and later core we target) compute it in hardware, so verifying a whole
// model costs a few milliseconds per hundred megabytes. Parameters: reflected polynomial 0x82F63B78 (0x1EDC6F41
// unreflected), initial value and final XOR 0xFFFFFFFF; crc32c("123456789") == 0xE3069283.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ddpm {

// Pass the previous result to continue a running checksum: crc32c(b, m, crc32c(a, n)) == crc32c(a‖b, n + m).
// Uses the CPU's CRC instructions when it has them (checked once, at run time), slicing-by-8 tables otherwise.
uint32_t crc32c(const void* data, size_t size, uint32_t previous = 0);

// Always the table-driven version; the oracle for the hardware path in tests.
uint32_t crc32c_portable(const void* data, size_t size, uint32_t previous = 0);

// "sse4.2", "arm64-crc" or "portable": which implementation crc32c() uses on this machine.
const char* crc32c_implementation();

}  // namespace ddpm
