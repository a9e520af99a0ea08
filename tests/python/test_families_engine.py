"""The decoder plan's family switches on device="cpu": qwen3 (per-head q/k norm), gemma3 (four
norms, (1 + w) on HF weights, q/k norm, GELU-tanh, embed scale, query_pre_attn_scalar, sliding
window layers with their own RoPE base, linear scaling of the global layers only), mistral
(sliding window on every layer), phi3 (fused qkv / gate_up split into zero-copy row views, partial
rotary 8 of 16 dims, longrope with its attention factor, the long or short factors picked once
from the load's context_length as llama.cpp does), from tiny random checkpoints in both formats
(tests/tiny_families.py), against the NumPy reference (tests/reference.py), which is itself
checked against HF transformers' logits (tests/python/test_family_reference.py).

Tolerances (relative to max|reference logit|): f32 weights and f32 KV cache: ``TOL_F32 = 2e-5``,
as test_model_forward.py (float32 dots of <= 160 terms and float32 RoPE tables against a float64
reference). Measured worst over 1/7/24 tokens, HF and GGUF: qwen3 1.8e-7, gemma3 1.4e-7,
gemma2 1.9e-7, mistral 3.8e-7, phi3 5.1e-7 (long factors, context 64; short at context 16:
2.4e-7; HF window of 8: 2.3e-7; decode after prefill: 4.3e-7). Every phi3 feature moves the
logits far beyond the tolerance: the other longrope side 0.30 .. 0.45 (position 0 aside, which
turns by angle 0), attention factor 1 instead of sqrt(2) 0.27, the window off 0.51.
Prompts of 24 tokens are 3x the tiny window (8), so windowed layers drop keys in prefill and in
decode; prefill followed by decode must equal the full recomputation.
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

pytest.importorskip("metallic._core")

import emu_harness  # noqa: E402
import metallic  # noqa: E402
import reference as ref  # noqa: E402
import tiny_families as tf  # noqa: E402
import tiny_models as tm  # noqa: E402
from metallic import errors, loader  # noqa: E402
from metallic.dtypes import DType  # noqa: E402
from metallic.families import LONG_CONTEXT, phi3  # noqa: E402
from metallic.gguf import GGUFFile  # noqa: E402
from metallic.loader import open_model  # noqa: E402

TOL_F32 = 2e-5
FAMILIES = ["qwen3", "gemma3", "gemma2", "mistral", "phi3"]
LENGTHS = (1, 7, 24)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_family_engine")


def _tokens(m: tm.TinyModel, n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, m.cfg["vocab_size"], n)]


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


CONTEXT = 64


def _load(m: tm.TinyModel, context_length: int = CONTEXT):
    return metallic.load(
        m.path, device="cpu", threads=2, context_length=context_length, kv_cache_dtype="f32"
    )


def _want(m: tm.TinyModel, tokens: list[int], context_length: int = CONTEXT) -> np.ndarray:
    """The reference logits; phi3's longrope side as metallic (and llama.cpp) picks it: long iff
    the context length exceeds original_max_position_embeddings (16)."""
    kwargs = {}
    if m.family == "phi3":
        kwargs["longrope_long"] = context_length > ref.longrope_original(m.cfg)
    return ref.forward(m.cfg, m.ref_weights, tokens, **kwargs)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_reference(models_dir, family, fmt) -> None:
    m = tm.make_model(models_dir, family, "f32", fmt, tf.USUAL_TIED[family])
    with _load(m) as model:
        for n in LENGTHS:
            tokens = _tokens(m, n, seed=n)
            err = _rel(model.logits(tokens), _want(m, tokens))
            assert err <= TOL_F32, f"{family} {fmt} n={n}: rel err {err:.3e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_equals_recomputation(models_dir, family) -> None:
    """Decode past the window: each step's logits equal the reference over the whole prefix."""
    m = tm.make_model(models_dir, family, "f32", "gguf", tf.USUAL_TIED[family])
    tokens = _tokens(m, 20, seed=5)
    with _load(m) as model:
        model.logits(tokens[:12])
        engine = model._engine  # one token at a time through the native decode path
        want = _want(m, tokens)
        for i in range(12, 20):
            row = np.zeros((1, m.cfg["vocab_size"]), np.float32)
            engine.forward(np.array([tokens[i]], np.int32), i, row, False)
            err = _rel(row[0], want[i])
            assert err <= TOL_F32, f"{family} position {i}: rel err {err:.3e}"


