#!/usr/bin/env python3
"""Writes the fuzz seed corpora tests/fuzz/corpus/<target>/: copies of the small test fixtures (tests/data/**,
hostile files included) and generated files no fixture covers (gen_*: safetensors files, JSON documents, bare
pickles, IDX arrays). Standard library only and deterministic, so running it again changes nothing. The .ddpm seeds
are made by `ddpm convert` (see the end). Crash inputs found by fuzzing are added by hand as crash_*."""
import gzip
import json
import os
import pickle
import struct
import zipfile
import io
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "gen_" + name), "wb") as f:
        f.write(data)


# ---- safetensors: valid files of every dtype, metadata, empty tensors; and the classic hostile shapes.
def safetensors(header, data, declared=None):
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    n = len(raw) if declared is None else declared
    return struct.pack("<Q", n) + raw + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


put("safetensors", "all_dtypes.safetensors", safetensors({
    "__metadata__": {"format": "pt", "note": "fuzz seed"},
    "f64": entry("F64", [2], 0, 16),
    "i64": entry("I64", [1, 2], 16, 32),
    "f32": entry("F32", [2, 2], 32, 48),
    "i32": entry("I32", [1], 48, 52),
    "f16": entry("F16", [2], 52, 56),
    "bf16": entry("BF16", [2], 56, 60),
    "i16": entry("I16", [1], 60, 62),
    "i8": entry("I8", [1], 62, 63),
    "u8": entry("U8", [1], 63, 64),
    "bool": entry("BOOL", [1, 1, 1, 1], 64, 65),
    "scalar": entry("F32", [], 65, 69),
    "empty": entry("F32", [3, 0], 69, 69),
}, struct.pack("<2d2q4fi", 1.5, -2.0, 7, -8, 0.1, 0.2, 0.3, 0.4, 9) + b"\x00\x3c\x00\xc0\x80\x3f\x00\x40"
   + b"\x01\x00\xff\x07\x01" + struct.pack("<f", 3.0)))
put("safetensors", "conv.safetensors", safetensors({
    "conv_in.weight": entry("F32", [2, 1, 3, 3], 0, 72), "conv_in.bias": entry("F32", [2], 72, 80)},
    bytes(range(80))))
put("safetensors", "empty_header.safetensors", safetensors("{}", b""))
put("safetensors", "overlap.safetensors", safetensors({
    "a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, bytes(12)))
put("safetensors", "hole.safetensors", safetensors({
    "a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, bytes(12)))
put("safetensors", "past_end.safetensors", safetensors({"a": entry("F32", [4], 0, 16)}, bytes(8)))
put("safetensors", "shape_mismatch.safetensors", safetensors({"a": entry("F16", [3], 0, 8)}, bytes(8)))
put("safetensors", "huge_shape.safetensors", safetensors(
    '{"w":{"dtype":"F32","shape":[9223372036854775807,2],"data_offsets":[0,8]}}', bytes(8)))
put("safetensors", "huge_header_len.safetensors", safetensors({"a": entry("F32", [1], 0, 4)}, bytes(4), 1 << 40))
put("safetensors", "bad_json.safetensors", safetensors('{"a":{"dtype":"F32",,}}', b""))
put("safetensors", "duplicate.safetensors", safetensors(
    '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
    bytes(8)))
# Plain JSON documents for the parser on its own.
put("safetensors", "doc.json", json.dumps({
    "_class_name": "UNet2DModel", "sample_size": 32, "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "norm_eps": 1e-06, "dropout": 0.0,
    "flip_sin_to_cos": False, "class_embed_type": None, "big": 18446744073709551615, "neg": -9223372036854775808,
    "esc": "\"\\/\b\f\n\r\t\u00e9\ud83d\ude00", "nested": [[[{}]]], "exp": [1E+2, -0.5e-3, 0e0]}, indent=1).encode())
put("safetensors", "bom.json", b"\xef\xbb\xbf [1, 2.5, true, false, null, \"\\u0041\"] ")
put("safetensors", "deep.json", b"[" * 70 + b"]" * 70)
put("safetensors", "bad_utf8.json", b'["\xc3\x28", "\xed\xa0\x80"]')

# ---- pickles on their own (the machine without a container): protocols 2-5, the tensor rebuild path, OrderedDict
# with _metadata, memo use, and refusals.
def proto(p, body):
    return b"\x80" + bytes([p]) + body + b"."


# The object pickles of the torch.save fixtures, taken out of their archives: real _rebuild_tensor_v2 calls,
# OrderedDicts with _metadata, views and shared storages, protocols 2, 4 and 5.
FIXTURES = os.path.join(HERE, "..", "data", "pickle")
for name in ("views.pt", "views_protocol4.pt", "views_protocol5.pt", "lightning.ckpt", "ema.pt", "big_endian.pt"):
    with zipfile.ZipFile(os.path.join(FIXTURES, name)) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        put("pickle", name.replace(".", "_") + ".pkl", z.read(pkl))
# A zip laid out the way torch.save writes one, with an empty pickle.
def torch_zip(pkl, storages):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", b"little")
        for key, data in storages.items():
            z.writestr("archive/data/" + key, data)
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


put("zip", "empty.zip", torch_zip(b"", {}))

# ---- IDX for the image target, raw and gzip-compressed.
idx = b"\x00\x00\x08\x03" + struct.pack(">III", 2, 3, 4) + bytes(range(24))
put("image", "u8.idx", idx)
put("image", "u8.idx.gz", gzip.compress(idx, mtime=0))
put("image", "empty.idx", b"\x00\x00\x08\x02" + struct.pack(">II", 0, 5))

# ---- Fixtures, copied. Big ones (the 100-200 KB nesting bombs, the micro models) stay out: the corpus is kept small
# and libFuzzer truncates inputs to -max_len anyway.
DATA = os.path.join(HERE, "..", "data")


def copy(target, path, limit=20000):
    if os.path.getsize(path) > limit:
        return
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(path, os.path.join(d, os.path.basename(path)))


for name in sorted(os.listdir(os.path.join(DATA, "pickle"))):
    path = os.path.join(DATA, "pickle", name)
    if name.endswith((".pt", ".ckpt")):
        copy("pickle", path)
        copy("zip", path)
for name in sorted(os.listdir(os.path.join(DATA, "pickle", "hostile"))):
    path = os.path.join(DATA, "pickle", "hostile", name)
    copy("pickle", path)
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            copy("zip", path)
for name in sorted(os.listdir(os.path.join(DATA, "image"))):
    if not name.endswith((".py", ".txt")):
        copy("image", os.path.join(DATA, "image", name))
copy("safetensors", os.path.join(DATA, "io", "micro_config.json"))
for name in ("tiny.ddpm",):
    path = os.path.join(DATA, "format", name)
    if os.path.exists(path):
        copy("ddpm", path)
# The .ddpm seeds converted from the micro model (f16, about 100 KB, and f32 is too big) come from the CLI:
#   build/ddpm convert tests/data/unet/micro -o tests/fuzz/corpus/ddpm/micro_f16.ddpm --type f16
# corpus/pickle/original_ddpm_views.pt (kept, not generated here: it needs torch) holds the 144 tensor names of an
# original-DDPM (pesser) checkpoint with "model." prefix, each a zero-stride view of one 1-element storage, so the
# layout detection, renaming and config inference get exercised from a 15 KB file. Made with /usr/bin/python3:
#   state = {name: torch.zeros(1).expand(shape) for name, shape in <names and shapes of tests/test_convert.cpp's
#            write_original_layout("data/unet/tiny/...")>}; torch.save(OrderedDict(state), path)
