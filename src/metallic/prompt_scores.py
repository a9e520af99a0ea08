"""Prompt log-probabilities (scoring): each prompt token's log-probability given the tokens
before it, from the logits the batched prefill computes for every prompt position.

What ``/v1/completions`` with ``echo`` and ``logprobs`` returns (OpenAI's legacy shape, which
lm-evaluation-harness reads to score multiple-choice tasks) and ``Model.batch_generate(...,
prompt_logprobs=k)``. The logits row of position i predicts token i + 1, so the first prompt
token has no log-probability (None, as OpenAI reports it) and the row of the last position
predicts the first generated token (sampled, not scored).

Numerics: log_softmax of the model's raw float32 logits (float32 exponentials summed pairwise,
the log-sum-exp in float64); the sampler's ``logprob`` is the same quantity: a greedy output
token's logprob and the same token scored as prompt agree to float32 rounding (tested).

DEBT: the scores run in NumPy on the scheduler's thread while the engine's threads wait: 10 %
of a scoring run's time with k = 0, 21 % with k = 5 (benchmarks/score_bench.py: SmolLM2, 8
prompts of 256 tokens, 2 threads). A native pass on the engine's threads (Engine.sample_rows'
pattern) would take most of it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgument

MAX_TOP = 100  # alternatives per position at most (as top_logprobs)


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's scores, one entry per prompt token (``tokens`` are the prompt's ids).

    Attributes:
        tokens: the prompt's token ids.
        logprobs: log-probability of each token given those before it; None for the first.
        top_logprobs: with k > 0 alternatives asked, per position the k most likely (token,
            logprob) pairs, most likely first (None for the first token); else None.
        prompt_tokens: len(tokens).
        finish_reason: "length" when the request generates nothing (max_tokens 0: this is its
            last event), else None (the generated tokens follow).
        generation_tokens, cached_tokens: 0 (scored prompts are computed whole, never reused).
    """

    tokens: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    top_logprobs: tuple[tuple[tuple[int, float], ...] | None, ...] | None
    prompt_tokens: int
    finish_reason: str | None = None
    generation_tokens: int = 0
    cached_tokens: int = 0


def check_prompt_logprobs(value: object) -> int:
    """None → -1 (off); else the number of alternatives per position (0..MAX_TOP)."""
    if value is None:
        return -1
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOP:
        raise InvalidArgument(
            f"[generate] prompt_logprobs: expected None or an int in [0, {MAX_TOP}], got {value!r}"
        )
    return value


def score_rows(rows: np.ndarray, next_ids, k: int) -> tuple[list[float], list | None]:
    """Log-probabilities of next_ids[i] under rows[i] (raw logits), and with k > 0 each row's
    k best (token, logprob) pairs, most likely first (ties: lower id first)."""
    rows = np.asarray(rows, dtype=np.float32)
    m = rows.max(axis=1, keepdims=True)
    e = rows - m
    np.exp(e, out=e)  # float32, summed pairwise: ~1e-7 relative, 30 % less time than float64
    lse = m[:, 0].astype(np.float64) + np.log(e.sum(axis=1).astype(np.float64))
    idx = np.asarray(next_ids, dtype=np.int64)
    chosen = rows[np.arange(len(idx)), idx].astype(np.float64) - lse
    if k <= 0:
        return chosen.tolist(), None
    n = rows.shape[1]
    k = min(k, n)
    part = np.argpartition(rows, n - k, axis=1)[:, n - k :]
    vals = np.take_along_axis(rows, part, axis=1)
    kth = vals.min(axis=1, keepdims=True)
    # argpartition keeps an arbitrary one of equal logits at the k-th place: where the row holds
    # more of them than the partition took, the lowest ids among them are taken instead.
    tied = (rows == kth).sum(axis=1) > (vals == kth).sum(axis=1)
    tops = []
    for i in range(len(idx)):
        ids = part[i]
        if tied[i]:
            above = np.flatnonzero(rows[i] > kth[i, 0])
            ids = np.concatenate([above, np.flatnonzero(rows[i] == kth[i, 0])[: k - len(above)]])
        ids = ids[np.lexsort((ids, -rows[i, ids]))]
        tops.append(tuple((int(t), float(rows[i, t] - lse[i])) for t in ids))
    return chosen.tolist(), tops


class PromptScorer:
    """Collects one request's prompt scores chunk by chunk (the scheduler's prefill)."""

    def __init__(self, ids, k: int):
        self.ids = list(ids)
        self.k = k
        self.logprobs: list[float | None] = [None]
        self.tops: list | None = [None] if k > 0 else None

    def add(self, rows: np.ndarray, pos0: int) -> None:
        """rows[j]: the logits of prompt position pos0 + j (predicting token pos0 + j + 1);
        the last prompt position's row (the first generated token's) is not a score."""
        n = min(len(rows), len(self.ids) - 1 - pos0)
        if n <= 0:
            return
        chosen, tops = score_rows(rows[:n], self.ids[pos0 + 1 : pos0 + 1 + n], self.k)
        self.logprobs.extend(chosen)
        if self.tops is not None:
            self.tops.extend(tops)

    def result(self, finish_reason: str | None) -> PromptLogprobs:
        if len(self.logprobs) != len(self.ids):
            raise InvalidArgument(
                f"[scheduler] prompt scores: expected {len(self.ids)}, got {len(self.logprobs)}"
            )
        return PromptLogprobs(
            tuple(self.ids),
            tuple(self.logprobs),
            None if self.tops is None else tuple(self.tops),
            len(self.ids),
            finish_reason,
        )


__all__ = ["MAX_TOP", "PromptLogprobs", "PromptScorer", "check_prompt_logprobs", "score_rows"]
