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
    accepted, else the number accepted (at least 1). Verifying n drafts costs about 1 + n * r
    single-token decodes (r ~ 0.2-0.4 on CPUs: the weights are read once, the extra tokens add
    compute), so drafts that are mostly rejected make decoding slower: a short (2-token) n-gram
    match is drafted only while the recent acceptance rate (an exponential average) is at least
    ``_SHORT_MATCH_RATE``; longer matches and draft models always draft.
    """

    _SHORT_MATCH_RATE = 0.5
    _EMA = 0.3  # weight of the last round in the acceptance average

    def __init__(self, drafter, k_max: int):
        self.drafter = drafter
        self.k_max = k_max
        self.k = 1
        self.rate = 1.0

    def reset(self, context: Sequence[int]) -> None:
        self.drafter.reset(context)
        self.k = 1
        self.rate = 1.0

    def append(self, token: int) -> None:
        self.drafter.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to min(k, limit) drafts (none when limit <= 0 or the policy declines)."""
        k = min(self.k, limit)
        if k <= 0:
            return []
        drafts = self.drafter.draft(k)
        short = getattr(self.drafter, "match", 3) < 3
        if drafts and short and self.rate < self._SHORT_MATCH_RATE:
            return []
        return drafts

    def update(self, drafted: int, accepted: int) -> None:
        """After verifying ``drafted`` tokens of which the first ``accepted`` were kept."""
        if drafted <= 0:
            return
        self.k = min(self.k_max, 2 * drafted) if accepted == drafted else max(1, accepted)
        self.rate = (1 - self._EMA) * self.rate + self._EMA * accepted / drafted


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
