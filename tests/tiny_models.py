"""Tiny random-weight decoder models written as GGUF files or HF safetensors folders: ``llama`` and
``qwen2`` here, ``qwen3``, ``gemma3``, ``gemma2``, ``mistral`` and ``phi3`` through
``tiny_families.py`` (configs, weights and GGUF layout facts per family).

``make_model(tmp_dir, family, dtype, fmt, tied, seed, **overrides)`` returns a :class:`TinyModel`
whose ``ref_weights`` are the HF-named float32 values *as stored in the file* (quantized weights
dequantized), so ``reference.forward(model.cfg, model.ref_weights, tokens)`` and the engine see
exactly the same numbers. GGUF llama (and mistral) files carry q/k rows permuted as llama.cpp's
HF->GGUF converter does; the other families are not permuted; HF folders never are. GGUF gemma
files store norm weights as 1 + w, as the converter does; ``ref_weights`` stay in HF terms (w).

Each model ships a byte-level BPE tokenizer trained here (cached per pre-tokenizer for the
session) with the ChatML special tokens, as tokenizer.json + tokenizer_config.json (HF) or the
``tokenizer.ggml.*`` keys (GGUF).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

import reference
import tiny_families as tf

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
BOS_ID, EOS_ID = 1, 2  # as SmolLM2-Instruct: bos <|im_start|>, eos <|im_end|>
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# llama3 rope scaling with a tiny original context, so that all three branches (kept, blended,
# fully scaled) are hit by head_dim 16 / theta 10000.
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
DEFAULT_SIZE = {
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 160,  # 5 blocks of 32: not a multiple of 64 on purpose
    "vocab_size": 333,  # odd, not a multiple of any tile; >= 259 bytes + specials
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
}
GGML = gguf.GGMLQuantizationType
STORAGE = {"f32": GGML.F32, "f16": GGML.F16, "bf16": GGML.BF16}
STORAGE |= {"q8_0": GGML.Q8_0, "q4_0": GGML.Q4_0, "q4_1": GGML.Q4_1}
HF_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


@dataclasses.dataclass
class TinyModel:
    path: Path  # the .gguf file or the HF folder
    cfg: dict  # HF config.json content, the reference's cfg
    ref_weights: dict[str, np.ndarray]  # HF name -> float32 values as stored (dequantized)
    weight_dtypes: dict[str, str]  # HF name -> storage dtype ("f32", "q4_1", ...)
    family: str
    fmt: str


# ----------------------------------------------------------------------------- tokenizer

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(family: str):
    """The HF pre-tokenizer that llama.cpp's ``tokenizer.ggml.pre`` value names."""
    if family == "qwen2":  # pre "qwen2": the Qwen2 regex, then byte-level without its own regex
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    # pre "smollm": single digits, then the GPT-2 byte-level regex.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


_CORPUS_WORDS = (
    "the of and to in is was for on are with as by at from that this be it an or have not "
    "model token weight layer attention cache matrix vector value key query head norm "
    "capital France Paris Berlin Germany Rome Italy city river mountain language engine "
    "quick brown fox jumps over lazy dog hello world small tiny test numbers code text"
)


def _corpus(seed: int = 1234) -> list[str]:
    words = _CORPUS_WORDS.split()
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(600):
        picked = rng.choice(words, size=int(rng.integers(4, 14)))
        number = int(rng.integers(0, 10000))
        lines.append(" ".join(picked).capitalize() + f" {number}, (ok)!\n")
    lines.append("Unicode: café, naïve, Ελληνικά, русский, 日本語, emoji 🙂\ttab\n")
    return lines


