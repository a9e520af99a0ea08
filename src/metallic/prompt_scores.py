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

DEBT: the scores run in NumPy on the scheduler's thread while the engine's threads wait
(benchmarks/score_bench.py, 8 prompts of 256 tokens, 2 threads: 9-12 % of a SmolLM2 scoring run,
24 % of a Gemma 3 one, whose rows are 262 144 logits). A pass on the engine's threads with the
CPU kernels' vector exp (Engine.sample_rows' pattern) would take most of it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import InvalidArgument
from .sampling import MAX_TOP_LOGPROBS


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
    finish_reason: str | None = None
    generation_tokens: ClassVar[int] = 0
    cached_tokens: ClassVar[int] = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.tokens)


def check_prompt_logprobs(value: object) -> int:
    """None → -1 (off); else the number of alternatives per position (0..MAX_TOP_LOGPROBS)."""
    if value is None:
        return -1
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(
            "[generate] prompt_logprobs: expected None or an int in "
            f"[0, {MAX_TOP_LOGPROBS}], got {value!r}"
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
    tops = []
    for i, ids in enumerate(_top_ids(rows, k)):
        tops.append(tuple((int(t), float(rows[i, t] - lse[i])) for t in ids))
    return chosen.tolist(), tops


_BLOCK = 64  # logits per block of the top-k prefilter


def _top_ids(rows: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row's k largest ids, largest first, equal values by lower id.

    Block j of a row holds ids j, j + w, ..., j + 63 w (w = n // 64; the n % 64 last ids are
    candidates of their own): k values of the row are >= the k-th largest block maximum, so only
    the ids of blocks reaching it (and tail ids reaching it) can be among the k. One strided max
    pass, a partition of the maxima and a sort of a few hundred candidates: 10x faster than an
    argpartition of each whole row.
    """
    r, n = rows.shape
    k = min(k, n)
    w = n // _BLOCK
    if w <= k:  # a small vocabulary: sort every id
        return [np.argsort(-rows[i], kind="stable")[:k] for i in range(r)]
    bm = rows[:, : w * _BLOCK].reshape(r, _BLOCK, w).max(axis=1)
    bound = np.partition(bm, w - k, axis=1)[:, w - k]
    lanes = w * np.arange(_BLOCK)[:, None]
    tail = np.arange(w * _BLOCK, n)
    out = []
    for i in range(r):
        ids = np.concatenate([(np.flatnonzero(bm[i] >= bound[i]) + lanes).ravel(), tail])
        ids.sort()  # ascending, so the stable sort below keeps ties by the lower id
        ids = ids[rows[i, ids] >= bound[i]]
        out.append(ids[np.argsort(-rows[i, ids], kind="stable")[:k]])
    return out


class PromptScorer:
    """Collects one request's prompt scores chunk by chunk (the scheduler's prefill)."""

    def __init__(self, ids, k: int):
        self.ids = ids  # the request's prompt ids (not copied; never changed while it runs)
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
            finish_reason,
        )


__all__ = ["PromptLogprobs", "PromptScorer", "check_prompt_logprobs", "score_rows"]
