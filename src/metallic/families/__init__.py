"""Model family registry: architecture name -> family module (``metallic.families.<name>``).

A family module provides ``ARCH``, ``ModelArgs``, ``args_from_gguf(metadata, source=...)``,
``args_from_hf(config, source=...)``, ``canonical_name(hf_name)`` and
``native_config(args, source_format, rope_freq_factors=None, source=...)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UnsupportedArchitecture

# Family module names, each importable as metallic.families.<name>.
FAMILIES = ("llama", "qwen2")

# Other spellings (HF `architectures` entries, HF `model_type`, GGUF `general.architecture`).
ALIASES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "mistral": "llama",
    "Qwen2ForCausalLM": "qwen2",
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
