"""Sampling parameters, validated once at the API boundary."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import InvalidArgument


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise InvalidArgument(f"[sampling] {name}: expected {expected}, got {got!r}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``temperature == 0`` is greedy (argmax).

    Order of application (native ``Sampler``): logit_bias → token mask (constrained decoding) →
    EOS masked while fewer than ``min_tokens`` were drawn → repetition penalty → presence and
    frequency penalties → greedy if temperature is 0 → top-k → softmax(logits / temperature) →
    top-p → min-p → seeded draw.

    Every penalty looks at the last ``repetition_window`` tokens (the end of the prompt, then the
    generated ones), as llama.cpp does. repetition_penalty: llama.cpp rule (logit > 0 → / p,
    else * p), once per distinct token. presence_penalty / frequency_penalty: OpenAI semantics,
    ``logit -= presence * (count > 0) + frequency * count``.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0

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

        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_is_real(value) and -2 <= value <= 2, name, "a float in [-2, 2]", value)
        _check(
            self.logit_bias is None
            or (
                isinstance(self.logit_bias, dict)
                and all(
                    _is_int(k) and k >= 0 and _is_real(v) and -100 <= v <= 100
                    for k, v in self.logit_bias.items()
                )
            ),
            "logit_bias",
            "None or a dict {token_id (int >= 0): bias (float in [-100, 100])}",
            self.logit_bias,
        )
        _check(
            _is_int(self.min_tokens) and 0 <= self.min_tokens < 1 << 31,
            "min_tokens",
            "an int in [0, 2**31)",
            self.min_tokens,
        )

    @property
    def penalty_window(self) -> int:
        """Prompt tokens the penalties must see (0 when every penalty is off)."""
        active = (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )
        return self.repetition_window if active else 0

    def resolved_seed(self) -> int:
        """The seed to use: the given one, or fresh entropy when ``seed`` is None."""
        return self.seed if self.seed is not None else int.from_bytes(os.urandom(8), "little")


MAX_TOP_LOGPROBS = 100  # alternatives per token at most (the native Sampler::kMaxTopLogprobs)


def check_logprobs(logprobs: object, top_logprobs: object) -> int:
    """Validates the logprob options; returns the native ``top_logprobs`` (-1 = off)."""
    _check(isinstance(logprobs, bool), "logprobs", "a bool", logprobs)
    _check(
        _is_int(top_logprobs) and 0 <= top_logprobs <= MAX_TOP_LOGPROBS,
        "top_logprobs",
        f"an int in [0, {MAX_TOP_LOGPROBS}]",
        top_logprobs,
    )
    return top_logprobs if (logprobs or top_logprobs > 0) else -1


def make_sampler(core, n_vocab: int, params: SamplingParams, eos_ids, top_logprobs: int):
    """The native Sampler for ``params`` (min_tokens masks ``eos_ids``)."""
    bias = params.logit_bias or {}
    for t in bias:
        _check(t < n_vocab, "logit_bias", f"token ids in [0, {n_vocab})", t)
    return core.Sampler(
        n_vocab,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        repetition_window=params.repetition_window,
        seed=params.resolved_seed(),
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        logit_bias=[(int(t), float(b)) for t, b in bias.items()],
        min_tokens=params.min_tokens,
        suppress_ids=sorted(t for t in eos_ids if 0 <= t < n_vocab),
        top_logprobs=top_logprobs,
    )
