"""Hostile input: malformed model files must end in a typed ``MetallicError``, never a crash, a
hang, an untyped exception or unbounded memory.

* ``test_mutation_fuzz``: the seeded mutation fuzzer of ``tests/fuzz`` (see ``fuzz.runner``)
  over small GGUF files (f32, f16, bf16, q8_0, q4_0, q4_1, K-quants) and HF folders (config.json,
  safetensors, sharded index, tokenizer files, chat templates). Each case runs in a forked child
  with an address-space cap and a timeout. ``METALLIC_FUZZ_CASES`` (default 3000),
  ``METALLIC_FUZZ_SEED``, ``METALLIC_FUZZ_WORKERS``, ``METALLIC_FUZZ_TIMEOUT``,
  ``METALLIC_FUZZ_MEM_MB`` (0 under AddressSanitizer) and ``METALLIC_FUZZ_OUT`` (where
  reproducers go) tune it.
* Hypothesis strategies build GGUF and safetensors headers and config.json dicts from scratch;
  those readers are pure Python, so they run in-process.
"""

from __future__ import annotations

import json
import math
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import corpus, runner
from fuzz.gguf_io import encode_value, gstr
from metallic.errors import MetallicError
from metallic.families import get_family
from metallic.gguf import GGUFFile
from metallic.loader import open_model
from metallic.safetensors import SafetensorsFile


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@pytest.fixture(scope="session")
def fuzz_corpus(tmp_path_factory):
    return corpus.build(tmp_path_factory.mktemp("fuzz") / "corpus")


@pytest.fixture()
def work(tmp_path):
    out = os.environ.get("METALLIC_FUZZ_OUT")
    return tmp_path if not out else __import__("pathlib").Path(out)


def _run_ops(fuzz_corpus, work, jobs, timeout=30.0, mem_mb=None):
    mem = _env_int("METALLIC_FUZZ_MEM_MB", 2048) if mem_mb is None else mem_mb
    return runner.run_jobs(
        jobs, corpus=fuzz_corpus, seed=0, work=work, tag="t", timeout=timeout, mem_mb=mem
    )


def test_seeds_load_and_run_cleanly(fuzz_corpus, work):
    """Unmutated seeds load and run every step, so mutations start from realistic files."""
    names = sorted(corpus.SEEDS)
    results = _run_ops(fuzz_corpus, work, [{"seed_name": n, "ops": []} for n in names])
    for name, res in zip(names, results, strict=True):
        assert res["outcome"] == "ok" and not res["steps"], (name, res)


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [("segv", "crash"), ("hang", "hang"), ("untyped", "bad"), ("alloc", "bad")],
)
def test_harness_catches_each_failure_kind(fuzz_corpus, work, kind, outcome):
    if kind == "alloc" and _env_int("METALLIC_FUZZ_MEM_MB", 2048) == 0:
        pytest.skip("no address-space cap in this run")
    if kind == "segv" and "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("AddressSanitizer would report the deliberate SIGSEGV as a finding")
    job = {"seed_name": "gguf-llama-q8_0", "ops": [["selftest", kind]]}
    (res,) = _run_ops(fuzz_corpus, work, [job], timeout=3.0)
    assert res["outcome"] == outcome, res


def test_mutation_fuzz(fuzz_corpus, work):
    cases = _env_int("METALLIC_FUZZ_CASES", 3000)
    workers = _env_int("METALLIC_FUZZ_WORKERS", min(4, os.cpu_count() or 1))
    report = runner.run(
        fuzz_corpus,
        seed=_env_int("METALLIC_FUZZ_SEED", 0),
        cases=cases,
        workers=workers,
        work=work,
        timeout=float(os.environ.get("METALLIC_FUZZ_TIMEOUT", 30)),
        mem_mb=_env_int("METALLIC_FUZZ_MEM_MB", 2048),
    )
    print(report.summary())
    assert not report.failures, report.summary() + "\n" + report.describe_failures()
    # The mutations must also reach the engine, not only the header checks.
    assert report.outcomes["ok"] >= cases // 20, report.summary()
    assert report.outcomes["typed"] >= cases // 2, report.summary()


# ---------------------------------------------------------------------------- hypothesis

_VTYPES = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12]
_INT_RANGE = {0: (0, 255), 1: (-128, 127), 2: (0, 2**16 - 1), 3: (-(2**15), 2**15 - 1)}
_INT_RANGE |= {4: (0, 2**32 - 1), 5: (-(2**31), 2**31 - 1), 10: (0, 2**64 - 1)}
_INT_RANGE |= {11: (-(2**63), 2**63 - 1), 7: (0, 1)}
_u64 = st.one_of(st.integers(0, 64), st.sampled_from([2**31, 2**32, 2**63, 2**64 - 1]))
_u64 |= st.integers(0, 2**64 - 1)


def _scalar(vtype: int) -> st.SearchStrategy[bytes]:
    if vtype in (6, 12):
        return st.floats(width=32 if vtype == 6 else 64).map(lambda v: encode_value(vtype, v))
    lo, hi = _INT_RANGE[vtype]
    return st.integers(lo, hi).map(lambda v: encode_value(vtype, v))