@emu_harness.NEEDS_EMULATOR
@pytest.mark.parametrize("fmt", ["gguf", "hf"])
@pytest.mark.parametrize("family", FAMILIES)
def test_through_the_metal_plan(models_dir, family, fmt) -> None:
    """Every family through the Metal plan (device="metal-emulated": the shaders on the
    emulator; device="metal" encodes the same launches): q/k norms as rms_norm dispatches over
    the heads, gemma's post-norms as accumulating rms_norm, GELU gates in swiglu /
    gemv_norm_swiglu, windows and soft-caps in attention_decode (1 token) and flash_attn (7, 24
    tokens: 3x the window), phi3's partial and scaled RoPE in rope_kv; then prefill + decode past
    the window. Same tolerance as the CPU (float32 dots; measured <= 6e-7)."""
    m = tm.make_model(models_dir, family, "f32", fmt, tf.USUAL_TIED[family])
    with metallic.load(
        m.path, device="metal-emulated", context_length=CONTEXT, kv_cache_dtype="f32"
    ) as model:
        for n in LENGTHS:
            tokens = _tokens(m, n, seed=n)
            err = _rel(model.logits(tokens), _want(m, tokens))
            assert err <= TOL_F32, f"{family} {fmt} metal-emulated n={n}: rel err {err:.3e}"
        tokens = _tokens(m, 20, seed=5)
        want = _want(m, tokens)
        model.logits(tokens[:12])
        for i in range(12, 20):
            row = np.zeros((1, m.cfg["vocab_size"]), np.float32)
            model._engine.forward(np.array([tokens[i]], np.int32), i, row, False)
            err = _rel(row[0], want[i])
            assert err <= TOL_F32, f"{family} {fmt} metal-emulated position {i}: {err:.3e}"


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
@pytest.mark.parametrize(("context_length", "long"), [(16, False), (17, True)])
def test_phi3_longrope_side_follows_the_context_length(models_dir, fmt, context_length, long):
    """llama.cpp's rule, once per load: the short factors up to original_max_position_embeddings
    (16), the long ones beyond, whatever the prompt length (HF would re-pick per call: short for
    all of these prompts). The two sides move the logits by far more than the tolerance
    (asserted), so the wrong one fails."""
    m = tm.make_model(models_dir, "phi3", "f32", fmt, True)
    with _load(m, context_length) as model:
        config = model._bundle.config  # resolved at load: the prompt-cache fingerprint sees it
        assert LONG_CONTEXT not in config
        side = ref.rope_for_layer(m.cfg, long=long).inv_freq
        np.testing.assert_allclose(config["rope_inv_freq"], side, rtol=1e-15)
        for n in (1, 7, 15):  # Model.logits keeps one position free: at most 15 of 16
            tokens = _tokens(m, n, seed=30 + n)
            want = ref.forward(m.cfg, m.ref_weights, tokens, longrope_long=long)
            if n > 1:  # position 0 turns by angle 0 on both sides
                other = ref.forward(m.cfg, m.ref_weights, tokens, longrope_long=not long)
                assert _rel(other, want) > 1e-2
            err = _rel(model.logits(tokens), want)
            assert err <= TOL_F32, f"{fmt} ctx={context_length} n={n}: rel err {err:.3e}"


def test_phi3_hf_sliding_window(models_dir) -> None:
    """HF applies phi3's window (llama.cpp does not, so only HF folders carry it): 24 tokens
    through a window of 8 on every layer."""
    m = tm.make_model(models_dir, "phi3", "f32", "hf", True, sliding_window=8)
    with _load(m) as model:
        assert model._bundle.config["layer_window"] == [8, 8, 8]
        tokens = _tokens(m, 24, seed=24)
        err = _rel(model.logits(tokens), _want(m, tokens))
        assert err <= TOL_F32, f"rel err {err:.3e}"


@pytest.mark.parametrize(("fmt", "dtype"), [("hf", "bf16"), ("gguf", "f32"), ("gguf", "q8_0")])
def test_phi3_fused_tensors_split_into_views(models_dir, fmt, dtype) -> None:
    """Each part is a view of its row range: q, k, v (gate, up) lie back to back in the fused
    tensor's memory, own no data, and hold exactly their rows (values checked for f32)."""
    m = tm.make_model(models_dir, "phi3", dtype, fmt, True)
    with open_model(m.path) as b:
        for i in range(m.cfg["num_hidden_layers"]):
            for fused, parts, rows in (
                ("self_attn.qkv_proj", ("attn_q", "attn_k", "attn_v"), (64, 32, 32)),
                ("mlp.gate_up_proj", ("ffn_gate", "ffn_up"), (160, 160)),
            ):
                views = [b.weights[f"blk.{i}.{p}.weight"] for p in parts]
                assert [v[1] for v in views] == [(r, 64) for r in rows]
                assert not any(v[2].flags.owndata for v in views)
                addr = [v[2].__array_interface__["data"][0] for v in views]
                ends = [a + v[2].nbytes for a, v in zip(addr, views, strict=True)]
                assert ends[:-1] == addr[1:]
                if dtype == "f32":
                    whole = m.ref_weights[f"model.layers.{i}.{fused}.weight"]
                    got = np.concatenate([v[2].view("<f4").reshape(v[1]) for v in views])
                    np.testing.assert_array_equal(got, whole)


