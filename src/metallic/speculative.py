"""Draft tokens for speculative decoding: prompt lookup (n-grams of the context) and draft models.

A drafter proposes up to k next tokens for a sequence; ``generate.stream`` verifies them in one
multi-token forward of the target model (all logits) and keeps the longest prefix the target's own
sampler agrees with, plus the target's token after it. Drafts are deterministic (a point mass),
for which the standard rejection rule (accept d with probability min(1, p(d) / q(d)) = p(d),
else draw from the normalised residual p without d) is the same as drawing y ~ p with the
target's sampler and accepting d iff y == d. Each emitted token is therefore drawn by the same
sampler, with the same random numbers, from the same logits as without drafts (the kernels are
batch invariant): greedy and seeded outputs are identical token for token, and the distribution is
the target's exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgument

DEFAULT_DRAFT_TOKENS = 6
MAX_DRAFT_TOKENS = 32


def check_num_draft_tokens(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_DRAFT_TOKENS:
        raise InvalidArgument(
            f"[generate] num_draft_tokens: expected an int in [1, {MAX_DRAFT_TOKENS}], got {k!r}"
        )
    return k


class PromptLookup:
    """Drafts the tokens that followed the most recent earlier occurrence of the context's last
    n-gram (n = max_ngram down to min_ngram), as llama.cpp's lookup decoding does. The n-gram
    index grows incrementally: each draft costs O(new tokens + max_ngram)."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram <= 8:
            raise InvalidArgument(
                f"[generate] prompt lookup n-grams: expected 1 <= min <= max <= 8, got "
                f"{min_ngram}..{max_ngram}"
            )
        self._ns = range(max_ngram, min_ngram - 1, -1)
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> position after its last occurrence
        self._ctx: list[int] = []
        self._done = 0  # n-grams ending before this position are indexed
        self.match = 0  # n-gram length behind the last draft (0: none)

    def reset(self, context: Sequence[int]) -> None:
        self._index.clear()
        self._ctx = [int(t) for t in context]
        self._done = 0

    def append(self, token: int) -> None:
        self._ctx.append(int(token))

    def draft(self, k: int) -> list[int]:
        ctx = self._ctx
        last = len(ctx) - 1
        # Index every n-gram that ends before the last token: its continuation exists.
        for end in range(self._done, last):
            for n in self._ns:
                if end + 1 >= n:
                    self._index[tuple(ctx[end + 1 - n : end + 1])] = end + 1
        self._done = max(self._done, last)
        for n in self._ns:
            if len(ctx) < n:
                continue
            at = self._index.get(tuple(ctx[len(ctx) - n :]))
            if at is not None:
                self.match = n
                return ctx[at : at + k]
        self.match = 0
        return []


