"""Sliding-window KV rings: a windowed layer keeps window + batch_size rows (position p in row
p % rows), not the whole context. Tiny gemma3 (5 local layers of window 8, 1 global), gemma2
(alternating) and mistral (every layer windowed) from tests/tiny_families.py, loaded with
batch_size 1..8 so the rings are 9..16 rows and a 24-token prompt (3x the window) wraps them
several times, in prefill and in decode; everything is compared with the NumPy reference over the
whole prefix (full recomputation), on cpu and through the Metal plan (metal-emulated: rope_kv,
attention_decode and flash_attn index the ring).

Tolerance: TOL_F32 as test_families_engine.py (f32 weights, f32 cache; the ring changes which row
holds a key, not the arithmetic: measured worst 4.5e-7 on cpu, as without rings).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metallic._core")

import emu_harness  # noqa: E402
import metallic  # noqa: E402
import reference as ref  # noqa: E402
import tiny_families as tf  # noqa: E402
import tiny_models as tm  # noqa: E402
from metallic import errors  # noqa: E402
from metallic import generate as gen  # noqa: E402

TOL_F32 = 2e-5
CONTEXT = 64
WINDOW = 8  # tiny_families' sliding_window
RING_FAMILIES = ["gemma3", "gemma2", "mistral"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_ring")


def _model(models_dir, family: str, fmt: str = "gguf") -> tm.TinyModel:
    return tm.make_model(models_dir, family, "f32", fmt, tf.USUAL_TIED[family])


def _load(m: tm.TinyModel, batch_size: int, device: str = "cpu"):
    return metallic.load(
        m.path,
        device=device,
        threads=2,
        context_length=CONTEXT,
        kv_cache_dtype="f32",
        batch_size=batch_size,
    )


def _tokens(m: tm.TinyModel, n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, m.cfg["vocab_size"], n)]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def _windows(model) -> list[int]:
    return list(model._bundle.config["layer_window"])


def _expected_kv_bytes(m: tm.TinyModel, windows: list[int], n: int) -> int:
    """read_kv's size: every position of a global layer, the last min(n, window) of a ring."""
    head_dim = m.cfg.get("head_dim") or m.cfg["hidden_size"] // m.cfg["num_attention_heads"]
    row = 2 * m.cfg["num_key_value_heads"] * head_dim * 4  # K and V, f32
    return sum(row * (min(n, w) if w > 0 else n) for w in windows)


def _decode(engine, tokens: list[int], start: int, n_vocab: int):
    for i in range(start, len(tokens)):
        row = np.zeros((1, n_vocab), np.float32)
        engine.forward(np.array([tokens[i]], np.int32), i, row, False)
        yield i, row[0]


def _check_prefill_decode(m, model, label: str) -> None:
    tokens = _tokens(m, 32, seed=7)
    want = ref.forward(m.cfg, m.ref_weights, tokens)
    got = model.logits(tokens[:24])  # 3x the window, in chunks of batch_size
    err = _rel(got, want[:24])
    assert err <= TOL_F32, f"{label} prefill: rel err {err:.3e}"
    for i, row in _decode(model._engine, tokens, 24, m.cfg["vocab_size"]):
        err = _rel(row, want[i])
        assert err <= TOL_F32, f"{label} decode position {i}: rel err {err:.3e}"


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("family", RING_FAMILIES)
def test_ring_prefill_then_decode_equals_recomputation(models_dir, family, batch_size) -> None:
    m = _model(models_dir, family)
    with _load(m, batch_size) as model:
        windows = _windows(model)
        assert any(w == WINDOW for w in windows)
        assert model._engine.kv_bytes(24) == _expected_kv_bytes(m, windows, 24)
        _check_prefill_decode(m, model, f"{family} batch {batch_size}")


@emu_harness.NEEDS_EMULATOR
@pytest.mark.parametrize("batch_size", [1, 5, 8])
@pytest.mark.parametrize("family", RING_FAMILIES)
def test_ring_through_the_metal_plan(models_dir, family, batch_size) -> None:
    """rope_kv writes row p % rows, attention_decode (1 token) and flash_attn (batches >= 2: its
    8-row tiles cross the ring's end) read them back."""
    m = _model(models_dir, family)
    with _load(m, batch_size, device="metal-emulated") as model:
        _check_prefill_decode(m, model, f"{family} metal-emulated batch {batch_size}")


