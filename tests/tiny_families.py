"""Tiny models of the families ``qwen3``, ``gemma3`` (``gemma3_text``), ``gemma2``, ``mistral`` and
``phi3``: HF configs, seeded HF-named weights, and the GGUF layout of llama.cpp's converter
(``convert_hf_to_gguf.py``; facts only). ``tiny_models.make_model`` writes the files; this module
holds what differs per family. ``tiny_gguf_read.py`` reads such GGUF files back into HF terms.

Each default config makes its family's features matter on prompts of 1, 7 and 24 tokens: sliding
windows of 8 keys, head_dim != hidden_size / heads (qwen3, gemma), gemma3's 1-in-6 global layer
(7 layers: the 6th is global) with its own RoPE base and linear scaling, soft-caps that bend
(gemma2), partial rotary 0.5 and longrope with original_max_position_embeddings 16 (phi3:
prompts of <= 16 tokens use the short factors, 24 tokens the long ones).

GGUF facts per family (tensor names from ``gguf.get_tensor_name_map``, keys from
``gguf.constants.Keys`` through ``GGUFWriter``):

* qwen3: arch ``qwen3``; q/k not permuted; ``attn_q_norm`` / ``attn_k_norm``; keys ``rope.freq_base``,
  ``attention.key_length`` / ``value_length`` (head_dim); no ``rope.dimension_count``.
* mistral: arch ``llama`` (the converter registers MistralForCausalLM as LlamaModel); q/k rows
  permuted per head (HF halves -> GGUF interleaved pairs), k with the kv head count;
  ``vocab_size``, ``rope.dimension_count`` = head_dim, key/value_length. The converter drops the
  sliding window (llama.cpp's llama arch has none); these files add
  ``llama.attention.sliding_window`` so that they still mean the HF model (llama.cpp ignores it).
* gemma2: arch ``gemma2``; every ``*norm.weight`` stored as ``1 + w``; no ``output.weight`` (the
  converter skips lm_head); keys key/value_length, ``attn_logit_softcapping``,
  ``final_logit_softcapping``, ``attention.sliding_window``; no ``rope.freq_base`` (llama.cpp:
  10000). llama.cpp hard-codes the layer pattern (even layers sliding) and the attention scale
  (1/sqrt(head_dim), 1/sqrt(hidden/heads) for the 46-layer 27B).
* gemma3: arch ``gemma3``; norms (q/k norms too) stored as ``1 + w``; ``rope.freq_base`` (global),
  ``rope.freq_base_swa`` (local; written when transformers >= 5 nests the rope parameters),
  ``rope.scaling.type`` / ``factor`` (global layers only), ``attention.sliding_window``,
  ``final_logit_softcapping`` when set. llama.cpp hard-codes the pattern (every 6th layer
  global) and the scale (1/sqrt(head_dim), 1/sqrt(hidden/heads) for the 62-layer 27B).
* phi3: arch ``phi3``; fused ``attn_qkv`` and ``ffn_up`` (= HF gate_up_proj, gate rows first);
  ``rope.dimension_count`` = int(partial_rotary_factor * hidden) // heads, ``rope.freq_base``,
  ``rope.scaling.original_context_length``, ``context_length`` = max_position_embeddings,
  ``attention.sliding_window`` (0 when none; llama.cpp disables phi3's window anyway),
  ``rope.scaling.attn_factor`` = sqrt(1 + ln(ctx/orig) / ln(orig)) and F32 tensors
  ``rope_factors_long.weight`` / ``rope_factors_short.weight`` (rot/2 each).
"""

from __future__ import annotations

import hashlib
import json

import gguf
import numpy as np

import reference

FAMILIES = ("qwen3", "gemma3", "gemma2", "mistral", "phi3")
MODEL_TYPE = {f: f for f in FAMILIES} | {"gemma3": "gemma3_text"}
GGUF_ARCH = {"qwen3": "qwen3", "gemma3_text": "gemma3", "gemma2": "gemma2", "mistral": "llama"}
GGUF_ARCH |= {"phi3": "phi3", "llama": "llama"}  # by model_type
# Each family's usual head: the fixtures and the engine tests use these.
USUAL_TIED = {"qwen3": True, "gemma3": True, "gemma2": True, "mistral": False, "phi3": True}
GEMMA3_LINEAR = {"rope_type": "linear", "factor": 8.0}  # as gemma-3-4b and larger
PHI3_LONGROPE = {
    "type": "longrope",
    "short_factor": [1.0, 1.25, 1.5, 2.0],
    "long_factor": [1.5, 3.0, 6.0, 12.0],
}
NORM_GRID = 2.0**-12  # gemma norm weights: 1 + w is exact in float32, so GGUF's 1 + w is too

