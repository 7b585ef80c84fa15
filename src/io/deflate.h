// DEFLATE (RFC 1951) decoding and encoding with the zlib (RFC 1950) and gzip (RFC 1952) wrappers, plus the two
// checksums they use. Our own implementation: the project links nothing beyond the C++ standard library.
//
// Decoding is strict: malformed Huffman code sets, distances reaching before the start of the output, bad
// checksums and truncated input are all errors. Every decoder takes the most output the caller is prepared to hold,
// so a decompression bomb fails with a clear message instead of exhausting memory. Messages name the layer
// ("deflate: ...", "zlib: ...", "gzip: ...") but not the file; callers add the file name with Status::with_context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

// CRC-32 as used by gzip and PNG (reflected polynomial 0xEDB88320). Pass the previous result to continue a running
// checksum; the initial value is 0.
uint32_t crc32(const uint8_t* data, size_t size, uint32_t previous = 0);

// Adler-32 as used by zlib. The initial value is 1.
uint32_t adler32(const uint8_t* data, size_t size, uint32_t previous = 1);

// Decodes a raw DEFLATE stream into *out (replacing its contents), producing at most max_output bytes.
// With consumed == nullptr, bytes after the end of the final block are an error; otherwise *consumed receives how
// many input bytes the stream occupied (its last partial byte included) and trailing bytes are left to the caller.
Status inflate_raw(const uint8_t* data, size_t size, size_t max_output, std::vector<uint8_t>* out,
                   size_t* consumed = nullptr);

// Decodes a zlib stream (header, DEFLATE data, Adler-32 checked). Preset dictionaries are rejected. Trailing bytes
// are handled as in inflate_raw.
Status zlib_decompress(const uint8_t* data, size_t size, size_t max_output, std::vector<uint8_t>* out,
                       size_t* consumed = nullptr);

// Decodes a gzip file: one or more members, each with its CRC-32 and length checked; their outputs are
// concatenated and max_output bounds the total. Zero bytes after the last member are tolerated (tape padding);
// anything else is an error.
Status gzip_decompress(const uint8_t* data, size_t size, size_t max_output, std::vector<uint8_t>* out);

// Decodes only the first prefix_size bytes of the first gzip member (fewer when that member is shorter), without
// checking its trailer. Lets a reader learn a format header before it decides how much output to allow.
Status gzip_decompress_prefix(const uint8_t* data, size_t size, size_t prefix_size, std::vector<uint8_t>* out);

// True when the bytes start with the gzip magic number 1f 8b.
bool looks_like_gzip(const uint8_t* data, size_t size);

enum class CompressionLevel {
  Store,    // stored blocks only: no compression, fastest possible
  Fast,     // greedy matching over short hash chains
  Default,  // lazy matching, moderate chains: the usual speed/size balance
  Best,     // lazy matching over long chains
};

// Encoders cannot fail on any input (allocation failure aside).
std::vector<uint8_t> deflate_raw(const uint8_t* data, size_t size, CompressionLevel level);
std::vector<uint8_t> zlib_compress(const uint8_t* data, size_t size, CompressionLevel level);
std::vector<uint8_t> gzip_compress(const uint8_t* data, size_t size, CompressionLevel level);

// Huffman code lengths for the symbol frequencies, none longer than max_length (2^max_length must cover the used
// symbols): optimal when the unrestricted code fits, close to it otherwise. Unused symbols get 0; a single used
// symbol gets length 1. The encoder's building block, public so that it can be tested on its own.
void build_limited_huffman_lengths(const uint32_t* frequencies, int symbol_count, int max_length, uint8_t* lengths);

}  // namespace ddpm
