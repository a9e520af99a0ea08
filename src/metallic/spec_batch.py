"""Draft-model drafts for continuous batching (metallic.batch.Scheduler).

A draft model loaded with at least as many slots as the target (``load(parallel=N)``) keeps one
sequence per target slot. Each scheduler step asks for up to k drafts of every decoding
sequence at once: the draft model catches each sequence up (the tokens its slot lacks, reusing
the longest prefix it holds) in one ragged ``forward_batch``, then extends all of them by one
greedy token per ``forward_batch``: a step of N requests costs about k small batched forwards
of the draft model, not N * k single-token ones. The target verifies the drafts in its own
batched step, so outputs are the same tokens as without drafts (metallic.speculative).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgument, MetallicError
from .generate import common_prefix
from .speculative import check_same_vocabulary


class SlotDraft:
    """The per-sequence drafter a Speculator wraps when a BatchDrafter drafts for it: the
    scheduler fetches the drafts in batch and hands them to ``Speculator.choose``. No ``match``
    attribute: the policy counts these as draft-model drafts."""

    def reset(self, context: Sequence[int]) -> None:
        pass

    def append(self, token: int) -> None:
        pass

    def draft(self, k: int) -> list[int]:
        return []


class BatchDrafter:
    """Greedy drafts for many sequences from one draft model's slots (see the module doc)."""

    def __init__(self, draft, target):
        if draft is target:
            raise InvalidArgument(
                "[scheduler] draft: expected a second, smaller model, got the target model itself"
            )
        if not (hasattr(draft, "_live") and hasattr(draft, "tokenizer")):
            raise InvalidArgument(
                "[scheduler] draft: expected 'prompt-lookup' or a loaded Model, got "
                f"{type(draft).__name__}"
            )
        check_same_vocabulary(draft, target)
        engine = draft._live("scheduler draft")
        need = int(target._live("scheduler").n_seq)
        if int(engine.n_seq) < need:
            raise InvalidArgument(
                f"[scheduler] draft: expected a draft model loaded with parallel >= {need} (the "
                f"target's slots), got parallel={int(engine.n_seq)}"
            )
        self._model = draft
        self._engine = engine
        self._n_ctx = int(engine.context_length)
        self._budget = int(engine.batch_size)
        # Token ids whose KV rows each draft slot holds (slot 0: the draft model's own cache).
        self._slots: list[list[int]] = [draft._cache] + [[] for _ in range(int(engine.n_seq) - 1)]

    def draft(self, wants: Sequence[tuple[int, Sequence[int], int]]) -> list[list[int]]:
        """``wants``: (slot, context, k) per sequence, context being every token of the sequence
        so far (the last one not yet fed to the target). Returns up to k greedy drafts each
        (fewer near the draft model's context; none if the draft model is busy or fails)."""
        out: list[list[int]] = [[] for _ in wants]
        lock = self._model._lock
        if not wants or not lock.acquire(blocking=False):  # someone generates on the draft
            return out
        try:
            return self._draft(wants, out)
        except MetallicError:  # the draft model failed: no drafts this step, rebuild its slots
            for slot, _, _ in wants:
                del self._slots[slot][:]
            return [[] for _ in wants]
        finally:
            lock.release()

    def _draft(self, wants, out: list[list[int]]) -> list[list[int]]:
        pending: list[tuple[int, int, list[int], int]] = []  # (i, slot, tokens, pos0)
        ks: list[int] = []
        for i, (slot, ctx, k) in enumerate(wants):
            ctx = [int(t) for t in ctx]
            k = min(int(k), self._n_ctx - len(ctx))  # the k-1 drafts fed stay in the context
            ks.append(k)
            if k <= 0 or not ctx:
                continue
            cache = self._slots[slot]
            n = min(common_prefix(cache, ctx), len(ctx) - 1)  # the last token gives logits
            if n > 0 and not self._engine.kv_reusable(n, slot):
                n = 0
            del cache[n:]
            pending.append((i, slot, ctx[n:], n))
        while pending:  # catch-up chunks first, then one greedy token per sequence per pass
            for i, token in self._run(pending):
                out[i].append(token)
            pending = [
                (i, wants[i][0], [out[i][-1]], len(self._slots[wants[i][0]]))
                for i, _, _, _ in pending
                if len(out[i]) < ks[i]
            ]
        return out

    def _run(self, pending: list[tuple[int, int, list[int], int]]) -> list[tuple[int, int]]:
        """Feeds each entry's tokens at its positions, in forward_batch calls of at most the
        draft model's batch size; returns (i, greedy token after its last token) per entry."""
        got: list[tuple[int, int]] = []
        queue = [list(e) for e in pending]
        while queue:
            tokens: list[int] = []
            segs: list[list[int]] = []
            ends: list[int] = []
            budget = self._budget
            for e in queue:
                if budget == 0:
                    break
                i, slot, toks, pos0 = e
                c = min(budget, len(toks))
                last = c == len(toks)
                tokens.extend(toks[:c])
                segs.append([slot, c, pos0, 1 if last else 0])
                self._slots[slot].extend(toks[:c])
                e[2], e[3] = toks[c:], pos0 + c
                if last:
                    ends.append(i)
                budget -= c
            self._engine.forward_batch(np.asarray(tokens, np.int32), np.asarray(segs, np.int64))
            logits = self._engine.batch_logits()
            # first index of the maximum, as the greedy sampler
            got.extend((i, int(np.argmax(logits[r]))) for r, i in enumerate(ends))
            queue = [e for e in queue if e[2]]
        return got


class StepCost:
    """What one more token costs a batched step, fitted online from the steps' times.

    A step of T tokens takes about a + c * T seconds (a: reading the weights and fixed work; c:
    each token's compute). Drafting n tokens for one sequence adds n * c to a step that gives
    each of its T0 tokens a share of (a + c * T0) / T0, so a Speculator prices n drafts at
    1 + n * rho decodes with rho = c * T0 / (a + c * T0): near 0 where the weights' read
    dominates (a GPU; drafts nearly free), near 1 where compute does (a CPU with many streams:
    drafts then cost the other streams as much as they gain, and the policy stops sending them).
    The fit is a least-squares line over exponentially weighted recent steps; until the token
    counts have varied enough to fit it, ``prior`` holds.
    """

    def __init__(self, prior: float, decay: float = 0.97):
        self.prior = prior
        self._decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or not seconds > 0:
            return
        g = self._decay
        self._w = g * self._w + 1.0
        self._n = g * self._n + tokens
        self._t = g * self._t + seconds
        self._nn = g * self._nn + tokens * tokens
        self._nt = g * self._nt + tokens * seconds

    def fit(self) -> tuple[float, float] | None:
        """(a, c) of the weighted least-squares line, or None while it is not determined."""
        if self._w < 4.0:
            return None
        mn, mt = self._n / self._w, self._t / self._w
        var = self._nn / self._w - mn * mn
        if var < 0.25:  # the token counts barely varied: the slope is noise
            return None
        c = (self._nt / self._w - mn * mt) / var
        return mt - c * mn, c

    def rho(self, t0: int) -> float:
        """Price of one drafted token, in shares of a step of t0 tokens (clamped to 0.02..1)."""
        f = self.fit()
        if f is None or t0 <= 0:
            return self.prior
        a, c = f
        step = a + c * t0
        if not step > 0:
            return self.prior
        return min(1.0, max(0.02, c * t0 / step))