class Speculator:
    """A drafter with the adaptive policy shared by ``generate.stream`` and the batch scheduler.

    Draft length: 1 at first, doubled (up to ``k_max``) after a round whose drafts were all
    accepted, else the number accepted (at least 1). Whether to draft at all, and how many of the
    proposed tokens to send, follows from two measured quantities:

    * ``p``, the chance that the next draft token is accepted, per kind of draft (a 2-token n-gram
      match, a longer match, a draft model): decayed counts of accepted / tried draft tokens. A
      declined draft still teaches: its first token is compared with the token decoded instead.
    * ``cost[n]``, the time of a verify forward of 1 + n tokens in single-token decodes (with a
      draft model, the time of its n drafting forwards included):
      ``observe_decode`` / ``observe_verify`` time them where the caller can (``generate.stream``);
      1 + n * ``_PRIOR_R`` until measured. Measured on a 2-core AVX2 CPU it is not linear (tile
      shapes): SmolLM2 1.2 / 1.7 / 2.1 / 3.4 at n = 1 / 2 / 3 / 4; Gemma-3's 262k-row head makes
      every row of logits cost about half a decode. A Metal GPU reads the weights once for all
      rows: there n costs little.

    n drafts yield 1 + p + ... + p^n tokens (the verify pass's own token included) for cost[n]
    decodes' time, so the policy sends the n that maximises that ratio and declines below
    ``_MIN_GAIN``: drafting never costs more than a few percent where drafts are rejected. An
    unmeasured n is priced optimistically (the prior), so it gets tried and measured.
    """

    _PRIOR_R = 0.3  # extra cost of one verified token, in single-token decodes, until measured
    _PRIOR_P = {"short": 0.5, "long": 0.8, "model": 0.7}  # acceptance before any evidence
    _PRIOR_WEIGHT = 2.0  # tried tokens the prior counts for
    _DECAY = 0.85  # weight of earlier evidence per observed token
    _EMA = 0.2  # weight of the latest timing
    _MIN_GAIN = 1.05  # expected speed-up below which a draft is not sent

    def __init__(self, drafter, k_max: int):
        self.drafter = drafter
        self.k_max = k_max
        self.reset_policy()

    def reset_policy(self) -> None:
        self.k = 1
        self._acc = {c: p * self._PRIOR_WEIGHT for c, p in self._PRIOR_P.items()}
        self._tried = dict.fromkeys(self._PRIOR_P, self._PRIOR_WEIGHT)
        self._t1 = 0.0  # single-token decode seconds (EMA; 0: not measured)
        # cost[n]: a verify forward of 1 + n tokens in decodes (index 0 unused)
        self.cost = [1.0 + n * self._PRIOR_R for n in range(self.k_max + 1)]
        self._pending: tuple[str, int] | None = None  # a declined draft's kind and first token
        self._kind = "long"

    def reset(self, context: Sequence[int]) -> None:
        self.drafter.reset(context)
        self.k = 1
        self._pending = None

    def p(self, kind: str) -> float:
        """The acceptance estimate of one draft token of this kind."""
        return self._acc[kind] / self._tried[kind]

    def _observe(self, kind: str, accepted: int, tried: int) -> None:
        for _ in range(tried):  # one decay per token: recent rounds weigh more
            self._acc[kind] *= self._DECAY
            self._tried[kind] *= self._DECAY
        self._acc[kind] += accepted
        self._tried[kind] += tried

    def append(self, token: int) -> None:
        if self._pending is not None:  # what the declined draft's first token would have done
            kind, first = self._pending
            self._observe(kind, int(token == first), 1)
            self._pending = None
        self.drafter.append(token)

    def _kind_of_draft(self) -> str:
        match = getattr(self.drafter, "match", None)
        if match is None:
            return "model"
        return "short" if match < 3 else "long"

    def gain(self, n: int, p: float) -> float:
        """Expected tokens per decode-time of verifying n drafts of acceptance p."""
        tokens = n + 1.0 if p >= 1.0 else (1.0 - p ** (n + 1)) / (1.0 - p)
        return tokens / self.cost[n]

    def propose(self, limit: int) -> list[int]:
        """Up to min(k, limit) drafts (none when limit <= 0 or the policy declines)."""
        k = self.wanted(limit)
        return self.choose(self.drafter.draft(k)) if k > 0 else []

    def wanted(self, limit: int) -> int:
        """How many drafts to ask the drafter for (0: none)."""
        return max(0, min(self.k, limit))

    def choose(self, drafts: Sequence[int]) -> list[int]:
        """The part of the drafter's ``drafts`` worth verifying (maybe none)."""
        if not drafts:
            return []
        kind = self._kind_of_draft()
        p = self.p(kind)
        best, n = max((self.gain(i, p), i) for i in range(1, len(drafts) + 1))
        if best < self._MIN_GAIN:
            self._pending = (kind, int(drafts[0]))
            return []
        self._kind = kind
        return [int(t) for t in drafts[:n]]

    def update(self, drafted: int, accepted: int) -> None:
        """After verifying ``drafted`` tokens of which the first ``accepted`` were kept."""
        if drafted <= 0:
            return
        self.k = min(self.k_max, 2 * drafted) if accepted == drafted else max(1, accepted)
        self._observe(self._kind, accepted, accepted + (accepted < drafted))

    def price(self, rho: float) -> None:
        """Sets every length's cost to 1 + n * rho decodes (the batch scheduler's step fit,
        metallic.spec_batch.StepCost, instead of timing single-sequence passes)."""
        self.cost = [1.0 + n * rho for n in range(self.k_max + 1)]

    def observe_decode(self, seconds: float) -> None:
        """The time of one single-token decode step."""
        if seconds > 0:
            self._t1 = seconds if self._t1 == 0 else self._t1 + self._EMA * (seconds - self._t1)

    def observe_verify(self, drafted: int, seconds: float) -> None:
        """The time of one verify forward of 1 + ``drafted`` tokens (plus the drafting, where
        a draft model's forwards made the drafts)."""
        if not 0 < drafted <= self.k_max or self._t1 <= 0 or seconds <= 0:
            return
        c = min(1.0 + 4.0 * drafted, max(1.0, seconds / self._t1))
        self.cost[drafted] += self._EMA * (c - self.cost[drafted])


