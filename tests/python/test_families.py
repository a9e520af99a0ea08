"""Tests for metallic.families: registry, args, RoPE frequencies, config checks, tensor checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from metallic.dtypes import DType
from metallic.errors import (
    CorruptFile,
    NotImplementedFeature,
    ShapeMismatch,
    UnsupportedArchitecture,
    UnsupportedDType,
)
from metallic.families import get_family
from metallic.families.base import (
    BaseModelArgs,
    check_tensors,
    expected_shapes,
    hf_to_canonical,
    rope_inv_freq,
)

CONFIG_FIELDS = {
    "n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff", "rms_eps",
    "rope_neox", "rope_inv_freq", "attn_scale", "qkv_bias", "tied_embeddings", "activation",
    "embed_scale",
}  # fmt: skip

SMOL_MD = {
    "general.architecture": "llama",
    "llama.block_count": 30,
    "llama.context_length": 8192,
    "llama.embedding_length": 576,
    "llama.feed_forward_length": 1536,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
    "llama.rope.freq_base": 100000.0,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.vocab_size": 49152,
    "llama.rope.dimension_count": 64,
}

HF_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "rms_norm_eps": 1e-6,
    "vocab_size": 100,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "unknown_future_key": 123,
}


# ---------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("llama", "llama"),
        ("LlamaForCausalLM", "llama"),
        ("mistral", "llama"),
        ("qwen2", "qwen2"),
        ("Qwen2ForCausalLM", "qwen2"),
    ],
)
def test_get_family_aliases(name, module):
    assert get_family(name).__name__ == f"metallic.families.{module}"


@pytest.mark.parametrize("name", ["gpt2", "base", "__init__", "", "llama.evil", 3])
def test_unknown_family(name):
    with pytest.raises(UnsupportedArchitecture, match=r"^\[get_family\]"):
        get_family(name)


def test_from_dict_drops_unknown_keys():
    @dataclasses.dataclass
    class A(BaseModelArgs):
        x: int
        y: int = 2

    assert A.from_dict({"x": 1, "z": 9}) == A(1, 2)


# ---------------------------------------------------------------------------- RoPE


def llama3_reference(inv, factor, low, high, old):
    out = []
    for f in inv:
        wl = 2 * math.pi / f
        if wl < old / high:
            out.append(f)
        elif wl > old / low:
            out.append(f / factor)
        else:
            s = (old / wl - low) / (high - low)
            out.append((1 - s) * f / factor + s * f)
    return np.array(out)


def test_rope_plain_and_linear():
    inv = np.array(rope_inv_freq(64, 10000.0))
    ref = 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64)
    np.testing.assert_allclose(inv, ref, rtol=1e-15)
    lin = rope_inv_freq(64, 10000.0, {"type": "linear", "factor": 4.0})
    np.testing.assert_allclose(lin, ref / 4, rtol=1e-15)
    assert rope_inv_freq(64, 10000.0, {"rope_type": "default"}) == list(inv)


def test_rope_llama3_matches_reference():
    sc = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    got = np.array(rope_inv_freq(64, 500000.0, sc))
    base = 1.0 / 500000.0 ** (np.arange(0, 64, 2) / 64)
    want = llama3_reference(base, 32.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # All three bands are exercised: unchanged, divided, blended.
    assert got[0] == base[0] and got[-1] == pytest.approx(base[-1] / 32)
    assert any(base[i] / 32 < got[i] < base[i] for i in range(32))


def test_rope_freq_factors():
    f = np.linspace(1, 8, 32)
    got = rope_inv_freq(64, 10000.0, None, f)
    np.testing.assert_allclose(got, np.array(rope_inv_freq(64, 10000.0)) / f, rtol=1e-15)
    with pytest.raises(CorruptFile, match="rope_freqs.weight"):
        rope_inv_freq(64, 10000.0, None, np.ones(31))
    with pytest.raises(CorruptFile, match="rope_freqs.weight"):
        rope_inv_freq(64, 10000.0, None, np.zeros(32))


def test_rope_errors():
    with pytest.raises(NotImplementedFeature, match="yarn"):
        rope_inv_freq(64, 1e4, {"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(CorruptFile, match="rope_scaling.factor"):
        rope_inv_freq(64, 1e4, {"rope_type": "linear", "factor": -1})
    with pytest.raises(CorruptFile, match="high_freq_factor"):
        rope_inv_freq(
            64,
            1e4,
            {
                "rope_type": "llama3",
                "factor": 8,
                "low_freq_factor": 4,
                "high_freq_factor": 1,
                "original_max_position_embeddings": 8192,
            },
        )
    with pytest.raises(CorruptFile, match="even head_dim"):
        rope_inv_freq(63, 1e4)
    with pytest.raises(CorruptFile, match="rope_scaling"):
        rope_inv_freq(64, 1e4, "linear")


# ---------------------------------------------------------------------------- names


def test_hf_name_map():
    assert hf_to_canonical("model.embed_tokens.weight") == "token_embd.weight"
    assert hf_to_canonical("model.norm.weight") == "output_norm.weight"
    assert hf_to_canonical("lm_head.weight") == "output.weight"
    pairs = {
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
    }
    for hf, canon in pairs.items():
        assert hf_to_canonical(f"model.layers.17.{hf}") == f"blk.17.{canon}"
    assert hf_to_canonical("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert hf_to_canonical("model.layers.0.self_attn.q_norm.weight") == (
        "model.layers.0.self_attn.q_norm.weight"
    )


# ---------------------------------------------------------------------------- args + config


def test_llama_from_gguf_metadata():
    fam = get_family("llama")
    args = fam.args_from_gguf(SMOL_MD)
    assert (args.hidden_size, args.num_hidden_layers, args.num_key_value_heads) == (576, 30, 3)
    args = dataclasses.replace(args, tie_word_embeddings=True)
    cfg = fam.native_config(args, "gguf")
    assert set(cfg) == CONFIG_FIELDS
    assert cfg["head_dim"] == 64 and cfg["rope_neox"] is False and cfg["tied_embeddings"]
    assert cfg["attn_scale"] == 0.125 and len(cfg["rope_inv_freq"]) == 32
    assert cfg["activation"] == "SILU" and cfg["embed_scale"] == 1.0 and not cfg["qkv_bias"]
    assert fam.native_config(args, "hf")["rope_neox"] is True


def test_gguf_metadata_errors():
    fam = get_family("llama")
    md = {k: v for k, v in SMOL_MD.items() if k != "llama.block_count"}
    with pytest.raises(CorruptFile, match="missing metadata key llama.block_count"):
        fam.args_from_gguf(md, source="x.gguf")
    with pytest.raises(CorruptFile, match="llama.block_count: expected an integer"):
        fam.args_from_gguf({**SMOL_MD, "llama.block_count": "30"})
    with pytest.raises(NotImplementedFeature, match="per-layer"):
        fam.args_from_gguf({**SMOL_MD, "llama.attention.head_count_kv": np.array([3, 3])})
    with pytest.raises(NotImplementedFeature, match="partial rotary"):
        fam.args_from_gguf({**SMOL_MD, "llama.rope.dimension_count": 32})
    with pytest.raises(NotImplementedFeature, match="yarn"):
        fam.args_from_gguf({**SMOL_MD, "llama.rope.scaling.type": "yarn"})
    lin = {**SMOL_MD, "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}
    assert fam.args_from_gguf(lin).rope_scaling == {"rope_type": "linear", "factor": 2.0}
    md = {k: v for k, v in SMOL_MD.items() if k != "llama.vocab_size"}
    assert fam.args_from_gguf({**md, "tokenizer.ggml.tokens": ["a"] * 7}).vocab_size == 7
    with pytest.raises(CorruptFile, match="vocab_size"):
        fam.args_from_gguf(md)


def test_llama_from_hf():
    fam = get_family("LlamaForCausalLM")
    args = fam.args_from_hf(HF_LLAMA)
    cfg = fam.native_config(args, "hf")
    assert cfg["rope_neox"] is True and cfg["head_dim"] == 16 and cfg["n_head_kv"] == 2
    assert cfg["rms_eps"] == 1e-6 and not cfg["tied_embeddings"]
    with pytest.raises(NotImplementedFeature, match="attention_bias"):
        fam.args_from_hf({**HF_LLAMA, "attention_bias": True})
    with pytest.raises(NotImplementedFeature, match="hidden_act"):
        fam.args_from_hf({**HF_LLAMA, "hidden_act": "gelu"})
    # Mistral v0.1's window is a switch of the plan now: every layer attends to its last 128 keys.
    windowed = fam.native_config(fam.args_from_hf({**HF_LLAMA, "sliding_window": 128}), "hf")
    assert windowed["layer_window"] == [128] * HF_LLAMA["num_hidden_layers"]
    assert "layer_window" not in cfg  # no window: the plan's default (every layer global)
    with pytest.raises(CorruptFile, match="key sliding_window: expected a positive integer"):
        fam.args_from_hf({**HF_LLAMA, "sliding_window": 0})
    with pytest.raises(CorruptFile, match="missing config keys hidden_size"):
        fam.args_from_hf({k: v for k, v in HF_LLAMA.items() if k != "hidden_size"})


def test_qwen2_switches():
    fam = get_family("Qwen2ForCausalLM")
    args = fam.args_from_hf({**HF_LLAMA, "model_type": "qwen2", "tie_word_embeddings": True})
    for fmt in ("gguf", "hf"):
        cfg = fam.native_config(args, fmt)
        assert cfg["rope_neox"] is True and cfg["qkv_bias"] is True and cfg["tied_embeddings"]
    with pytest.raises(NotImplementedFeature, match="use_sliding_window"):
        fam.args_from_hf({**HF_LLAMA, "use_sliding_window": True})
    md = {k.replace("llama.", "qwen2."): v for k, v in SMOL_MD.items()}
    md["general.architecture"] = "qwen2"
    assert fam.args_from_gguf(md).hidden_size == 576


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"num_attention_heads": 6}, "does not divide hidden_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
        ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"max_position_embeddings": 0}, "max_position_embeddings"),
        ({"num_hidden_layers": -1}, "num_hidden_layers"),
        ({"hidden_size": 64.0}, "hidden_size"),
        ({"head_dim": 15}, "head_dim"),
        ({"rope_theta": 0.0}, "theta"),
    ],
)
def test_config_validation(change, fragment):
    fam = get_family("llama")
    with pytest.raises(CorruptFile, match=fragment):  # from args_from_hf or native_config
        args = fam.args_from_hf({**HF_LLAMA, **change}, source="cfg.json")
        fam.native_config(args, "hf", source="cfg.json")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        # Found by the fuzzer (tests/fuzz): values of the wrong JSON type reached arithmetic and
        # comparisons as TypeError / numpy ValueError instead of a typed error.
        ({"rope_theta": "1e4"}, "key rope_theta: expected a finite number"),
        ({"rope_theta": float("nan")}, "key rope_theta"),
        ({"sliding_window": {"v": 4}}, "key sliding_window: expected an integer or null"),
        ({"num_key_value_heads": []}, "key num_key_value_heads"),
        ({"head_dim": 2**63}, "key head_dim: expected an integer in 1..16777216"),
        ({"hidden_size": 2**64 + 1}, "key hidden_size"),
        ({"rope_scaling": "linear"}, "key rope_scaling: expected an object or null"),
        ({"tie_word_embeddings": "yes"}, "key tie_word_embeddings: expected true or false"),
        ({"rms_norm_eps": None}, "key rms_norm_eps"),
    ],
)
def test_config_value_types(change, fragment):
    for family in ("llama", "qwen2"):
        fam = get_family(family)
        with pytest.raises(CorruptFile, match=fragment):
            args = fam.args_from_hf({**HF_LLAMA, **change}, source="cfg.json")
            fam.native_config(args, "hf", source="cfg.json")


def test_head_dim_given_need_not_divide():
    fam = get_family("llama")
    args = fam.args_from_hf({**HF_LLAMA, "num_attention_heads": 6, "head_dim": 32})
    cfg = fam.native_config(args, "hf")
    assert cfg["head_dim"] == 32 and expected_shapes(cfg)["blk.0.attn_q.weight"] == (192, 64)


# ---------------------------------------------------------------------------- tensor checks


def table(cfg, dtype=DType.F16):
    return {n: (DType.F32 if len(s) == 1 else dtype, s) for n, s in expected_shapes(cfg).items()}


def test_check_tensors():
    fam = get_family("llama")
    cfg = fam.native_config(fam.args_from_hf(HF_LLAMA), "hf")
    t = table(cfg)
    check_tensors(cfg, t, "llama", "src")
    assert len(t) == 3 + 2 * 9
    bad = {**t, "blk.1.attn_k.weight": (DType.F16, (64, 64))}
    with pytest.raises(ShapeMismatch) as ei:
        check_tensors(cfg, bad, "llama", "src")
    assert (
        str(ei.value) == "[open_model] src: tensor blk.1.attn_k.weight: expected 32x64, got 64x64"
    )
    with pytest.raises(CorruptFile, match="tensor output.weight: missing"):
        check_tensors(cfg, {k: v for k, v in t.items() if k != "output.weight"}, "llama", "src")
    with pytest.raises(UnsupportedArchitecture, match="blk.0.attn_q_norm.weight"):
        check_tensors(cfg, {**t, "blk.0.attn_q_norm.weight": (DType.F32, (16,))}, "llama", "s")
    with pytest.raises(UnsupportedArchitecture, match="blk.2.attn_q.weight"):
        check_tensors(cfg, {**t, "blk.2.attn_q.weight": (DType.F16, (64, 64))}, "llama", "s")
    with pytest.raises(UnsupportedDType, match="output_norm.weight: dtype Q8_0"):
        check_tensors(cfg, {**t, "output_norm.weight": (DType.Q8_0, (64,))}, "llama", "s")
    with pytest.raises(UnsupportedDType, match="Q2_K"):
        check_tensors(cfg, table(cfg, DType.Q2_K), "llama", "s")
    with pytest.raises(ShapeMismatch, match="token_embd.weight: expected 100x64, got 99x64"):
        check_tensors(cfg, {**t, "token_embd.weight": (DType.F16, (99, 64))}, "llama", "s")
    huge = {**cfg, "n_layer": 10**9}
    with pytest.raises(CorruptFile, match="1000000000 layers"):
        check_tensors(huge, t, "llama", "s")


def test_qwen2_expects_biases():
    fam = get_family("qwen2")
    cfg = fam.native_config(fam.args_from_hf(HF_LLAMA), "hf")
    t = table(cfg)
    assert t["blk.0.attn_k.bias"] == (DType.F32, (32,))
    check_tensors(cfg, t, "qwen2", "s")
    with pytest.raises(CorruptFile, match="blk.1.attn_v.bias: missing"):
        check_tensors(cfg, {k: v for k, v in t.items() if k != "blk.1.attn_v.bias"}, "qwen2", "s")