@functools.cache
def trained_tokenizer_json(family: str, vocab_size: int) -> str:
    """Train (once per session and key) a byte-level BPE with exactly ``vocab_size`` tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(family)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer trained to {tok.get_vocab_size()} tokens, not {vocab_size}")
    return tok.to_str()


def gguf_vocab(tokenizer_json: str) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types (1 normal, 3 control), merges as "a b") from tokenizer.json."""
    data = json.loads(tokenizer_json)
    vocab = data["model"]["vocab"]
    tokens = [""] * len(vocab)
    for text, idx in vocab.items():
        tokens[idx] = text
    types = [3 if t in SPECIAL_TOKENS else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, types, merges


# ----------------------------------------------------------------------------- weights


def random_hf_weights(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    """HF-named float32 weights scaled so activations stay O(1) and logits spread over ~3 units."""
    rng = np.random.default_rng(seed)
    d, ff, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, nh, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def mat(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def vec(n: int, mean: float, spread: float) -> np.ndarray:
        return (mean + spread * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, d)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(d, 1.0, 0.1)
        w[p + "post_attention_layernorm.weight"] = vec(d, 1.0, 0.1)
        for name, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{name}_proj.weight"] = mat(rows, d)
            if cfg["model_type"] == "qwen2":
                w[p + f"self_attn.{name}_proj.bias"] = vec(rows, 0.0, 0.5)
        w[p + "self_attn.o_proj.weight"] = mat(d, nh * hd)
        w[p + "mlp.gate_proj.weight"] = mat(ff, d)
        w[p + "mlp.up_proj.weight"] = mat(ff, d)
        w[p + "mlp.down_proj.weight"] = mat(d, ff)
    w["model.norm.weight"] = vec(d, 0.4, 0.04)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(vocab, d, scale=np.sqrt(d))  # same spread as the embedding
    return w


def store(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw bytes as uint8 (rows, row_bytes) or (n_bytes,), float32 values read back)."""
    if dtype == "f32":
        raw = np.ascontiguousarray(values, dtype="<f4").view(np.uint8)
    elif dtype == "f16":
        raw = np.ascontiguousarray(values.astype("<f2")).view(np.uint8)
    else:  # bf16 and the block types: gguf's reference quantizers
        raw = gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), STORAGE[dtype])
    raw = raw.reshape(*values.shape[:-1], -1)
    return raw, reference.dequantize(raw, dtype, values.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rows -> GGUF-llama rows, per head: (n_head, 2, hd/2, ...) -> (n_head, hd/2, 2, ...)."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk` (GGUF-llama rows -> HF rows)."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    """HF weight name -> canonical GGUF name."""
    if hf in _GGUF_TOP:
        return _GGUF_TOP[hf]
    # model.layers.N.<module...>.<weight|bias>
    block, rest = hf.split(".")[2], ".".join(hf.split(".")[3:])
    module, kind = rest.rsplit(".", 1)
    return f"blk.{block}.{_GGUF_BLOCK[module]}.{kind}"


def hf_name(gguf_tensor: str) -> str:
    """Canonical GGUF name -> HF weight name (inverse of :func:`gguf_name`)."""
    top = {g: h for h, g in _GGUF_TOP.items()}
    if gguf_tensor in top:
        return top[gguf_tensor]
    _, block, module, kind = gguf_tensor.split(".")
    local = {g: h for h, g in _GGUF_BLOCK.items()}
    return f"model.layers.{block}.{local[module]}.{kind}"


def reference_inputs_from_gguf(path) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    """(HF-style cfg, HF-named float32 weights, HF name -> storage dtype) for any llama/qwen2
    GGUF, e.g. a real model: every tensor dequantized with ``gguf.quants.dequantize`` and the
    llama q/k rows un-permuted. (``rope_freqs.weight`` is not supported here.)"""
    r = gguf.GGUFReader(str(path))
    md = {f.name: f.contents() for f in r.fields.values()}
    arch = md["general.architecture"]
    names = {t.name for t in r.tensors}
    if "rope_freqs.weight" in names:
        raise NotImplementedError("reference_inputs_from_gguf: rope_freqs.weight")
    cfg = {
        "model_type": arch,
        "hidden_size": int(md[f"{arch}.embedding_length"]),
        "num_hidden_layers": int(md[f"{arch}.block_count"]),
        "intermediate_size": int(md[f"{arch}.feed_forward_length"]),
        "num_attention_heads": int(md[f"{arch}.attention.head_count"]),
        "num_key_value_heads": int(md[f"{arch}.attention.head_count_kv"]),
        "head_dim": int(md[f"{arch}.rope.dimension_count"]),
        "rms_norm_eps": float(md[f"{arch}.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(md.get(f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": len(md["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": "output.weight" not in names,
    }
    weights, dtypes = {}, {}
    for t in r.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        module = t.name.split(".")[-2]
        if arch == "llama" and module in ("attn_q", "attn_k"):
            heads = cfg["num_attention_heads" if module == "attn_q" else "num_key_value_heads"]
            values = unpermute_qk(values, heads)
        weights[hf_name(t.name)] = values.astype(np.float32)
        dtypes[hf_name(t.name)] = t.tensor_type.name.lower()
    return cfg, weights, dtypes


# ----------------------------------------------------------------------------- writers


def _write_gguf(path: Path, cfg: dict, stored: dict, dtypes: dict, tok_json: str) -> None:
    family_model = cfg["model_type"] in tf.MODEL_TYPE.values()
    arch = tf.gguf_arch(cfg) if family_model else cfg["model_type"]
    w = gguf.GGUFWriter(str(path), arch)
    # (llama.cpp's vocab loader special-cases general.name containing "phi3": keep family names out)
    w.add_name("metallic tiny test model" if family_model else f"tiny-{arch}")
    if family_model:
        tf.add_gguf_metadata(w, cfg)
    else:
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_freq_base(cfg["rope_theta"])
        w.add_rope_dimension_count(cfg["head_dim"])
        w.add_vocab_size(cfg["vocab_size"])
    tokens, types, merges = gguf_vocab(tok_json)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch in ("qwen2", "qwen3") else "smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    scaling = cfg.get("rope_scaling")
    if scaling and not family_model:  # llama.cpp stores llama3 scaling as per-frequency
        base = reference.rope_inv_freq(cfg["head_dim"], cfg["rope_theta"])  # divisors
        divisors = base / reference.inv_freq_from_config(cfg)
        w.add_tensor("rope_freqs.weight", divisors.astype(np.float32))
    for name, values in (tf.extra_gguf_tensors(cfg) if family_model else {}).items():
        w.add_tensor(name, values)
    for hf, raw in stored.items():
        dt = dtypes[hf]
        if family_model:
            name, heads = tf.gguf_name(cfg, hf), tf.permuted_heads(cfg, hf)
        else:
            name, heads = gguf_name(hf), None
            if arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
                heads = cfg["num_attention_heads" if "attn_q" in name else "num_key_value_heads"]
        if heads:
            raw = permute_qk(raw, heads)
        if dt == "f32":
            w.add_tensor(name, raw.view("<f4"))
        elif dt == "f16":
            w.add_tensor(name, raw.view("<f2"))
        else:
            w.add_tensor(name, raw, raw_dtype=STORAGE[dt])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _st_writer():
    """tests/python/st_writer.py (the project's safetensors writer for tests), loaded by path so
    that this module also works outside pytest."""
    path = Path(__file__).resolve().parent / "python" / "st_writer.py"
    spec = importlib.util.spec_from_file_location("st_writer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_hf(folder: Path, cfg: dict, stored: dict, dtypes: dict, tok_json: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    view = {"f32": "<f4", "f16": "<f2", "bf16": "<u2"}  # bf16 travels as its raw uint16 bits
    tensors = {hf: raw.view(view[dtypes[hf]]) for hf, raw in stored.items()}
    st_dtypes = {hf: HF_DTYPES[dtypes[hf]] for hf in stored}
    _st_writer().write_safetensors(
        folder / "model.safetensors", tensors, {"format": "pt"}, st_dtypes
    )
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "tokenizer.json").write_text(tok_json)
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[BOS_ID],
        "eos_token": SPECIAL_TOKENS[EOS_ID],
        "pad_token": SPECIAL_TOKENS[0],
        "add_bos_token": False,
        "chat_template": CHATML,
        "model_max_length": cfg["max_position_embeddings"],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))


# ----------------------------------------------------------------------------- API


def make_config(family: str, tied: bool, dtype: str, **overrides) -> dict:
    """HF config.json for a tiny model (``overrides`` use config.json key names)."""
    unknown = set(overrides) - set(DEFAULT_SIZE)
    if unknown:
        raise TypeError(f"unknown size overrides {sorted(unknown)}")
    cfg = {
        "architectures": ["Qwen2ForCausalLM" if family == "qwen2" else "LlamaForCausalLM"],
        "model_type": family,
        **DEFAULT_SIZE,
        **overrides,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": family == "qwen2",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": TORCH_DTYPES.get(dtype, "float32"),
    }
    if family == "qwen2":
        cfg["use_sliding_window"] = False
    return cfg


def make_model(
    tmp_dir,
    family: str = "llama",
    dtype: str = "f32",
    fmt: str = "gguf",
    tied: bool = True,
    seed: int = 0,
    **size_overrides,
) -> TinyModel:
    """Write a tiny model under ``tmp_dir`` and return it with its reference weights.

    Args:
        family: "llama" or "qwen2" (qwen2: q/k/v biases; pass tied=False for its usual head), or
            one of ``tiny_families.FAMILIES`` ("qwen3", "gemma3", "gemma2", "mistral", "phi3";
            their usual heads: ``tiny_families.USUAL_TIED``).
        dtype: storage of the 2-D weights: f32, f16, bf16 (gguf and hf), q8_0, q4_0, q4_1 (gguf).
            GGUF 1-D tensors (norms, biases) stay F32 as llama.cpp writes them; HF folders store
            every tensor in ``dtype`` as an HF checkpoint does.
        fmt: "gguf" (one file) or "hf" (config.json + model.safetensors + tokenizer files).
        size_overrides: config.json keys, of :data:`DEFAULT_SIZE` (llama, qwen2, e.g.
            rope_scaling=LLAMA3_SCALING) or of ``tiny_families.DEFAULTS[family]``.
    """
    family_model = family in tf.FAMILIES
    if family not in ("llama", "qwen2", *tf.FAMILIES) or fmt not in ("gguf", "hf"):
        raise ValueError(f"unsupported tiny model {family=} {fmt=} {dtype=}")
    if dtype not in STORAGE or (fmt == "hf" and dtype not in HF_DTYPES):
        raise ValueError(f"{fmt} files cannot hold {dtype}")
    if family_model:
        ids = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": 0}
        torch_dtype = TORCH_DTYPES.get(dtype, "float32")
        cfg = tf.family_config(family, tied, torch_dtype, ids, **size_overrides)
        weights = tf.family_weights(cfg, seed)
    else:
        cfg = make_config(family, tied, dtype, **size_overrides)
        weights = random_hf_weights(cfg, seed)
    tok_json = trained_tokenizer_json("qwen2" if "qwen" in family else "llama", cfg["vocab_size"])
    stored, ref, dtypes = {}, {}, {}
    for name, values in weights.items():
        dt = dtype if (values.ndim == 2 or fmt == "hf") else "f32"
        in_gguf = fmt == "gguf" and family_model
        stored[name], ref[name] = store(
            tf.to_gguf_values(cfg, name, values) if in_gguf else values, dt
        )
        ref[name] = tf.from_gguf_values(cfg, name, ref[name]) if in_gguf else ref[name]
        dtypes[name] = dt
    tag = f"{family}-{'tied' if tied else 'untied'}-{dtype}-s{seed}"
    tag += "-rs" if cfg.get("rope_scaling") and not family_model else ""
    if family_model and size_overrides:
        key = json.dumps(size_overrides, sort_keys=True).encode()
        tag += "-o" + hashlib.sha256(key).hexdigest()[:10]
    out = Path(tmp_dir) / f"{tag}.{fmt}"
    if fmt == "gguf":
        _write_gguf(out, cfg, stored, dtypes, tok_json)
    else:
        _write_hf(out, cfg, stored, dtypes, tok_json)
    return TinyModel(out, cfg, ref, dtypes, family, fmt)
