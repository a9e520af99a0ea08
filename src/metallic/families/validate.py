"""Value checks of model hyper-parameters (config.json and GGUF-derived ModelArgs).

Every value read from a file is checked for its JSON type and range before arithmetic touches it,
so a string, a list, a non-finite float or a 2**64 size ends in ``CorruptFile`` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import CorruptFile

TAG = "open_model"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v) or _is_int(v) and abs(v) <= 1 << 63


# ModelArgs annotation (as written, ``from __future__ import annotations``) -> (check, expected).
_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "int": (_is_int, "an integer"),
    "int | None": (lambda v: v is None or _is_int(v), "an integer or null"),
    "float": (_is_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict[str, Any] | None": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "float | None": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "list[int]": (
        lambda v: isinstance(v, list) and all(_is_int(x) and 0 <= x <= 1 << 31 for x in v),
        "a list of integers >= 0",
    ),
}


def check_field_types(args: Any, source: str) -> None:
    """Check every field of a ModelArgs built from config.json against its annotation.

    Args:
        args: a ModelArgs dataclass instance.
        source: file path for messages.

    Raises:
        CorruptFile: a value of the wrong JSON type (a string where a number belongs, a
            non-finite float, a list where an integer belongs, ...).
    """
    for f in dataclasses.fields(args):
        check, expected = _FIELD_CHECKS[str(f.type)]  # every family field type is listed above
        v = getattr(args, f.name)
        if not check(v):
            raise CorruptFile(f"[{TAG}] {source}: key {f.name}: expected {expected}, got {v!r:.80}")


MAX_SIZE = 1 << 24  # cap of every model dimension (vocab, width, heads, layers, head_dim)


def check_sizes(args: Any, source: str) -> None:
    """Check the size hyper-parameters (positive, at most :data:`MAX_SIZE`) and the RMS epsilon.

    Args:
        args: a ModelArgs.
        source: file path for messages.

    Raises:
        CorruptFile: a value out of range.
    """
    keys = "vocab_size hidden_size num_hidden_layers intermediate_size num_attention_heads"
    for key in (*keys.split(), "num_key_value_heads", "head_dim", "max_position_embeddings"):
        v = getattr(args, key)
        if v is None and key in ("num_key_value_heads", "head_dim"):
            continue
        cap = 1 << 40 if key == "max_position_embeddings" else MAX_SIZE
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= cap:
            raise CorruptFile(
                f"[{TAG}] {source}: key {key}: expected an integer in 1..{cap}, got {v!r:.80}"
            )
    eps = args.rms_norm_eps
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise CorruptFile(f"[{TAG}] {source}: key rms_norm_eps: expected 0 < eps < 1, got {eps!r}")
