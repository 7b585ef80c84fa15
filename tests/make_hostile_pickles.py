#!/usr/bin/env python3
"""Writes the torch-checkpoint fixtures of tests/test_pickle.cpp into tests/data/pickle/.

Pure python3 standard library; torch is not needed. The outputs are committed, so the C++ tests never run this.

Well-formed fixtures are written by Python's own pickler, the one torch.save uses, with stand-in `torch` modules
registered in sys.modules: a stand-in tensor reduces to torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, OrderedDict()) exactly like torch.Tensor.__reduce_ex__, and persistent_id returns torch's
('storage', torch.<X>Storage, key, location, numel) tuples. So the bytes match what torch writes; the zip container
imitates PyTorchStreamWriter (stored records, 64-byte alignment through "FB" extra fields, data descriptors, zip64
end records). The legacy file follows torch/serialization.py's _legacy_save.

Hostile fixtures (hostile/*.bin) are written opcode by opcode. Payloads that would run a command run
`touch /tmp/ddpm_pwned`, so a test can check that nothing ran.

Usage: python3 tests/make_hostile_pickles.py   (from the repository root or from tests/)
"""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "pickle")
HOSTILE = os.path.join(OUT, "hostile")
PWN = "touch /tmp/ddpm_pwned"

# ---------------------------------------------------------------------------------------------------------------
# Stand-in torch modules, just enough for the pickler to find the globals torch's reducers name.

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch._utils = torch_utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _stand_in_function(module, name):
    def never_called(*args):
        raise RuntimeError("stand-in, never called")

    never_called.__module__ = module.__name__
    never_called.__name__ = never_called.__qualname__ = name
    setattr(module, name, never_called)
    return never_called


rebuild_tensor_v2 = _stand_in_function(torch_utils, "_rebuild_tensor_v2")
rebuild_tensor = _stand_in_function(torch_utils, "_rebuild_tensor")
rebuild_parameter = _stand_in_function(torch_utils, "_rebuild_parameter")

STORAGE_TYPES = {}
for _name, _fmt in [("FloatStorage", "f"), ("DoubleStorage", "d"), ("HalfStorage", "e"), ("BFloat16Storage", None),
                    ("LongStorage", "q"), ("IntStorage", "i"), ("ShortStorage", "h"), ("CharStorage", "b"),
                    ("ByteStorage", "B"), ("BoolStorage", "?"), ("ComplexFloatStorage", None)]:
    _cls = type(_name, (), {"__module__": "torch"})
    setattr(torch, _name, _cls)
    STORAGE_TYPES[_name] = (_cls, _fmt)


class device:  # torch.device reduces to torch.device(type, index)
    __module__ = "torch"

    def __init__(self, kind, index=None):
        self.args = (kind,) if index is None else (kind, index)

    def __reduce__(self):
        return (device, self.args)


torch.device = device


class dtype:  # torch.float32 pickles as the global `torch float32`
    __module__ = "torch"

    def __reduce__(self):
        return "float32"


torch.float32 = dtype()

ELEMENT_SIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
                "ComplexFloatStorage": 8}


def bf16_bytes(values, big_endian=False):
    out = b""
    for v in values:
        bits = struct.unpack("<I", struct.pack("<f", v))[0] >> 16  # values used here are exact in bf16
        out += struct.pack(">H" if big_endian else "<H", bits)
    return out


class Storage:
    def __init__(self, type_name, values, big_endian=False, location="cpu"):
        self.type_name = type_name
        self.numel = len(values)
        self.location = location
        fmt = STORAGE_TYPES[type_name][1]
        if type_name == "BFloat16Storage":
            self.data = bf16_bytes(values, big_endian)
        else:
            self.data = struct.pack((">" if big_endian else "<") + fmt * len(values), *values)


class Tensor:
    def __init__(self, storage, offset, size, stride, requires_grad=False):
        self.args = (storage, offset, tuple(size), tuple(stride), requires_grad)

    def __reduce_ex__(self, protocol):
        return (rebuild_tensor_v2, self.args + (collections.OrderedDict(),))


class OldTensor(Tensor):  # torch < 1.0 wrote _rebuild_tensor(storage, offset, size, stride)
    def __reduce_ex__(self, protocol):
        return (rebuild_tensor, self.args[:4])