@pytest.mark.parametrize("family", ["gemma3", "mistral"])
def test_prefix_reuse_falls_back_when_the_ring_lost_the_window(models_dir, family) -> None:
    """After 30 tokens through a ring of 12 rows (window 8 + batch 4), rows of positions < 18 are
    gone: a prompt sharing 20 tokens cannot start at 20 (its window reaches back to 13), so it is
    recomputed from 0; one sharing 29 tokens (window back to 22) reuses them. Starting at 20
    anyway gives other logits: the check is what keeps the answer right."""
    m = _model(models_dir, family)
    a = _tokens(m, 30, seed=11)
    b = a[:20] + _tokens(m, 6, seed=12)
    c = a[:29] + _tokens(m, 1, seed=13)
    with _load(m, 4) as model:
        engine = model._engine
        buf = np.zeros((1, m.cfg["vocab_size"]), np.float32)
        for ids, expect_reuse in ((b, 0), (c, 29)):
            model.logits(a)
            cache = list(model._cache)
            assert not engine.kv_reusable(20) and engine.kv_reusable(29)
            assert gen.prefill(engine, cache, ids, buf) == expect_reuse
            assert cache == ids
            err = _rel(buf[0], ref.forward(m.cfg, m.ref_weights, ids)[-1])
            assert err <= TOL_F32, f"{family} reuse {expect_reuse}: rel err {err:.3e}"
        model.logits(a)
        engine.forward(np.asarray(b[20:], np.int32), 20, buf, False)  # what the check prevents
        assert _rel(buf[0], ref.forward(m.cfg, m.ref_weights, b)[-1]) > 1e-3


@pytest.mark.parametrize("family", ["gemma3", "mistral"])
def test_prompt_cache_keeps_the_last_window(models_dir, family, tmp_path) -> None:
    """A prompt-cache file holds a ring layer's last min(n, window) positions: loaded into a
    model with another batch_size (another ring size), decoding continues exactly; reading rows a
    ring no longer holds is a typed error, not stale rows."""
    m = _model(models_dir, family)
    tokens = _tokens(m, 32, seed=21)
    want = ref.forward(m.cfg, m.ref_weights, tokens)
    path = tmp_path / "ring.mkv"
    with _load(m, 4) as model:
        model.logits(tokens[:24])
        model.save_prompt_cache(path)
        engine = model._engine
        with pytest.raises(errors.InvalidArgument, match="no longer in its sliding-window ring"):
            engine.read_kv(10, np.empty(engine.kv_bytes(10), np.uint8))
    with _load(m, 7) as model:
        assert model.load_prompt_cache(path) == 24
        engine = model._engine
        assert engine.kv_reusable(24) and engine.kv_reusable(23) and not engine.kv_reusable(22)
        for i, row in _decode(engine, tokens, 24, m.cfg["vocab_size"]):
            err = _rel(row, want[i])
            assert err <= TOL_F32, f"{family} after prompt cache, position {i}: {err:.3e}"


def test_ring_memory_is_window_plus_batch(models_dir) -> None:
    """The cache holds window + batch_size rows per windowed layer and the context per global
    one: at 4096 tokens gemma3's cache (5 of 6 layers local) is ~1/6 of a full one."""
    m = _model(models_dir, "gemma3")
    with _load(m, 4) as model:
        windows = _windows(model)
    ctx = 4096
    with metallic.load(m.path, device="cpu", context_length=ctx, batch_size=16) as model:
        head_dim = m.cfg.get("head_dim") or m.cfg["hidden_size"] // m.cfg["num_attention_heads"]
        row = 2 * m.cfg["num_key_value_heads"] * head_dim * 2  # K and V, f16
        want = sum(row * (w + 16 if w > 0 else ctx) for w in windows)
        assert model._engine.kv_cache_bytes == want
        assert want * 5 < row * ctx * len(windows)


def test_batch_size_is_checked(models_dir) -> None:
    m = _model(models_dir, "mistral")
    for bad in (0, -1, 8193, 2.0, True):
        with pytest.raises(errors.InvalidArgument, match="batch_size"):
            _load(m, bad)


@pytest.mark.slow
def test_gemma3_270m_ring_equals_one_pass(gemma3_path) -> None:
    """The real Gemma-3-270M Q4_K_M (window 512 on 15 of 18 layers): a 700-token prompt (as
    600 + 100) in chunks of 64 through rings of 576 rows, then 4 decoded tokens, gives bit for
    bit the logits of the same calls in single passes over a cache of every position
    (batch_size 1024: no ring). Equality,
    not a tolerance: the kernels are batch invariant (a token's result does not depend on the
    pass it ran in) and a ring changes only which row holds a key."""
    ids = [int(t) for t in np.random.default_rng(3).integers(10, 200_000, 704)]
    rows = {}
    for batch_size in (64, 1024):
        with metallic.load(
            gemma3_path, device="cpu", threads=2, context_length=1024, batch_size=batch_size
        ) as model:
            engine = model._engine
            row = np.empty((1, engine.n_vocab), np.float32)
            got = []
            for a, b in ((0, 600), (600, 700), *((i, i + 1) for i in range(700, 704))):
                engine.forward(np.asarray(ids[a:b], np.int32), a, row, False)
                got.append(row.copy())
            rows[batch_size] = np.concatenate(got)
    np.testing.assert_array_equal(rows[64], rows[1024])
