"""linfit.torch_pickle: torch checkpoints (zip and legacy layouts) and numpy pickles, read without torch and
without running code.

The torch files are written here by a small independent writer that emits pickle opcodes by hand (torch's
globals cannot be pickled without torch) and lays out the zip / legacy containers as ``torch.save`` does;
expected arrays come from numpy indexing of the source buffers. The real files shipped in PyPI packages are
checked against facts measured with ``torch.load`` (torch 2.13) and published parameter counts.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from linfit.errors import CheckpointError
from linfit.torch_pickle import read_numpy_pickle, read_torch_checkpoint

# --------------------------------------------------------------------------- a hand-rolled torch.save writer


class Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:  # REDUCE: fn(*args)
    def __init__(self, fn, args):
        self.fn, self.args = fn, tuple(args)


class Pid:  # BINPERSID
    def __init__(self, obj):
        self.obj = obj


class ODict:  # collections.OrderedDict() then SETITEMS
    def __init__(self, items):
        self.items = dict(items)


def _emit(obj, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        out += b"\x8a" + bytes([len(raw)]) + raw  # LONG1
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        out += b"X" + struct.pack("<I", len(raw)) + raw
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _emit(item, out)
        out += b"t"
    elif isinstance(obj, list):
        out += b"](" if obj else b"]"
        for item in obj:
            _emit(item, out)
        out += b"e" if obj else b""
    elif isinstance(obj, (dict, ODict)):
        items = obj.items if isinstance(obj, ODict) else obj
        if isinstance(obj, ODict):
            _emit(Call(Global("collections", "OrderedDict"), ()), out)
        else:
            out += b"}"
        if items:
            out += b"("
            for k, v in items.items():
                _emit(k, out)
                _emit(v, out)
            out += b"u"
    elif isinstance(obj, Global):
        out += b"c" + f"{obj.module}\n{obj.name}\n".encode()
    elif isinstance(obj, Call):
        _emit(obj.fn, out)
        _emit(obj.args, out)
        out += b"R"
    elif isinstance(obj, Pid):
        _emit(obj.obj, out)
        out += b"Q"
    else:
        raise TypeError(type(obj))


def dumps(obj) -> bytes:
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
                 np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.int64): "LongStorage",
                 np.dtype(np.bool_): "BoolStorage", np.dtype(np.float64): "DoubleStorage"}


def tensor(storages, key, offset, size, stride, *, legacy, parameter=False):
    buf = storages[key]
    pid = ("storage", Global("torch", STORAGE_NAMES[buf.dtype]), key, "cpu", buf.size)
    pid = pid + (None,) if legacy else pid
    t = Call(Global("torch._utils", "_rebuild_tensor_v2"),
             (Pid(pid), offset, tuple(size), tuple(stride), False, ODict({})))
    return Call(Global("torch._utils", "_rebuild_parameter"), (t, True, ODict({}))) if parameter else t


def _raw(buf: np.ndarray, byteorder: str) -> bytes:
    return buf.astype(buf.dtype.newbyteorder("<" if byteorder == "little" else ">")).tobytes()


def write_zip(path, tree, storages, *, byteorder="little", pickle_bytes=None, skip=()):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes if pickle_bytes is not None else dumps(tree))
        zf.writestr("archive/byteorder", byteorder)
        zf.writestr("archive/version", "3\n")
        for key, buf in storages.items():
            if key not in skip:
                zf.writestr(f"archive/data/{key}", _raw(buf, byteorder))


def write_legacy(path, tree, storages, *, byteorder="little", main=None, sys_info=None, truncate=0):
    little = byteorder == "little"
    blob = bytearray()
    blob += dumps(0x1950A86A20F9469CFC6C) + dumps(1001)
    blob += sys_info if sys_info is not None else dumps(
        {"protocol_version": 1001, "little_endian": little, "type_sizes": {"short": 2, "int": 4, "long": 4}})
    blob += main if main is not None else dumps(tree)
    blob += dumps(list(storages))
    for key, buf in storages.items():
        blob += struct.pack("<q" if little else ">q", buf.size) + _raw(buf, byteorder)
    with open(path, "wb") as f:
        f.write(bytes(blob[:len(blob) - truncate]))


def write(layout, path, tree, storages, **kw):
    (write_zip if layout == "zip" else write_legacy)(path, tree, storages, **kw)


# --------------------------------------------------------------------------- round trips


def _fixture(legacy: bool):
    rng = np.random.default_rng(0)
    storages = {
        "0": rng.standard_normal(48).astype(np.float32),
        "1": rng.standard_normal(15).astype(np.float16),
        "2": rng.standard_normal(12).astype(ml_dtypes.bfloat16),
        "3": np.array([2**40 + 1, -7, 0, 3, 2**62, -(2**50)], dtype=np.int64),
        "4": np.array([True, False, True]),
        "5": rng.standard_normal(3).astype(np.float32),
        "6": rng.standard_normal(4),
    }
    t = lambda *a, **k: tensor(storages, *a, legacy=legacy, **k)  # noqa: E731
    tree = {
        "model": ODict({
            "w": t("0", 0, (6, 8), (8, 1)),
            "wt": t("0", 0, (8, 6), (1, 8)),
            "slice": t("0", 10, (3, 5), (8, 1)),
            "every3": t("0", 1, (6, 3), (8, 3)),
            "scalar": t("0", 5, (), ()),
            "empty": t("0", 0, (0, 3), (3, 1)),
            "half": t("1", 0, (3, 5), (5, 1)),
            "bf": t("2", 0, (4, 3), (3, 1), parameter=True),
            "long": t("3", 0, (2, 3), (3, 1)),
            "mask": t("4", 0, (3,), (1,)),
            "expanded": t("5", 0, (3, 4), (1, 0)),
            "double": t("6", 0, (2, 2), (1, 2)),
        }),
        "epoch": 7, "arch": "toy", "lr": 0.1, "nothing": None,
        "lst": [t("5", 1, (2,), (1,)), (t("0", 47, (1,), (1,)),)],
    }
    a = storages["0"]
    expected = {
        "model.w": a.reshape(6, 8), "model.wt": a.reshape(6, 8).T, "model.slice": a.reshape(6, 8)[1:4, 2:7],
        "model.every3": a.reshape(6, 8)[:, 1::3], "model.scalar": np.array(a[5]),
        "model.empty": np.zeros((0, 3), np.float32), "model.half": storages["1"].reshape(3, 5),
        "model.bf": storages["2"].reshape(4, 3), "model.long": storages["3"].reshape(2, 3),
        "model.mask": storages["4"], "model.expanded": np.broadcast_to(storages["5"][:, None], (3, 4)),
        "model.double": storages["6"].reshape(2, 2).T, "lst.0": storages["5"][1:3], "lst.1.0": a[47:],
    }
    return tree, storages, expected


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_round_trip_matches_numpy_indexing(tmp_path, layout, byteorder):
    tree, storages, expected = _fixture(legacy=layout == "legacy")
    path = tmp_path / "ckpt.pt"
    write(layout, path, tree, storages, byteorder=byteorder)
    got = read_torch_checkpoint(path)
    assert list(got) == list(expected)  # file order, metadata leaves (epoch, arch, lr, None) left out
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert got[name].flags["C_CONTIGUOUS"] and got[name].flags["WRITEABLE"], name
    assert got["model.long"][0, 0] == 2**40 + 1 and got["model.long"][1, 1] == 2**62


def test_legacy_storage_view(tmp_path):
    buf = np.arange(10, dtype=np.float32)
    storages = {"r": buf}
    pid = ("storage", Global("torch", "FloatStorage"), "r", "cpu", 10, ("v", 4, 5))
    tree = {"t": Call(Global("torch._utils", "_rebuild_tensor_v2"), (Pid(pid), 1, (2, 2), (2, 1), False, ODict({})))}
    write_legacy(tmp_path / "v.pt", tree, storages)
    np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "v.pt")["t"], buf[4:9][1:5].reshape(2, 2))


# --------------------------------------------------------------------------- refusals


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _OpenFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_payloads_execute_under_plain_pickle(tmp_path):
    """Control: the payloads used below really run code when a plain unpickler loads them."""
    for i, payload in enumerate([_SystemCall, _OpenFile]):
        marker = tmp_path / f"control{i}"
        obj = pickle.loads(pickle.dumps({"w": payload(marker)}, protocol=2))
        if hasattr(obj["w"], "close"):
            obj["w"].close()
        assert marker.exists()


@pytest.mark.parametrize("payload", [_SystemCall, _OpenFile])
@pytest.mark.parametrize("where", ["zip", "legacy-main", "legacy-sys-info", "numpy"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, payload, where):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"w": payload(marker)}, protocol=2)
    path = tmp_path / "evil.pt"
    if where == "zip":
        write_zip(path, None, {}, pickle_bytes=evil)
    elif where == "legacy-main":
        write_legacy(path, None, {}, main=evil)
    elif where == "legacy-sys-info":
        write_legacy(path, {}, {}, sys_info=evil)
    else:
        path.write_bytes(pickle.dumps({"ok": np.zeros(3), "w": payload(marker)}))
    reader = read_numpy_pickle if where == "numpy" else read_torch_checkpoint
    refused = "posix.system" if payload is _SystemCall else "io.open"
    with pytest.raises(CheckpointError, match=rf"evil\.pt.*global {refused} is not allowed"):
        reader(path)
    assert not marker.exists()


def test_payload_inside_persistent_id_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    pid = ("storage", Call(Global("posix", "system"), (f"touch {marker}",)), "0", "cpu", 1)
    write_zip(tmp_path / "e.pt", {"t": Pid(pid)}, {"0": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match="global posix.system is not allowed"):
        read_torch_checkpoint(tmp_path / "e.pt")
    assert not marker.exists()


def test_pickled_module_is_refused_with_the_fix(tmp_path):
    tree = Call(Global("torch.nn.modules.linear", "Linear"), ())
    write_zip(tmp_path / "m.pt", tree, {})
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.linear\.Linear is not allowed.*state_dict"):
        read_torch_checkpoint(tmp_path / "m.pt")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_view_outside_its_storage_is_refused(tmp_path, layout):
    storages = {"0": np.zeros(48, np.float32)}
    legacy = layout == "legacy"
    for size, stride, offset in [((7, 8), (8, 1), 0), ((6, 8), (8, 1), 1), ((2,), (-1,), 5), ((3,), (1,), -1)]:
        write(layout, tmp_path / "b.pt", {"t": tensor(storages, "0", offset, size, stride, legacy=legacy)}, storages)
        with pytest.raises(CheckpointError, match=r"b\.pt: .*(reads element|invalid size)"):
            read_torch_checkpoint(tmp_path / "b.pt")


def test_damaged_files_are_refused(tmp_path):
    storages = {"0": np.ones(4, np.float32)}
    t = {"t": tensor(storages, "0", 0, (4,), (1,), legacy=True)}
    write_legacy(tmp_path / "trunc.pt", t, storages, truncate=3)
    with pytest.raises(CheckpointError, match="truncated: 13 of 16 bytes"):
        read_torch_checkpoint(tmp_path / "trunc.pt")
    write_zip(tmp_path / "missing.pt", {"t": tensor(storages, "0", 0, (4,), (1,), legacy=False)}, storages,
              skip=("0",))
    with pytest.raises(CheckpointError, match="archive/data/0"):
        read_torch_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps(12345))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_torch_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(100))
    with pytest.raises(CheckpointError, match="random.pt"):
        read_torch_checkpoint(tmp_path / "random.pt")
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        read_torch_checkpoint(tmp_path / "nowhere.pt")


def test_a_pickle_cannot_alter_the_shared_storage_types(tmp_path):
    """``torch.FloatStorage`` resolves to one shared object; a BUILD on it (``{"dtype": "junk"}``) loaded as an
    empty checkpoint and broke every float32 checkpoint read later in the process."""
    out = bytearray(b"\x80\x02}")
    _emit("w", out)
    _emit(Global("torch", "FloatStorage"), out)
    _emit({"dtype": "junk"}, out)
    out += b"bs."  # BUILD the storage type with that state, then SETITEM it under "w"
    write_zip(tmp_path / "poison.pt", {}, {}, pickle_bytes=bytes(out))
    with pytest.raises(CheckpointError, match="poison.pt"):
        read_torch_checkpoint(tmp_path / "poison.pt")
    storages = {"0": np.arange(4, dtype=np.float32)}
    write_zip(tmp_path / "good.pt", {"t": tensor(storages, "0", 0, (4,), (1,), legacy=False)}, storages)
    np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "good.pt")["t"], storages["0"])


def test_a_checkpoint_without_tensors_is_refused(tmp_path):
    write_zip(tmp_path / "empty.pt", {"epoch": 3}, {})
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_torch_checkpoint(tmp_path / "empty.pt")


def test_short_zip_storage_is_refused(tmp_path):
    storages = {"0": np.ones(4, np.float32)}
    tree = {"t": Call(Global("torch._utils", "_rebuild_tensor_v2"),
                      (Pid(("storage", Global("torch", "FloatStorage"), "0", "cpu", 5)), 0, (5,), (1,), False,
                       ODict({})))}
    write_zip(tmp_path / "s.pt", tree, storages)
    with pytest.raises(CheckpointError, match="16 bytes, expected 5 x 4"):
        read_torch_checkpoint(tmp_path / "s.pt")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_non_finite_and_duplicate_names_are_refused(tmp_path, layout):
    storages = {"0": np.array([1.0, np.nan, 2.0], np.float32)}
    legacy = layout == "legacy"
    write(layout, tmp_path / "n.pt", {"ok": {"bad": tensor(storages, "0", 0, (3,), (1,), legacy=legacy)}}, storages)
    with pytest.raises(CheckpointError, match=r"n\.pt: impossible weights .* ok\.bad"):
        read_torch_checkpoint(tmp_path / "n.pt")
    storages = {"0": np.ones(2, np.float32)}
    t = tensor(storages, "0", 0, (2,), (1,), legacy=legacy)
    write(layout, tmp_path / "d.pt", {"a.b": t, "a": {"b": t}}, storages)
    with pytest.raises(CheckpointError, match="same name 'a.b'"):
        read_torch_checkpoint(tmp_path / "d.pt")


# --------------------------------------------------------------------------- numpy pickles


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickle_round_trip(tmp_path, protocol):
    rng = np.random.default_rng(1)
    obj = {"conv1": [rng.standard_normal((3, 3, 3, 4)).astype(np.float32), rng.standard_normal(4)],
           "fire2/squeeze1x1": (np.asfortranarray(rng.standard_normal((2, 5))), np.arange(5, dtype=np.int64)),
           "od": collections.OrderedDict(z=np.float16([1.5, -2.0]), a=np.zeros((0,), np.uint8)),
           "meta": "ignored", "n": 3}
    (tmp_path / "w.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
    got = read_numpy_pickle(tmp_path / "w.pkl")
    expected = {"conv1.0": obj["conv1"][0], "conv1.1": obj["conv1"][1],
                "fire2/squeeze1x1.0": obj["fire2/squeeze1x1"][0], "fire2/squeeze1x1.1": obj["fire2/squeeze1x1"][1],
                "od.z": obj["od"]["z"], "od.a": obj["od"]["a"]}
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_numpy_pickle_refusals(tmp_path):
    (tmp_path / "o.pkl").write_bytes(pickle.dumps({"o": np.array([1, "a"], dtype=object)}))
    with pytest.raises(CheckpointError, match="object-dtype"):
        read_numpy_pickle(tmp_path / "o.pkl")
    (tmp_path / "nan.pkl").write_bytes(pickle.dumps({"x": [np.array([np.inf])]}))
    with pytest.raises(CheckpointError, match=r"nan\.pkl: impossible weights .* x\.0"):
        read_numpy_pickle(tmp_path / "nan.pkl")
    (tmp_path / "sub.pkl").write_bytes(pickle.dumps({"m": np.ma.masked_array([1.0, 2.0])}))
    with pytest.raises(CheckpointError, match="global numpy.ma.core._mareconstruct is not allowed"):
        read_numpy_pickle(tmp_path / "sub.pkl")
    (tmp_path / "int.pkl").write_bytes(pickle.dumps(5))
    with pytest.raises(CheckpointError, match=r"int\.pkl: the pickle holds no numpy arrays"):
        read_numpy_pickle(tmp_path / "int.pkl")
    write_zip(tmp_path / "t.pt", {}, {})  # a torch file is not a numpy pickle
    with pytest.raises(CheckpointError, match=r"t\.pt: cannot be read as a pickle of numpy arrays"):
        read_numpy_pickle(tmp_path / "t.pt")


# --------------------------------------------------------------------------- files written by torch itself

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torch_pickle"


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_files_written_by_torch_match_torch_numpy(layout):
    """``torch.save`` output (torch 2.13, see fixtures/torch_pickle/make_reference.py) against ``Tensor.numpy()``."""
    got = read_torch_checkpoint(FIXTURES / f"{layout}.pt")
    with np.load(FIXTURES / "expected.npz") as ref:
        expected = dict(ref)
    assert list(got) == list(expected)  # "epoch" (an int) is metadata and left out
    for name, want in expected.items():
        have = got[name].view(np.int16) if got[name].dtype == ml_dtypes.bfloat16 else got[name]
        assert have.dtype == want.dtype and have.shape == want.shape, name
        np.testing.assert_array_equal(have, want, err_msg=name)
    assert got["model.bf"].dtype == ml_dtypes.bfloat16 and got["model.half"].dtype == np.float16
    assert got["state_dict.1.num_batches_tracked"].dtype == np.int64