_COMMON = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 160,
    "vocab_size": 333,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
}
DEFAULTS = {
    "qwen3": {
        **_COMMON,
        "num_hidden_layers": 3,
        "head_dim": 32,  # != 64 / 4
        "hidden_act": "silu",
        "rope_theta": 1_000_000.0,
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 3,
    },
    "gemma3": {
        **_COMMON,
        "num_hidden_layers": 7,
        "head_dim": 32,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 32,
        "sliding_window": 8,
        "sliding_window_pattern": 6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": GEMMA3_LINEAR,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
    },
    "gemma2": {
        **_COMMON,
        "num_hidden_layers": 3,
        "head_dim": 32,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 32,
        "sliding_window": 8,
        "rope_theta": 10_000.0,
        # Real models use 50 / 30. Here attention scores have std ~1 (|s| <= ~4.5) and logits
        # std ~3.4 (|x| <= ~28), so tanh bends them by ~4% at one std, ~20% at the 99th pct.
        "attn_logit_softcapping": 3.0,
        "final_logit_softcapping": 10.0,
    },
    "mistral": {
        **_COMMON,
        "num_hidden_layers": 3,
        "head_dim": 16,
        "hidden_act": "silu",
        "rope_theta": 1_000_000.0,
        "sliding_window": 8,
    },
    "phi3": {
        **_COMMON,
        "num_hidden_layers": 3,  # no head_dim key, as Phi-3/4 configs: 64 / 4 = 16
        "hidden_act": "silu",
        "rope_theta": 10_000.0,
        "partial_rotary_factor": 0.5,
        "rope_scaling": PHI3_LONGROPE,
        "original_max_position_embeddings": 16,
        "sliding_window": None,
    },
}


def family_config(family: str, tied: bool, torch_dtype: str, ids: dict, **overrides) -> dict:
    """config.json of a tiny ``family`` model (``overrides``: keys of :data:`DEFAULTS`)."""
    unknown = set(overrides) - set(DEFAULTS[family]) - {"layer_types"}
    if unknown:
        raise TypeError(f"unknown {family} config overrides {sorted(unknown)}")
    arch = {"qwen3": "Qwen3", "gemma3": "Gemma3", "gemma2": "Gemma2", "mistral": "Mistral"}
    arch |= {"phi3": "Phi3"}
    cfg = {
        "architectures": [f"{arch[family]}ForCausalLM"],
        "model_type": MODEL_TYPE[family],
        **DEFAULTS[family],
        **overrides,
        "tie_word_embeddings": tied,
        **ids,
        "torch_dtype": torch_dtype,
    }
    if family == "gemma3" and "layer_types" not in overrides:
        pattern = cfg["sliding_window_pattern"]
        cfg["layer_types"] = [
            "sliding_attention" if (i + 1) % pattern else "full_attention"
            for i in range(cfg["num_hidden_layers"])
        ]
    if cfg.get("layer_types", ()) is None:  # layer_types=None: the key left out
        del cfg["layer_types"]
    return cfg


# ----------------------------------------------------------------------------- fixtures

# transformers' logits (tests/fixtures/families/<name>.npz, scripts/make_family_fixtures.py):
# name -> (family, config overrides, prompt lengths). Each family's default model at 1, 7 and 24
# tokens (24 > 2 x the window of 8, > phi3's original context of 16; phi3 also at 16 and 17, the
# two sides of longrope's switch); two variants at 24 tokens: gemma2 with the 27B-style
# query_pre_attn_scalar (hidden / heads = 16, not head_dim = 32) and gemma3 whose config has no
# layer_types (transformers derives them from sliding_window_pattern).
FIXTURES = {f: (f, {}, (1, 7, 24)) for f in FAMILIES}
FIXTURES["phi3"] = ("phi3", {}, (1, 7, 16, 17, 24))
FIXTURES["gemma2-scalar16"] = ("gemma2", {"query_pre_attn_scalar": 16}, (24,))
FIXTURES["gemma3-pattern"] = ("gemma3", {"layer_types": None}, (24,))