def _edit_hf(m: tm.TinyModel, folder, **keys):
    shutil.copytree(m.path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(cfg | keys))
    return folder


def _edit_gguf(m: tm.TinyModel, path, key: str, value: int):
    shutil.copy(m.path, path)
    r = gguf.GGUFReader(path, "r+")
    field = r.fields[key]
    field.parts[field.data[0]][0] = value
    r.data.flush()
    return path


def test_phi3_fused_shape_errors(models_dir, tmp_path) -> None:
    """A fused tensor whose rows disagree with the config is a ShapeMismatch naming it (and its
    name in the file), before any part reaches the table check."""
    hf = tm.make_model(models_dir, "phi3", "f32", "hf", True)
    gg = tm.make_model(models_dir, "phi3", "f32", "gguf", True)
    cases = [
        (
            _edit_hf(hf, tmp_path / "ff", intermediate_size=150),
            r"^\[open_model\] .*tensor model\.layers\.\d+\.mlp\.gate_up_proj\.weight "
            r"\(blk\.\d+\.ffn_up\.weight\): expected 300x64 \(rows 150 ffn_gate \+ 150 ffn_up\), "
            r"got 320x64",
        ),
        (
            _edit_hf(hf, tmp_path / "kv", num_key_value_heads=1),
            r"tensor model\.layers\.\d+\.self_attn\.qkv_proj\.weight "
            r"\(blk\.\d+\.attn_qkv\.weight\): expected 96x64 "
            r"\(rows 64 attn_q \+ 16 attn_k \+ 16 attn_v\), got 128x64",
        ),
        (
            _edit_gguf(gg, tmp_path / "ff.gguf", "phi3.feed_forward_length", 150),
            r"^\[open_model\] .*tensor blk\.\d+\.ffn_up\.weight: expected 300x64 "
            r"\(rows 150 ffn_gate \+ 150 ffn_up\), got 320x64",
        ),
        (
            _edit_gguf(gg, tmp_path / "kv.gguf", "phi3.attention.head_count_kv", 1),
            r"tensor blk\.\d+\.attn_qkv\.weight: expected 96x64 .*, got 128x64",
        ),
    ]
    for path, pattern in cases:
        with pytest.raises(errors.ShapeMismatch, match=pattern) as info:
            open_model(path)
        assert isinstance(info.value, ValueError)
    cfg = {"n_embd": 64, "head_dim": 16, "n_ff": 160, "n_head": 4, "n_head_kv": 2}
    for shape in [(128,), (128, 64, 1), (128, 63)]:
        with pytest.raises(
            errors.ShapeMismatch, match=r"blk\.2\.attn_qkv\.weight: expected 128x64"
        ):
            phi3.split_fused("blk.2.attn_qkv.weight", shape, cfg, source="f")
    assert phi3.split_fused("blk.2.attn_qkv.bias", (128,), cfg) is None
    assert phi3.split_fused("blk.2.ffn_down.weight", (64, 160), cfg) is None


def test_phi3_split_part_colliding_with_a_tensor() -> None:
    """A file with both attn_qkv and attn_q names one tensor twice: a typed error."""
    cfg = {"n_embd": 64, "head_dim": 16, "n_ff": 160, "n_head": 4, "n_head_kv": 2}
    table = {
        "blk.0.attn_q.weight": (DType.F32, (64, 64)),
        "blk.0.attn_qkv.weight": (DType.F32, (128, 64)),
    }
    names = {n: n for n in table}
    with pytest.raises(
        errors.CorruptFile,
        match=r"blk\.0\.attn_q\.weight and blk\.0\.attn_qkv\.weight both map to "
        r"blk\.0\.attn_q\.weight",
    ):
        loader._split_fused(phi3, cfg, table, names, "f")


