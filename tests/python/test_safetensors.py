"""Tests for metallic.safetensors: single and sharded files, zero copy, every validation error."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from st_writer import f32_to_bf16_bits, raw_safetensors, write_safetensors

from metallic.dtypes import DType
from metallic.errors import (
    Closed,
    CorruptFile,
    FileNotFound,
    MetallicError,
    UnsupportedDType,
)
from metallic.safetensors import SafetensorsFile, open_safetensors


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float16),
        "c": f32_to_bf16_bits(rng.standard_normal((2, 5)).astype(np.float32)),
    }


def test_round_trip_and_zero_copy(tmp_path):
    ts = tensors()
    p = write_safetensors(tmp_path / "m.safetensors", ts, {"format": "pt"}, {"c": "BF16"})
    f = SafetensorsFile(p)
    assert f.metadata == {"format": "pt"}
    assert {n: (i.dtype, i.shape) for n, i in f.tensors.items()} == {
        "a": (DType.F32, (3, 4)),
        "b": (DType.F16, (7,)),
        "c": (DType.BF16, (2, 5)),
    }
    for n, arr in ts.items():
        v = f.data(n)
        assert v.dtype == np.uint8 and v.ndim == 1 and not v.flags.writeable
        assert v.tobytes() == arr.tobytes() and f.tensors[n].nbytes == arr.nbytes
    v = f.data("a")
    assert np.shares_memory(v, f.data("a")) and v.base.obj is f._mm
    f.close()  # live view: the mapping stays valid
    np.testing.assert_array_equal(v.view(np.float32).reshape(3, 4), ts["a"])
    with pytest.raises(Closed):
        f.data("a")


def test_bf16_bits_helper():
    x = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    back = (f32_to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(back, x)


def test_folder_single_and_sharded(tmp_path):
    ts = tensors()
    single = tmp_path / "single"
    single.mkdir()
    write_safetensors(single / "model.safetensors", ts, dtypes={"c": "BF16"})
    with open_safetensors(single) as m:
        assert set(m.tensors) == set(ts)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    write_safetensors(sharded / "s1.safetensors", {"a": ts["a"]})
    write_safetensors(
        sharded / "s2.safetensors", {"b": ts["b"], "c": ts["c"]}, dtypes={"c": "BF16"}
    )
    wmap = {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    with open_safetensors(sharded) as m:
        assert len(m.files) == 2
        for n, arr in ts.items():
            assert m.data(n).tobytes() == arr.tobytes()
            assert m.tensors[n].nbytes == arr.nbytes


def make_index(tmp_path: Path, wmap, shards: dict[str, dict]) -> Path:
    for name, ts in shards.items():
        write_safetensors(tmp_path / name, ts)
    p = tmp_path / "model.safetensors.index.json"
    p.write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return p


def test_index_errors(tmp_path):
    a = {"a": np.zeros(2, np.float32)}
    with pytest.raises(FileNotFound, match="shard s9.safetensors is missing"):
        open_safetensors(make_index(tmp_path, {"a": "s9.safetensors"}, {}))
    with pytest.raises(CorruptFile, match="not a file name"):
        open_safetensors(make_index(tmp_path, {"a": "../x.safetensors"}, {}))
    with pytest.raises(CorruptFile, match="tensor a: present in shards"):
        open_safetensors(
            make_index(
                tmp_path,
                {"a": "s1.safetensors", "b": "s2.safetensors"},
                {"s1.safetensors": a, "s2.safetensors": {**a, "b": a["a"]}},
            ).parent
        )
    (tmp_path / "s2.safetensors").unlink()
    with pytest.raises(CorruptFile, match="tensor b: weight_map says s1.safetensors"):
        open_safetensors(
            make_index(
                tmp_path, {"a": "s1.safetensors", "b": "s1.safetensors"}, {"s1.safetensors": a}
            )
        )
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text("{not json")
    with pytest.raises(CorruptFile, match="JSON"):
        open_safetensors(idx)
    idx.write_text(json.dumps({"weight_map": {"a": 3}}))
    with pytest.raises(CorruptFile, match="weight_map"):
        open_safetensors(idx)
    with pytest.raises(FileNotFound):
        open_safetensors(tmp_path / "nothing_here")


def entry(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


def check(tmp_path, blob: bytes, cls, *frags):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(cls) as ei:
        SafetensorsFile(p)
    msg = str(ei.value)
    assert msg.startswith(f"[load_safetensors] {p}: "), msg
    for f in frags:
        assert f in msg, (f, msg)


def test_header_errors(tmp_path):
    check(tmp_path, b"", CorruptFile, "truncated")
    check(tmp_path, b"\1\0\0", CorruptFile, "truncated")
    check(tmp_path, struct.pack("<Q", 2**40) + b"{}", CorruptFile, "header length")
    check(tmp_path, struct.pack("<Q", 200 * 2**20) + b"{}", CorruptFile, "header length")
    check(tmp_path, struct.pack("<Q", 8) + b"{}", CorruptFile, "header length")
    check(tmp_path, struct.pack("<Q", 4) + b"{\xff}\0", CorruptFile, "UTF-8 JSON")
    check(tmp_path, struct.pack("<Q", 2) + b"[]", CorruptFile, "expected object")
    check(tmp_path, raw_safetensors({"__metadata__": {"a": 1}}, b""), CorruptFile, "__metadata__")


def test_entry_errors(tmp_path):
    d = b"\0" * 64
    check(tmp_path, raw_safetensors({"w": 3}, d), CorruptFile, "tensor w", "not an object")
    check(tmp_path, raw_safetensors({"w": {"dtype": "F32"}}, d), CorruptFile, "tensor w", "missing")
    for dt in ("I64", "F8_E4M3", "U8"):
        blob = raw_safetensors({"w": entry(dtype=dt, offs=(0, 16))}, d)
        check(tmp_path, blob, UnsupportedDType, "tensor w", f"dtype {dt} is not supported")
    blob = raw_safetensors({"w": entry(dtype="Q9")}, d)
    check(tmp_path, blob, UnsupportedDType, "tensor w", "dtype Q9 is unknown")
    for shape in ([-1], [1.5], "x", [True]):
        blob = raw_safetensors({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}, d)
        check(tmp_path, blob, CorruptFile, "tensor w", "shape")
    for offs in ([0], [0, "8"], [0, 8.0], [8, 0], [-4, 4], [0, 65]):
        blob = raw_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": offs}}, d)
        check(tmp_path, blob, CorruptFile, "tensor w", "data_offsets")
    blob = raw_safetensors({"w": entry(shape=(3, 2), offs=(0, 16))}, d)
    check(tmp_path, blob, CorruptFile, "tensor w", "F32 3x2: expected 24 bytes, got 16")


def test_overlap_and_truncation(tmp_path):
    hdr = {"a": entry(offs=(0, 8)), "b": entry(offs=(4, 12))}
    check(tmp_path, raw_safetensors(hdr, b"\0" * 16), CorruptFile, "tensor b", "overlap tensor a")
    good = raw_safetensors({"a": entry(offs=(0, 8)), "b": entry(offs=(8, 16))}, b"\0" * 16)
    p = tmp_path / "good.safetensors"
    p.write_bytes(good)
    SafetensorsFile(p).close()
    check(tmp_path, good[:-1], CorruptFile, "tensor b", "outside the data section")


def test_empty_tensor_and_scalar(tmp_path):
    hdr = {"e": entry(shape=(0, 4), offs=(0, 0)), "s": entry(shape=(), offs=(0, 4))}
    p = tmp_path / "e.safetensors"
    p.write_bytes(raw_safetensors(hdr, b"\0" * 4))
    with SafetensorsFile(p) as f:
        assert f.data("e").size == 0 and f.tensors["s"].nbytes == 4


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_never_crashes(tmp_path, data):
    blob = bytearray(
        raw_safetensors({"a": entry(offs=(0, 8)), "b": entry(offs=(8, 16))}, b"x" * 16)
    )
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    p = tmp_path / "fz.safetensors"
    p.write_bytes(bytes(blob[: data.draw(st.integers(0, len(blob)))]))
    try:
        SafetensorsFile(p).close()
    except MetallicError as e:
        assert str(e).startswith("[load_safetensors] ")
