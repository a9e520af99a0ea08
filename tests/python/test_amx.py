"""AMX-INT8 tiles for matmuls over repacked weights (native/cpu/amx.h, cpu/arch/x86_amx.cpp).

The tile kernels multiply the same integers as the SIMD kernels (x86_x8.cpp) and take the same
float steps per output, so their results must be bit-identical to the SIMD path's, which
test_repack.py and test_kquants.py check against numpy; one numpy check here as well. Two tile
backends: "amx-emulated" runs the tile instructions in portable C++ (Intel's pseudocode), so
the tiling, weight-tile decoding and epilogue are tested on every machine; "amx" runs the
hardware tiles and is tested only where ``kernels.amx_status()`` says this process may use
them (Sapphire Rapids or later, Linux granting tile data); elsewhere those tests skip and say why.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kquants import _tid, assert_within, reference

import kquant_np as kq
from metallic import _core, errors

K = _core.kernels
AMX_USABLE, AMX_REASON = K.amx_status()
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = kq.Q4_0, kq.Q4_1, kq.Q5_0, kq.Q5_1, kq.Q8_0
Q4_K, Q5_K, Q6_K = kq.Q4_K, kq.Q5_K, kq.Q6_K
TYPES = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K]  # every type the CPU device repacks
NAMES = {t: _tid(t) for t in TYPES}
# Engines with the tile path: emulated everywhere the SIMD kernels exist, hardware where usable.
ENGINES = [
    "amx-emulated",
    pytest.param(
        "amx", marks=pytest.mark.skipif(not AMX_USABLE, reason=f"no AMX here: {AMX_REASON}")
    ),
]
pytestmark = pytest.mark.skipif(
    not K.simd_available(), reason="repacked weights need the AVX2 kernels"
)


def random_blocks(dtype: int, rows: int, cols: int, rng, scale_exp: tuple[int, int] = (0, 31)):
    return kq.random_blocks(dtype, rows, cols, rng, scale_exp).reshape(-1)


def cols_for(dtype: int, blocks: int) -> int:
    return kq.BLOCK[dtype][0] * blocks


def run(dtype, raw, rows, cols, x, tiles, threads=2, **kw):
    return K.matmul(dtype, raw, rows, cols, x, threads, repack=True, tiles=tiles, **kw)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", TYPES, ids=lambda t: NAMES[t])
# rows: one group, a pair, a pair + a single group, many groups + tail rows; blocks per row: 1, 3.
@pytest.mark.parametrize("rows, blocks", [(8, 1), (16, 3), (24, 1), (77, 3), (13, 1)])
@pytest.mark.parametrize("nt", [1, 2, 15, 16, 17, 33])
def test_tiles_bit_identical_to_simd(engine, dtype, rows, blocks, nt):
    rng = np.random.default_rng(rows * 1000 + nt * 10 + dtype)
    cols = cols_for(dtype, blocks)
    raw = random_blocks(dtype, rows, cols, rng, scale_exp=(5, 20))
    x = (rng.standard_normal((nt, cols)) * rng.choice([0.01, 1.0, 30.0], (nt, 1))).astype(
        np.float32
    )
    want = run(dtype, raw, rows, cols, x, "simd")
    got = run(dtype, raw, rows, cols, x, engine)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", TYPES, ids=lambda t: NAMES[t])
@pytest.mark.parametrize("threads", [1, 3])
def test_tiles_bias_accumulate_threads(engine, dtype, threads):
    """Odd group ranges per thread (a range may start or end inside a pair), bias, accumulate."""
    rng = np.random.default_rng(dtype + threads)
    rows, nt = 45, 19
    cols = cols_for(dtype, 2)
    raw = random_blocks(dtype, rows, cols, rng, scale_exp=(5, 20))
    x = rng.standard_normal((nt, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    init = rng.standard_normal((nt, rows)).astype(np.float32)
    want = run(dtype, raw, rows, cols, x, "simd", threads, bias=bias, accumulate_into=init)
    got = run(dtype, raw, rows, cols, x, engine, threads, bias=bias, accumulate_into=init)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [Q5_0, Q4_K, Q5_K, Q6_K], ids=lambda t: NAMES[t])
def test_tiles_vs_numpy(engine, dtype):
    """Independent of the SIMD path: within test_kquants' rounding bound of the exact dot."""
    rng = np.random.default_rng(7 + dtype)
    rows, nt, cols = 24, 21, 512
    raw = random_blocks(dtype, rows, cols, rng, scale_exp=(8, 18))
    x = rng.standard_normal((nt, cols)).astype(np.float32)
    exact, bound = reference(dtype, raw, rows, cols, x)
    assert_within(run(dtype, raw, rows, cols, x, engine), exact, bound, f"{engine} {NAMES[dtype]}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(TYPES),
    rows=st.integers(8, 40),
    blocks=st.integers(1, 3),
    nt=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    scales=st.sampled_from([(0, 31), (0, 4), (26, 31), (10, 16)]),  # incl. subnormal and 2**15
    threads=st.integers(1, 3),
)
def test_tiles_property(dtype, rows, blocks, nt, seed, scales, threads):
    rng = np.random.default_rng(seed)
    cols = cols_for(dtype, blocks)
    raw = random_blocks(dtype, rows, cols, rng, scale_exp=scales)
    x = (rng.standard_normal((nt, cols)) * rng.choice([1e-6, 1.0, 1e4])).astype(np.float32)
    want = run(dtype, raw, rows, cols, x, "simd", threads)
    for engine in ["amx-emulated"] + (["amx"] if AMX_USABLE else []):
        np.testing.assert_array_equal(run(dtype, raw, rows, cols, x, engine, threads), want)