class DraftModel:
    """Greedy drafts from a smaller model sharing the target's vocabulary. It keeps its own KV
    cache of the sequence and reuses the longest prefix between rounds."""

    def __init__(self, draft, target):
        if draft is target:
            raise InvalidArgument(
                "[generate] draft: expected a second, smaller model, got the target model itself"
            )
        check_same_vocabulary(draft, target)
        self._model = draft
        self._ctx: list[int] = []
        self._logits = np.zeros((1, draft._n_vocab), np.float32)

    def reset(self, context: Sequence[int]) -> None:
        self._ctx = [int(t) for t in context]

    def append(self, token: int) -> None:
        self._ctx.append(int(token))

    def draft(self, k: int) -> list[int]:
        from . import generate as gen

        m = self._model
        engine = m._live("draft")
        k = min(k, m.context_length - len(self._ctx))
        if k <= 0:
            return []
        gen.prefill(engine, m._cache, self._ctx, self._logits)
        out = [int(np.argmax(self._logits[0]))]  # first index of the maximum, as the sampler
        pos = len(self._ctx)
        for _ in range(k - 1):
            engine.forward(np.asarray(out[-1:], np.int32), pos, self._logits, False)
            m._cache.append(out[-1])
            pos += 1
            out.append(int(np.argmax(self._logits[0])))
        return out


def check_same_vocabulary(draft, target) -> None:
    """The draft's token ids must mean the target's: same logit width, vocabulary size, EOS ids,
    and the same text for a spread of ids (and for every id of a vocabulary up to 64k)."""
    a, b = draft.tokenizer, target.tokenizer
    what = None
    if draft._n_vocab != target._n_vocab:
        what = f"{draft._n_vocab} vs {target._n_vocab} logits"
    elif a.vocab_size != b.vocab_size:
        what = f"vocab_size {a.vocab_size} vs {b.vocab_size}"
    elif a.eos_ids != b.eos_ids:
        what = f"EOS ids {sorted(a.eos_ids)} vs {sorted(b.eos_ids)}"
    else:
        n = a.vocab_size
        step = 1 if n <= 1 << 16 else n // 4096
        for t in range(0, n, step):
            if a.decode([t]) != b.decode([t]):
                what = f"token {t} is {a.decode([t])!r} vs {b.decode([t])!r}"
                break
    if what is not None:
        raise InvalidArgument(
            f"[generate] draft: expected a model with the target's vocabulary, got {what}"
        )


def make_speculator(draft, target, k_max: int) -> Speculator | None:
    """None, "prompt-lookup" or a loaded Model → a Speculator (or None)."""
    drafter = make_drafter(draft, target)
    return None if drafter is None else Speculator(drafter, k_max)


def make_drafter(draft, target):
    """None, "prompt-lookup" or a loaded Model → a drafter (or None)."""
    if draft is None:
        return None
    if isinstance(draft, str):
        if draft == "prompt-lookup":
            return PromptLookup()
        raise InvalidArgument(
            f"[generate] draft: expected None, 'prompt-lookup' or a loaded Model, got {draft!r}"
        )
    if hasattr(draft, "_live") and hasattr(draft, "tokenizer"):
        return DraftModel(draft, target)
    raise InvalidArgument(
        f"[generate] draft: expected None, 'prompt-lookup' or a loaded Model, got "
        f"{type(draft).__name__}"
    )
