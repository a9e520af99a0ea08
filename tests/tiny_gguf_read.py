"""Read a GGUF file of any tiny-model family back into HF terms: (HF-style config, HF-named float32
weights, HF name -> storage dtype), as llama.cpp would interpret the file.

Independent of the writer's bookkeeping: metadata comes from ``gguf.GGUFReader``, values from
``gguf.quants.dequantize``, names from the converter's ``TensorNameMap``; llama-arch q/k rows are
un-permuted and gemma norms have 1 subtracted. What llama.cpp hard-codes instead of reading is
restated here from its source (``llama-model.cpp``): the gemma layer patterns, the gemma
attention scale rule, gemma2's rope base (10000) and default soft-caps (50 / 30), and that phi3's
sliding window is disabled. The tests run ``reference.forward`` on the result and on the HF
variant of the same model, so every layout fact of ``tiny_families`` is checked against HF.
"""

from __future__ import annotations

import gguf
import numpy as np

import reference
import tiny_families as tf
from tiny_models import unpermute_qk

_MODEL_TYPE = {"qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3"}


def _config(md: dict, names: set[str]) -> dict:
    arch = md["general.architecture"]

    def get(key: str, default=None):
        return md.get(f"{arch}.{key}", default)

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    n_layer = int(get("block_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    window = get("attention.sliding_window")
    cfg = {
        "model_type": _MODEL_TYPE.get(arch, "mistral" if window else arch),
        "hidden_size": hidden,
        "num_hidden_layers": n_layer,
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "vocab_size": len(md["tokenizer.ggml.tokens"]),
        "max_position_embeddings": int(get("context_length")),
        "tie_word_embeddings": "output.weight" not in names,
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "torch_dtype": "float32",  # llama.cpp computes the gemma embedding scale in float32
    }
    if arch == "llama" and int(get("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError("llama GGUF: rope.dimension_count != head dim")
    if arch == "llama" and window:
        cfg["sliding_window"] = int(window)
    if arch in ("gemma2", "gemma3"):
        cfg["query_pre_attn_scalar"] = tf.gemma_attention_scalar(
            arch, n_layer, hidden, heads, head_dim
        )
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        pattern = 2 if arch == "gemma2" else 6  # hard-coded by llama.cpp
        cfg["layer_types"] = [
            reference.SLIDING if (i + 1) % pattern else reference.FULL for i in range(n_layer)
        ]
        cfg["final_logit_softcapping"] = get("final_logit_softcapping")
    if arch == "gemma2":
        cfg["sliding_window"] = int(get("attention.sliding_window", 4096))
        cfg["attn_logit_softcapping"] = float(get("attn_logit_softcapping", 50.0))
        cfg["final_logit_softcapping"] = float(get("final_logit_softcapping", 30.0))
    if arch == "gemma3":
        cfg["sliding_window"] = int(window)
        cfg["rope_local_base_freq"] = float(get("rope.freq_base_swa", 10000.0))
        if get("rope.scaling.type", "none") == "linear" and get("rope.scaling.factor"):
            cfg["rope_scaling"] = {
                "rope_type": "linear",
                "factor": float(get("rope.scaling.factor")),
            }
    if arch == "phi3":
        del cfg["head_dim"]  # phi3 configs have none: hidden / heads
        cfg["partial_rotary_factor"] = int(get("rope.dimension_count")) / (hidden // heads)
        orig = int(get("rope.scaling.original_context_length", cfg["max_position_embeddings"]))
        cfg["original_max_position_embeddings"] = orig
    return cfg


def read_family_gguf(path) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    r = gguf.GGUFReader(str(path))
    md = {f.name: f.contents() for f in r.fields.values()}
    tensors = {t.name: t for t in r.tensors}
    cfg = _config(md, set(tensors))

    def values(t) -> np.ndarray:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)

    if "rope_factors_long.weight" in tensors:
        cfg["rope_scaling"] = {
            "type": "longrope",
            "long_factor": values(tensors.pop("rope_factors_long.weight")).tolist(),
            "short_factor": values(tensors.pop("rope_factors_short.weight")).tolist(),
            "attention_factor": float(md[f"{md['general.architecture']}.rope.scaling.attn_factor"]),
        }
    hf_of = {tf.gguf_name(cfg, hf): hf for hf in tf.weight_specs(cfg)}
    weights, dtypes = {}, {}
    for name, t in tensors.items():
        hf = hf_of[name]
        v = values(t)
        heads = tf.permuted_heads(cfg, hf)
        if heads:
            v = unpermute_qk(v, heads)
        weights[hf] = tf.from_gguf_values(cfg, hf, v.astype(np.float32))
        dtypes[hf] = t.tensor_type.name.lower()
    return cfg, weights, dtypes