def fixture_tokens(n: int, vocab: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(1000 + n).integers(0, vocab, n)]


def fingerprint(cfg: dict, weights: dict[str, np.ndarray]) -> str:
    """sha256 of the config and the weights: a fixture made from other numbers is stale."""
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], dtype="<f4").tobytes())
    return h.hexdigest()


def weight_specs(cfg: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """HF weight name -> (shape, init kind), in the order the seeded generator draws them."""
    d, ff, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], reference.head_dim_of(cfg)
    mt = cfg["model_type"]
    specs = {"model.embed_tokens.weight": ((vocab, d), "embed")}
    for i in range(cfg["num_hidden_layers"]):
        p, a, m = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        specs[p + "input_layernorm.weight"] = ((d,), "norm")
        specs[p + "post_attention_layernorm.weight"] = ((d,), "norm")
        if mt in reference.GEMMA:
            specs[p + "pre_feedforward_layernorm.weight"] = ((d,), "norm")
            specs[p + "post_feedforward_layernorm.weight"] = ((d,), "norm")
        if mt == "phi3":
            specs[a + "qkv_proj.weight"] = (((nh + 2 * nkv) * hd, d), "mat")
        else:
            specs[a + "q_proj.weight"] = ((nh * hd, d), "mat")
            specs[a + "k_proj.weight"] = ((nkv * hd, d), "mat")
            specs[a + "v_proj.weight"] = ((nkv * hd, d), "mat")
        if mt in ("qwen3", "gemma3_text"):
            specs[a + "q_norm.weight"] = ((hd,), "norm")
            specs[a + "k_norm.weight"] = ((hd,), "norm")
        specs[a + "o_proj.weight"] = ((d, nh * hd), "mat")
        if mt == "phi3":
            specs[m + "gate_up_proj.weight"] = ((2 * ff, d), "mat")
        else:
            specs[m + "gate_proj.weight"] = ((ff, d), "mat")
            specs[m + "up_proj.weight"] = ((ff, d), "mat")
        specs[m + "down_proj.weight"] = ((d, ff), "mat")
    specs["model.norm.weight"] = ((d,), "final_norm")
    if not cfg["tie_word_embeddings"]:
        specs["lm_head.weight"] = ((vocab, d), "head")
    return specs


def family_weights(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    """HF-named float32 weights scaled so activations stay O(1) and logits spread over ~3 units
    (gemma norms are HF's w, effective 1 + w, on a 2^-12 grid)."""
    rng = np.random.default_rng(seed)
    gemma = cfg["model_type"] in reference.GEMMA
    out = {}
    for name, (shape, kind) in weight_specs(cfg).items():
        if kind == "embed":
            out[name] = rng.standard_normal(shape)
        elif kind in ("mat", "head"):  # the head: the same spread as the embedding
            scale = np.sqrt(shape[1]) if kind == "head" else 1.0
            out[name] = rng.standard_normal(shape) * scale / np.sqrt(shape[1])
        else:
            mean, spread = (0.4, 0.04) if kind == "final_norm" else (1.0, 0.1)
            w = mean - (1.0 if gemma else 0.0) + spread * rng.standard_normal(shape)
            out[name] = np.round(w / NORM_GRID) * NORM_GRID if gemma else w
        out[name] = out[name].astype(np.float32)
    return out


# ----------------------------------------------------------------------------- GGUF layout


def gguf_arch(cfg: dict) -> str:
    return GGUF_ARCH[cfg["model_type"]]


def gguf_name(cfg: dict, hf: str) -> str:
    """HF weight name -> llama.cpp's GGUF name (the converter's own ``TensorNameMap``)."""
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_arch(cfg))
    tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise KeyError(f"no GGUF name for {hf} in {gguf_arch(cfg)}")
    return name


def is_gemma_norm(cfg: dict, hf: str) -> bool:
    """The tensors the converter stores as 1 + w (names ending in norm.weight)."""
    return cfg["model_type"] in reference.GEMMA and hf.endswith("norm.weight")


def to_gguf_values(cfg: dict, hf: str, values: np.ndarray) -> np.ndarray:
    return (values + np.float32(1)).astype(np.float32) if is_gemma_norm(cfg, hf) else values