class Parameter:
    def __init__(self, tensor, requires_grad=True):
        self.tensor, self.requires_grad = tensor, requires_grad

    def __reduce_ex__(self, protocol):
        return (rebuild_parameter, (self.tensor, self.requires_grad, collections.OrderedDict()))


def contiguous(storage, offset, size):
    stride, step = [], 1
    for s in reversed(size):
        stride.insert(0, step)
        step *= s
    return Tensor(storage, offset, size, stride)


class ZipPickler(pickle.Pickler):
    """torch.save's persistent_id: storage keys "0", "1", … in first-seen order."""

    def __init__(self, f, protocol):
        super().__init__(f, protocol)
        self.keys = {}
        self.storages = []

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        if id(obj) not in self.keys:
            self.keys[id(obj)] = str(len(self.keys))
            self.storages.append((self.keys[id(obj)], obj))
        return ("storage", STORAGE_TYPES[obj.type_name][0], self.keys[id(obj)], obj.location, obj.numel)


def torch_pickle(obj, protocol=2):
    buffer = io.BytesIO()
    pickler = ZipPickler(buffer, protocol)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.storages


# ---------------------------------------------------------------------------------------------------------------
# Zip writer in the manner of PyTorchStreamWriter (miniz).

def zip_bytes(records, comment=b"", zip64_extras=False):
    """records: list of dicts {name, data[, method, flags, raw]}; `raw` replaces the stored bytes (e.g. deflated)."""
    out = bytearray()
    central = []
    for record in records:
        name = record["name"].encode()
        data = record["data"]
        stored = record.get("raw", data)
        method = record.get("method", 0)
        flags = record.get("flags", 0x0808)
        offset = len(out)
        pad = (64 - (offset + 30 + len(name) + 4) % 64) % 64
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, flags, method, 0, 0, 0, 0, 0, len(name), len(extra))
        out += name + extra + stored
        crc = zlib.crc32(data)
        out += struct.pack("<IIII", 0x08074B50, crc, len(stored), len(data))
        central.append((name, offset, crc, len(stored), len(data), method, flags))
    cd_offset = len(out)
    for name, offset, crc, csize, usize, method, flags in central:
        extra = b""
        fields = (csize, usize, offset)
        if zip64_extras:  # sizes and offset moved into a zip64 extra field, as for files >= 4 GiB
            extra = struct.pack("<HHQQQ", 1, 24, usize, csize, offset)
            fields = (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, flags, method, 0, 0, crc, fields[0], fields[1],
                           len(name), len(extra), 0, 0, 0, 0, fields[2])
        out += name + extra
    cd_size = len(out) - cd_offset
    n = len(central)
    zip64_offset = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x31E, 45, 0, 0, n, n, cd_size, cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, zip64_offset, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, len(comment)) + comment
    return bytes(out)


def torch_zip(obj, prefix="archive", protocol=2, byteorder=None, comment=b"", zip64_extras=False,
              drop_keys=(), resize=None):
    data_pkl, storages = torch_pickle(obj, protocol)
    records = [{"name": prefix + "/data.pkl", "data": data_pkl}]
    if byteorder:
        records.append({"name": prefix + "/byteorder", "data": byteorder.encode()})
    for key, storage in sorted(storages, key=lambda ks: ks[0]):  # torch writes records in lexicographic key order
        if key in drop_keys:
            continue
        data = storage.data if resize is None or key not in resize else storage.data[:resize[key]]
        records.append({"name": "%s/data/%s" % (prefix, key), "data": data})
    records.append({"name": prefix + "/version", "data": b"3\n"})
    return zip_bytes(records, comment, zip64_extras)


def zip_with_pickle(data_pkl, records=(), prefix="archive"):
    return zip_bytes([{"name": prefix + "/data.pkl", "data": data_pkl}] +
                     [{"name": prefix + "/" + name, "data": data} for name, data in records] +
                     [{"name": prefix + "/version", "data": b"3\n"}])


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------------------------
# Well-formed fixtures.

