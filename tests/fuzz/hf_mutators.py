"""Mutation ops for HF folders: config.json, safetensors headers and index, tokenizer files.

See :mod:`fuzz.mutators` for the op vocabulary. Each generator aims at one file and at the
values its reader trusts (shapes, offsets, dtype names, token ids, hyper-parameters).
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

from fuzz.values import json_int_near, json_odd, template

Files = dict[str, bytes]
Op = list[Any]

_CONFIG_INT_KEYS = [
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "sliding_window",
    "bos_token_id",
    "eos_token_id",
]
_CONFIG_OTHER: dict[str, list[Any]] = {
    "rms_norm_eps": [0.0, -1e-5, 1.0, 2.0, float("nan"), float("inf"), "1e-5", None, 1e-300],
    "rope_theta": [0.0, -1.0, float("nan"), float("inf"), "1e4", None, 1e308, 1],
    "rope_scaling": [
        {"rope_type": "linear", "factor": 0},
        {"rope_type": "linear", "factor": float("nan")},
        {"type": "linear", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0},
        {"rope_type": "llama3"},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 4.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1e-300,
            "high_freq_factor": 1e300,
            "original_max_position_embeddings": 1e-300,
        },
        {"rope_type": None},
        {"rope_type": []},
        "linear",
        [],
    ],
    "tie_word_embeddings": [True, False, None, "yes", 1],
    "hidden_act": ["gelu", "silu", None, 3, ""],
    "model_type": ["llama", "qwen2", "mistral", "gpt2", "", None, 5, ["llama"]],
    "architectures": [["Qwen2ForCausalLM"], ["LlamaForCausalLM"], [], [None], "llama", None],
    "attention_bias": [True, False, "no", None],
    "mlp_bias": [True, None],
    "use_sliding_window": [True, "yes", None],
    "partial_rotary_factor": [0.5, 1.0, "1", None],
}


def op(rng: random.Random, name: str, files: Files) -> Op:
    """One op for an HF seed folder."""
    r = rng.random()
    if r < 0.32:
        return _config_op(rng, files)
    if r < 0.70:
        return _weights_op(rng, files)
    if r < 0.85:
        return _tokenizer_op(rng, files)
    if r < 0.95:
        return _tokenizer_config_op(rng)
    key = rng.choice(["eos_token_id", "bos_token_id"])
    return ["jset", "generation_config.json", [key], rng.choice([-1, 10**6, "x", [[1]], 1.5, True])]


def _bytes_op(rng: random.Random, file: str, size: int, hot: int | None = None) -> Op:
    hot = size if hot is None else hot
    r = rng.random()
    if r < 0.5:
        off = rng.randrange(max(hot, 1)) if rng.random() < 0.8 else rng.randrange(max(size, 1))
        return ["flip", file, off, rng.randrange(8)]
    if r < 0.8:
        return ["trunc", file, rng.choice([rng.randrange(max(hot, 1)), size - 1, hot + 1])]
    return ["insert", file, rng.randrange(max(hot, 1)), rng.choice(["00", "7b", "22", "5d"])]


def _config_op(rng: random.Random, files: Files) -> Op:
    cfg = json.loads(files["config.json"])
    r = rng.random()
    if r < 0.1:
        return _bytes_op(rng, "config.json", len(files["config.json"]))
    if r < 0.2:
        return ["jdel", "config.json", [rng.choice(sorted(cfg))]]
    if r < 0.25:
        return ["jset", "config.json", [], rng.choice([[], None, "x", {"model_type": "llama"}])]
    if r < 0.65:
        key = rng.choice(_CONFIG_INT_KEYS)
        return ["jset", "config.json", [key], json_int_near(rng, cfg.get(key))]
    key = rng.choice(sorted(_CONFIG_OTHER))
    return ["jset", "config.json", [key], rng.choice(_CONFIG_OTHER[key])]


def _st_header(blob: bytes) -> tuple[dict, int]:
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8 : 8 + n]), n


def _weights_op(rng: random.Random, files: Files) -> Op:
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    if "model.safetensors.index.json" in files and rng.random() < 0.2:
        return _index_op(rng, files, shards)
    file = rng.choice(shards)
    blob = files[file]
    header, hlen = _st_header(blob)
    names = sorted(k for k in header if k != "__metadata__")
    t = rng.choice(names)
    shape, (b, e) = header[t]["shape"], header[t]["data_offsets"]
    r = rng.random()
    if r < 0.12:  # the header length field
        val = rng.choice([0, 1, 2, hlen - 1, hlen + 1, hlen + 8, len(blob), 2**63, 2**64 - 1])
        return ["put", file, 0, (val % 2**64).to_bytes(8, "little").hex()]
    if r < 0.25:
        return _bytes_op(rng, file, len(blob), hot=8 + hlen)
    if r < 0.40:
        dt = rng.choice(["F32", "F16", "BF16", "I8", "F64", "U8", "Q4", "", 5, None, ["F32"]])
        return ["jset", file, [t, "dtype"], dt]
    if r < 0.60:
        d = shape[0] if shape else 1
        new = rng.choice(
            [
                list(reversed(shape)),
                [d + 1, *shape[1:]],
                [*shape, 1],
                [],
                [0, *shape[1:]],
                [-1, *shape[1:]],
                [2**63, 0],
                [2**64],
                [1.5, *shape[1:]],
                [True, *shape[1:]],
                "12",
                None,
                [1] * 9,
                [d // 2, *shape[1:]],
            ]
        )
        return ["jset", file, [t, "shape"], new]
    if r < 0.80:
        other = header[rng.choice(names)]["data_offsets"]
        new = rng.choice(
            [
                [b + 1, e + 1],
                [b, e - 1],
                [e, b],
                [b - 8, e - 8],
                [-8, e],
                [0, 2**64],
                [b, 2**63],
                list(other),
                [b, b],
                [b],
                [str(b), e],
                [b + 0.5, e],
            ]
        )
        return ["jset", file, [t, "data_offsets"], new]
    if r < 0.88:
        return ["jdel", file, [t]]
    if r < 0.95:
        new_name = rng.choice(
            [
                "model.layers.9.mlp.up_proj.weight",
                "model.layers.0.self_attn.q_proj.bias",
                "lm_head.weight",
                "model.layers.00.mlp.up_proj.weight",
                "model.layers.-1.mlp.up_proj.weight",
                "model.rotary_emb.inv_freq",
                rng.choice(names),
            ]
        )
        return ["jset", file, [new_name], header[t]]
    return ["jset", file, ["__metadata__"], rng.choice([{"a": 1}, [], None, {"format": "pt"}])]


def _index_op(rng: random.Random, files: Files, shards: list[str]) -> Op:
    idx = json.loads(files["model.safetensors.index.json"])
    names = sorted(idx["weight_map"])
    r = rng.random()
    if r < 0.3:
        return ["rm", rng.choice(shards)]
    if r < 0.6:
        shard = rng.choice([*shards, "missing.safetensors", "../model.safetensors", "", "."])
        return ["jset", "model.safetensors.index.json", ["weight_map", rng.choice(names)], shard]
    if r < 0.8:
        return ["jdel", "model.safetensors.index.json", ["weight_map", rng.choice(names)]]
    return ["jset", "model.safetensors.index.json", ["weight_map"], json_odd(rng)]


def _tokenizer_op(rng: random.Random, files: Files) -> Op:
    f = "tokenizer.json"
    tok = json.loads(files[f])
    vocab = tok["model"]["vocab"]
    r = rng.random()
    if r < 0.15:
        return _bytes_op(rng, f, len(files[f]))
    if r < 0.2:
        return ["rm", f]
    if r < 0.4:
        piece = rng.choice(sorted(vocab))
        val = rng.choice([-1, 10**9, 2**32, len(vocab), 0, "x", None, 1.5])
        return ["jset", f, ["model", "vocab", piece], val]
    if r < 0.5:
        return ["jdel", f, ["model", "vocab", rng.choice(sorted(vocab))]]
    if r < 0.65:
        merges = tok["model"]["merges"]
        j = rng.randrange(len(merges))
        bad = rng.choice(["zz qq", "a", "", ["a"], ["a", "b", "c"], 5, None])
        return ["jset", f, ["model", "merges", j], bad]
    if r < 0.8 and tok.get("added_tokens"):
        j = rng.randrange(len(tok["added_tokens"]))
        field = rng.choice(["id", "content", "special"])
        val = rng.choice([-1, 10**9, 333, 5, "", None, "<|im_end|>"])
        return ["jset", f, ["added_tokens", j, field], val]
    part = rng.choice(["pre_tokenizer", "decoder", "normalizer", "post_processor", "model"])
    val = rng.choice(
        [None, {"type": "Nope"}, {"type": "Metaspace"}, {"type": "WordPiece"}, [], 5]
        + [{"type": "Sequence", "decoders": [{"type": "Replace"}]}]
    )
    if part == "model" and rng.random() < 0.5:
        return ["jset", f, ["model", "type"], rng.choice(["WordPiece", "Unigram", "WordLevel", ""])]
    return ["jset", f, [part], val]


def _tokenizer_config_op(rng: random.Random) -> Op:
    f = "tokenizer_config.json"
    r = rng.random()
    if r < 0.45:
        return ["jset", f, ["chat_template"], template(rng)]
    if r < 0.55:
        val = rng.choice([5, None, [], [{"name": "default", "template": 3}], [{"name": "x"}]])
        return ["jset", f, ["chat_template"], val]
    if r < 0.8:
        key = rng.choice(["bos_token", "eos_token"])
        val = rng.choice(["<absent>", 123, None, {"content": 5}, {"content": "<|im_end|>"}, ""])
        return ["jset", f, [key], val]
    if r < 0.9:
        key = rng.choice(["add_bos_token", "add_eos_token"])
        return ["jset", f, [key], rng.choice([True, "yes", 1, None])]
    return ["rm", f]
