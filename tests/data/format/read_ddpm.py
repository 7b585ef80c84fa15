#!/usr/bin/env python3
"""An independent .ddpm reader written from docs/FORMAT.md alone (standard library only).

It exists to show that the document is complete enough to implement the format in another language, and to
cross-check the C++ writer:  python3 read_ddpm.py FILE [--dump]
It prints the header, metadata and tensor table, and verifies both kinds of checksum. Exit status 0 = valid.
"""
import struct
import sys

TYPE_NAMES = ["u8", "i32", "u32", "i64", "u64", "f32", "f64", "bool", "string", "array"]
SCALAR_FORMATS = {0: "<B", 1: "<i", 2: "<I", 3: "<q", 4: "<Q", 5: "<f", 6: "<d", 7: "<B"}
DTYPES = {0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("i32", 1, 4),  # code: (name, block size, block bytes)
          3: ("q8_0", 32, 34), 4: ("q4_0", 32, 18), 5: ("q4_1", 32, 20), 6: ("q5_0", 32, 22)}


def dequantize(dtype, payload):
    """Values of a block-type tensor's blocks (§6.2-6.5), row padding included."""
    block_bytes = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22}[dtype]
    values = []
    for at in range(0, len(payload), block_bytes):
        b = payload[at:at + block_bytes]
        d = struct.unpack("<e", b[0:2])[0]
        if dtype == "q8_0":
            values += [d * q for q in struct.unpack("<32b", b[2:34])]
            continue
        qs = b[{"q4_0": 2, "q4_1": 4, "q5_0": 6}[dtype]:]
        n = [x & 15 for x in qs] + [x >> 4 for x in qs]
        if dtype == "q4_0":
            values += [d * (v - 8) for v in n]
        elif dtype == "q4_1":
            m = struct.unpack("<e", b[2:4])[0]
            values += [d * v + m for v in n]
        else:
            qh = struct.unpack("<I", b[2:6])[0]
            values += [d * ((v | ((qh >> i) & 1) << 4) - 16) for i, v in enumerate(n)]
    return values


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


class Reader:
    def __init__(self, data, pos, end):
        self.data, self.pos, self.end = data, pos, end

    def take(self, n):
        if n > self.end - self.pos:
            raise ValueError("runs past the end of its section at offset %d" % self.pos)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]


def read_value(r, type_code):
    if type_code in SCALAR_FORMATS:
        value = r.unpack(SCALAR_FORMATS[type_code])
        if type_code == 7:
            if value > 1:
                raise ValueError("bool value %d" % value)
            value = bool(value)
        return value
    if type_code == 8:
        return r.take(r.unpack("<Q")).decode("utf-8", "replace")
    if type_code == 9:
        element, count = r.unpack("<B"), r.unpack("<Q")
        if element > 8:
            raise ValueError("array element type %d" % element)
        return [read_value(r, element) for _ in range(count)]
    raise ValueError("unknown value type %d" % type_code)


def read(path):
    data = open(path, "rb").read()
    if data[:4] != b"DDPM":
        raise ValueError("not a .ddpm file")
    if len(data) < 64:
        raise ValueError("truncated file header")
    version, flags, checksum = struct.unpack_from("<III", data, 4)
    m_count, m_bytes, t_count, t_bytes, data_offset, data_bytes = struct.unpack_from("<6Q", data, 16)
    if version != 1:
        raise ValueError("format version %d" % version)
    if flags & 0xFFFE:  # bit 0: tap-major block conv rows (FORMAT.md §6.8), which this reader passes through
        raise ValueError("unknown required flags 0x%04x" % (flags & 0xFFFE))
    header_end = 64 + m_bytes + t_bytes
    if data_offset != (header_end + 63) // 64 * 64 or data_offset + data_bytes != len(data):
        raise ValueError("section sizes do not match the file")
    computed = crc32c(data[:12] + b"\0\0\0\0" + data[16:data_offset])
    if computed != checksum:
        raise ValueError("header checksum 0x%08x != 0x%08x" % (checksum, computed))
    if any(data[header_end:data_offset]):
        raise ValueError("nonzero padding")

    metadata = {}
    r = Reader(data, 64, 64 + m_bytes)
    previous = None
    for _ in range(m_count):
        key = r.take(r.unpack("<H")).decode("ascii")
        if previous is not None and key.encode() <= previous.encode():
            raise ValueError("keys not strictly ascending at %r" % key)
        type_code = r.unpack("<B")
        metadata[key] = (type_code, read_value(r, type_code))
        previous = key
    if r.pos != r.end:
        raise ValueError("metadata section has trailing bytes")
    if "ddpm.architecture" not in metadata:
        raise ValueError("missing ddpm.architecture")

    tensors = []
    r = Reader(data, 64 + m_bytes, header_end)
    for _ in range(t_count):
        name_length, dtype, rank, crc = struct.unpack("<HBBI", r.take(8))
        dims = struct.unpack("<4Q", r.take(32))
        offset, nbytes = struct.unpack("<QQ", r.take(16))
        name = r.take(name_length).decode("ascii")
        name_, block, block_bytes = DTYPES[dtype]
        if not 1 <= rank <= 4 or any(dims[rank:]) or not all(dims[:rank]):
            raise ValueError("bad shape for %s" % name)
        numel = 1
        for d in dims[:rank]:
            numel *= d
        rows = dims[0] if rank >= 2 else 1  # block types: rows padded to whole blocks (§6.1)
        if nbytes != rows * -(-(numel // rows) // block) * block_bytes:
            raise ValueError("byte size of %s" % name)
        if offset % 64 or offset + nbytes > data_bytes:
            raise ValueError("offset of %s" % name)
        payload = data[data_offset + offset:data_offset + offset + nbytes]
        if crc32c(payload) != crc:
            raise ValueError("data checksum of %s" % name)
        tensors.append((name, name_, list(dims[:rank]), offset, nbytes, crc, payload))
    if r.pos != r.end:
        raise ValueError("tensor table has trailing bytes")
    spans = sorted((t[3], t[3] + t[4]) for t in tensors)
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ValueError("overlapping tensors")
    if (spans[-1][1] if spans else 0) != data_bytes:
        raise ValueError("data section size")
    return (version, flags, checksum, data_offset), metadata, tensors


def main():
    header, metadata, tensors = read(sys.argv[1])
    print("version %d, flags 0x%08x, header crc32c 0x%08x, data at %d" % header)
    for key, (type_code, value) in metadata.items():
        print("  %-24s %-6s %r" % (key, TYPE_NAMES[type_code], value))
    for name, dtype, dims, offset, nbytes, crc, payload in tensors:
        print("  %-24s %-4s %-16s offset %-8d bytes %-8d crc32c 0x%08x" % (name, dtype, dims, offset, nbytes, crc))
        if "--dump" in sys.argv and dtype == "f32":
            print("    ", struct.unpack("<%df" % (nbytes // 4), payload))
        if "--dump" in sys.argv and dtype.startswith("q"):
            # FORMAT.md §6.8: with flag bit 0, a rank-4 block tensor with dims[1] % 32 == 0 and dims[2]·dims[3] > 1
            # holds each row in (kh, kw, in) order; the values are printed as stored.
            tap_major = header[1] & 1 and len(dims) == 4 and dims[1] % 32 == 0 and dims[2] * dims[3] > 1
            print("    ", "(rows tap-major)" if tap_major else "", dequantize(dtype, payload))


if __name__ == "__main__":
    main()