@st.composite
def _gguf_kv(draw) -> bytes:
    key = draw(st.sampled_from(["general.architecture", "general.alignment", "llama.block_count"]))
    key = draw(st.one_of(st.just(key), st.text(min_size=0, max_size=12)))
    vtype = draw(st.sampled_from([*_VTYPES, 8, 9, 13, 2**32 - 1]))
    if vtype in _VTYPES:
        payload = draw(_scalar(vtype))
    elif vtype == 8:
        payload = gstr(draw(st.sampled_from(["llama", "qwen2", ""])))
    elif vtype == 9:
        etype = draw(st.sampled_from([4, 8, 9, 7, 99]))
        n = draw(_u64)
        body = draw(st.binary(max_size=64))
        payload = struct.pack("<IQ", etype, n) + body
    else:
        payload = draw(st.binary(max_size=16))
    return gstr(key.encode("utf-8", "surrogatepass")) + struct.pack("<I", vtype) + payload


@st.composite
def _gguf_tensor(draw) -> bytes:
    name = draw(st.sampled_from(["token_embd.weight", "output_norm.weight", "t", ""]))
    dims = draw(st.lists(_u64, min_size=0, max_size=5))
    n_dims = draw(st.one_of(st.just(len(dims)), st.integers(0, 2**32 - 1)))
    gtype = draw(st.one_of(st.integers(0, 45), st.just(2**32 - 1)))
    off = draw(st.one_of(st.sampled_from([0, 32, 64, 1]), _u64))
    return (
        gstr(name) + struct.pack(f"<I{len(dims)}Q", n_dims, *dims) + struct.pack("<IQ", gtype, off)
    )


@st.composite
def gguf_files(draw) -> bytes:
    """Whole GGUF files: header fields, KVs and tensor infos from strategies, some data."""
    kvs = draw(st.lists(_gguf_kv(), max_size=4))
    tis = draw(st.lists(_gguf_tensor(), max_size=3))
    version = draw(st.sampled_from([3, 3, 2, 1, 4, 2**32 - 1]))
    n_t = draw(st.one_of(st.just(len(tis)), _u64))
    n_kv = draw(st.one_of(st.just(len(kvs)), _u64))
    body = b"GGUF" + struct.pack("<IQQ", version, n_t, n_kv) + b"".join(kvs) + b"".join(tis)
    body += b"\0" * (-len(body) % 32)
    return body + draw(st.binary(max_size=256))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=gguf_files())
def test_gguf_headers_from_strategies(tmp_path, blob):
    p = tmp_path / "h.gguf"
    p.write_bytes(blob)
    try:
        with GGUFFile(p) as g:
            size = len(blob)
            spans = sorted((t.offset, t.offset + t.nbytes) for t in g.tensors.values())
            for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False):
                assert e0 <= s1
            for t in g.tensors.values():
                assert t.offset % g.alignment == 0 and t.offset + t.nbytes <= size
                assert all(d > 0 for d in t.shape) and len(g.data(t.name)) == t.nbytes
        open_model(p).close()
    except MetallicError:
        pass


_st_dtype = st.one_of(st.sampled_from(["F32", "F16", "BF16", "I8", "F64", "X"]), st.integers())
_st_shape = st.one_of(
    st.lists(st.one_of(st.integers(-2, 9), st.sampled_from([2**63, 2**64])), max_size=9),
    st.none(),
    st.text(max_size=3),
)
_st_offs = st.one_of(st.lists(st.integers(-8, 80) | st.just(2**64), max_size=3), st.none())
_st_entry = st.one_of(
    st.fixed_dictionaries({"dtype": _st_dtype, "shape": _st_shape, "data_offsets": _st_offs}),
    st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets"]), st.integers()),
    st.integers(),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]), _st_entry, max_size=3),
    data=st.binary(max_size=64),
    length=st.one_of(st.none(), _u64),
)
def test_safetensors_headers_from_strategies(tmp_path, header, data, length):
    hb = json.dumps(header).encode()
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(hb) if length is None else length) + hb + data)
    try:
        with SafetensorsFile(p) as f:
            for t in f.tensors.values():
                assert t.offset + t.nbytes <= p.stat().st_size
                assert (
                    len(f.data(t.name))
                    == t.nbytes
                    == math.prod(t.shape) * (4 if t.dtype.name == "F32" else 2)
                )
    except MetallicError:
        pass


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_CONFIG_KEYS = [
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "rope_scaling",
    "tie_word_embeddings",
    "hidden_act",
    "sliding_window",
    "use_sliding_window",
    "attention_bias",
    "mlp_bias",
    "partial_rotary_factor",
]
_VALID = {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}
_VALID |= {"num_attention_heads": 2, "rms_norm_eps": 1e-5, "vocab_size": 333}


@settings(max_examples=400, deadline=None)
@given(
    family=st.sampled_from(["llama", "qwen2"]),
    changes=st.dictionaries(st.sampled_from(_CONFIG_KEYS), _json_value, max_size=3),
)
def test_hf_config_values_from_strategies(family, changes):
    fam = get_family(family)
    try:
        args = fam.args_from_hf({**_VALID, **changes}, source="config.json")
        cfg = fam.native_config(args, "hf", source="config.json")
    except MetallicError:
        return
    for key in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff"):
        assert type(cfg[key]) is int and cfg[key] > 0, (key, cfg[key])
    assert cfg["n_head"] % cfg["n_head_kv"] == 0
    assert all(math.isfinite(x) and x > 0 for x in cfg["rope_inv_freq"])
    assert 0 < cfg["rms_eps"] < 1
