#include "io/deflate.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <new>

namespace ddpm {
namespace {

// ------------------------------------------------------------------------------------------------------------------
// Shared helpers and format constants (RFC 1951 section 3.2.5).

uint32_t load32_le(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

uint64_t load64_le(const uint8_t* p) { return uint64_t(load32_le(p)) | uint64_t(load32_le(p + 4)) << 32; }

uint32_t load32_be(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

void append32_le(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(uint8_t(v >> (8 * i)));
}

void append32_be(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(uint8_t(v >> (8 * i)));
}

// Huffman codes are defined most-significant bit first but DEFLATE packs bits least-significant first, so both the
// decoder tables and the encoder work with bit-reversed codes.
uint32_t reverse_bits(uint32_t code, int length) {
  uint32_t reversed = 0;
  for (int i = 0; i < length; ++i) {
    reversed = (reversed << 1) | (code & 1);
    code >>= 1;
  }
  return reversed;
}

constexpr int kMaxCodeLength = 15;
constexpr int kMaxCodeLengthCodeLength = 7;
constexpr int kLiteralLengthSymbols = 286;  // 0-255 literals, 256 end of block, 257-285 lengths
constexpr int kDistanceSymbols = 30;
constexpr int kCodeLengthSymbols = 19;
constexpr int kEndOfBlock = 256;
constexpr size_t kWindowSize = 32768;
constexpr size_t kMinMatch = 3;
constexpr size_t kMaxMatch = 258;
constexpr size_t kMaxStoredBlock = 65535;

constexpr uint16_t kLengthBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLengthExtraBits[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                          2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistanceBase[30] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                        33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                        1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistanceExtraBits[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                            6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
// The order in which a dynamic block header lists the code-length code's lengths (rarely used symbols last, so
// the list can be cut short).
constexpr uint8_t kCodeLengthOrder[kCodeLengthSymbols] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                                          11, 4,  12, 3, 13, 2, 14, 1, 15};

// ------------------------------------------------------------------------------------------------------------------
// Checksums.

using CrcTables = std::array<std::array<uint32_t, 256>, 8>;

// Table k maps a byte to its CRC contribution when followed by k zero bytes, so eight input bytes can be folded in
// with eight independent lookups instead of a serial chain of eight.
constexpr CrcTables make_crc_tables() {
  CrcTables tables{};
  for (uint32_t byte = 0; byte < 256; ++byte) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
    tables[0][byte] = crc;
  }
  for (size_t k = 1; k < 8; ++k) {
    for (size_t byte = 0; byte < 256; ++byte) {
      uint32_t previous = tables[k - 1][byte];
      tables[k][byte] = (previous >> 8) ^ tables[0][previous & 0xFF];
    }
  }
  return tables;
}

constexpr CrcTables kCrcTables = make_crc_tables();

}  // namespace

uint32_t crc32(const uint8_t* data, size_t size, uint32_t previous) {
  uint32_t crc = ~previous;
  while (size >= 8) {
    uint32_t low = crc ^ load32_le(data);
    uint32_t high = load32_le(data + 4);
    crc = kCrcTables[7][low & 0xFF] ^ kCrcTables[6][(low >> 8) & 0xFF] ^ kCrcTables[5][(low >> 16) & 0xFF] ^
          kCrcTables[4][low >> 24] ^ kCrcTables[3][high & 0xFF] ^ kCrcTables[2][(high >> 8) & 0xFF] ^
          kCrcTables[1][(high >> 16) & 0xFF] ^ kCrcTables[0][high >> 24];
    data += 8;
    size -= 8;
  }
  while (size-- > 0) crc = kCrcTables[0][(crc ^ *data++) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t adler32(const uint8_t* data, size_t size, uint32_t previous) {
  constexpr uint32_t kModulus = 65521;
  // The longest run after which the second sum can still not have overflowed 32 bits, so the (slow) modulo is
  // needed only once per run: 255 * n * (n + 1) / 2 + (n + 1) * (kModulus - 1) <= 2^32 - 1.
  constexpr size_t kRun = 5552;
  uint32_t a = previous & 0xFFFF;
  uint32_t b = previous >> 16;
  while (size > 0) {
    size_t n = std::min(size, kRun);
    size -= n;
    for (size_t i = 0; i < n; ++i) {
      a += data[i];
      b += a;
    }
    data += n;
    a %= kModulus;
    b %= kModulus;
  }
  return (b << 16) | a;
}

// When the optimal code is too deep, the frequencies are flattened (halved, keeping every used symbol at least 1)
// and the code rebuilt: it costs a little compression on pathological inputs but needs no special length-limiting
// algorithm. All ones give a balanced tree, so the loop ends as long as 2^max_length covers the used symbols.
void build_limited_huffman_lengths(const uint32_t* frequencies, int symbol_count, int max_length, uint8_t* lengths) {
  std::fill(lengths, lengths + symbol_count, 0);
  std::vector<uint64_t> weights(frequencies, frequencies + symbol_count);
  std::vector<int> symbols;
  for (int s = 0; s < symbol_count; ++s)
    if (weights[size_t(s)] > 0) symbols.push_back(s);
  if (symbols.empty()) return;
  DDPM_ASSERT(max_length >= 1 && max_length < 32 && symbols.size() <= (size_t(1) << max_length));
  if (symbols.size() == 1) {
    lengths[symbols[0]] = 1;
    return;
  }
  const size_t leaves = symbols.size();
  std::vector<uint64_t> node_weight(2 * leaves - 1);
  std::vector<size_t> parent(2 * leaves - 1);
  std::vector<int> depth(2 * leaves - 1);
  for (;;) {
    std::stable_sort(symbols.begin(), symbols.end(),
                     [&](int a, int b) { return weights[size_t(a)] < weights[size_t(b)]; });
    for (size_t i = 0; i < leaves; ++i) node_weight[i] = weights[size_t(symbols[i])];
    // Two queues: sorted leaves, and internal nodes, which are created in non-decreasing weight order.
    size_t next_leaf = 0, next_internal = leaves, created = leaves;
    auto take_lightest = [&]() {
      bool use_leaf =
          next_leaf < leaves && (next_internal == created || node_weight[next_leaf] <= node_weight[next_internal]);
      return use_leaf ? next_leaf++ : next_internal++;
    };
    while (created < 2 * leaves - 1) {
      size_t a = take_lightest();
      size_t b = take_lightest();
      node_weight[created] = node_weight[a] + node_weight[b];
      parent[a] = parent[b] = created;
      created++;
    }
    depth[2 * leaves - 2] = 0;
    int deepest = 0;
    for (size_t i = 2 * leaves - 2; i-- > 0;) {
      depth[i] = depth[parent[i]] + 1;
      if (i < leaves) deepest = std::max(deepest, depth[i]);
    }
    if (deepest <= max_length) {
      for (size_t i = 0; i < leaves; ++i) lengths[symbols[i]] = uint8_t(depth[i]);
      return;
    }
    for (uint64_t& w : weights)
      if (w > 0) w = (w + 1) / 2;
  }
}

namespace {

// ------------------------------------------------------------------------------------------------------------------
// Decoder.

// One slot of a decoding table. A slot either resolves a code (length > 0) or, for codes longer than the primary
// index, points at a secondary table indexed by the next link_bits bits (link_bits > 0). A slot with neither is a
// bit pattern no code starts with.
struct DecodeEntry {
  uint16_t value;  // the symbol, or the secondary table's first slot
  uint8_t length;  // total code length in bits
  uint8_t link_bits;
};

enum class CodeKind {
  CodeLengths,    // must be complete
  LiteralLength,  // complete, or a single one-bit code (what zlib accepts)
  Distance,       // complete, a single one-bit code, or empty (a block of literals only)
};

// Two-level table lookup: the first primary_bits bits of the input index the primary table directly, longer codes
// continue in small secondary tables sized to exactly the codes that share a prefix. This keeps tables small (they
// are rebuilt for every dynamic block) while decoding most symbols with a single lookup.
class HuffmanDecoder {
 public:
  // Returns nullptr when the lengths form an acceptable code, otherwise why they do not.
  const char* build(const uint8_t* lengths, int symbol_count, int primary_bits, CodeKind kind) {
    int count_by_length[kMaxCodeLength + 1] = {};
    for (int symbol = 0; symbol < symbol_count; ++symbol) {
      DDPM_ASSERT(lengths[symbol] <= kMaxCodeLength);
      count_by_length[lengths[symbol]]++;
    }
    count_by_length[0] = 0;
    int used = 0;
    int32_t unfilled = 1;  // code space left, in units of the current length
    for (int length = 1; length <= kMaxCodeLength; ++length) {
      used += count_by_length[length];
      unfilled = unfilled * 2 - count_by_length[length];
      if (unfilled < 0) return "over-subscribed";
    }
    primary_bits_ = primary_bits;
    primary_mask_ = (1u << primary_bits) - 1;
    table_.assign(size_t(1) << primary_bits, DecodeEntry{0, 0, 0});
    if (unfilled > 0) {
      bool single_one_bit_code = used == 1 && count_by_length[1] == 1;
      bool allowed =
          (kind == CodeKind::Distance && used == 0) || (kind != CodeKind::CodeLengths && single_one_bit_code);
      if (!allowed) return used == 0 ? "empty" : "incomplete";
      if (used == 0) return nullptr;
    }

    // Canonical order: by length, then by symbol. Codes of one length are consecutive integers.
    int first_index[kMaxCodeLength + 2] = {};
    for (int length = 1; length <= kMaxCodeLength; ++length)
      first_index[length + 1] = first_index[length] + count_by_length[length];
    uint16_t sorted[kLiteralLengthSymbols + 2];
    DDPM_ASSERT(symbol_count <= kLiteralLengthSymbols + 2);
    {
      int next[kMaxCodeLength + 2];
      std::memcpy(next, first_index, sizeof next);
      for (int symbol = 0; symbol < symbol_count; ++symbol)
        if (lengths[symbol] != 0) sorted[next[lengths[symbol]]++] = uint16_t(symbol);
    }
    uint32_t next_code[kMaxCodeLength + 1] = {};
    for (int length = 2; length <= kMaxCodeLength; ++length)
      next_code[length] = (next_code[length - 1] + uint32_t(count_by_length[length - 1])) << 1;

    int not_yet_placed[kMaxCodeLength + 1];
    std::memcpy(not_yet_placed, count_by_length, sizeof not_yet_placed);
    const uint32_t primary_size = 1u << primary_bits;
    uint32_t current_prefix = ~0u;
    uint32_t secondary_start = 0;
    int secondary_bits = 0;
    for (int i = 0; i < used; ++i) {
      int symbol = sorted[i];
      int length = lengths[symbol];
      uint32_t reversed = reverse_bits(next_code[length]++, length);
      if (length <= primary_bits) {
        for (uint32_t slot = reversed; slot < primary_size; slot += 1u << length)
          table_[slot] = DecodeEntry{uint16_t(symbol), uint8_t(length), 0};
        not_yet_placed[length]--;
        continue;
      }
      uint32_t prefix = reversed & primary_mask_;
      if (prefix != current_prefix) {
        // Codes sharing this prefix come next in canonical order; grow the secondary table until they fill it.
        current_prefix = prefix;
        secondary_bits = length - primary_bits;
        int32_t room = 1 << secondary_bits;
        while (primary_bits + secondary_bits < kMaxCodeLength) {
          room -= not_yet_placed[primary_bits + secondary_bits];
          if (room <= 0) break;
          secondary_bits++;
          room *= 2;
        }
        secondary_start = uint32_t(table_.size());
        DDPM_ASSERT(secondary_start + (1u << secondary_bits) <= 65536);
        table_.resize(secondary_start + (size_t(1) << secondary_bits), DecodeEntry{0, 0, 0});
        table_[prefix] = DecodeEntry{uint16_t(secondary_start), 0, uint8_t(secondary_bits)};
      }
      for (uint32_t slot = reversed >> primary_bits; slot < (1u << secondary_bits);
           slot += 1u << (length - primary_bits))
        table_[secondary_start + slot] = DecodeEntry{uint16_t(symbol), uint8_t(length), 0};
      not_yet_placed[length]--;
    }
    return nullptr;
  }

  DecodeEntry lookup(uint64_t bits) const {
    const DecodeEntry* table = table_.data();
    DecodeEntry entry = table[bits & primary_mask_];
    if (entry.link_bits != 0) entry = table[entry.value + ((bits >> primary_bits_) & ((1u << entry.link_bits) - 1))];
    return entry;
  }

 private:
  std::vector<DecodeEntry> table_;
  int primary_bits_ = 0;
  uint32_t primary_mask_ = 0;
};

constexpr int kLiteralLengthPrimaryBits = 10;
constexpr int kDistancePrimaryBits = 8;
constexpr int kCodeLengthPrimaryBits = 7;

struct FixedDecoders {
  HuffmanDecoder literal_length;
  HuffmanDecoder distance;
  FixedDecoders() {
    uint8_t lengths[288];
    std::fill(lengths, lengths + 144, 8);
    std::fill(lengths + 144, lengths + 256, 9);
    std::fill(lengths + 256, lengths + 280, 7);
    std::fill(lengths + 280, lengths + 288, 8);
    DDPM_ASSERT(literal_length.build(lengths, 288, kLiteralLengthPrimaryBits, CodeKind::LiteralLength) == nullptr);
    // 32 five-bit codes make the fixed distance code complete; symbols 30 and 31 are rejected when decoded.
    std::fill(lengths, lengths + 32, 5);
    DDPM_ASSERT(distance.build(lengths, 32, kDistancePrimaryBits, CodeKind::Distance) == nullptr);
  }
};

const FixedDecoders& fixed_decoders() {
  static const FixedDecoders decoders;
  return decoders;
}

class Inflater {
 public:
  // Appends to *out. limit bounds the bytes this stream may add; with stop_when_full, reaching it ends decoding
  // successfully instead of failing.
  Inflater(const uint8_t* data, size_t size, std::vector<uint8_t>* out, size_t limit, bool stop_when_full)
      : begin_(data),
        in_(data),
        end_(data + size),
        out_(out),
        start_(out->size()),
        pos_(out->size()),
        stop_when_full_(stop_when_full) {
    limit_ = limit > SIZE_MAX - start_ ? SIZE_MAX : start_ + limit;
    buffer_ = out->data();
    buffer_size_ = out->size();
  }

  Status run() {
    Status status = decode_blocks();
    out_->resize(pos_);
    return status;
  }

  // Input bytes used so far, counting a partially used last byte.
  size_t consumed() const { return size_t(in_ - begin_) - bit_count_ / 8; }
  size_t produced() const { return pos_ - start_; }

 private:
  Status decode_blocks() {
    for (;;) {
      uint32_t is_final = 0, type = 0;
      if (!take_bits(1, &is_final) || !take_bits(2, &type)) return truncated();
      Status status;
      if (type == 0) {
        status = decode_stored_block();
      } else if (type == 1) {
        status = decode_huffman_block(fixed_decoders().literal_length, fixed_decoders().distance);
      } else if (type == 2) {
        status = read_dynamic_header();
        if (status.ok()) status = decode_huffman_block(literal_length_, distance_);
      } else {
        return errorf("deflate: invalid block type 3 at input byte %zu", consumed());
      }
      if (!status.ok() || full_ || is_final) return status;
    }
  }

  // Tops the bit buffer up to at least 56 bits when 8 input bytes remain (one unaligned load), else byte by byte.
  // Bits above bit_count_ are always either zero or the true next input bits, so a table lookup near the end of
  // the input sees zeros where the input has run out, and the code length it finds tells whether it was real.
  void refill() {
    if (end_ - in_ >= 8) {
      bits_ |= load64_le(in_) << bit_count_;
      unsigned whole_bytes = (63 - bit_count_) >> 3;
      in_ += whole_bytes;
      bit_count_ += whole_bytes * 8;
    } else {
      while (bit_count_ <= 56 && in_ < end_) {
        bits_ |= uint64_t(*in_++) << bit_count_;
        bit_count_ += 8;
      }
    }
  }

  void drop_bits(unsigned count) {
    bits_ >>= count;
    bit_count_ -= count;
  }

  bool take_bits(unsigned count, uint32_t* value) {
    if (bit_count_ < count) {
      refill();
      if (bit_count_ < count) return false;
    }
    *value = uint32_t(bits_ & ((uint64_t(1) << count) - 1));
    drop_bits(count);
    return true;
  }

  // Decodes one symbol; false with *error set when the bits match no code or the input ends inside the code.
  bool decode_symbol(const HuffmanDecoder& decoder, const char* what, uint32_t* symbol, Status* error) {
    if (bit_count_ < kMaxCodeLength) refill();
    DecodeEntry entry = decoder.lookup(bits_);
    if (entry.length == 0 || entry.length > bit_count_) {
      bool ran_out = in_ == end_ && bit_count_ < kMaxCodeLength;
      *error = ran_out ? truncated() : errorf("deflate: invalid %s code at input byte %zu", what, consumed());
      return false;
    }
    drop_bits(entry.length);
    *symbol = entry.value;
    return true;
  }

  Status truncated() const { return errorf("deflate: stream truncated after %zu input bytes", size_t(end_ - begin_)); }

  // Makes room for count more output bytes. Returns how many may be written: count, or fewer when the limit is
  // reached in stop_when_full mode (then full_ is set). Returns 0 with *error set on failure.
  size_t reserve(size_t count, Status* error) {
    if (count > limit_ - pos_) {
      if (!stop_when_full_) {
        *error = errorf("deflate: output exceeds the limit of %zu bytes", limit_ - start_);
        return 0;
      }
      count = limit_ - pos_;
      full_ = true;
    }
    if (count > buffer_size_ - pos_) {
      size_t grown = std::max(buffer_size_ - start_, size_t(1) << 16);
      grown = grown > (SIZE_MAX - start_) / 2 ? SIZE_MAX : start_ + grown * 2;
      size_t new_size = std::max(pos_ + count, std::min(grown, limit_));
      try {
        out_->resize(new_size);
      } catch (const std::bad_alloc&) {
        *error = errorf("deflate: out of memory growing the output to %zu bytes", new_size);
        return 0;
      }
      buffer_ = out_->data();
      buffer_size_ = new_size;
    }
    return count;
  }

  Status decode_stored_block() {
    drop_bits(bit_count_ & 7);
    uint32_t length = 0, complement = 0;
    if (!take_bits(16, &length) || !take_bits(16, &complement)) return truncated();
    if ((length ^ 0xFFFF) != complement)
      return errorf("deflate: stored block length %u does not match its complement %u", length, complement);
    // Hand the whole bytes still sitting in the bit buffer back to the byte stream.
    in_ -= bit_count_ / 8;
    bits_ = 0;
    bit_count_ = 0;
    if (size_t(end_ - in_) < length) return truncated();
    Status error;
    size_t room = reserve(length, &error);
    if (room == 0 && !error.ok()) return error;
    if (room > 0) std::memcpy(buffer_ + pos_, in_, room);
    pos_ += room;
    in_ += length;
    return Status();
  }

  Status read_dynamic_header() {
    uint32_t literal_count = 0, distance_count = 0, code_length_count = 0;
    if (!take_bits(5, &literal_count) || !take_bits(5, &distance_count) || !take_bits(4, &code_length_count))
      return truncated();
    literal_count += 257;
    distance_count += 1;
    code_length_count += 4;
    if (literal_count > kLiteralLengthSymbols || distance_count > kDistanceSymbols)
      return errorf("deflate: dynamic block declares %u literal/length and %u distance codes (at most 286 and 30)",
                    literal_count, distance_count);
    uint8_t code_length_lengths[kCodeLengthSymbols] = {};
    for (uint32_t i = 0; i < code_length_count; ++i) {
      uint32_t length = 0;
      if (!take_bits(3, &length)) return truncated();
      code_length_lengths[kCodeLengthOrder[i]] = uint8_t(length);
    }
    if (const char* problem =
            code_lengths_.build(code_length_lengths, kCodeLengthSymbols, kCodeLengthPrimaryBits, CodeKind::CodeLengths))
      return errorf("deflate: code-length code is %s", problem);

    uint8_t lengths[kLiteralLengthSymbols + kDistanceSymbols] = {};
    const uint32_t total = literal_count + distance_count;
    uint32_t filled = 0;
    while (filled < total) {
      uint32_t symbol = 0;
      Status error;
      if (!decode_symbol(code_lengths_, "code-length", &symbol, &error)) return error;
      if (symbol < 16) {
        lengths[filled++] = uint8_t(symbol);
        continue;
      }
      uint8_t value = 0;
      uint32_t repeat = 0;
      bool ok = true;
      if (symbol == 16) {
        if (filled == 0) return errorf("deflate: code length repeat with no previous length");
        value = lengths[filled - 1];
        ok = take_bits(2, &repeat);
        repeat += 3;
      } else if (symbol == 17) {
        ok = take_bits(3, &repeat);
        repeat += 3;
      } else {
        ok = take_bits(7, &repeat);
        repeat += 11;
      }
      if (!ok) return truncated();
      if (repeat > total - filled)
        return errorf("deflate: code length repeat runs past the %u declared lengths", total);
      std::memset(lengths + filled, value, repeat);
      filled += repeat;
    }
    if (lengths[kEndOfBlock] == 0) return errorf("deflate: dynamic block has no end-of-block code");
    if (const char* problem =
            literal_length_.build(lengths, int(literal_count), kLiteralLengthPrimaryBits, CodeKind::LiteralLength))
      return errorf("deflate: literal/length code is %s", problem);
    if (const char* problem =
            distance_.build(lengths + literal_count, int(distance_count), kDistancePrimaryBits, CodeKind::Distance))
      return errorf("deflate: distance code is %s", problem);
    return Status();
  }

  Status decode_huffman_block(const HuffmanDecoder& literal_length, const HuffmanDecoder& distance) {
    Status error;
    for (;;) {
      // 48 bits cover the longest symbol: 15 code + 5 extra length bits + 15 code + 13 extra distance bits.
      if (bit_count_ < 48) refill();
      uint32_t symbol = 0;
      if (!decode_symbol(literal_length, "literal/length", &symbol, &error)) return error;
      if (symbol < 256) {
        if (pos_ == buffer_size_) {  // buffer_size_ never exceeds limit_
          if (reserve(1, &error) == 0) return error;
        }
        buffer_[pos_++] = uint8_t(symbol);
        continue;
      }
      if (symbol == kEndOfBlock) return Status();
      symbol -= 257;
      if (symbol >= 29) return errorf("deflate: invalid literal/length symbol %u", symbol + 257);
      uint32_t extra = 0;
      if (!take_bits(kLengthExtraBits[symbol], &extra)) return truncated();
      size_t length = kLengthBase[symbol] + extra;

      uint32_t distance_symbol = 0;
      if (!decode_symbol(distance, "distance", &distance_symbol, &error)) return error;
      if (distance_symbol >= kDistanceSymbols) return errorf("deflate: invalid distance symbol %u", distance_symbol);
      if (!take_bits(kDistanceExtraBits[distance_symbol], &extra)) return truncated();
      size_t match_distance = kDistanceBase[distance_symbol] + extra;
      if (match_distance > pos_ - start_)
        return errorf("deflate: match distance %zu reaches before the start of the output (%zu bytes written)",
                      match_distance, pos_ - start_);

      if (length > buffer_size_ - pos_) {
        length = reserve(length, &error);
        if (length == 0) return error;
      }
      uint8_t* dst = buffer_ + pos_;
      const uint8_t* src = dst - match_distance;
      if (match_distance >= length) {
        std::memcpy(dst, src, length);
      } else if (match_distance == 1) {
        std::memset(dst, *src, length);
      } else {
        for (size_t i = 0; i < length; ++i) dst[i] = src[i];  // overlapping: each byte may repeat a fresh one
      }
      pos_ += length;
      if (full_) return Status();
    }
  }

  const uint8_t* const begin_;
  const uint8_t* in_;
  const uint8_t* const end_;
  uint64_t bits_ = 0;
  unsigned bit_count_ = 0;

  std::vector<uint8_t>* out_;
  const size_t start_;
  size_t pos_;
  size_t limit_;
  uint8_t* buffer_;
  size_t buffer_size_;
  const bool stop_when_full_;
  bool full_ = false;

  HuffmanDecoder code_lengths_;
  HuffmanDecoder literal_length_;
  HuffmanDecoder distance_;
};

// Parses a gzip member header at data[0..size); *header_size receives its length.
Status parse_gzip_header(const uint8_t* data, size_t size, size_t* header_size) {
  constexpr uint8_t kText = 1, kHeaderCrc = 2, kExtra = 4, kName = 8, kComment = 16;
  if (size < 10) return errorf("gzip: truncated header (%zu bytes)", size);
  if (data[0] != 0x1F || data[1] != 0x8B) return errorf("gzip: bad magic number %02x %02x", data[0], data[1]);
  if (data[2] != 8) return errorf("gzip: unsupported compression method %u", data[2]);
  uint8_t flags = data[3];
  if (flags & ~(kText | kHeaderCrc | kExtra | kName | kComment))
    return errorf("gzip: reserved header flags set (0x%02x)", flags);
  size_t pos = 10;
  if (flags & kExtra) {
    if (size - pos < 2) return errorf("gzip: truncated header (extra field length)");
    size_t extra_size = size_t(data[pos]) | size_t(data[pos + 1]) << 8;
    pos += 2;
    if (size - pos < extra_size) return errorf("gzip: truncated header (extra field)");
    pos += extra_size;
  }
  for (uint8_t string_flag : {kName, kComment}) {
    if (!(flags & string_flag)) continue;
    const void* terminator = std::memchr(data + pos, 0, size - pos);
    if (terminator == nullptr)
      return errorf("gzip: truncated header (unterminated %s)", string_flag == kName ? "file name" : "comment");
    pos = size_t(static_cast<const uint8_t*>(terminator) - data) + 1;
  }
  if (flags & kHeaderCrc) {
    if (size - pos < 2) return errorf("gzip: truncated header (header CRC)");
    uint32_t expected = uint32_t(data[pos]) | uint32_t(data[pos + 1]) << 8;
    uint32_t actual = crc32(data, pos) & 0xFFFF;
    if (expected != actual) return errorf("gzip: header CRC mismatch (stored %04x, computed %04x)", expected, actual);
    pos += 2;
  }
  *header_size = pos;
  return Status();
}

Status gzip_decode(const uint8_t* data, size_t size, size_t max_output, bool prefix_only, std::vector<uint8_t>* out) {
  out->clear();
  size_t offset = 0;
  for (int member = 1;; ++member) {
    size_t header_size = 0;
    Status status = parse_gzip_header(data + offset, size - offset, &header_size);
    if (!status.ok()) return member == 1 ? status : status.with_context("gzip member " + std::to_string(member));
    offset += header_size;
    size_t member_start = out->size();
    Inflater inflater(data + offset, size - offset, out, max_output - member_start, prefix_only);
    status = inflater.run();
    if (!status.ok()) return member == 1 ? status : status.with_context("gzip member " + std::to_string(member));
    if (prefix_only) return Status();
    offset += inflater.consumed();
    if (size - offset < 8) return errorf("gzip: truncated (member %d is missing its CRC-32 and length)", member);
    uint32_t stored_crc = load32_le(data + offset);
    uint32_t stored_size = load32_le(data + offset + 4);
    offset += 8;
    uint32_t actual_crc = crc32(out->data() + member_start, out->size() - member_start);
    if (stored_crc != actual_crc)
      return errorf("gzip: CRC-32 mismatch in member %d (stored %08x, computed %08x)", member, stored_crc, actual_crc);
    uint32_t actual_size = uint32_t(out->size() - member_start);  // ISIZE is the length modulo 2^32
    if (stored_size != actual_size)
      return errorf("gzip: length mismatch in member %d (stored %u, decoded %u mod 2^32)", member, stored_size,
                    actual_size);
    if (offset == size) return Status();
    if (std::all_of(data + offset, data + size, [](uint8_t byte) { return byte == 0; })) return Status();
    if (!looks_like_gzip(data + offset, size - offset))
      return errorf("gzip: %zu bytes of trailing garbage after member %d", size - offset, member);
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Encoder.

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>* out) : out_(out) {}

  void put(uint32_t value, unsigned count) {
    DDPM_ASSERT(count <= 32);
    pending_ |= uint64_t(value) << pending_count_;
    pending_count_ += count;
    while (pending_count_ >= 8) {
      out_->push_back(uint8_t(pending_));
      pending_ >>= 8;
      pending_count_ -= 8;
    }
  }

  void align_to_byte() {
    if (pending_count_ > 0) put(0, 8 - pending_count_);
  }

  unsigned pending_bits() const { return pending_count_; }
  std::vector<uint8_t>* bytes() { return out_; }

 private:
  std::vector<uint8_t>* out_;
  uint64_t pending_ = 0;
  unsigned pending_count_ = 0;
};

// Some decoders (zlib among them) reject a code with a single symbol of length 1 in some places, and a lone symbol
// cannot be given a zero-bit code anyway; adding an unused partner makes every code complete.
void make_code_complete(uint8_t* lengths, int symbol_count, int minimum_used) {
  int used = 0;
  for (int s = 0; s < symbol_count; ++s) used += lengths[s] != 0;
  for (int s = 0; s < symbol_count && used < minimum_used; ++s) {
    if (lengths[s] == 0) {
      lengths[s] = 1;
      used++;
    }
  }
}

// Bit-reversed canonical codes for the lengths, ready for BitWriter::put.
void assign_codes(const uint8_t* lengths, int symbol_count, uint16_t* codes) {
  uint32_t count_by_length[kMaxCodeLength + 1] = {};
  for (int s = 0; s < symbol_count; ++s) count_by_length[lengths[s]]++;
  count_by_length[0] = 0;
  uint32_t next_code[kMaxCodeLength + 1] = {};
  for (int length = 2; length <= kMaxCodeLength; ++length)
    next_code[length] = (next_code[length - 1] + count_by_length[length - 1]) << 1;
  for (int s = 0; s < symbol_count; ++s)
    codes[s] = lengths[s] ? uint16_t(reverse_bits(next_code[lengths[s]]++, lengths[s])) : 0;
}

int length_symbol(size_t length) {  // 0-based, i.e. symbol - 257
  return int(std::upper_bound(kLengthBase, kLengthBase + 29, length) - kLengthBase) - 1;
}

int distance_symbol(size_t distance) {
  return int(std::upper_bound(kDistanceBase, kDistanceBase + 30, distance) - kDistanceBase) - 1;
}

void write_stored_blocks(BitWriter* writer, const uint8_t* data, size_t size, bool is_final) {
  do {
    size_t chunk = std::min(size, kMaxStoredBlock);
    bool last = chunk == size;
    writer->put(is_final && last ? 1 : 0, 1);
    writer->put(0, 2);
    writer->align_to_byte();
    writer->put(uint32_t(chunk), 16);
    writer->put(uint32_t(chunk) ^ 0xFFFF, 16);
    writer->bytes()->insert(writer->bytes()->end(), data, data + chunk);
    data += chunk;
    size -= chunk;
  } while (size > 0);
}

struct LevelParameters {
  int max_chain;       // candidates examined per position
  size_t good_length;  // when the held-back match is this long, a quarter of the chain is enough to try to beat it
  size_t max_lazy;     // a match this long is taken at once instead of being held back (lazy levels only)
  size_t nice_length;  // a match this long ends the search
  bool lazy;           // defer a match by one byte when the next position may start a longer one
  size_t max_insert;   // longest match whose inner positions are still added to the hash chains
};

LevelParameters parameters_for(CompressionLevel level) {
  switch (level) {
    case CompressionLevel::Fast:
      return {8, kMaxMatch, kMaxMatch, 32, false, 32};
    case CompressionLevel::Best:
      return {2048, 32, kMaxMatch, kMaxMatch, true, kMaxMatch};
    default:
      return {128, 8, 16, 128, true, kMaxMatch};
  }
}

class Compressor {
 public:
  Compressor(const uint8_t* data, size_t size, CompressionLevel level, std::vector<uint8_t>* out)
      : data_(data),
        size_(size),
        params_(parameters_for(level)),
        writer_(out),
        head_(size_t(1) << kHashBits, kNoPosition),
        previous_(kWindowSize, kNoPosition) {
    tokens_.reserve(kTokensPerBlock + 2);
  }

  void run() {
    size_t pos = 0;
    Match pending;  // found at pos - 1 and held back to see whether pos starts a longer one
    while (pos < size_) {
      if (pending.length == 0 && tokens_.size() >= kTokensPerBlock) flush_block(pos, false);
      Match current;
      if (size_ - pos >= kMinMatch) {
        int chain = pending.length >= params_.good_length ? params_.max_chain / 4 : params_.max_chain;
        current = find_match(pos, std::max(pending.length, kMinMatch - 1), chain);
        insert(pos);
      }
      if (pending.length != 0) {
        if (current.length > pending.length) {
          add_literal(data_[pos - 1]);
          pending = current;
          pos++;
          continue;
        }
        add_match(pending);
        size_t match_end = pos - 1 + pending.length;
        insert_range(pos + 1, match_end, pending.length);
        pos = match_end;
        pending = Match();
        continue;
      }
      if (current.length != 0) {
        if (params_.lazy && current.length < params_.max_lazy) {
          pending = current;
          pos++;
          continue;
        }
        add_match(current);
        insert_range(pos + 1, pos + current.length, current.length);
        pos += current.length;
      } else {
        add_literal(data_[pos]);
        pos++;
      }
    }
    DDPM_ASSERT(pending.length == 0);
    flush_block(size_, true);
    writer_.align_to_byte();
  }

 private:
  struct Match {
    size_t length = 0;  // 0: none
    size_t distance = 0;
  };

  static constexpr int kHashBits = 15;
  static constexpr size_t kNoPosition = SIZE_MAX;
  static constexpr size_t kTokensPerBlock = 16384;
  // A three-byte match that far back usually costs more bits than three literals.
  static constexpr size_t kTooFarForShortMatch = 4096;

  uint32_t hash_at(size_t pos) const {
    uint32_t key = uint32_t(data_[pos]) << 16 | uint32_t(data_[pos + 1]) << 8 | data_[pos + 2];
    return (key * 2654435761u) >> (32 - kHashBits);
  }

  void insert(size_t pos) {
    uint32_t hash = hash_at(pos);
    previous_[pos & (kWindowSize - 1)] = head_[hash];
    head_[hash] = pos;
  }

  void insert_range(size_t first, size_t end, size_t match_length) {
    if (match_length > params_.max_insert) return;
    for (size_t pos = first; pos < end && size_ - pos >= kMinMatch; ++pos) insert(pos);
  }

  static size_t common_length(const uint8_t* a, const uint8_t* b, size_t max_length) {
    size_t n = 0;
    while (max_length - n >= 8) {
      uint64_t difference = load64_le(a + n) ^ load64_le(b + n);
      if (difference != 0) return n + size_t(__builtin_ctzll(difference)) / 8;
      n += 8;
    }
    while (n < max_length && a[n] == b[n]) n++;
    return n;
  }

  // Longest match for pos that is longer than better_than, or none.
  Match find_match(size_t pos, size_t better_than, int max_chain) const {
    Match best;
    const size_t max_length = std::min(kMaxMatch, size_ - pos);
    if (better_than >= max_length) return best;
    const size_t oldest = pos > kWindowSize ? pos - kWindowSize : 0;
    size_t best_length = better_than;
    size_t candidate = head_[hash_at(pos)];
    const uint8_t* here = data_ + pos;
    for (int chain = max_chain; chain > 0 && candidate != kNoPosition && candidate >= oldest; --chain) {
      const uint8_t* there = data_ + candidate;
      // Checking the byte that would make the match longer first rejects most candidates in one compare.
      if (there[best_length] == here[best_length] && there[0] == here[0]) {
        size_t length = common_length(there, here, max_length);
        if (length > best_length && !(length == kMinMatch && pos - candidate > kTooFarForShortMatch)) {
          best_length = length;
          best.length = length;
          best.distance = pos - candidate;
          if (length >= params_.nice_length || length == max_length) break;
        }
      }
      size_t next = previous_[candidate & (kWindowSize - 1)];
      if (next == kNoPosition || next >= candidate) break;
      candidate = next;
    }
    return best;
  }

  void add_literal(uint8_t byte) {
    tokens_.push_back(byte);
    literal_frequencies_[byte]++;
  }

  void add_match(const Match& match) {
    tokens_.push_back(uint32_t(match.distance) << 16 | uint32_t(match.length));
    literal_frequencies_[257 + length_symbol(match.length)]++;
    distance_frequencies_[distance_symbol(match.distance)]++;
  }

  // Writes the tokens gathered since the last block as whichever of dynamic, fixed or stored is smallest.
  void flush_block(size_t raw_end, bool is_final) {
    literal_frequencies_[kEndOfBlock] = 1;
    uint8_t literal_lengths[kLiteralLengthSymbols];
    uint8_t distance_lengths[kDistanceSymbols];
    build_limited_huffman_lengths(literal_frequencies_, kLiteralLengthSymbols, kMaxCodeLength, literal_lengths);
    build_limited_huffman_lengths(distance_frequencies_, kDistanceSymbols, kMaxCodeLength, distance_lengths);
    make_code_complete(literal_lengths, kLiteralLengthSymbols, 2);
    make_code_complete(distance_lengths, kDistanceSymbols, 2);

    int literal_count = kLiteralLengthSymbols;
    while (literal_count > 257 && literal_lengths[literal_count - 1] == 0) literal_count--;
    int distance_count = kDistanceSymbols;
    while (distance_count > 1 && distance_lengths[distance_count - 1] == 0) distance_count--;

    // Run-length code the concatenated lengths with symbols 16 (repeat previous), 17 and 18 (runs of zeros).
    std::vector<uint8_t> all_lengths(literal_lengths, literal_lengths + literal_count);
    all_lengths.insert(all_lengths.end(), distance_lengths, distance_lengths + distance_count);
    struct LengthOp {
      uint8_t symbol;
      uint8_t extra;
    };
    std::vector<LengthOp> ops;
    for (size_t i = 0; i < all_lengths.size();) {
      uint8_t value = all_lengths[i];
      size_t run = 1;
      while (i + run < all_lengths.size() && all_lengths[i + run] == value) run++;
      i += run;
      if (value == 0) {
        while (run >= 11) {
          size_t n = std::min<size_t>(run, 138);
          ops.push_back({18, uint8_t(n - 11)});
          run -= n;
        }
        if (run >= 3) {
          ops.push_back({17, uint8_t(run - 3)});
          run = 0;
        }
      } else {
        ops.push_back({value, 0});
        run--;
        while (run >= 3) {
          size_t n = std::min<size_t>(run, 6);
          ops.push_back({16, uint8_t(n - 3)});
          run -= n;
        }
      }
      for (; run > 0; --run) ops.push_back({value, 0});
    }
    uint32_t code_length_frequencies[kCodeLengthSymbols] = {};
    for (const LengthOp& op : ops) code_length_frequencies[op.symbol]++;
    uint8_t code_length_lengths[kCodeLengthSymbols];
    build_limited_huffman_lengths(code_length_frequencies, kCodeLengthSymbols, kMaxCodeLengthCodeLength,
                                  code_length_lengths);
    make_code_complete(code_length_lengths, kCodeLengthSymbols, 2);
    int code_length_count = kCodeLengthSymbols;
    while (code_length_count > 4 && code_length_lengths[kCodeLengthOrder[code_length_count - 1]] == 0)
      code_length_count--;

    // Sizes in bits of the three encodings.
    uint64_t extra_bits = 0, dynamic_bits = 0, fixed_bits = 0;
    for (int s = 0; s < kLiteralLengthSymbols; ++s) {
      uint64_t f = literal_frequencies_[s];
      dynamic_bits += f * literal_lengths[s];
      fixed_bits += f * (s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8);
      if (s > kEndOfBlock) extra_bits += f * kLengthExtraBits[s - 257];
    }
    for (int s = 0; s < kDistanceSymbols; ++s) {
      uint64_t f = distance_frequencies_[s];
      dynamic_bits += f * distance_lengths[s];
      fixed_bits += f * 5;
      extra_bits += f * kDistanceExtraBits[s];
    }
    dynamic_bits += 3 + 5 + 5 + 4 + 3 * uint64_t(code_length_count);
    for (const LengthOp& op : ops)
      dynamic_bits += code_length_lengths[op.symbol] + (op.symbol == 16   ? 2
                                                        : op.symbol == 17 ? 3
                                                        : op.symbol == 18 ? 7
                                                                          : 0);
    dynamic_bits += extra_bits;
    fixed_bits += 3 + extra_bits;
    const size_t raw_size = raw_end - block_start_;
    // Stored blocks: a 3-bit header padded to a byte boundary and two 16-bit lengths per 64 KiB chunk. Only the
    // first chunk's padding depends on where the bit stream stands; later ones start aligned (3 + 5 bits).
    uint64_t stored_chunks = std::max<uint64_t>(1, (raw_size + kMaxStoredBlock - 1) / kMaxStoredBlock);
    uint64_t first_padding = (8 - (writer_.pending_bits() + 3) % 8) % 8;
    uint64_t stored_bits = first_padding + (stored_chunks - 1) * 5 + stored_chunks * (3 + 32) + uint64_t(raw_size) * 8;

    if (stored_bits < std::min(dynamic_bits, fixed_bits)) {
      write_stored_blocks(&writer_, data_ + block_start_, raw_size, is_final);
    } else if (fixed_bits <= dynamic_bits) {
      writer_.put(is_final ? 1 : 0, 1);
      writer_.put(1, 2);
      uint8_t fixed_literal[288];
      std::fill(fixed_literal, fixed_literal + 144, 8);
      std::fill(fixed_literal + 144, fixed_literal + 256, 9);
      std::fill(fixed_literal + 256, fixed_literal + 280, 7);
      std::fill(fixed_literal + 280, fixed_literal + 288, 8);
      uint8_t fixed_distance[kDistanceSymbols];
      std::fill(fixed_distance, fixed_distance + kDistanceSymbols, 5);
      write_tokens(fixed_literal, 288, fixed_distance);
    } else {
      writer_.put(is_final ? 1 : 0, 1);
      writer_.put(2, 2);
      writer_.put(uint32_t(literal_count - 257), 5);
      writer_.put(uint32_t(distance_count - 1), 5);
      writer_.put(uint32_t(code_length_count - 4), 4);
      for (int i = 0; i < code_length_count; ++i) writer_.put(code_length_lengths[kCodeLengthOrder[i]], 3);
      uint16_t code_length_codes[kCodeLengthSymbols];
      assign_codes(code_length_lengths, kCodeLengthSymbols, code_length_codes);
      for (const LengthOp& op : ops) {
        writer_.put(code_length_codes[op.symbol], code_length_lengths[op.symbol]);
        if (op.symbol == 16) writer_.put(op.extra, 2);
        if (op.symbol == 17) writer_.put(op.extra, 3);
        if (op.symbol == 18) writer_.put(op.extra, 7);
      }
      write_tokens(literal_lengths, kLiteralLengthSymbols, distance_lengths);
    }

    tokens_.clear();
    std::fill(std::begin(literal_frequencies_), std::end(literal_frequencies_), 0);
    std::fill(std::begin(distance_frequencies_), std::end(distance_frequencies_), 0);
    block_start_ = raw_end;
  }

  void write_tokens(const uint8_t* literal_lengths, int literal_symbols, const uint8_t* distance_lengths) {
    uint16_t literal_codes[288];
    uint16_t distance_codes[kDistanceSymbols];
    assign_codes(literal_lengths, literal_symbols, literal_codes);
    assign_codes(distance_lengths, kDistanceSymbols, distance_codes);
    for (uint32_t token : tokens_) {
      uint32_t distance = token >> 16;
      if (distance == 0) {
        writer_.put(literal_codes[token], literal_lengths[token]);
        continue;
      }
      size_t length = token & 0xFFFF;
      int symbol = length_symbol(length);
      writer_.put(literal_codes[257 + symbol], literal_lengths[257 + symbol]);
      writer_.put(uint32_t(length - kLengthBase[symbol]), kLengthExtraBits[symbol]);
      int dsymbol = distance_symbol(distance);
      writer_.put(distance_codes[dsymbol], distance_lengths[dsymbol]);
      writer_.put(distance - kDistanceBase[dsymbol], kDistanceExtraBits[dsymbol]);
    }
    writer_.put(literal_codes[kEndOfBlock], literal_lengths[kEndOfBlock]);
  }

  const uint8_t* data_;
  size_t size_;
  LevelParameters params_;
  BitWriter writer_;
  std::vector<size_t> head_;      // most recent position with each hash
  std::vector<size_t> previous_;  // previous position with the same hash, indexed by position mod window
  std::vector<uint32_t> tokens_;  // literal byte, or distance << 16 | length
  uint32_t literal_frequencies_[kLiteralLengthSymbols] = {};
  uint32_t distance_frequencies_[kDistanceSymbols] = {};
  size_t block_start_ = 0;
};

}  // namespace

// ------------------------------------------------------------------------------------------------------------------
// Public entry points.

Status inflate_raw(const uint8_t* data, size_t size, size_t max_output, std::vector<uint8_t>* out, size_t* consumed) {
  out->clear();
  Inflater inflater(data, size, out, max_output, false);
  DDPM_TRY(inflater.run());
  if (consumed != nullptr) {
    *consumed = inflater.consumed();
  } else if (inflater.consumed() != size) {
    return errorf("deflate: %zu bytes of trailing data after the final block", size - inflater.consumed());
  }
  return Status();
}

Status zlib_decompress(const uint8_t* data, size_t size, size_t max_output, std::vector<uint8_t>* out,
                       size_t* consumed) {
  out->clear();
  if (size < 2) return errorf("zlib: truncated header (%zu bytes)", size);
  uint8_t method = data[0], flags = data[1];
  if ((method & 0x0F) != 8) return errorf("zlib: unsupported compression method %u", method & 0x0F);
  if ((method >> 4) > 7) return errorf("zlib: invalid window size code %u", method >> 4);
  if ((uint32_t(method) << 8 | flags) % 31 != 0) return errorf("zlib: header check bits are wrong");
  if (flags & 0x20) return errorf("zlib: preset dictionaries are not supported");
  Inflater inflater(data + 2, size - 2, out, max_output, false);
  DDPM_TRY(inflater.run());
  size_t end = 2 + inflater.consumed();
  if (size - end < 4) return errorf("zlib: truncated (missing Adler-32 checksum)");
  uint32_t stored = load32_be(data + end);
  uint32_t actual = adler32(out->data(), out->size());
  if (stored != actual) return errorf("zlib: Adler-32 mismatch (stored %08x, computed %08x)", stored, actual);
  end += 4;
  if (consumed != nullptr) {
    *consumed = end;
  } else if (end != size) {
    return errorf("zlib: %zu bytes of trailing data after the stream", size - end);
  }
  return Status();
}

Status gzip_decompress(const uint8_t* data, size_t size, size_t max_output, std::vector<uint8_t>* out) {
  return gzip_decode(data, size, max_output, false, out);
}

Status gzip_decompress_prefix(const uint8_t* data, size_t size, size_t prefix_size, std::vector<uint8_t>* out) {
  return gzip_decode(data, size, prefix_size, true, out);
}

bool looks_like_gzip(const uint8_t* data, size_t size) { return size >= 2 && data[0] == 0x1F && data[1] == 0x8B; }

std::vector<uint8_t> deflate_raw(const uint8_t* data, size_t size, CompressionLevel level) {
  std::vector<uint8_t> out;
  if (level == CompressionLevel::Store) {
    BitWriter writer(&out);
    write_stored_blocks(&writer, data, size, true);
    return out;
  }
  out.reserve(size / 2 + 64);
  Compressor(data, size, level, &out).run();
  return out;
}

std::vector<uint8_t> zlib_compress(const uint8_t* data, size_t size, CompressionLevel level) {
  uint8_t method = 0x78;  // DEFLATE with a 32 KiB window
  uint8_t level_hint = level == CompressionLevel::Store  ? 0
                       : level == CompressionLevel::Fast ? 1
                       : level == CompressionLevel::Best ? 3
                                                         : 2;
  uint8_t flags = uint8_t(level_hint << 6);
  flags |= uint8_t((31 - (uint32_t(method) << 8 | flags) % 31) % 31);
  std::vector<uint8_t> body = deflate_raw(data, size, level);
  std::vector<uint8_t> out;
  out.reserve(body.size() + 6);
  out.push_back(method);
  out.push_back(flags);
  out.insert(out.end(), body.begin(), body.end());
  append32_be(&out, adler32(data, size));
  return out;
}

std::vector<uint8_t> gzip_compress(const uint8_t* data, size_t size, CompressionLevel level) {
  // No name and no time stamp: identical input gives identical output. OS 255 is "unknown".
  std::vector<uint8_t> out = {0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 255};
  std::vector<uint8_t> body = deflate_raw(data, size, level);
  out.insert(out.end(), body.begin(), body.end());
  append32_le(&out, crc32(data, size));
  append32_le(&out, uint32_t(size));
  return out;
}

}  // namespace ddpm
