#!/usr/bin/env python3
"""Writes the trainer's data fixtures with Python's zlib/struct only (an encoder independent of ours).

png/          class folders: "boot" (2 images: 8x8 gray, 8x8 RGB) and "shirt" (1 image: 16x8 gray+alpha)
mixed/        unlabelled: 8x8 and 6x6 gray (mixed sizes: an error when resizing is off)
both/         a PNG next to a class folder (an error)
images.idx    5 images 4x4 (u8, raw IDX);  images.idx.gz the same, gzipped
labels5.idx   5 labels 0..2;  labels4.idx 4 labels (count mismatch)
"""
import gzip, os, struct, zlib

here = os.path.dirname(os.path.abspath(__file__))

def png(path, width, height, channels, pixels):
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + bytes(pixels[y * width * channels:(y + 1) * width * channels]) for y in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

def idx(path, dims, values, compress=False):
    data = struct.pack(">BBBB", 0, 0, 8, len(dims)) + b"".join(struct.pack(">I", d) for d in dims) + bytes(values)
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(data)

# png/boot/a.png: gray ramp 0, 4, 8, ... (row-major)
png(f"{here}/png/boot/a.png", 8, 8, 1, [4 * i for i in range(64)])
# png/boot/b.png: RGB, red = 200, green = 100, blue = 50 everywhere (luma (200*299+100*587+50*114+500)//1000 = 124)
png(f"{here}/png/boot/b.png", 8, 8, 3, [200, 100, 50] * 64)
# png/shirt/c.png: 16x8 gray+alpha: left half 0, right half 255 (gray), alpha 255
png(f"{here}/png/shirt/c.png", 16, 8, 2, sum(([0 if x < 8 else 255, 255] for y in range(8) for x in range(16)), []))
png(f"{here}/mixed/a.png", 8, 8, 1, [10] * 64)
png(f"{here}/mixed/b.png", 6, 6, 1, [20] * 36)
png(f"{here}/both/loose.png", 8, 8, 1, [0] * 64)
png(f"{here}/both/class/x.png", 8, 8, 1, [0] * 64)
images = [(17 * n + i) % 256 for n in range(5) for i in range(16)]
idx(f"{here}/images.idx", [5, 4, 4], images)
idx(f"{here}/images.idx.gz", [5, 4, 4], images, compress=True)
idx(f"{here}/labels5.idx", [5], [0, 2, 1, 2, 0])
idx(f"{here}/labels4.idx", [4], [0, 1, 1, 0])
