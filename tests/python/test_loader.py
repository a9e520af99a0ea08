"""Tests for metallic.loader.open_model: tiny GGUF and HF checkpoints, errors, the real SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from st_writer import f32_to_bf16_bits, write_safetensors

from metallic.dtypes import DType
from metallic.errors import (
    CorruptFile,
    FileNotFound,
    ShapeMismatch,
    UnsupportedArchitecture,
    UnsupportedFormat,
)
from metallic.loader import open_model

E, FF, H, KV, V, L = 64, 128, 4, 2, 100, 2  # tiny config
HD = E // H

CANON_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def tiny_weights(*, tied: bool, bias: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical name -> float32 array (numpy-order shapes of CONTRACTS.md)."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w = {"token_embd.weight": r(V, E), "output_norm.weight": r(E)}
    if not tied:
        w["output.weight"] = r(V, E)
    for i in range(L):
        b = f"blk.{i}."
        w |= {
            b + "attn_norm.weight": r(E),
            b + "attn_q.weight": r(H * HD, E),
            b + "attn_k.weight": r(KV * HD, E),
            b + "attn_v.weight": r(KV * HD, E),
            b + "attn_output.weight": r(E, H * HD),
            b + "ffn_norm.weight": r(E),
            b + "ffn_gate.weight": r(FF, E),
            b + "ffn_up.weight": r(FF, E),
            b + "ffn_down.weight": r(E, FF),
        }
        if bias:
            w |= {b + "attn_q.bias": r(H * HD), b + "attn_k.bias": r(KV * HD)}
            w |= {b + "attn_v.bias": r(KV * HD)}
    return w


def write_gguf(path: Path, weights: dict[str, np.ndarray], arch: str = "llama", **extra) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_context_length(512)
    w.add_embedding_length(E)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    for k, v in extra.items():
        w.add_key_value(k, *v)
    for n, a in weights.items():
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_config(**over) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": E,
        "intermediate_size": FF,
        "num_attention_heads": H,
        "num_key_value_heads": KV,
        "num_hidden_layers": L,
        "rms_norm_eps": 1e-5,
        "vocab_size": V,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    return cfg | over


def to_hf(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for n, a in weights.items():
        if n in CANON_TO_HF:
            out[CANON_TO_HF[n]] = a
        else:
            _, i, rest = n.split(".", 2)
            out[f"model.layers.{i}.{LAYER_TO_HF[rest]}"] = a
    return out


def write_hf(folder: Path, weights: dict, config: dict, *, bf16: bool = False) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    hf = to_hf(weights)
    if bf16:
        hf = {n: f32_to_bf16_bits(a) for n, a in hf.items()}
        write_safetensors(folder / "model.safetensors", hf, dtypes=dict.fromkeys(hf, "BF16"))
    else:
        write_safetensors(folder / "model.safetensors", hf)
    return folder


def mmap_of(arr: np.ndarray):
    b = arr.base
    return b.obj if isinstance(b, memoryview) else b


# ---------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_bundle(tmp_path, tied):
    ws = tiny_weights(tied=tied)
    p = write_gguf(tmp_path / "m.gguf", ws)
    with open_model(p) as b:
        assert b.arch == "llama" and b.folder is None and b.source == str(p)
        assert b.gguf_metadata["llama.block_count"] == L
        assert b.config["tied_embeddings"] is tied and b.args.tie_word_embeddings is tied
        assert b.config["rope_neox"] is False and b.config["qkv_bias"] is False
        assert b.config["n_vocab"] == V and b.config["head_dim"] == HD
        assert set(b.weights) == set(ws)
        for n, (dt, shape, data) in b.weights.items():
            assert dt == DType.F32 and shape == ws[n].shape
            assert data.dtype == np.uint8 and data.ndim == 1 and not data.flags.writeable
            assert data.tobytes() == ws[n].tobytes()
        mm = mmap_of(b.weights["token_embd.weight"][2])
        assert all(mmap_of(d) is mm for _, _, d in b.weights.values())
    assert b.weights == {}
    b.close()  # idempotent


def test_gguf_rope_freqs_consumed(tmp_path):
    ws = tiny_weights(tied=True)
    factors = np.linspace(1.0, 4.0, HD // 2).astype(np.float32)
    with open_model(write_gguf(tmp_path / "m.gguf", {**ws, "rope_freqs.weight": factors})) as b:
        assert "rope_freqs.weight" not in b.weights
        plain = 1.0 / 10000.0 ** (np.arange(0, HD, 2) / HD)
        np.testing.assert_allclose(b.config["rope_inv_freq"], plain / factors, rtol=1e-12)
    bad = {**ws, "rope_freqs.weight": np.ones(HD // 2 + 1, np.float32)}
    with pytest.raises(CorruptFile, match="rope_freqs.weight"):
        open_model(write_gguf(tmp_path / "bad.gguf", bad))


def test_gguf_qwen2_and_magic_without_suffix(tmp_path):
    p = write_gguf(tmp_path / "weights.bin", tiny_weights(tied=False, bias=True), "qwen2")
    with open_model(p) as b:
        assert b.arch == "qwen2" and b.config["qkv_bias"] and b.config["rope_neox"]
        assert "blk.1.attn_v.bias" in b.weights


def test_gguf_errors(tmp_path):
    ws = tiny_weights(tied=True)
    bad = {**ws, "blk.1.attn_q.weight": np.zeros((E, 2 * HD), np.float32)}
    with pytest.raises(ShapeMismatch, match="blk.1.attn_q.weight: expected 64x64, got 64x32"):
        open_model(write_gguf(tmp_path / "a.gguf", bad))
    with pytest.raises(UnsupportedArchitecture, match="'gpt2'"):
        open_model(write_gguf(tmp_path / "b.gguf", ws, "gpt2"))
    missing = {k: v for k, v in ws.items() if k != "blk.0.ffn_up.weight"}
    with pytest.raises(CorruptFile, match="blk.0.ffn_up.weight: missing"):
        open_model(write_gguf(tmp_path / "c.gguf", missing))
    with pytest.raises(FileNotFound, match=r"^\[open_model\]"):
        open_model(tmp_path / "absent.gguf")
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    with pytest.raises(UnsupportedFormat, match="not a GGUF file"):
        open_model(tmp_path / "junk.bin")


# ---------------------------------------------------------------------------- HF folders


def test_hf_folder_untied_bf16(tmp_path):
    ws = tiny_weights(tied=False)
    folder = write_hf(tmp_path / "hf", ws, hf_config(), bf16=True)
    with open_model(folder) as b:
        assert b.arch == "llama" and b.folder == folder and b.gguf_metadata is None
        assert b.config["rope_neox"] is True and b.config["tied_embeddings"] is False
        assert set(b.weights) == set(ws)
        dt, shape, data = b.weights["blk.0.attn_k.weight"]
        assert dt == DType.BF16 and shape == (KV * HD, E)
        assert data.tobytes() == f32_to_bf16_bits(ws["blk.0.attn_k.weight"]).tobytes()


def test_hf_tied_variants(tmp_path):
    ws = tiny_weights(tied=True)
    # No lm_head.weight -> tied even though the config says otherwise.
    with open_model(write_hf(tmp_path / "a", ws, hf_config())) as b:
        assert b.config["tied_embeddings"] and "output.weight" not in b.weights
    # tie_word_embeddings with a stray lm_head and a rotary buffer: both dropped.
    extra = {**tiny_weights(tied=False), "rotary": np.ones(HD // 2, np.float32)}
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(tie_word_embeddings=True)))
    hf = to_hf({k: v for k, v in extra.items() if k != "rotary"})
    hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = extra["rotary"]
    write_safetensors(folder / "model.safetensors", hf)
    with open_model(folder) as b:
        assert b.config["tied_embeddings"] and "output.weight" not in b.weights
        assert len(b.weights) == 2 + 9 * L


def test_hf_sharded_qwen2(tmp_path):
    ws = tiny_weights(tied=True, bias=True)
    hf = to_hf(ws)
    folder = tmp_path / "q"
    folder.mkdir()
    cfg = hf_config(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    names = sorted(hf)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half]}
    shards["model-00002-of-00002.safetensors"] = names[half:]
    wmap = {}
    for shard, ns in shards.items():
        write_safetensors(folder / shard, {n: hf[n] for n in ns})
        wmap |= dict.fromkeys(ns, shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    with open_model(folder) as b:
        assert b.arch == "qwen2" and b.config["qkv_bias"] and b.config["tied_embeddings"]
        assert b.weights["blk.1.attn_q.bias"][2].tobytes() == ws["blk.1.attn_q.bias"].tobytes()


def test_hf_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedFormat, match="config.json is missing"):
        open_model(empty)
    (empty / "config.json").write_text(json.dumps(hf_config()))
    with pytest.raises(UnsupportedFormat, match="model.safetensors"):
        open_model(empty)
    ws = tiny_weights(tied=False)
    f = write_hf(tmp_path / "extra", {**ws}, hf_config())
    hf = to_hf(ws)
    hf["model.layers.0.self_attn.q_norm.weight"] = np.ones(HD, np.float32)
    write_safetensors(f / "model.safetensors", hf)
    with pytest.raises(UnsupportedArchitecture, match="q_norm"):
        open_model(f)
    f = write_hf(tmp_path / "arch", ws, hf_config(model_type="mamba"))
    with pytest.raises(UnsupportedArchitecture, match="mamba"):
        open_model(f)
    (f / "config.json").write_text("[1, 2]")
    with pytest.raises(CorruptFile, match="JSON object"):
        open_model(f)


def test_gguf_and_hf_agree(tmp_path):
    ws = tiny_weights(tied=False)
    with (
        open_model(write_gguf(tmp_path / "m.gguf", ws)) as g,
        open_model(write_hf(tmp_path / "hf", ws, hf_config())) as h,
    ):
        cg, ch = dict(g.config), dict(h.config)
        assert cg.pop("rope_neox") is False and ch.pop("rope_neox") is True
        assert cg.keys() == ch.keys()
        for k in cg:
            assert cg[k] == pytest.approx(ch[k]), k
        assert {n: s for n, (_, s, _) in g.weights.items()} == {
            n: s for n, (_, s, _) in h.weights.items()
        }


# ---------------------------------------------------------------------------- real file


def test_smollm2_bundle(smollm2_path):
    with open_model(smollm2_path) as b:
        c = b.config
        assert b.arch == "llama" and c["tied_embeddings"] and c["rope_neox"] is False
        assert (c["n_embd"], c["n_layer"], c["n_ff"], c["n_head"], c["n_head_kv"]) == (
            576,
            30,
            1536,
            9,
            3,
        )
        assert (c["head_dim"], c["n_vocab"]) == (64, 49152)
        assert c["rms_eps"] == pytest.approx(1e-5) and c["attn_scale"] == 0.125
        np.testing.assert_allclose(
            c["rope_inv_freq"], 1.0 / 100000.0 ** (np.arange(0, 64, 2) / 64), rtol=1e-15
        )
        assert len(b.weights) == 272 and "output.weight" not in b.weights
        dt, shape, data = b.weights["token_embd.weight"]
        assert dt == DType.Q8_0 and shape == (49152, 576) and data.nbytes == 49152 * 18 * 34
        dt, shape, data = b.weights["blk.3.attn_k.weight"]
        assert dt == DType.Q4_1 and shape == (192, 576) and data.nbytes == 192 * 18 * 20
        assert b.gguf_metadata["tokenizer.ggml.model"] == "gpt2"


def test_gguf_token_count_must_match_vocab(tmp_path):
    # Found by the fuzzer: a GGUF whose tokenizer.ggml.tokens had one entry fewer than the
    # embedding rows loaded, then failed mid-generation when the model sampled the last id.
    import tiny_models
    from fuzz import mutators

    model = tiny_models.make_model(tmp_path, "llama", "q8_0", "gguf", True)
    files = {"model.gguf": model.path.read_bytes()}
    meta = _gguf_tokens(model.path)
    for tokens in (meta[:-1], [*meta, "\u0120extra"]):
        op = ["gkv", "tokenizer.ggml.tokens", 9, [8, tokens]]
        out = tmp_path / f"t{len(tokens)}.gguf"
        out.write_bytes(mutators.apply(files, [op])["model.gguf"])
        with pytest.raises(CorruptFile, match=r"tokenizer\.ggml\.tokens: expected 333 tokens"):
            open_model(out)


def _gguf_tokens(path: Path) -> list[str]:
    from metallic.gguf import GGUFFile

    with GGUFFile(path) as g:
        return list(g.metadata["tokenizer.ggml.tokens"])