def views_object():
    """Views, transposes, broadcasts, shared storages and every dtype; values are easy formulas for the test."""
    a = Storage("FloatStorage", [i * 0.5 - 1.0 for i in range(12)])  # a[i] = i/2 - 1
    obj = {
        "base": contiguous(a, 0, (3, 4)),
        "transposed": Tensor(a, 0, (4, 3), (1, 4)),
        "row1": Tensor(a, 4, (4,), (1,)),
        "col2": Tensor(a, 2, (3,), (4,)),
        "scalar": Tensor(a, 5, (), ()),
        "empty": Tensor(a, 12, (0, 3), (3, 1)),
        "expanded": Tensor(a, 8, (2, 4), (0, 1)),
        "param": Parameter(Tensor(a, 1, (2, 2), (4, 1))),
        "half": contiguous(Storage("HalfStorage", [0.5, -2.0, 3.0, 1024.0, -0.25, 0.0]), 0, (2, 3)),
        "bf16": contiguous(Storage("BFloat16Storage", [1.0, -1.5, 256.0, 0.125]), 0, (4,)),
        "long": contiguous(Storage("LongStorage", [-3, 2 ** 40, 7]), 0, (3,)),
        "mask": contiguous(Storage("BoolStorage", [True, False, True, True, False]), 0, (5,)),
        "double": contiguous(Storage("DoubleStorage", [3.25, -1e300]), 0, (2,)),
        "int8": contiguous(Storage("CharStorage", [-128, 127]), 0, (2,)),
        "block": {"conv": {"weight": contiguous(a, 0, (2, 2, 1, 1))}},
        "step": 7,
    }
    return obj


def lightning_object():
    w = Storage("FloatStorage", [float(i) for i in range(24)])
    b = Storage("HalfStorage", [1.0, 2.0, 3.0, 4.0])
    exp_avg = Storage("FloatStorage", [0.25] * 24)
    state_dict = collections.OrderedDict()
    state_dict["model.conv.weight"] = contiguous(w, 0, (4, 2, 3, 1))
    state_dict["model.conv.bias"] = contiguous(b, 0, (4,))
    state_dict["model.head.weight"] = Tensor(w, 0, (6, 4), (1, 6))  # a transpose of the same storage
    state_dict._metadata = collections.OrderedDict(
        [("", {"version": 1}), ("model", {"version": 1}), ("model.conv", {"version": 1})])
    return {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "1.9.5",
        "state_dict": state_dict,
        "loops": None,
        "callbacks": {},
        "optimizer_states": [{
            "state": {0: {"step": 10, "exp_avg": contiguous(exp_avg, 0, (4, 2, 3, 1))}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1, 2], "amsgrad": False}],
        }],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "lr": 0.0001, "blob": b"\x00\xffxyz", "empty_blob": b"", "device": device("cuda", 0),
            "dtype": torch.float32, "tags": {16, 32}, "big": 2 ** 40, "neg": -5, "huge_neg": -(2 ** 63),
            "ok": True,
        },
    }


def ema_object():
    m = Storage("FloatStorage", [1.0, 2.0])
    e = Storage("FloatStorage", [3.0, 4.0])
    return {"model": {"w": contiguous(m, 0, (2,))}, "ema": {"w": contiguous(e, 0, (2,))}, "step": 5}


def legacy_file(listed_keys=None):
    """torch/serialization.py _legacy_save: five pickles, then each storage as int64 numel + raw bytes."""
    a = Storage("FloatStorage", [float(i) for i in range(10)])
    h = Storage("HalfStorage", [0.5, 1.5, -2.0])
    keys = {id(a): "94558160343040", id(h): "94558160349312"}

    class LegacyPickler(pickle.Pickler):
        def __init__(self, f):
            super().__init__(f, 2)
            self.seen = []

        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                if obj not in self.seen:
                    self.seen.append(obj)
                return ("storage", STORAGE_TYPES[obj.type_name][0], keys[id(obj)], obj.location, obj.numel, None)
            if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "view":  # an old-style storage view
                _, (root, offset, size) = obj
                return ("storage", STORAGE_TYPES[root.type_name][0], keys[id(root)], root.location, root.numel,
                        ("94558160399999", offset, size))
            return None

    class ViewTensor(Tensor):
        def __init__(self, view, offset, size, stride):
            self.args = (view, offset, size, stride, False)

    obj = collections.OrderedDict()
    obj["weight"] = contiguous(a, 0, (2, 5))
    obj["half"] = contiguous(h, 0, (3,))
    obj["view_tail"] = ViewTensor(("view", (a, 6, 4)), 1, (3,), (1,))  # a[6:10][1:4] = a[7..9]
    obj["old_style"] = OldTensor(a, 2, (2,), (3,))  # a[2], a[5]
    f = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}):
        pickle.dump(header, f, protocol=2)
    pickler = LegacyPickler(f)
    pickler.dump(obj)
    ordered = sorted(pickler.seen, key=lambda s: keys[id(s)])
    listed = [keys[id(s)] for s in ordered]
    pickle.dump(listed if listed_keys is None else listed_keys(listed), f, protocol=2)
    for s in ordered:
        f.write(struct.pack("<q", s.numel) + s.data)
    return f.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Hand-written pickles for the hostile corpus.

