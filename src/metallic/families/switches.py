"""Config readers shared by the families that use the decoder plan's switches (issue #11).

HF ``config.json`` files exist in two generations: transformers < 5 writes ``rope_theta``,
``rope_scaling``, ``rope_local_base_freq`` and ``sliding_window_pattern``; transformers >= 5 writes
``rope_parameters`` (one dict, or one per layer type: ``full_attention`` / ``sliding_attention``)
and ``layer_types``. Both are read here, so a family module only names its defaults.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import CorruptFile
from .base import TAG

FULL, SLIDING = "full_attention", "sliding_attention"


def _number(v: Any, key: str, source: str, *, positive: bool = True) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise CorruptFile(f"[{TAG}] {source}: key {key}: expected a finite number, got {v!r}")
    if positive and v <= 0:
        raise CorruptFile(f"[{TAG}] {source}: key {key}: expected a positive number, got {v!r}")
    return float(v)


def hf_rope(
    config: dict[str, Any], layer_type: str, default_theta: float, source: str
) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling of one layer type from an HF config of either generation.

    Args:
        config: parsed config.json.
        layer_type: ``FULL`` or ``SLIDING``.
        default_theta: the family's base when the config names none (transformers' default).
        source: file path for messages.

    Returns:
        (theta, scaling dict or None).

    Raises:
        CorruptFile: a malformed ``rope_parameters`` / ``rope_theta`` value.
    """
    rp = config.get("rope_parameters")
    if rp is not None:
        if not isinstance(rp, dict):
            raise CorruptFile(f"[{TAG}] {source}: key rope_parameters: expected an object")
        if FULL in rp or SLIDING in rp:
            rp = rp.get(layer_type, rp.get(FULL))
            if not isinstance(rp, dict):
                raise CorruptFile(
                    f"[{TAG}] {source}: key rope_parameters.{layer_type}: expected an object"
                )
        theta = _number(rp.get("rope_theta", default_theta), "rope_parameters.rope_theta", source)
        kind = rp.get("rope_type", rp.get("type"))
        return theta, (dict(rp) if kind not in (None, "default") else None)
    if layer_type == SLIDING and "rope_local_base_freq" in config:
        return _number(config["rope_local_base_freq"], "rope_local_base_freq", source), None
    theta = _number(config.get("rope_theta", default_theta), "rope_theta", source)
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise CorruptFile(f"[{TAG}] {source}: key rope_scaling: expected an object or null")
    return theta, scaling


def hf_layer_types(
    config: dict[str, Any], n_layer: int, default_pattern: int, source: str
) -> list[str]:
    """Per layer ``FULL`` or ``SLIDING`` from ``layer_types``, else ``sliding_window_pattern``.

    Args:
        config: parsed config.json.
        n_layer: number of decoder blocks.
        default_pattern: every ``default_pattern``-th layer is global (0: every layer sliding).
        source: file path for messages.

    Returns:
        n_layer names.

    Raises:
        CorruptFile: a ``layer_types`` list of the wrong length or with unknown names.
    """
    lt = config.get("layer_types")
    if lt is not None:
        if (
            not isinstance(lt, list)
            or len(lt) != n_layer
            or any(t not in (FULL, SLIDING) for t in lt)
        ):
            raise CorruptFile(
                f"[{TAG}] {source}: key layer_types: expected {n_layer} entries of "
                f"{FULL!r} / {SLIDING!r}, got {lt!r}"[:400]
            )
        return list(lt)
    pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern"))
    pattern = default_pattern if pattern is None else pattern
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0:
        raise CorruptFile(
            f"[{TAG}] {source}: key sliding_window_pattern: expected an integer >= 0, got "
            f"{pattern!r}"
        )
    return [FULL if pattern and (i + 1) % pattern == 0 else SLIDING for i in range(n_layer)]


def windows(layer_types: list[str], window: int | None, source: str) -> list[int]:
    """The native ``layer_window`` list: the window on sliding layers, 0 on global ones.

    Args:
        layer_types: per layer ``FULL`` / ``SLIDING``.
        window: the sliding window size (config ``sliding_window``).
        source: file path for messages.

    Returns:
        One integer per layer.

    Raises:
        CorruptFile: sliding layers without a positive window.
    """
    if SLIDING in layer_types and (
        not isinstance(window, int) or isinstance(window, bool) or window <= 0
    ):
        raise CorruptFile(
            f"[{TAG}] {source}: key sliding_window: expected a positive integer, got {window!r}"
        )
    return [int(window) if t == SLIDING else 0 for t in layer_types]


def check_window(window: int | None, source: str) -> None:
    """A config's ``sliding_window`` that applies to every layer: a positive integer or null.

    Raises:
        CorruptFile: zero or negative.
    """
    if window is not None and window <= 0:
        raise CorruptFile(
            f"[{TAG}] {source}: key sliding_window: expected a positive integer or null, got "
            f"{window}"
        )
