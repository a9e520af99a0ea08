"""Self-checks of the NumPy reference (tests/reference.py) and the tiny-model builders.

The reference is what every engine test trusts, so it is checked against independent sources:
``gguf.quants`` (maintained with llama.cpp) for the block layouts, hand-built blocks for the
nibble order, properties for the int8 activations, and algebraic identities for RoPE layouts.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference as ref  # tests/ is on sys.path through tests/conftest.py
import tiny_models as tm

GGML = gguf.GGMLQuantizationType
BLOCK_TYPES = {"q8_0": GGML.Q8_0, "q4_0": GGML.Q4_0, "q4_1": GGML.Q4_1}
ALL_TYPES = {**BLOCK_TYPES, "f16": GGML.F16, "bf16": GGML.BF16, "f32": GGML.F32}
# Row lengths in elements: 1 block, an odd count, a non-multiple of 64/128-wide tiles, > 256.
ROW_LENGTHS = [32, 96, 160, 288, 1056]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


# ----------------------------------------------------------------------------- dequantizers


@pytest.mark.parametrize("dtype", sorted(ALL_TYPES))
@pytest.mark.parametrize("cols", ROW_LENGTHS)
@pytest.mark.parametrize("rows", [1, 3])
def test_dequant_matches_gguf_on_quantized_data(dtype: str, cols: int, rows: int) -> None:
    # Exact equality: both sides compute the same float32 products of exactly stored values.
    x = np.random.default_rng(cols + rows).standard_normal((rows, cols)).astype(np.float32) * 3
    raw, values = tm.store(x, dtype)
    expected = gguf.quants.dequantize(raw, ALL_TYPES[dtype])
    np.testing.assert_array_equal(values, expected.reshape(rows, cols))


@pytest.mark.parametrize("dtype", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("n_blocks", [1, 2, 7, 33])
def test_dequant_matches_gguf_on_random_bytes(dtype: str, n_blocks: int) -> None:
    # Arbitrary bytes exercise every nibble / int8 value, not only what a quantizer emits. The
    # f16 scales are drawn finite so that inf * 0 cannot produce NaN patterns on one side only.
    rng = np.random.default_rng(n_blocks)
    block_bytes = gguf.GGML_QUANT_SIZES[BLOCK_TYPES[dtype]][1]
    raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    n_scales = 2 if dtype == "q4_1" else 1
    scales = rng.standard_normal((n_blocks, n_scales)).astype("<f2")
    raw[:, : 2 * n_scales] = scales.view(np.uint8).reshape(n_blocks, 2 * n_scales)
    raw = raw.reshape(1, -1)
    expected = gguf.quants.dequantize(raw, BLOCK_TYPES[dtype]).reshape(1, -1)
    np.testing.assert_array_equal(ref.DEQUANT[dtype](raw), expected)


def test_q4_nibble_order_and_offsets_by_hand() -> None:
    # Byte j holds element j (low nibble) and element j + 16 (high nibble).
    qs = np.array([(15 - j) << 4 | j for j in range(16)], dtype=np.uint8)  # low j, high 15 - j
    d, m = np.float16(0.5), np.float16(-1.0)
    q4_0 = np.concatenate([np.frombuffer(d.tobytes(), np.uint8), qs])
    q4_1 = np.concatenate([np.frombuffer(d.tobytes() + m.tobytes(), np.uint8), qs])
    nib = np.concatenate([np.arange(16), 15 - np.arange(16)]).astype(np.float32)
    np.testing.assert_array_equal(ref.dequant_q4_0(q4_0), (nib - 8) * 0.5)
    np.testing.assert_array_equal(ref.dequant_q4_1(q4_1), nib * 0.5 - 1.0)
    q8 = np.frombuffer(d.tobytes() + np.arange(-16, 16, dtype=np.int8).tobytes(), np.uint8)
    np.testing.assert_array_equal(ref.dequant_q8_0(q8), np.arange(-16, 16) * 0.5)


def test_bf16_is_the_top_half_of_f32() -> None:
    x = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], dtype=np.float32)
    top = (x.view(np.uint32) >> 16).astype("<u2")
    np.testing.assert_array_equal(ref.dequant_bf16(top.view(np.uint8)), x)


# ----------------------------------------------------------------------------- int8 activations

# Blocks with 0 < amax < ~1e-30 are excluded: 127 / amax overflows float32 near 1e-36, and no
# activation in a normalised network is that small. Zero blocks are tested separately.
_elem = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
_acts = st.integers(1, 5).flatmap(lambda nb: hnp.arrays(np.float32, 32 * nb, elements=_elem))


@settings(max_examples=300, deadline=None)
@given(_acts)
def test_act_quant_error_is_half_a_step(x: np.ndarray) -> None:
    blocks = np.abs(x.reshape(-1, 32)).max(axis=1)
    assume(np.all((blocks == 0) | (blocks > 1e-30)))
    q, d = ref.quantize_act_q8(x)
    assert q.dtype == np.int8 and d.dtype == np.float32
    assert q.min() >= -127 and q.max() <= 127
    np.testing.assert_array_equal(d, blocks / np.float32(127))
    step = np.repeat(d.astype(np.float64), 32)
    err = np.abs(x.astype(np.float64) - ref.dequant_act(q, d))
    # Rounding to the nearest step leaves <= d/2; 127/amax, x * (127/amax) and d = amax/127 are
    # each rounded to float32 (u = 2^-24) on values <= 127 steps, so allow 127 * 4u extra steps.
    assert np.all(err <= step * (0.5 + 127 * 4 * 2.0**-24))
    # The largest magnitude of every non-zero block maps to +-127.
    for qb, xb in zip(q.reshape(-1, 32), x.reshape(-1, 32), strict=True):
        if np.any(xb != 0):
            assert np.abs(qb[np.argmax(np.abs(xb))]) == 127


def test_act_quant_zero_block_and_ties() -> None:
    x = np.zeros(64, dtype=np.float32)
    x[32:36] = [127.0, 2.5, 3.5, -2.5]  # amax 127 -> scale 1, ties go to even
    q, d = ref.quantize_act_q8(x)
    assert d[0] == 0 and np.all(q[:32] == 0)
    assert d[1] == 1.0 and list(q[32:36]) == [127, 2, 4, -2]
    np.testing.assert_array_equal(ref.dequant_act(q, d), q.astype(np.float64) * np.repeat(d, 32))


# ----------------------------------------------------------------------------- forward pass


@pytest.mark.parametrize("family,tied", [("llama", True), ("qwen2", False)])
@pytest.mark.parametrize("options", [{}, {"act_quant": True, "kv_f16": True}])
def test_forward_is_causal(models_dir: Path, family: str, tied: bool, options: dict) -> None:
    m = tm.make_model(models_dir, family, "q4_1", "gguf", tied)
    kwargs = {"kv_f16": options.get("kv_f16", False)}
    if options.get("act_quant"):
        kwargs["act_quant"] = m.weight_dtypes
    tokens = list(np.random.default_rng(5).integers(0, m.cfg["vocab_size"], 40))
    full = ref.forward(m.cfg, m.ref_weights, tokens, **kwargs)
    assert full.shape == (40, m.cfg["vocab_size"]) and np.all(np.isfinite(full))
    for k in (1, 9, 33):
        prefix = ref.forward(m.cfg, m.ref_weights, tokens[:k], **kwargs)
        # float64 math; only BLAS blocking differs between the two shapes (~1e-15 relative).
        np.testing.assert_allclose(prefix, full[:k], rtol=0, atol=1e-12 * np.abs(full).max())


def test_single_token_attention_returns_v() -> None:
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.standard_normal((1, 4, 8)),
        rng.standard_normal((1, 2, 8)),
        rng.standard_normal((1, 2, 8)),
    )
    out = ref.causal_attention(q, k, v, 0.3).reshape(4, 8)
    np.testing.assert_allclose(out, v[0][[0, 0, 1, 1]], rtol=1e-15)  # GQA: heads 0,1 -> kv 0


def test_act_quant_changes_only_quantized_matmuls(models_dir: Path) -> None:
    # f32 storage: act_quant must be a no-op; q8_0 storage: it must change the logits.
    tokens = [5, 17, 200, 3]
    for dtype, changes in (("f32", False), ("q8_0", True)):
        m = tm.make_model(models_dir, "llama", dtype, "gguf", False)
        plain = ref.forward(m.cfg, m.ref_weights, tokens)
        quant = ref.forward(m.cfg, m.ref_weights, tokens, act_quant=m.weight_dtypes)
        assert (np.abs(plain - quant).max() > 1e-6) == changes


# ----------------------------------------------------------------------------- RoPE layout facts


def test_gguf_permutation_plus_interleaved_rope_equals_hf_rotate_halves() -> None:
    rng = np.random.default_rng(1)
    n_head, n_kv, hd, d_in, n = 4, 2, 16, 64, 11
    wq, wk = rng.standard_normal((n_head * hd, d_in)), rng.standard_normal((n_kv * hd, d_in))
    x = rng.standard_normal((n, d_in))
    pos, inv_freq = np.arange(n), ref.rope_inv_freq(hd, 10000.0)

    def hf_side(w, heads):
        return ref.rope_rotate_halves((x @ w.T).reshape(n, heads, hd), pos, inv_freq)

    def gguf_side(w, heads):
        w_gguf = tm.permute_qk(w, heads)
        np.testing.assert_array_equal(tm.unpermute_qk(w_gguf, heads), w)
        return ref.rope_interleaved((x @ w_gguf.T).reshape(n, heads, hd), pos, inv_freq)

    q_hf, k_hf = hf_side(wq, n_head), hf_side(wk, n_kv)
    q_gg, k_gg = gguf_side(wq, n_head), gguf_side(wk, n_kv)
    # Same vectors, features reordered: GGUF pair (2i, 2i+1) is HF pair (i, i + hd/2).
    order = np.stack([np.arange(hd // 2), np.arange(hd // 2) + hd // 2], axis=1).reshape(-1)
    np.testing.assert_allclose(q_gg, q_hf[..., order], rtol=0, atol=1e-12)
    np.testing.assert_allclose(k_gg, k_hf[..., order], rtol=0, atol=1e-12)
    # Hence identical attention scores (what the model actually consumes).
    s_hf = np.einsum("ihd,jhd->hij", q_hf, np.repeat(k_hf, 2, axis=1))
    s_gg = np.einsum("ihd,jhd->hij", q_gg, np.repeat(k_gg, 2, axis=1))
    np.testing.assert_allclose(s_gg, s_hf, rtol=0, atol=1e-10)


def test_llama3_inv_freq_three_branches() -> None:
    # Independent statement of the rule as llama.cpp's converter writes it: a per-frequency
    # divisor 1, factor, or 1 / ((1 - s) / factor + s) in the blended band.
    s = tm.LLAMA3_SCALING
    base = ref.rope_inv_freq(16, 10000.0)
    wavelen = 2 * np.pi / base
    old = s["original_max_position_embeddings"]
    smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    blended = 1.0 / ((1 - smooth) / s["factor"] + smooth)
    divisor = np.where(
        wavelen < old / s["high_freq_factor"],
        1.0,
        np.where(wavelen > old / s["low_freq_factor"], s["factor"], blended),
    )
    assert {1.0, s["factor"]} <= set(divisor) and len(set(divisor)) >= 4  # all branches hit
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 16, "rope_theta": 1e4}
    got = ref.inv_freq_from_config({**cfg, "rope_scaling": s})
    np.testing.assert_allclose(got, base / divisor, rtol=1e-14)
    np.testing.assert_allclose(ref.inv_freq_from_config(cfg), base, rtol=0)


# ----------------------------------------------------------------------------- tiny model files


def _gguf_dequant(t) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF dims are innermost first
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)


@pytest.mark.parametrize(
    "family,dtype,tied,scaling",
    [
        ("llama", "q4_1", True, False),
        ("llama", "bf16", False, True),
        ("qwen2", "q4_0", False, False),
        ("qwen2", "f16", False, False),
    ],
)
def test_gguf_file_round_trip(models_dir, family, dtype, tied, scaling) -> None:
    extra = {"rope_scaling": tm.LLAMA3_SCALING} if scaling else {}
    m = tm.make_model(models_dir, family, dtype, "gguf", tied, **extra)
    r = gguf.GGUFReader(str(m.path))
    kv = {f.name: f.contents() for f in r.fields.values()}
    cfg, a = m.cfg, family
    assert kv["general.architecture"] == a
    assert kv[f"{a}.embedding_length"] == cfg["hidden_size"]
    assert kv[f"{a}.block_count"] == cfg["num_hidden_layers"]
    assert kv[f"{a}.feed_forward_length"] == cfg["intermediate_size"]
    assert kv[f"{a}.attention.head_count"] == cfg["num_attention_heads"]
    assert kv[f"{a}.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert kv[f"{a}.rope.dimension_count"] == cfg["head_dim"]
    assert kv[f"{a}.context_length"] == cfg["max_position_embeddings"]
    assert kv[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5, rel=1e-6)
    assert kv[f"{a}.rope.freq_base"] == cfg["rope_theta"]
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert kv["tokenizer.ggml.pre"] == ("qwen2" if family == "qwen2" else "smollm")
    assert len(kv["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert kv["tokenizer.ggml.token_type"][:3] == [3, 3, 3]
    assert kv["tokenizer.ggml.eos_token_id"] == tm.EOS_ID and not kv["tokenizer.ggml.add_bos_token"]
    tensors = {t.name: t for t in r.tensors}
    expected = {tm.gguf_name(n) for n in m.ref_weights} | (
        {"rope_freqs.weight"} if scaling else set()
    )
    assert set(tensors) == expected
    assert ("output.weight" in tensors) != tied
    for hf, values in m.ref_weights.items():
        t = tensors[tm.gguf_name(hf)]
        want = ALL_TYPES[dtype] if values.ndim == 2 else GGML.F32
        assert t.tensor_type == want, hf
        got = _gguf_dequant(t)
        if family == "llama" and (".q_proj." in hf or ".k_proj." in hf):
            heads = cfg["num_attention_heads" if ".q_proj." in hf else "num_key_value_heads"]
            got = tm.unpermute_qk(got, heads)
        np.testing.assert_array_equal(got, values, err_msg=hf)
    if scaling:
        divisors = _gguf_dequant(tensors["rope_freqs.weight"]).astype(np.float64)
        base = ref.rope_inv_freq(cfg["head_dim"], cfg["rope_theta"])
        # The divisors are stored as float32: relative error <= 2^-24.
        np.testing.assert_allclose(base / divisors, ref.inv_freq_from_config(cfg), rtol=1e-7)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8 : 8 + n]), blob[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        kind = {"F32": "f32", "F16": "f16", "BF16": "bf16"}[info["dtype"]]
        raw = np.frombuffer(data[lo:hi], dtype=np.uint8)
        out[name] = ref.dequantize(raw, kind, tuple(info["shape"]))
    return out


@pytest.mark.parametrize("family,tied,dtype", [("llama", True, "bf16"), ("qwen2", False, "f16")])
def test_hf_folder_round_trip(models_dir, family, tied, dtype) -> None:
    m = tm.make_model(models_dir, family, dtype, "hf", tied)
    cfg = json.loads((m.path / "config.json").read_text())
    assert cfg == m.cfg and cfg["tie_word_embeddings"] == tied
    tensors = _read_safetensors(m.path / "model.safetensors")
    assert set(tensors) == set(m.ref_weights)
    for name, values in m.ref_weights.items():
        np.testing.assert_array_equal(tensors[name], values, err_msg=name)
    tok_cfg = json.loads((m.path / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and "<|im_start|>" in tok_cfg["chat_template"]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gguf_vocab_rebuilds_the_same_tokenizer(family: str) -> None:
    from tokenizers import Tokenizer, decoders, models

    tok_json = tm.trained_tokenizer_json(family, tm.DEFAULT_SIZE["vocab_size"])
    hf = Tokenizer.from_str(tok_json)
    tokens, types, merges = tm.gguf_vocab(tok_json)
    rebuilt = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=[tuple(m.split(" ")) for m in merges],
        )
    )
    rebuilt.pre_tokenizer = tm._pre_tokenizer(family)
    rebuilt.decoder = decoders.ByteLevel()
    rebuilt.add_special_tokens([t for t, ty in zip(tokens, types, strict=True) if ty == 3])
    text = "The capital of France is Paris 2024!\n\tcafé 🙂 <|im_start|>user"
    assert rebuilt.encode(text).ids == hf.encode(text).ids
    assert hf.decode(hf.encode(text).ids, skip_special_tokens=False) == text
    assert tokens[:3] == tm.SPECIAL_TOKENS and types.count(3) == 3