def op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def op_short_str(s):
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def op_int(v):
    return b"J" + struct.pack("<i", v)


def op_long(v):
    n = (v.bit_length() + 8) // 8 if v else 0
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def op_tuple(*parts):
    return b"(" + b"".join(parts) + b"t"


def storage_pid(type_name="FloatStorage", key="0", numel=4, extra=b""):
    return op_tuple(op_str("storage"), op_global("torch", type_name), op_str(key), op_str("cpu"), op_long(numel),
                    extra) + b"Q"


def tensor(pid, offset=0, size=(4,), stride=(1,)):
    return (op_global("torch._utils", "_rebuild_tensor_v2") +
            op_tuple(pid, op_long(offset), op_tuple(*[op_long(s) for s in size]),
                     op_tuple(*[op_long(s) for s in stride]), b"\x89",
                     op_global("collections", "OrderedDict") + b")R") + b"R")


def state_dict_pickle(*entries):
    """{name: value_bytes, …} as PROTO 2 EMPTY_DICT MARK … SETITEMS STOP."""
    body = b"".join(op_str(name) + value for name, value in entries)
    return b"\x80\x02}(" + body + b"u."


def pickle_call(module, name, args):
    return b"\x80\x02" + op_global(module, name) + args + b"R."


def write_hostile():
    floats = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    good_tensor = tensor(storage_pid())
    corpus = {}

    def wrap(data_pkl, records=(("data/0", floats),)):
        return zip_with_pickle(data_pkl, records)

    # Code execution through callables.
    corpus["os_system"] = wrap(pickle_call("os", "system", op_tuple(op_str(PWN))))
    corpus["posix_system"] = wrap(pickle_call("posix", "system", op_tuple(op_str(PWN))))
    corpus["builtins_eval"] = wrap(pickle_call("builtins", "eval",
                                               op_tuple(op_str("__import__('os').system('%s')" % PWN))))
    corpus["builtin_exec_py2"] = wrap(pickle_call("__builtin__", "exec",
                                                  op_tuple(op_str("import os; os.system('%s')" % PWN))))
    corpus["subprocess_popen"] = wrap(pickle_call("subprocess", "Popen",
                                                  op_tuple(b"](" + op_str("touch") + op_str("/tmp/ddpm_pwned") +
                                                           b"e")))
    corpus["stack_global_system"] = wrap(b"\x80\x04" + op_short_str("os") + b"\x94" + op_short_str("system") +
                                         b"\x94\x93\x94" + op_short_str(PWN) + b"\x85R.")
    corpus["stack_global_getattr"] = wrap(b"\x80\x04" + op_short_str("builtins") + op_short_str("getattr") +
                                          b"\x93" + op_global("os", "path") + op_short_str("exists") + b"\x86R.")
    corpus["newobj_popen"] = wrap(b"\x80\x02" + op_global("subprocess", "Popen") +
                                  op_tuple(op_str(PWN)) + b"\x81.")
    corpus["numpy_reconstruct"] = wrap(pickle_call("numpy.core.multiarray", "_reconstruct",
                                                   op_tuple(op_global("numpy", "ndarray"), op_tuple(op_int(0)),
                                                            b"C\x01b")))
    corpus["call_in_state_dict"] = wrap(state_dict_pickle(("w", good_tensor),
                                                          ("x", op_global("os", "system") +
                                                           op_tuple(op_str(PWN)) + b"R")))
    corpus["inst"] = wrap(b"\x80\x02(" + op_str(PWN) + b"ios\nsystem\n.")
    corpus["obj"] = wrap(b"\x80\x02(" + op_global("os", "system") + op_str(PWN) + b"o.")
    corpus["ext1"] = wrap(b"\x80\x02\x82\x01.")
    corpus["persid_text"] = wrap(b"\x80\x02Pstorage\n.")
    corpus["build_on_global"] = wrap(b"\x80\x02" + op_global("os", "system") + b"}b.")
    corpus["build_on_list"] = wrap(b"\x80\x02]}b.")
    corpus["append_to_dict"] = wrap(b"\x80\x02}Na.")
    corpus["reduce_non_global"] = wrap(b"\x80\x02N)R.")
    # Resource exhaustion and malformed structure.
    corpus["deep_marks"] = wrap(b"\x80\x02" + b"(" * 100000 + b"N.")
    corpus["deep_lists"] = wrap(b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b".")
    corpus["deep_tuples"] = wrap(b"\x80\x02N" + b"\x85" * 100000 + b".")
    corpus["huge_string"] = wrap(b"\x80\x02X\xf0\xff\xff\xffabc.")
    corpus["huge_unicode8"] = wrap(b"\x80\x04\x8d" + struct.pack("<Q", 1 << 63) + b"abc.")
    corpus["huge_frame"] = wrap(b"\x80\x04\x95" + struct.pack("<Q", (1 << 64) - 1) + b"N.")
    corpus["huge_long4"] = wrap(b"\x80\x02\x8b" + struct.pack("<i", 0x7FFFFFF0) + b"\x01\x02.")
    corpus["negative_long4"] = wrap(b"\x80\x02\x8b" + struct.pack("<i", -5) + b".")
    corpus["long_too_big"] = wrap(b"\x80\x02" + op_long(1 << 70) + b".")
    corpus["memo_missing"] = wrap(b"\x80\x02h\x05.")
    corpus["memo_missing_long"] = wrap(b"\x80\x02j\xff\xff\xff\xff.")
    corpus["recursive_list"] = wrap(b"\x80\x02]q\x00h\x00a.")
    corpus["recursive_dict"] = wrap(b"\x80\x02}q\x00(N]q\x01uh\x01h\x00a.")
    corpus["duplicate_key"] = wrap(state_dict_pickle(("w", good_tensor), ("w", b"N")))
    corpus["unhashable_key"] = wrap(b"\x80\x02}]Ns.")
    corpus["stack_underflow"] = wrap(b"\x80\x02R.")
    corpus["mark_underflow"] = wrap(b"\x80\x02N(\x85.")
    corpus["no_stop"] = wrap(b"\x80\x02}(" + op_str("a") + b"N")
    corpus["unknown_opcode"] = wrap(b"\x80\x02\xff.")
    corpus["text_int"] = wrap(b"\x80\x02I42\n.")
    corpus["protocol_6"] = wrap(b"\x80\x06N.")
    corpus["bad_utf8"] = wrap(b"\x80\x02X\x02\x00\x00\x00\xc3\x28.")
    # Tensors and storages.
    corpus["storage_offset_oob"] = wrap(state_dict_pickle(("w", tensor(storage_pid(), offset=1))))
    corpus["stride_oob"] = wrap(state_dict_pickle(("w", tensor(storage_pid(), size=(2, 2), stride=(3, 1)))))
    corpus["negative_stride"] = wrap(state_dict_pickle(("w", tensor(storage_pid(), size=(4,), stride=(-1,)))))
    corpus["numel_overflow"] = wrap(state_dict_pickle(("w", tensor(storage_pid(), size=(1 << 40, 1 << 40, 1 << 40),
                                                                   stride=(0, 0, 0)))))
    # A zero extent makes the element count 0 but not the other extents' product meaningful: still rejected.
    corpus["zero_extent_overflow"] = wrap(state_dict_pickle(("w", tensor(storage_pid(), size=(0, 1 << 40, 1 << 40),
                                                                         stride=(0, 0, 0)))))
    corpus["extent_overflow"] = wrap(state_dict_pickle(("w", tensor(storage_pid(), size=(3,), stride=(1 << 62,)))))
    corpus["storage_numel_overflow"] = wrap(state_dict_pickle(("w", tensor(storage_pid(numel=1 << 62)))))
    corpus["rank_9"] = wrap(state_dict_pickle(("w", tensor(storage_pid(), size=(1,) * 9, stride=(1,) * 9))))
    corpus["rebuild_bad_args"] = wrap(state_dict_pickle(("w", op_global("torch._utils", "_rebuild_tensor_v2") +
                                                         op_tuple(storage_pid(), op_int(0), b")") + b"R")))
    corpus["storage_no_record"] = wrap(state_dict_pickle(("w", tensor(storage_pid(key="7")))))
    corpus["record_size_mismatch"] = wrap(state_dict_pickle(("w", tensor(storage_pid()))), [("data/0", floats[:12])])
    corpus["storage_conflict"] = wrap(state_dict_pickle(("w", tensor(storage_pid())),
                                                        ("v", tensor(storage_pid("HalfStorage", numel=8)))))
    corpus["non_storage_pid"] = wrap(b"\x80\x02" + op_tuple(op_str("module"), op_str(PWN)) + b"Q.")
    corpus["pid_not_tuple"] = wrap(b"\x80\x02" + op_str("storage") + b"Q.")
    corpus["unknown_storage_type"] = wrap(state_dict_pickle(("w", tensor(storage_pid("ComplexFloatStorage",
                                                                                     numel=2)))))
    corpus["storage_type_os"] = wrap(b"\x80\x02" + op_tuple(op_str("storage"), op_global("os", "system"),
                                                            op_str("0"), op_str("cpu"), op_int(4)) + b"Q.")
    corpus["legacy_pid_in_zip"] = wrap(state_dict_pickle(("w", tensor(storage_pid(extra=b"N")))))
    corpus["torchscript"] = zip_with_pickle(state_dict_pickle(), [("constants.pkl", b"\x80\x02).", ),
                                                                  ("code/__torch__.py", b"def forward(self): pass\n")])

    # Zip containers.
    good = zip_with_pickle(state_dict_pickle(("w", good_tensor)), [("data/0", floats)])
    corpus["truncated_zip"] = good[:len(good) // 2]
    corpus["truncated_zip_tail"] = good[:-30]
    corpus["compressed_entry"] = zip_bytes([
        {"name": "archive/data.pkl", "data": state_dict_pickle(), "method": 8,
         "raw": zlib.compress(state_dict_pickle())[2:-4]}])
    corpus["encrypted_entry"] = zip_bytes([{"name": "archive/data.pkl", "data": state_dict_pickle(),
                                            "flags": 0x0809}])
    corpus["duplicate_entry"] = zip_bytes([{"name": "archive/data.pkl", "data": state_dict_pickle()},
                                           {"name": "archive/data.pkl", "data": b"\x80\x02N."}])
    corpus["no_data_pkl"] = zip_bytes([{"name": "archive/other.pkl", "data": b"\x80\x02N."}])
    corpus["no_prefix"] = zip_bytes([{"name": "data.pkl", "data": b"\x80\x02N."}])
    corpus["bad_byteorder"] = zip_with_pickle(state_dict_pickle(), [("byteorder", b"middle")])

    # Bogus end records: patch fields of the 32-bit end record and of the zip64 record/locator of `good`.
    eocd = good.rfind(b"PK\x05\x06")
    locator = good.rfind(b"PK\x06\x07")
    z64 = good.rfind(b"PK\x06\x06")

    def patch(data, offset, fmt, value):
        data = bytearray(data)
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)

    corpus["bogus_eocd_offset"] = patch(patch(good, z64 + 48, "<Q", 1 << 40), eocd + 16, "<I", 0x7FFFFFFF)
    corpus["bogus_eocd_count"] = patch(patch(good, z64 + 24, "<Q", 5000), z64 + 32, "<Q", 5000)
    corpus["too_many_entries"] = patch(patch(good, z64 + 24, "<Q", (1 << 20) + 1), z64 + 32, "<Q", (1 << 20) + 1)
    corpus["bogus_zip64_locator"] = patch(good, locator + 8, "<Q", len(good) + 100)
    corpus["bogus_zip64_signature"] = patch(good, z64, "<I", 0x12345678)
    corpus["saturated_without_zip64"] = patch(good[:z64] + good[eocd:], len(good[:z64]) + 10, "<H", 0xFFFF)
    # A second, consistent-looking end record hidden at the end of the comment wins (it is the one nearest the
    # end); its central directory must then be checked like any other.
    corpus["fake_eocd_in_comment"] = good[:eocd] + good[eocd:eocd + 20] + struct.pack("<H", 22) + \
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, 46, 0xFFFFFF00, 0)
    first_cd = good.find(b"PK\x01\x02")
    corpus["bad_local_signature"] = patch(good, good.find(b"PK\x03\x04", 4), "<I", 0x04034B51)
    corpus["local_name_mismatch"] = patch(good, 30, "<B", ord("X"))
    corpus["entry_past_cd"] = patch(patch(good, first_cd + 24, "<I", 0x100000), first_cd + 20, "<I", 0x100000)
    corpus["entry_size_mismatch"] = patch(patch(good, first_cd + 24, "<I", 3), first_cd + 20, "<I", 4)
    corpus["cd_entry_truncated"] = patch(good, first_cd + 28, "<H", 5000)

    # Overlap: the second entry's local header sits inside the first entry's data.
    inner_name = b"archive/data/0"
    inner = struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, 0x0808, 0, 0, 0, 0, 0, 0, len(inner_name), 0) + inner_name
    outer_data = b"\x80\x02N." + b"\x00" * 12 + inner + floats
    blob = zip_bytes([{"name": "archive/data.pkl", "data": outer_data}])
    inner_offset = blob.find(inner)
    cd = blob.find(b"PK\x01\x02")
    entry = bytearray(blob[cd:cd + 46 + len(b"archive/data.pkl")])
    struct.pack_into("<II", entry, 20, len(floats), len(floats))
    struct.pack_into("<H", entry, 28, len(inner_name))
    struct.pack_into("<I", entry, 42, inner_offset)
    entry = bytes(entry[:46]) + inner_name
    z64 = blob.rfind(b"PK\x06\x06")
    head = blob[:z64] + entry
    cd_size = len(head) - cd
    tail = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x31E, 45, 0, 0, 2, 2, cd_size, cd)
    tail += struct.pack("<IIQI", 0x07064B50, 0, len(head), 1)
    tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 2, 2, cd_size, cd, 0)
    corpus["overlapping_entries"] = head + tail

    # Legacy format.
    legacy = legacy_file()
    corpus["legacy_truncated"] = legacy[:-5]
    numel_at = legacy.rfind(struct.pack("<q", 3))  # the half storage's count
    corpus["legacy_numel_mismatch"] = legacy[:numel_at] + struct.pack("<q", 4) + legacy[numel_at + 8:]
    corpus["legacy_key_not_listed"] = legacy_file(lambda keys: keys[:1])
    corpus["legacy_key_unused"] = legacy_file(lambda keys: keys + ["123"])
    corpus["legacy_key_twice"] = legacy_file(lambda keys: keys + keys[:1])
    corpus["legacy_bad_version"] = legacy.replace(b"M\xe9\x03", b"M\xea\x03", 1)
    corpus["not_torch"] = b"\x00\x01garbage, neither zip nor pickle" * 4
    corpus["tar_format"] = b"\x00" * 257 + b"ustar\x0000" + b"\x00" * 250
    corpus["empty_file"] = b""

    for name, data in corpus.items():
        write(os.path.join(HOSTILE, name + ".bin"), data)
    return corpus


