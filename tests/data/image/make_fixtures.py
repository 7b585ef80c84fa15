#!/usr/bin/env python3
"""Writes the fixtures for tests/test_image.cpp with Python's zlib and a tiny PNG writer of its own, so that the
C++ decoders are checked against an independent encoder. Run from this directory; the outputs are committed, the
tests never run Python. Pixel values follow formulas that the C++ test recomputes (keep the two in step)."""

import gzip
import struct
import zlib


def write(name, data):
    with open(name, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------------------------
# Compressed streams.

text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * i % 97}\n" for i in range(200)).encode()
write("text.txt", text)
write("text.zlib", zlib.compress(text, 9))  # dynamic Huffman blocks
write("text_stored.zlib", zlib.compress(text, 0))  # stored blocks
write("text_level1.zlib", zlib.compress(text, 1))
c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_FIXED)
write("text_fixed.zlib", c.compress(text) + c.flush())  # fixed Huffman blocks with matches
c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
write("text_rle.zlib", c.compress(text) + c.flush())  # distance-1 matches only
write("hello.zlib", zlib.compress(b"hello, hello, hello world"))

# A gzip member with every optional header field: FEXTRA, FNAME, FCOMMENT and FHCRC.
raw = zlib.compressobj(6, zlib.DEFLATED, -15)
body = raw.compress(text) + raw.flush()
header = bytearray(b"\x1f\x8b\x08" + bytes([4 | 8 | 16 | 2]) + struct.pack("<I", 1234567890) + b"\x00\x03")
header += struct.pack("<H", 6) + b"AB\x02\x00xy"  # one extra subfield: id "AB", 2 bytes
header += b"text.txt\x00" + b"a comment\x00"
header += struct.pack("<H", zlib.crc32(bytes(header)) & 0xFFFF)
write("text_allflags.gz", bytes(header) + body + struct.pack("<II", zlib.crc32(text), len(text)))

write("multi.gz", gzip.compress(b"first member\n", mtime=0) + gzip.compress(b"second member\n", mtime=0))

# ---------------------------------------------------------------------------------------------------------------
# PNGs.


def sample(x, y, c, modulus):
    return (x * 7 + y * 13 + c * 29 + x * y) % modulus


def sample16(x, y, c):
    return (x * 4099 + y * 3331 + c * 7919 + x * y * 31) % 65536


def palette_entry(i):
    return bytes([i * 37 % 256, i * 91 % 256, i * 13 % 256])


def palette_alpha(i):
    return i * 50 % 256


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def filter_row(kind, row, prev, bpp):
    out = bytearray()
    for i, v in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]
        out.append((v - pred) % 256)
    return out


def pack_row(values, depth):
    """Packs sample values (already in file order) at the given bit depth."""
    if depth == 8:
        return bytearray(values)
    if depth == 16:
        return bytearray(b"".join(struct.pack(">H", v) for v in values))
    out, acc, bits = bytearray(), 0, 0
    for v in values:
        acc = (acc << depth) | v
        bits += depth
        if bits == 8:
            out.append(acc)
            acc, bits = 0, 0
    if bits:
        out.append(acc << (8 - bits))
    return out


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png(name, width, height, depth, color_type, pixel, interlaced=False, plte=None, trns=None, extra_chunks=(),
        idat_pieces=1):
    """pixel(x, y) returns the sample values of one pixel. Filters cycle through all five types row by row."""
    channels = CHANNELS[color_type]
    bpp = max(1, channels * depth // 8)
    passes = ADAM7 if interlaced else [(0, 0, 1, 1)]
    raw = bytearray()
    row_number = 0
    for x0, y0, dx, dy in passes:
        xs = list(range(x0, width, dx))
        ys = list(range(y0, height, dy))
        if not xs or not ys:
            continue
        prev = bytearray(len(pack_row([0] * (len(xs) * channels), depth)))
        for y in ys:
            row = pack_row([v for x in xs for v in pixel(x, y)], depth)
            kind = row_number % 5
            row_number += 1
            raw.append(kind)
            raw += filter_row(kind, row, prev, bpp)
            prev = row
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 1 if interlaced else 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    for kind, data in extra_chunks:
        out += chunk(kind, data)
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    compressed = zlib.compress(bytes(raw), 9)
    step = (len(compressed) + idat_pieces - 1) // idat_pieces
    for start in range(0, len(compressed), step):
        out += chunk(b"IDAT", compressed[start:start + step])
    out += chunk(b"IEND", b"")
    write(name, out)


for depth in (1, 2, 4, 8):
    png(f"gray{depth}.png", 13, 7, depth, 0, lambda x, y, d=depth: [sample(x, y, 0, 1 << d)])
png("gray16.png", 13, 7, 16, 0, lambda x, y: [sample16(x, y, 0)])
png("rgb16.png", 9, 5, 16, 2, lambda x, y: [sample16(x, y, c) for c in range(3)])
png("rgba16.png", 9, 5, 16, 6, lambda x, y: [sample16(x, y, c) for c in range(4)])
png("ga8.png", 9, 5, 8, 4, lambda x, y: [sample(x, y, c, 256) for c in range(2)])
png("rgb8.png", 9, 5, 8, 2, lambda x, y: [sample(x, y, c, 256) for c in range(3)])
png("rgba8.png", 9, 5, 8, 6, lambda x, y: [sample(x, y, c, 256) for c in range(4)])
png("palette1.png", 11, 6, 1, 3, lambda x, y: [sample(x, y, 0, 2)], plte=b"".join(palette_entry(i) for i in range(2)))
png("palette4_trns.png", 11, 6, 4, 3, lambda x, y: [sample(x, y, 0, 16)],
    plte=b"".join(palette_entry(i) for i in range(16)), trns=bytes(palette_alpha(i) for i in range(5)))
png("palette8.png", 11, 6, 8, 3, lambda x, y: [sample(x, y, 0, 200)],
    plte=b"".join(palette_entry(i) for i in range(200)))
# Colour keys: gray value 20 and RGB (sample values of pixel (1, 1)) become transparent.
png("gray8_trns.png", 13, 7, 8, 0, lambda x, y: [sample(x, y, 0, 64)], trns=struct.pack(">H", 20))
png("rgb8_trns.png", 9, 5, 8, 2, lambda x, y: [sample(x, y, c, 4) for c in range(3)],
    trns=struct.pack(">HHH", *[sample(1, 1, c, 4) for c in range(3)]))
png("interlaced_rgb8.png", 19, 11, 8, 2, lambda x, y: [sample(x, y, c, 256) for c in range(3)], interlaced=True)
png("interlaced_gray2.png", 10, 9, 2, 0, lambda x, y: [sample(x, y, 0, 4)], interlaced=True)
png("interlaced_rgba16.png", 7, 7, 16, 6, lambda x, y: [sample16(x, y, c) for c in range(4)], interlaced=True)
png("interlaced_1x1.png", 1, 1, 8, 0, lambda x, y: [sample(x, y, 0, 256)], interlaced=True)
png("text.png", 5, 4, 8, 2, lambda x, y: [sample(x, y, c, 256) for c in range(3)], idat_pieces=3,
    extra_chunks=[(b"gAMA", struct.pack(">I", 45455)), (b"tEXt", b"Title\x00a small test"),
                  (b"zTXt", b"Comment\x00\x00" + zlib.compress(b"compressed comment text"))])