def from_gguf_values(cfg: dict, hf: str, values: np.ndarray) -> np.ndarray:
    return (values - np.float32(1)).astype(np.float32) if is_gemma_norm(cfg, hf) else values


def permuted_heads(cfg: dict, hf: str) -> int | None:
    """Head count of the per-head row permutation the converter applies (llama arch q/k)."""
    if gguf_arch(cfg) != "llama":
        return None
    if hf.endswith("self_attn.q_proj.weight"):
        return cfg["num_attention_heads"]
    if hf.endswith("self_attn.k_proj.weight"):
        return cfg["num_key_value_heads"]
    return None


def gemma_attention_scalar(arch: str, n_layer: int, hidden: int, heads: int, head_dim: int):
    """llama.cpp's gemma attention scale rule: query_pre_attn_scalar = hidden / heads for the
    27B sizes (gemma2: 46 layers, gemma3: 62), head_dim otherwise."""
    return hidden // heads if n_layer == {"gemma2": 46, "gemma3": 62}[arch] else head_dim


def check_gguf_expressible(cfg: dict) -> None:
    """Refuse configs that llama.cpp's GGUF cannot carry (it hard-codes them)."""
    arch, types = gguf_arch(cfg), reference.layer_types(cfg)
    n, hd = cfg["num_hidden_layers"], reference.head_dim_of(cfg)
    problems = []
    if arch in ("gemma2", "gemma3"):
        pattern = 2 if arch == "gemma2" else 6
        if types != [reference.SLIDING if (i + 1) % pattern else reference.FULL for i in range(n)]:
            problems.append(f"layer pattern (llama.cpp: {pattern})")
        scalar = gemma_attention_scalar(arch, n, cfg["hidden_size"], cfg["num_attention_heads"], hd)
        if cfg["query_pre_attn_scalar"] != scalar:
            problems.append(f"query_pre_attn_scalar (llama.cpp: {scalar})")
        if not cfg["tie_word_embeddings"] and arch == "gemma2":
            problems.append("untied head (the converter skips lm_head)")
    if arch == "gemma2" and cfg["rope_theta"] != 10000.0:
        problems.append("rope_theta (no key; llama.cpp: 10000)")
    if arch == "phi3" and cfg.get("sliding_window"):
        problems.append("sliding_window (llama.cpp disables phi3's window)")
    if arch == "phi3" and {"factor", "attention_factor"} & set(cfg.get("rope_scaling") or {}):
        problems.append("longrope factor / attention_factor (the converter derives its own)")
    if problems:
        raise ValueError(f"{cfg['model_type']} config not expressible in GGUF: {problems}")


def add_gguf_metadata(w: gguf.GGUFWriter, cfg: dict) -> None:
    """The architecture keys the converter writes for this family (tokenizer keys aside)."""
    check_gguf_expressible(cfg)
    arch = gguf_arch(cfg)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if "head_dim" in cfg:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if arch != "gemma2":  # Gemma2Model writes no rope base
        w.add_rope_freq_base(cfg["rope_theta"])
    if arch == "llama":
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(reference.head_dim_of(cfg))
        if cfg.get("sliding_window") is not None:  # beyond the converter: see the docstring
            w.add_sliding_window(cfg["sliding_window"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
    if arch == "gemma3":
        w.add_rope_freq_base_swa(cfg["rope_local_base_freq"])
        scaling = cfg.get("rope_scaling") or {}
        if scaling.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(scaling["factor"])
        elif scaling:
            raise ValueError(f"gemma3 GGUF: rope_scaling {scaling} not written here")
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
    if arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
        w.add_rope_dimension_count(reference.rotary_dim(cfg))
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        if (cfg.get("rope_scaling") or {}).get("long_factor"):
            w.add_rope_scaling_attn_factors(reference.longrope_attention_factor(cfg))


def extra_gguf_tensors(cfg: dict) -> dict[str, np.ndarray]:
    """Tensors the converter derives from the config (phi3's longrope factors, F32)."""
    scaling = cfg.get("rope_scaling") or {}
    if cfg["model_type"] != "phi3" or not scaling.get("long_factor"):
        return {}
    return {
        "rope_factors_long.weight": np.asarray(scaling["long_factor"], dtype=np.float32),
        "rope_factors_short.weight": np.asarray(scaling["short_factor"], dtype=np.float32),
    }