def main():
    write(os.path.join(OUT, "views.pt"), torch_zip(views_object(), prefix="views"))
    write(os.path.join(OUT, "views_protocol4.pt"), torch_zip(views_object(), prefix="views_p4", protocol=4))
    write(os.path.join(OUT, "views_protocol5.pt"), torch_zip(views_object(), prefix="views_p5", protocol=5))
    write(os.path.join(OUT, "lightning.ckpt"), torch_zip(lightning_object(), prefix="epoch=3-step=1000"))
    write(os.path.join(OUT, "ema.pt"), torch_zip(ema_object()))
    write(os.path.join(OUT, "zip64_comment.pt"),
          torch_zip(ema_object(), prefix="z", comment=b"PK\x05\x06 comment " + b"c" * 3000, zip64_extras=True))
    s = Storage("FloatStorage", [1.5, -2.0, 1e-3], big_endian=True)
    d = Storage("DoubleStorage", [2.5], big_endian=True)
    big = {"f": contiguous(s, 0, (3,)), "d": contiguous(d, 0, (1,))}
    write(os.path.join(OUT, "big_endian.pt"), torch_zip(big, byteorder="big"))
    write(os.path.join(OUT, "legacy.pt"), legacy_file())
    corpus = write_hostile()
    print("wrote %d hostile files and 9 fixtures to %s" % (len(corpus), OUT))


if __name__ == "__main__":
    main()
