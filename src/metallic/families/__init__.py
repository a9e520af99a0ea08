"""Model family registry: architecture name -> family module (``metallic.families.<name>``).

A family module provides ``ARCH``, ``ModelArgs``, ``args_from_gguf(metadata, source=...)``,
``args_from_hf(config, source=...)``, ``canonical_name(hf_name)`` and
``native_config(args, source_format, rope_freq_factors=None, source=...)``. Optional hooks, used
by ``metallic.loader`` when present:

* ``GGUF_ARG_TENSORS``: names of small 1-D F32 GGUF tensors that are hyper-parameters, not weights
  (phi3's longrope factors); the loader reads the present ones (copies) and passes them as
  ``args_from_gguf(metadata, source=..., tensors={name: float64 array})``, and leaves them out
  of the weights.
* ``split_fused(name, shape, config, source=..., file_name=...)``: for a fused canonical tensor
  (phi3's ``attn_qkv``, ``ffn_up``), ``[(part name, first row, rows)]`` covering its rows in
  order, else None; raises ``ShapeMismatch`` naming the tensor when the fused shape is wrong. The
  loader replaces the fused entry by the parts, each a zero-copy byte range of the fused tensor.

``native_config`` returns only real ``ModelConfig`` fields, except the :data:`LONG_CONTEXT` entry:
``{"threshold": int, "overrides": {field: value}}``, settings that depend on the context length
(phi3's longrope factors). ``metallic.load`` applies the overrides iff its ``context_length``
exceeds ``threshold`` (llama.cpp's rule), then drops the entry (:func:`resolve_context`).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..errors import UnsupportedArchitecture

# Family module names, each importable as metallic.families.<name>.
FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")

# native_config entry resolved by metallic.load against its context_length (see above).
LONG_CONTEXT = "long_context"

# Other spellings (HF `architectures` entries, HF `model_type`, GGUF `general.architecture`).
ALIASES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "mistral": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "gemma3_text": "gemma3",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
    "Phi3ForCausalLM": "phi3",
}


def family_name(arch: str) -> str:
    """Resolve an architecture name through the alias table.

    Args:
        arch: GGUF ``general.architecture``, HF ``model_type`` or an HF architectures entry.

    Returns:
        The family module name.

    Raises:
        UnsupportedArchitecture: unknown name.
    """
    if not isinstance(arch, str):
        raise UnsupportedArchitecture(f"[get_family] architecture {arch!r} is not a string")
    name = ALIASES.get(arch, arch)
    if name not in FAMILIES:
        raise UnsupportedArchitecture(
            f"[get_family] architecture {arch!r} is not supported "
            f"(expected one of {', '.join(FAMILIES)})"
        )
    return name


def get_family(arch: str) -> ModuleType:
    """Import the family module for an architecture.

    Args:
        arch: GGUF ``general.architecture``, HF ``model_type`` or an HF architectures entry.

    Returns:
        The module ``metallic.families.<name>``.

    Raises:
        UnsupportedArchitecture: unknown name.
    """
    return importlib.import_module(f"{__name__}.{family_name(arch)}")


def resolve_context(config: dict[str, Any], context_length: int) -> dict[str, Any]:
    """A native config with its :data:`LONG_CONTEXT` entry resolved for ``context_length``.

    Args:
        config: ``native_config``'s dict (not modified).
        context_length: tokens of KV cache the engine is built for.

    Returns:
        A new dict of ``ModelConfig`` fields only: the entry's overrides applied iff
        ``context_length`` > its threshold, the entry removed.
    """
    out = dict(config)
    entry = out.pop(LONG_CONTEXT, None)
    if entry is not None and context_length > entry["threshold"]:
        out.update(entry["overrides"])
    return out