def test_phi3_rope_config_layouts(models_dir) -> None:
    """transformers 5's rope_parameters (factors, partial factor and original length inside, no
    top-level keys) read as the transformers 4 layout; longrope factor lists and the GGUF factor
    tensors are checked; a GGUF without the attention factor key gets llama.cpp's 1.0."""
    v4 = tf.family_config("phi3", True, "float32", {})
    rp = {**tf.PHI3_LONGROPE, "rope_type": "longrope", "rope_theta": 10000.0}
    rp |= {"partial_rotary_factor": 0.5, "original_max_position_embeddings": 16}
    v5 = {k: v for k, v in v4.items() if k not in ("rope_scaling", "rope_theta")}
    v5 = {k: v for k, v in v5.items() if k not in ("partial_rotary_factor",)}
    v5 = {k: v for k, v in v5.items() if k != "original_max_position_embeddings"}
    a4, a5 = phi3.args_from_hf(v4), phi3.args_from_hf(v5 | {"rope_parameters": rp})
    c4, c5 = phi3.native_config(a4, "hf"), phi3.native_config(a5, "hf")
    assert c4 == c5
    long = ref.rope_for_layer(v4, long=True)
    np.testing.assert_allclose(
        c4[LONG_CONTEXT]["overrides"]["rope_inv_freq"], long.inv_freq, rtol=1e-15
    )
    np.testing.assert_allclose(
        c4["rope_inv_freq"], ref.rope_for_layer(v4, long=False).inv_freq, rtol=1e-15
    )
    assert (c4["rope_dim"], c4["rope_mscale"], c4[LONG_CONTEXT]["threshold"]) == (
        8,
        long.mscale,
        16,
    )
    bad = phi3.args_from_hf({**v4, "rope_scaling": {**tf.PHI3_LONGROPE, "long_factor": [1.0] * 3}})
    with pytest.raises(errors.CorruptFile, match="key rope_scaling.long_factor: expected 4 finite"):
        phi3.native_config(bad, "hf", source="cfg")
    md = GGUFFile(tm.make_model(models_dir, "phi3", "f32", "gguf", True).path)
    try:
        meta = {k: v for k, v in md.metadata.items() if k != "phi3.rope.scaling.attn_factor"}
        f = {n: np.arange(1.0, 5.0) for n in phi3.GGUF_ARG_TENSORS}
        assert (
            phi3.native_config(phi3.args_from_gguf(meta, tensors=f), "gguf")["rope_mscale"] == 1.0
        )
        with pytest.raises(errors.CorruptFile, match="tensor rope_factors_short.weight: missing"):
            phi3.args_from_gguf(
                meta, tensors={"rope_factors_long.weight": f["rope_factors_long.weight"]}
            )
        args = phi3.args_from_gguf(meta, tensors={**f, "rope_factors_long.weight": np.ones(3)})
        with pytest.raises(errors.CorruptFile, match="tensor rope_factors_long.weight: expected 4"):
            phi3.native_config(args, "gguf")
    finally:
        md.close()


IDS = [
    2,
    818,
    5279,
    529,
    7001,
    563,
    506,
    5279,
    529,
]  # "<bos>The capital of France is the capital of"
KL_MEAN_GEMMA = 5e-3


@pytest.mark.slow
def test_gemma3_270m_real_file(gemma3_path) -> None:
    """The real Gemma-3-270M Q4_K_M (Q4_K / Q5_0 / Q6_K / Q8_0 mix) against the NumPy reference
    on its dequantized weights (tests/tiny_gguf_read.py reads it as llama.cpp would). The CPU
    device quantizes activations to int8 blocks, so logits differ by that rounding: measured max
    |d| 0.75 (3.3 % of max |logit|), top-1 9/9, KL mean 1.7e-3 / max 3.3e-3. The bound is
    llama.cpp's own distance to HF fp32 on this file (../shared/REFERENCE.md: mean KL 5.1e-3):
    every position's top token, mean KL <= 5e-3. Then greedy text and the chat template."""
    from tiny_gguf_read import read_family_gguf

    cfg, weights, _ = read_family_gguf(gemma3_path)
    want = ref.forward(cfg, weights, IDS, dtype=np.float32).astype(np.float64)
    del weights
    with metallic.load(gemma3_path, device="cpu", threads=2, context_length=512) as model:
        assert model.tokenizer.encode("The capital of France is") == IDS[:6]
        got = model.logits(IDS).astype(np.float64)
        assert (got.argmax(1) == want.argmax(1)).all()
        kl = ref.kl_divergence(want, got)
        assert kl.mean() <= KL_MEAN_GEMMA, f"mean KL {kl.mean():.2e}"
        text = model.generate("def fibonacci(n):", max_tokens=24)
        assert "return" in text and "n" in text, text
        assert model.tokenizer.chat_template is None and model.tokenizer.knows_chat_format
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
        assert prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