def test_amx_status_is_typed():
    usable, reason = K.amx_status()
    assert isinstance(usable, bool) and isinstance(reason, str)
    assert usable == (reason == ""), reason


def test_amx_request_follows_status():
    """tiles="amx" runs where amx_status() says usable, else a typed error carrying its reason."""
    raw = random_blocks(Q4_0, 8, 32, np.random.default_rng(0))
    x = np.ones((2, 32), np.float32)
    if AMX_USABLE:
        np.testing.assert_array_equal(
            run(Q4_0, raw, 8, 32, x, "amx"), run(Q4_0, raw, 8, 32, x, "simd")
        )
        return
    with pytest.raises(errors.DeviceUnavailable, match=r"\[cpu\].*amx") as e:
        run(Q4_0, raw, 8, 32, x, "amx")
    assert AMX_REASON in str(e.value)


def test_unknown_tiles_name_is_rejected():
    raw = random_blocks(Q4_0, 8, 32, np.random.default_rng(0))
    with pytest.raises(errors.InvalidArgument, match=r"\[kernels.matmul\] tiles"):
        run(Q4_0, raw, 8, 32, np.ones((2, 32), np.float32), "vnni")


def test_bad_metallic_amx_environment_is_rejected(monkeypatch):
    raw = random_blocks(Q4_0, 8, 32, np.random.default_rng(0))
    monkeypatch.setenv("METALLIC_AMX", "yes")
    with pytest.raises(errors.InvalidArgument, match=r"\[cpu\] METALLIC_AMX"):
        run(Q4_0, raw, 8, 32, np.ones((2, 32), np.float32), "auto")
    monkeypatch.setenv("METALLIC_AMX", "emulate")  # auto + emulate: the emulated tiles, same bits
    x = np.random.default_rng(1).standard_normal((17, 32)).astype(np.float32)
    got = run(Q4_0, raw, 8, 32, x, "auto")
    np.testing.assert_array_equal(got, run(Q4_0, raw, 8, 32, x, "simd"))


@pytest.mark.parametrize("amx", ["emulate"] + (["1"] if AMX_USABLE else []))
def test_tiny_q4_k_m_model_logits_equal_with_tiles(tmp_path, monkeypatch, amx):
    """A whole model (test_kquants' Q4_K_M-like mix: Q4_K, Q6_K, Q5_0, Q8_0 with fused QKV and
    gate/up calls) gives the same logits bit for bit with the tiles as with the SIMD kernels, for
    prefills below, at and above the automatic threshold and for the decode steps after them."""
    from test_kquants import _tiny_q4_k_m

    import metallic

    path, cfg, _, _ = _tiny_q4_k_m(tmp_path, monkeypatch)
    rng = np.random.default_rng(5)
    prompts = [[int(t) for t in rng.integers(0, cfg["vocab_size"], n)] for n in (3, 16, 41)]

    def logits(env: str):
        monkeypatch.setenv("METALLIC_AMX", env)
        with metallic.load(path, device="cpu", threads=2, context_length=64) as model:
            out = [model.logits(p) for p in prompts]
            out.append(np.asarray(model.generate(prompts[2], max_tokens=4, temperature=0)))
            return out

    want, got = logits("0"), logits(amx)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
