"""Tests for metallic.gguf: round trips, zero copy, every validation error, the real SmolLM2 file."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metallic.dtypes import DType
from metallic.errors import (
    Closed,
    CorruptFile,
    FileNotFound,
    MetallicError,
    UnsupportedDType,
    UnsupportedFormat,
)
from metallic.gguf import GGUFFile

VT = gguf.GGUFValueType

# ---------------------------------------------------------------------------- raw builder


def gstr(b: str | bytes) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def tinfo(name: str, ne: list[int], gtype: int, off: int) -> bytes:
    return (
        gstr(name)
        + struct.pack("<I", len(ne))
        + struct.pack(f"<{len(ne)}Q", *ne)
        + struct.pack("<IQ", gtype, off)
    )


def build(
    kvs=(),
    tinfos=(),
    data: bytes = b"",
    *,
    version: int = 3,
    magic: bytes = b"GGUF",
    n_kv: int | None = None,
    n_tensors: int | None = None,
    align: int = 32,
) -> bytes:
    nt = len(tinfos) if n_tensors is None else n_tensors
    nk = len(kvs) if n_kv is None else n_kv
    body = magic + struct.pack("<IQQ", version, nt, nk) + b"".join(kvs) + b"".join(tinfos)
    if tinfos:
        body += b"\0" * (-len(body) % align)
    return body + data


def write(tmp_path: Path, blob: bytes, name: str = "m.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def valid_blob() -> bytes:
    """A small valid file: two KVs and two F32 tensors (2x8 and 8)."""
    kvs = [kv("general.architecture", 8, gstr("llama")), kv("a.n", 4, struct.pack("<I", 7))]
    tis = [tinfo("w", [8, 2], 0, 0), tinfo("b", [8], 0, 64)]
    data = np.arange(16, dtype="<f4").tobytes() + np.ones(8, dtype="<f4").tobytes()
    return build(kvs, tis, data)


def raises(tmp_path: Path, blob: bytes, cls: type, *fragments: str) -> None:
    p = write(tmp_path, blob)
    with pytest.raises(cls) as ei:
        GGUFFile(p)
    msg = str(ei.value)
    assert msg.startswith("[load_gguf] ") and str(p) in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def base_of(arr: np.ndarray):
    b = arr
    while isinstance(b, np.ndarray):
        b = b.base
    return b.obj if isinstance(b, memoryview) else b


# ---------------------------------------------------------------------------- round trips


def test_metadata_round_trip_every_type(tmp_path):
    p = str(tmp_path / "rt.gguf")
    w = gguf.GGUFWriter(p, "llama")
    scalars = {
        "t.u8": (200, VT.UINT8),
        "t.i8": (-100, VT.INT8),
        "t.u16": (60000, VT.UINT16),
        "t.i16": (-30000, VT.INT16),
        "t.u32": (4_000_000_000, VT.UINT32),
        "t.i32": (-2_000_000_000, VT.INT32),
        "t.f32": (0.5, VT.FLOAT32),
        "t.bool": (True, VT.BOOL),
        "t.str": ("héllo \u2603 \U0001f600", VT.STRING),
        "t.u64": (2**63 + 5, VT.UINT64),
        "t.i64": (-(2**62), VT.INT64),
        "t.f64": (1e-300, VT.FLOAT64),
    }
    for k, (v, t) in scalars.items():
        w.add_key_value(k, v, t)
    arrays = {
        "a.u8": ([1, 2, 255], VT.UINT8, np.uint8),
        "a.i8": ([-1, 2], VT.INT8, np.int8),
        "a.u16": ([1, 65535], VT.UINT16, np.uint16),
        "a.i16": ([-5, 5], VT.INT16, np.int16),
        "a.u32": ([1, 2**32 - 1], VT.UINT32, np.uint32),
        "a.i32": ([-7, 3, 1], VT.INT32, np.int32),
        "a.f32": ([0.25, -1.5], VT.FLOAT32, np.float32),
        "a.u64": ([2**64 - 1], VT.UINT64, np.uint64),
        "a.i64": ([-(2**63)], VT.INT64, np.int64),
        "a.f64": ([1e100, -2.0], VT.FLOAT64, np.float64),
        "a.bool": ([True, False, True], VT.BOOL, np.bool_),
    }
    for k, (v, t, _) in arrays.items():
        w.add_key_value(k, v, VT.ARRAY, t)
    w.add_key_value("a.str", ["", "a", "\u00e9\u00e8", "x y"], VT.ARRAY, VT.STRING)
    w.add_key_value("a.nested", [[1, 2], [3]], VT.ARRAY)
    w.add_key_value("a.nested_str", [["a"], ["b", "c"]], VT.ARRAY)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(p) as g:
        md = g.metadata
        assert md["general.architecture"] == "llama"
        for k, (v, t) in scalars.items():
            assert md[k] == v and type(md[k]) is type(v), k
            assert g.value_types[k] == (int(t),)
        for k, (v, t, dt) in arrays.items():
            assert isinstance(md[k], np.ndarray) and md[k].dtype == dt, k
            np.testing.assert_array_equal(md[k], np.array(v, dtype=dt))
            assert g.value_types[k] == (9, int(t))
        assert md["a.str"] == ["", "a", "\u00e9\u00e8", "x y"]
        assert g.value_types["a.str"] == (9, 8)
        assert [a.tolist() for a in md["a.nested"]] == [[1, 2], [3]]
        assert md["a.nested_str"] == [["a"], ["b", "c"]]
        assert g.value_types["a.nested"][:2] == (9, 9)
        assert g.tensors == {}


def write_tensors(tmp_path: Path, alignment: int | None = None) -> tuple[str, dict]:
    p = str(tmp_path / "t.gguf")
    w = gguf.GGUFWriter(p, "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    rng = np.random.default_rng(0)
    arrs = {
        "f32": rng.standard_normal((3, 8)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "q8": rng.integers(0, 255, (4, 34), dtype=np.uint8),  # 4 rows x 1 block of Q8_0
        "f32_3d": rng.standard_normal((2, 3, 4)).astype(np.float32),
    }
    for n, a in arrs.items():
        if n == "q8":
            w.add_tensor(n, a, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p, arrs


@pytest.mark.parametrize("alignment", [None, 64])
def test_tensor_table_and_bytes(tmp_path, alignment):
    p, arrs = write_tensors(tmp_path, alignment)
    ref = gguf.GGUFReader(p)
    with GGUFFile(p) as g:
        assert g.alignment == (alignment or 32)
        assert g.data_offset % g.alignment == 0
        assert list(g.tensors) == list(arrs)
        want = {"f32": DType.F32, "f16": DType.F16, "q8": DType.Q8_0, "f32_3d": DType.F32}
        for t in ref.tensors:
            info = g.tensors[t.name]
            assert info.dtype == want[t.name] and int(t.tensor_type) == info.dtype
            assert info.shape == tuple(int(d) for d in reversed(t.shape))
            assert info.offset == t.data_offset and info.nbytes == t.n_bytes
            assert g.data(t.name).tobytes() == arrs[t.name].tobytes()
        assert g.tensors["q8"].shape == (4, 32) and g.tensors["q8"].nbytes == 4 * 34


def test_zero_copy_views(tmp_path):
    p, _ = write_tensors(tmp_path)
    g = GGUFFile(p)
    a, b = g.data("f32"), g.data("f32")
    assert a.dtype == np.uint8 and a.ndim == 1 and a.flags.c_contiguous
    assert not a.flags.writeable
    assert np.shares_memory(a, b)
    assert base_of(a) is g._mm
    g.close()  # a view is alive: the mapping must stay valid
    assert a.view(np.float32).shape == (24,)
    with pytest.raises(Closed):
        g.data("f32")
    g.close()  # idempotent


def test_unknown_tensor_name(tmp_path):
    p, _ = write_tensors(tmp_path)
    with GGUFFile(p) as g, pytest.raises(MetallicError, match="no tensor named"):
        g.data("nope")


# ---------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFound, match=r"^\[load_gguf\]"):
        GGUFFile(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError):  # the builtin still catches it
        GGUFFile(tmp_path / "absent.gguf")


def test_valid_blob_parses(tmp_path):
    with GGUFFile(write(tmp_path, valid_blob())) as g:
        assert g.metadata == {"general.architecture": "llama", "a.n": 7}
        assert g.tensors["w"].shape == (2, 8) and g.tensors["b"].offset == g.data_offset + 64
        np.testing.assert_array_equal(g.data("w").view("<f4"), np.arange(16))


@pytest.mark.parametrize("magic", [b"GGML", b"\0\0\0\0", b"FUGG"])
def test_bad_magic(tmp_path, magic):
    raises(tmp_path, magic + valid_blob()[4:], UnsupportedFormat, "magic")


def test_empty_and_tiny_files(tmp_path):
    raises(tmp_path, b"", UnsupportedFormat, "magic")
    raises(tmp_path, b"GG", CorruptFile)
    raises(tmp_path, b"GGUF\x03\0\0\0", CorruptFile, "truncated header")


@pytest.mark.parametrize("version", [0, 1, 4, 0x03000000])
def test_bad_version(tmp_path, version):
    raises(tmp_path, build(version=version), UnsupportedFormat, f"version {version}")


def test_big_endian_hint(tmp_path):
    raises(tmp_path, build(version=0x03000000), UnsupportedFormat, "big-endian")


def test_every_truncation_fails_cleanly(tmp_path):
    blob = valid_blob()
    for n in range(len(blob)):
        p = write(tmp_path, blob[:n], f"t{n}.gguf")
        with pytest.raises((CorruptFile, UnsupportedFormat)):
            GGUFFile(p)


@pytest.mark.parametrize("field", ["n_kv", "n_tensors"])
def test_huge_counts_fail_fast(tmp_path, field):
    blob = build(**{field: 2**63})
    t = time.perf_counter()
    raises(tmp_path, blob, CorruptFile, "impossible")
    assert time.perf_counter() - t < 1.0


def test_huge_string_and_array_lengths(tmp_path):
    huge = struct.pack("<Q", 2**62)
    raises(tmp_path, build([huge + b"k" * 16]), CorruptFile, "string length")
    arr = struct.pack("<IQ", 5, 2**61)  # INT32 x 2^61
    raises(tmp_path, build([kv("k.arr", 9, arr)]), CorruptFile, "key k.arr", "array of")
    sarr = struct.pack("<IQ", 8, 2**61)
    raises(tmp_path, build([kv("k.s", 9, sarr)]), CorruptFile, "key k.s", "strings")
    nest = struct.pack("<IQ", 9, 2**61)
    raises(tmp_path, build([kv("k.n", 9, nest)]), CorruptFile, "key k.n", "arrays")
    # A string array whose element length runs past the end.
    bad = struct.pack("<IQ", 8, 2) + gstr("ok") + struct.pack("<Q", 1000) + b"xy"
    raises(tmp_path, build([kv("k.t", 9, bad)]), CorruptFile, "key k.t", "truncated")


def test_bad_values(tmp_path):
    raises(tmp_path, build([kv("k", 13, b"\0" * 8)]), CorruptFile, "key k", "unknown value type")
    raises(tmp_path, build([kv("k", 7, b"\x02")]), CorruptFile, "key k", "BOOL")
    arr = struct.pack("<IQ", 7, 2) + b"\x01\x05"
    raises(tmp_path, build([kv("k", 9, arr)]), CorruptFile, "key k", "BOOL")
    arr = struct.pack("<IQ", 77, 1) + b"\0"
    raises(tmp_path, build([kv("k", 9, arr)]), CorruptFile, "key k", "element type 77")
    raises(tmp_path, build([kv("k", 8, gstr(b"\xff\xfe"))]), CorruptFile, "key k", "UTF-8")
    raises(tmp_path, build([kv(b"bad\xffkey", 4, b"\0" * 4)]), CorruptFile, "UTF-8")
    raises(tmp_path, build([kv(b"", 4, b"\0" * 4)]), CorruptFile, "metadata key", "length 0")
    sarr = struct.pack("<IQ", 8, 3) + gstr("a") + gstr("b") + gstr(b"\xc3")
    raises(tmp_path, build([kv("tok", 9, sarr)]), CorruptFile, "key tok", "element 2", "UTF-8")
    dup = [kv("k", 4, b"\0" * 4), kv("k", 4, b"\1" * 4)]
    raises(tmp_path, build(dup), CorruptFile, "key k", "duplicate")
    deep = struct.pack("<IQ", 9, 1) * 6 + struct.pack("<IQ", 4, 1) + b"\0" * 4
    raises(tmp_path, build([kv("deep", 9, deep)]), CorruptFile, "key deep", "nested")


@pytest.mark.parametrize("align", [0, 3, 48])
def test_bad_alignment(tmp_path, align):
    blob = build([kv("general.alignment", 4, struct.pack("<I", align))])
    raises(tmp_path, blob, CorruptFile, "general.alignment")
    blob = build([kv("general.alignment", 8, gstr("32"))])
    raises(tmp_path, blob, CorruptFile, "general.alignment")


def one_tensor(tmp_path, ne, gtype, off=0, data=b"\0" * 4096, name="t.w", **kw) -> Path:
    return write(tmp_path, build([], [tinfo(name, ne, gtype, off)], data, **kw))


def test_tensor_errors(tmp_path):
    def bad(ne, gtype, *frag, off=0, data=b"\0" * 4096, cls=CorruptFile, name="t.w"):
        p = one_tensor(tmp_path, ne, gtype, off, data, name)
        with pytest.raises(cls) as ei:
            GGUFFile(p)
        assert str(ei.value).startswith(f"[load_gguf] {p}: tensor {name}"), str(ei.value)
        for f in frag:
            assert f in str(ei.value), (f, str(ei.value))

    bad([], 0, "n_dims 0")
    bad([1, 1, 1, 1, 1], 0, "n_dims 5")
    bad([4, 0], 0, "contain 0")
    bad([8], 99, "unknown GGML type id 99")
    bad([256], 16, "IQ2_XXS", cls=UnsupportedDType)
    bad([256], 28, "F64", cls=UnsupportedDType)
    bad([33], 2, "row length 33", "Q4_0 block size 32")
    bad([8], 0, "alignment 32", off=4)
    bad([8], 0, "beyond the file end", off=4096)
    bad([2**63, 2**63, 4, 4], 0, "beyond the file end")
    bad([8], 0, "beyond the file end", data=b"\0" * 31)


def test_tensor_name_rules(tmp_path):
    raises(tmp_path, build([], [tinfo("x" * 65, [8], 0, 0)], b"\0" * 32), CorruptFile, "1..64")
    dup = [tinfo("a", [8], 0, 0), tinfo("a", [8], 0, 32)]
    raises(tmp_path, build([], dup, b"\0" * 64), CorruptFile, "tensor a", "duplicate")


def test_overlapping_tensors(tmp_path):
    tis = [tinfo("a", [16], 0, 0), tinfo("b", [8], 0, 32)]  # a covers 0..64, b 32..64
    raises(tmp_path, build([], tis, b"\0" * 64), CorruptFile, "tensor b", "overlap tensor a")


def test_custom_alignment_applies_to_data_start(tmp_path):
    kvs = [kv("general.alignment", 4, struct.pack("<I", 256))]
    blob = build(kvs, [tinfo("a", [8], 0, 0), tinfo("b", [8], 0, 256)], b"\0" * 288, align=256)
    with GGUFFile(write(tmp_path, blob)) as g:
        assert g.data_offset % 256 == 0 and g.tensors["b"].offset == g.data_offset + 256
    bad = build(kvs, [tinfo("a", [8], 0, 0), tinfo("b", [8], 0, 32)], b"\0" * 288, align=256)
    raises(tmp_path, bad, CorruptFile, "tensor b", "alignment 256")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_mutations_never_crash(tmp_path, data):
    blob = bytearray(valid_blob())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    p = write(tmp_path, bytes(blob[:cut] if data.draw(st.booleans()) else blob), "fz.gguf")
    try:
        GGUFFile(p).close()
    except MetallicError as e:
        assert str(e).startswith("[load_gguf] ")


# ---------------------------------------------------------------------------- real file


def test_smollm2_metadata_and_table(smollm2_path):
    t = time.perf_counter()
    g = GGUFFile(smollm2_path)
    elapsed = time.perf_counter() - t
    md = g.metadata
    assert g.version == 3 and md["general.architecture"] == "llama"
    assert md["llama.embedding_length"] == 576 and md["llama.block_count"] == 30
    assert md["llama.feed_forward_length"] == 1536 and md["llama.attention.head_count"] == 9
    assert md["llama.attention.head_count_kv"] == 3 and md["llama.context_length"] == 8192
    assert md["llama.rope.freq_base"] == 100000.0
    assert md["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert len(md["tokenizer.ggml.tokens"]) == 49152 and len(md["tokenizer.ggml.merges"]) == 48900
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "smollm"
    assert md["tokenizer.ggml.bos_token_id"] == 1 and md["tokenizer.ggml.eos_token_id"] == 2
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert md["tokenizer.ggml.token_type"].dtype == np.int32
    assert "output.weight" not in g.tensors
    counts: dict[DType, int] = {}
    for info in g.tensors.values():
        counts[info.dtype] = counts.get(info.dtype, 0) + 1
    assert counts == {DType.Q4_1: 210, DType.Q8_0: 1, DType.F32: 61}
    ref = gguf.GGUFReader(str(smollm2_path))
    assert [t.name for t in ref.tensors] == list(g.tensors)
    for t in ref.tensors:
        info = g.tensors[t.name]
        assert int(t.tensor_type) == int(info.dtype)
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
        assert (info.offset, info.nbytes) == (t.data_offset, t.n_bytes)
    on = next(t for t in ref.tensors if t.name == "output_norm.weight")
    assert g.data("output_norm.weight").tobytes() == np.asarray(on.data).tobytes()
    g.close()
    assert elapsed < 1.0, f"metadata parse took {elapsed * 1e3:.1f} ms"
