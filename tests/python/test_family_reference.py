"""The NumPy reference for qwen3, gemma3, gemma2, mistral and phi3 against HF transformers, and the
tiny models' GGUF layout against their HF variant.

* ``TOL_HF = 2e-6`` (relative to max|logit| of the compared block): the fixtures are transformers'
  float32 eager logits (scripts/make_family_fixtures.py); the reference runs in float64. The
  difference is transformers' float32 rounding: the reference itself run in float32 lands
  7.7e-8 .. 4.1e-7 from its float64 result on these prompts, and the measured distance to the
  fixtures is 9.3e-8 .. 5.6e-7 (worst: phi3 at 17 tokens), so 2e-6 leaves a 3.5x margin. Every
  feature the fixtures exercise moves the logits by >= 3.4e-2 when switched off or changed
  (window off or +-1, soft-caps, RoPE bases, scaling, layer pattern, longrope side, attention
  factor, query_pre_attn_scalar): :func:`test_each_feature_moves_the_logits` asserts >= 1e-2.
* llama.cpp (llama-cpp-python, an optional benchmark dependency; the test skips without it) runs
  the GGUF files as a third reference, under its own documented choices: no window for the llama
  arch (so mistral only at 1 and 7 tokens), phi3's long factors whenever n_ctx (64) > 16, float32
  KV cache requested. qwen3 / mistral / phi3 measure 1.4e-7 .. 3.9e-7 (``TOL_F32``); gemma
  3.8e-5 .. 8.7e-5, because ggml's CPU GELU reads an f16 table (the input and the result rounded
  to f16, ~2^-11 relative; emulating that brings gemma2 to <= 3.3e-6), so ``TOL_GELU_F16 = 5e-4``,
  still 60x below the smallest feature effect.
* GGUF read back (``tiny_gguf_read``) vs the HF model: identical weights (f32, gemma's 1 + w is
  exact on the 2^-12 grid of ``tiny_families.NORM_GRID``); the configs differ only where GGUF
  stores float32: rms_norm_eps 1e-6 becomes 1e-6 * (1 - 2.5e-8), moving the logits ~3e-14
  (``TOL_GGUF = 1e-12``); phi3's attention factor sqrt(2) is stored as float32 (relative change
  <= 2^-24, squared on the rotated scores: <= 1.2e-7 on the logits; measured 2.9e-8,
  ``TOL_GGUF_PHI3 = 2e-7``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

import reference as ref
import tiny_families as tf
import tiny_models as tm
from tiny_gguf_read import read_family_gguf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "families"
TOL_HF = 2e-6
TOL_GGUF = 1e-12
TOL_GGUF_PHI3 = 2e-7
TOL_F32 = 2e-6
TOL_GELU_F16 = 5e-4
FEATURE_MIN = 1e-2
CASES = [(name, n) for name, (_, _, lengths) in tf.FIXTURES.items() for n in lengths]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_family_models")


@functools.cache
def _fixture(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def _model(models_dir: Path, name: str, fmt: str = "hf", dtype: str = "f32") -> tm.TinyModel:
    family, overrides, _ = tf.FIXTURES[name]
    return tm.make_model(models_dir, family, dtype, fmt, tf.USUAL_TIED[family], 0, **overrides)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _case(models_dir: Path, name: str, n: int):
    m, fx = _model(models_dir, name), _fixture(name)
    assert str(fx["fingerprint"]) == tf.fingerprint(m.cfg, m.ref_weights), (
        f"{name}: tests/fixtures/families/{name}.npz was made from other weights or config; "
        "rerun scripts/make_family_fixtures.py"
    )
    tokens = [int(t) for t in fx[f"tokens_{n}"]]
    assert tokens == tf.fixture_tokens(n, m.cfg["vocab_size"])
    return m, tokens, fx[f"logits_{n}"].astype(np.float64)


# ----------------------------------------------------------------------------- vs transformers


@pytest.mark.parametrize("name,n", CASES)
def test_reference_matches_transformers(models_dir, name: str, n: int) -> None:
    m, tokens, want = _case(models_dir, name, n)
    got = ref.forward(m.cfg, m.ref_weights, tokens)
    assert got.shape == want.shape == (n, m.cfg["vocab_size"])
    err = _rel(got, want)
    assert err <= TOL_HF, f"{name} n={n}: rel err {err:.2e} > {TOL_HF:.0e}"


def test_fixture_layer_types_are_the_references() -> None:
    # The layer kinds transformers resolved (recorded by the script) are the reference's own.
    for name, (family, overrides, _) in tf.FIXTURES.items():
        hf_types = json.loads(str(_fixture(name)["layer_types"]))
        cfg = tf.family_config(family, tf.USUAL_TIED[family], "float32", {}, **overrides)
        if hf_types is not None:  # mistral and phi3 configs have no layer_types attribute
            assert ref.layer_types(cfg) == hf_types, name


# (fixture, length, config changes, forward kwargs): each must move the logits off the fixture.
FEATURES = [
    ("mistral", 24, {"sliding_window": None}, {}),
    ("mistral", 24, {"sliding_window": 7}, {}),
    ("mistral", 24, {"sliding_window": 9}, {}),
    ("gemma2", 24, {"sliding_window": 7}, {}),
    ("gemma2", 24, {"sliding_window": 9}, {}),
    ("gemma2", 24, {"attn_logit_softcapping": None}, {}),
    ("gemma2", 24, {"final_logit_softcapping": None}, {}),
    ("gemma2-scalar16", 24, {"query_pre_attn_scalar": 32}, {}),
    ("gemma3", 24, {"sliding_window": 9}, {}),
    ("gemma3", 24, {"rope_local_base_freq": 1e6}, {}),
    ("gemma3", 24, {"rope_scaling": None}, {}),
    ("gemma3", 24, {"layer_types": ["sliding_attention"] * 7}, {}),
    ("gemma3-pattern", 24, {"sliding_window_pattern": 3}, {}),
    ("phi3", 16, {}, {"longrope_long": True}),
    ("phi3", 17, {}, {"longrope_long": False}),
    ("phi3", 7, {"rope_scaling": {**tf.PHI3_LONGROPE, "attention_factor": 1.0}}, {}),
    ("qwen3", 24, {"rope_theta": 1e4}, {}),
]


@pytest.mark.parametrize("name,n,change,kwargs", FEATURES)
def test_each_feature_moves_the_logits(models_dir, name, n, change, kwargs) -> None:
    m, tokens, want = _case(models_dir, name, n)
    got = ref.forward({**m.cfg, **change}, m.ref_weights, tokens, **kwargs)
    assert _rel(got, want) >= FEATURE_MIN, f"{name} n={n} {change} {kwargs}: no effect"


# ----------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("family", tf.FAMILIES)
def test_forward_is_causal(models_dir, family: str) -> None:
    # Prefixes reproduce the full prompt's rows (phi3: with the longrope side held fixed, since
    # transformers picks it per call from the prompt length).
    m = _model(models_dir, family, "gguf", "q8_0")
    kwargs = {"act_quant": m.weight_dtypes, "kv_f16": True, "longrope_long": True}
    tokens = tf.fixture_tokens(24, m.cfg["vocab_size"])
    full = ref.forward(m.cfg, m.ref_weights, tokens, **kwargs)
    for k in (1, 8, 9, 17):
        prefix = ref.forward(m.cfg, m.ref_weights, tokens[:k], **kwargs)
        # float64 math; only BLAS blocking differs between the two shapes (~1e-15 relative).
        np.testing.assert_allclose(prefix, full[:k], rtol=0, atol=1e-12 * np.abs(full).max())


def test_sliding_window_sees_the_last_w_keys() -> None:
    # q = 0: uniform weights over the visible keys; v one-hot by position reveals which.
    n, w = 12, 4
    q, k = np.zeros((n, 1, n)), np.zeros((n, 1, n))
    v = np.eye(n)[:, None, :]
    out = ref.causal_attention(q, k, v, 1.0, window=w)
    for t in range(n):
        visible = np.arange(max(0, t - w + 1), t + 1)  # t-W+1 .. t
        np.testing.assert_allclose(out[t], np.isin(np.arange(n), visible) / len(visible))


def test_embed_scale_is_rounded_to_the_model_dtype() -> None:
    # transformers' comment in modeling_gemma2.py: sqrt(3072) = 55.4256 becomes 55.5 in bfloat16.
    s = np.sqrt(3072.0)
    assert ref.round_to_model_dtype(s, {"torch_dtype": "bfloat16"}) == 55.5
    assert ref.round_to_model_dtype(s, {"torch_dtype": "float16"}) == 55.4375
    assert ref.round_to_model_dtype(s, {}) == float(np.float32(s)) != s


def test_partial_rope_turns_the_head_and_keeps_the_tail() -> None:
    x = np.random.default_rng(0).standard_normal((5, 2, 16))
    rope = ref.Rope(ref.rope_inv_freq(8, 10000.0), mscale=1.5)
    y = ref.apply_rope(x, np.arange(5), rope)
    np.testing.assert_array_equal(y[..., 8:], x[..., 8:])
    pairs = lambda a: a[..., :4] ** 2 + a[..., 4:8] ** 2  # noqa: E731  (rotate-halves pairs)
    np.testing.assert_allclose(pairs(y), 1.5**2 * pairs(x), rtol=1e-13)


def test_longrope_switches_after_the_original_length() -> None:
    cfg = tf.family_config("phi3", True, "float32", {})
    base = ref.rope_inv_freq(8, cfg["rope_theta"])
    short, long = (np.asarray(tf.PHI3_LONGROPE[k]) for k in ("short_factor", "long_factor"))
    np.testing.assert_allclose(ref.rope_for_layer(cfg, seq_len=16).inv_freq, base / short)
    np.testing.assert_allclose(ref.rope_for_layer(cfg, seq_len=17).inv_freq, base / long)
    # factor = 256 / 16 = 16: sqrt(1 + ln 16 / ln 16)
    assert ref.rope_for_layer(cfg, seq_len=1).mscale == pytest.approx(np.sqrt(2.0), rel=1e-15)


# ----------------------------------------------------------------------------- GGUF layout


@pytest.mark.parametrize("family", tf.FAMILIES)
def test_gguf_reads_back_to_the_hf_model(models_dir, family: str) -> None:
    hf, gg = _model(models_dir, family, "hf"), _model(models_dir, family, "gguf")
    cfg, weights, dtypes = read_family_gguf(gg.path)
    assert set(weights) == set(hf.ref_weights) == set(gg.ref_weights)
    for name, values in hf.ref_weights.items():
        np.testing.assert_array_equal(weights[name], values, err_msg=name)
        np.testing.assert_array_equal(gg.ref_weights[name], values, err_msg=name)
    assert set(dtypes.values()) == {"f32"}
    tol = TOL_GGUF_PHI3 if family == "phi3" else TOL_GGUF
    for n in tf.FIXTURES[family][2]:
        tokens = tf.fixture_tokens(n, hf.cfg["vocab_size"])
        want = ref.forward(hf.cfg, hf.ref_weights, tokens)
        err = _rel(ref.forward(cfg, weights, tokens), want)
        assert err <= tol, f"{family} n={n}: GGUF read back differs by {err:.2e}"


@pytest.mark.parametrize("dtype", ["q8_0", "q4_1", "bf16"])
@pytest.mark.parametrize("family", tf.FAMILIES)
def test_gguf_tensors_round_trip(models_dir, family: str, dtype: str) -> None:
    m = _model(models_dir, family, "gguf", dtype)
    _, weights, dtypes = read_family_gguf(m.path)
    for name, values in m.ref_weights.items():
        np.testing.assert_array_equal(weights[name], values, err_msg=name)
        assert dtypes[name] == (dtype if values.ndim == 2 else "f32"), name


# The keys each family's file carries, restated from llama.cpp's convert_hf_to_gguf.py.
EXPECTED_KEYS = {
    "qwen3": {
        "attention.key_length": 32,
        "attention.value_length": 32,
        "rope.freq_base": 1e6,
        "rope.dimension_count": None,
    },
    "gemma3": {
        "attention.key_length": 32,
        "attention.sliding_window": 8,
        "rope.freq_base": 1e6,
        "rope.freq_base_swa": 1e4,
        "rope.scaling.type": "linear",
        "rope.scaling.factor": 8.0,
        "final_logit_softcapping": None,
    },
    "gemma2": {
        "attention.key_length": 32,
        "attention.sliding_window": 8,
        "attn_logit_softcapping": 3.0,
        "final_logit_softcapping": 10.0,
        "rope.freq_base": None,
    },
    "mistral": {
        "attention.key_length": 16,
        "attention.sliding_window": 8,
        "rope.freq_base": 1e6,
        "rope.dimension_count": 16,
        "vocab_size": 333,
    },
    "phi3": {
        "context_length": 256,
        "rope.dimension_count": 8,
        "rope.freq_base": 1e4,
        "rope.scaling.original_context_length": 16,
        "rope.scaling.attn_factor": float(np.float32(np.sqrt(2.0))),
        "attention.sliding_window": 0,
        "attention.key_length": None,
    },
}
EXPECTED_TENSORS = {  # beyond blk.N.{attn_norm,attn_output,ffn_down} and output_norm
    "qwen3": {"token_embd", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm"},
    "gemma3": {"token_embd", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm"},
    "gemma2": {"token_embd", "attn_q", "attn_k", "attn_v"},
    "mistral": {"token_embd", "output", "attn_q", "attn_k", "attn_v"},
    "phi3": {"token_embd", "attn_qkv", "rope_factors_long", "rope_factors_short"},
}


@pytest.mark.parametrize("family", tf.FAMILIES)
def test_gguf_names_and_keys(models_dir, family: str) -> None:
    m = _model(models_dir, family, "gguf", "q8_0")
    r = gguf.GGUFReader(str(m.path))
    kv = {f.name: f.contents() for f in r.fields.values()}
    arch = tf.gguf_arch(m.cfg)
    assert kv["general.architecture"] == arch
    for key, want in EXPECTED_KEYS[family].items():
        assert kv.get(f"{arch}.{key}") == want, key
    names = {t.name.split(".")[2] if t.name.startswith("blk.") else t.name[:-7] for t in r.tensors}
    common = {"attn_norm", "attn_output", "ffn_down", "ffn_up", "ffn_norm", "output_norm"}
    gemma = {"post_attention_norm", "post_ffw_norm"} if "gemma" in family else set()
    gate = set() if family == "phi3" else {"ffn_gate"}
    assert names == common | gemma | gate | EXPECTED_TENSORS[family]
    if family == "phi3":  # fused: q, k, v rows; gate then up rows
        t = next(t for t in r.tensors if t.name == "blk.0.ffn_up.weight")
        assert [int(d) for d in t.shape] == [64, 320]


@pytest.mark.parametrize(
    "family,change",
    [
        ("gemma3", {"sliding_window_pattern": 3}),  # llama.cpp: every 6th layer global
        ("gemma3", {"query_pre_attn_scalar": 16}),  # llama.cpp: head_dim below 62 layers
        ("gemma2", {"rope_theta": 1e6}),  # no key; llama.cpp: 10000
        ("phi3", {"sliding_window": 8}),  # llama.cpp disables phi3's window
    ],
)
def test_gguf_refuses_what_llama_cpp_hard_codes(models_dir, family: str, change: dict) -> None:
    with pytest.raises(ValueError, match="not expressible in GGUF"):
        tm.make_model(models_dir, family, "f32", "gguf", True, **change)
    tm.make_model(models_dir, family, "f32", "hf", True, **change)  # HF folders carry it


@pytest.mark.parametrize("family", tf.FAMILIES)
def test_llama_cpp_runs_the_gguf_files_as_the_reference(models_dir, family: str) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    m = _model(models_dir, family, "gguf")
    llm = llama_cpp.Llama(
        model_path=str(m.path),
        n_ctx=64,
        n_batch=64,
        n_threads=2,
        logits_all=True,
        type_k=0,  # GGML_TYPE_F32 KV cache
        type_v=0,
        verbose=False,
    )
    cfg, kwargs = dict(m.cfg), {}
    if family == "phi3":
        kwargs["longrope_long"] = True  # llama.cpp: n_ctx 64 > original 16
    tol = TOL_GELU_F16 if "gemma" in family else TOL_F32
    for n in (1, 7) if family == "mistral" else (1, 7, 24):
        tokens = tf.fixture_tokens(n, cfg["vocab_size"])
        llm.reset()
        llm.eval(tokens)
        got = np.array(llm.scores[:n], dtype=np.float64)
        err = _rel(got, ref.forward(cfg, m.ref_weights, tokens, **kwargs))
        assert err <= tol, f"{family} n={n}: llama.cpp differs by {err:.2e}"
