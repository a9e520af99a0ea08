"""Sampling parameters, validated once at the API boundary."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import InvalidArgument


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise InvalidArgument(f"[sampling] {name}: expected {expected}, got {got!r}")


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``temperature == 0`` is greedy (argmax).

    Order of application (native ``Sampler``): repetition penalty → greedy if temperature is 0 →
    top-k → softmax(logits / temperature) → top-p → min-p → seeded draw.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(
            _is_real(self.temperature) and self.temperature >= 0,
            "temperature",
            ">= 0",
            self.temperature,
        )
        _check(
            isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0,
            "top_k",
            "an int >= 0",
            self.top_k,
        )
        _check(_is_real(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        _check(_is_real(self.min_p) and 0 <= self.min_p <= 1, "min_p", "in [0, 1]", self.min_p)
        _check(
            _is_real(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty",
            "> 0",
            self.repetition_penalty,
        )
        _check(
            isinstance(self.repetition_window, int) and 0 <= self.repetition_window <= 1 << 20,
            "repetition_window",
            "an int in [0, 1048576]",
            self.repetition_window,
        )
        _check(
            self.seed is None
            or (
                isinstance(self.seed, int)
                and not isinstance(self.seed, bool)
                and 0 <= self.seed < 1 << 64
            ),
            "seed",
            "None or an int in [0, 2**64)",
            self.seed,
        )

    def resolved_seed(self) -> int:
        """The seed to use: the given one, or fresh entropy when ``seed`` is None."""
        return self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little")
