"""Continuous batching: many sequences on one engine, one ragged native batch per step.

A :class:`Scheduler` owns a model's sequence slots (``load(..., parallel=N)``). Each step it
builds one ``Engine.forward_batch``: one decode token for every running sequence, then prompt
chunks of newly admitted ones under the token budget (``batch_size``), so a long prompt never
stalls the running streams for more than one chunk. Weights are read once per step for all of
them; RoPE and attention run per sequence on its own slot. Every sequence samples with its own
native ``Sampler`` (parameters, seed, penalties, grammar mask, log-probabilities; a step's draws
in one ``Engine.sample_rows`` call on the engine's threads), so a seed never turns batching off,
and its responses are the ``GenerationResponse`` objects of
``stream_generate``: the kernels are batch-invariant, so a greedy sequence gives the same tokens
batched as alone.

Prefix reuse: a new request starts from the longest prefix any slot holds (its own slot's rows, or
rows copied from another slot with ``Engine.copy_seq``), and a request whose prompt shares a
longer prefix with a prompt still being computed waits for it (``n`` > 1 choices of one prompt
compute it once).

Threads: ``submit`` and ``Handle.cancel`` may be called from any thread; steps run in the thread
that calls :meth:`Scheduler.run_until_idle` or in the background thread of :meth:`start`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from . import speculative as _spec
from .batch_request import Event, Handle, QueueFull, Request, Seq
from .errors import Busy, Cancelled, InvalidArgument, MetallicError
from .generate import Responder, common_prefix
from .sampling import make_sampler
from .spec_batch import BatchDrafter, SlotDraft, StepCost

# A request waits for a prompt still being computed when they share at least this many tokens,
# more than any slot holds now (computing them twice costs more than a few steps of waiting).
_SHARE_MIN = 16
_log = logging.getLogger("metallic")
# Prompt positions scored per step at most (all requests together): their logits rows are held
# at once (32 x 262 144 x 4 bytes = 32 MiB at Gemma 3's vocabulary).
_SCORE_ROWS = 32


class Scheduler:
    """Continuous batching over a model's slots (see the module docstring).

    Args:
        model: a ``Model`` loaded with ``parallel`` slots.
        max_queue: requests that may wait for a slot; ``submit`` raises QueueFull beyond.
        observer: optional metrics sink with ``on_first_token(s)``, ``on_token(s)``,
            ``on_request_end(prompt_tokens, completion_tokens, status)``, ``set_queue(running,
            waiting)`` and ``set_kv(used, total)`` (metallic.server.metrics.ServerMetrics).
        draft: None, ``"prompt-lookup"`` (drafts from n-grams of each request's context) or a
            loaded draft Model with at least this model's slots (``parallel``; drafts for all
            requests in batched steps of its own, metallic.spec_batch): speculative decoding
            for every request, verified in the same batched step; the output is the same token
            for token (metallic.speculative).
        num_draft_tokens: drafted tokens per request and step at most.

    ``on_step``: None or a callable the stepping thread calls after each step, once the step's
    events are emitted (the server's relay hands them to its event loop then).
    """

    def __init__(
        self,
        model,
        *,
        max_queue: int = 256,
        observer=None,
        draft=None,
        num_draft_tokens: int = _spec.DEFAULT_DRAFT_TOKENS,
    ):
        self._model = model
        self.on_step: Callable[[], None] | None = None
        self._engine = model._live("batch")
        self._tok = model.tokenizer
        self._n_vocab = int(self._engine.n_vocab)
        self._ctx = int(self._engine.context_length)
        self.n_slots = int(self._engine.n_seq)
        self._budget = int(self._engine.batch_size)
        self._max_queue = max_queue
        self._obs = observer
        # Token ids whose KV rows each slot holds; slot 0 is the model's own single-sequence cache.
        self._slots: list[list[int]] = [model._cache] + [[] for _ in range(self.n_slots - 1)]
        self._free = list(range(self.n_slots))
        self._used = [0] * self.n_slots  # step of each slot's last use (least recent: reused first)
        self._steps = 0
        self._running: list[Seq] = []
        self._waiting: deque[Handle] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drain = True
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._k = 0
        self._rows = None  # logits of every verified row (drafting), else engine.batch_logits()
        self._score_out = None  # logits rows of steps that score prompts (allocated when needed)
        self._scoring = False  # this step scores prompt positions
        self._drafter: BatchDrafter | None = None  # a draft model's batched drafts
        if draft is not None:
            if isinstance(draft, str) and draft != "prompt-lookup":
                raise InvalidArgument(
                    "[scheduler] draft: expected None, 'prompt-lookup' or a loaded Model, got "
                    f"{draft!r}"
                )
            self._k = _spec.check_num_draft_tokens(num_draft_tokens)
            self._step_cost = StepCost(_spec.Speculator._PRIOR_R)  # prices drafts per step
            if not isinstance(draft, str):
                self._drafter = BatchDrafter(draft, model)
            self._rows = np.zeros((self.n_slots * (1 + self._k), self._n_vocab), np.float32)

    # ------------------------------------------------------------------ submission
    def submit(self, request: Request, on_event: Callable[[Event], None]) -> Handle:
        """Queues ``request``; ``on_event`` is called (in the stepping thread) per event."""
        handle = Handle(request, on_event)
        with self._cv:
            if self._stopping:
                raise Busy("[scheduler] shutting down: no new requests")
            if len(self._waiting) >= self._max_queue:
                raise QueueFull(
                    f"[scheduler] queue: expected fewer than {self._max_queue} waiting requests, "
                    f"got {len(self._waiting)}"
                )
            self._waiting.append(handle)
            self._cv.notify()
        return handle

    @property
    def alive(self) -> bool:
        """The background thread of ``start`` is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def kv_cells(self) -> tuple[int, int]:
        """(KV positions held by running sequences, total positions of all slots)."""
        used = sum(len(self._slots[s.slot]) for s in self._running)
        return used, self.n_slots * self._ctx

    # ------------------------------------------------------------------ driving
    def run_until_idle(self) -> None:
        """Steps in the calling thread until nothing runs or waits."""
        while self.step():
            pass

    def start(self) -> None:
        """Steps in a background thread until ``stop``."""
        if self._thread is not None:
            return
        if not self._model._lock.acquire(blocking=False):
            raise Busy("[scheduler] a generation is running on this model")
        self._thread = threading.Thread(target=self._loop, name="metallic-scheduler", daemon=True)
        self._thread.start()

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Refuses new requests; with ``drain`` finishes the running and waiting ones first,
        else cancels them. Joins the background thread."""
        with self._cv:
            self._stopping = True
            self._drain = drain
            if not drain:
                for h in self._waiting:
                    h.cancel()
                for s in self._running:
                    s.handle.cancel()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._thread = None
                self._model._lock.release()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stopping and not self._waiting and not self._running:
                    return
            try:
                self.step()
            except Exception as exc:  # a bug in a step: end the requests rather than hang them
                _log.exception("[scheduler] a step failed; its requests end with the error")
                self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        """Ends every running and waiting request with ``exc`` (the loop goes on)."""
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for s in list(self._running):  # _emit never raises; the metrics observer might
            with contextlib.suppress(Exception):
                self._finish(s, exc)
        for h in waiting:
            h._emit(exc)
        with contextlib.suppress(Exception):
            self._report()

    def step(self) -> bool:
        """One batch: drops cancelled requests, admits waiting ones, runs one forward_batch and
        emits a response for each sequence that got logits. False when there was nothing to do."""
        try:
            return self._step()
        finally:
            if self.on_step is not None:
                self.on_step()

    def _step(self) -> bool:
        self._reap()
        self._admit()
        if not self._running:
            self._report()
            return bool(self._waiting)
        tokens, segs, sampled = self._plan()
        self._steps += 1
        out = self._score_buffer() if self._scoring else self._rows
        try:
            t = time.perf_counter()
            self._engine.forward_batch(
                np.asarray(tokens, np.int32), np.asarray(segs, np.int64), out
            )
            if self._k:
                self._step_cost.observe(len(tokens), time.perf_counter() - t)
        except MetallicError as exc:  # the whole step failed: end its requests with the error
            for s in list(self._running):
                self._finish(s, exc)
            return True
        logits = self._engine.batch_logits() if out is None else out
        for s, n in zip(self._step_seqs, self._step_lens, strict=True):
            self._slots[s.slot].extend(tokens[s.at : s.at + n])
            if s.prefilling:
                if s.scorer is not None:
                    s.scorer.add(logits[s.row0 : s.row0 + n], s.done_prompt)
                s.done_prompt += n
                if s.scorer is not None and not s.prefilling:
                    self._scored(s)
        # Each sequence readied (its responder, or the token just fed into its history), then
        # every first draw in one native call, in parallel on the device's host threads: with a
        # temperature each draw is a pass over the vocabulary.
        now = time.perf_counter()
        ready = [(s, s.sample_row) for s in sampled if self._ready(s)]
        if ready:
            firsts = self._engine.sample_rows(
                [s.sampler for s, _ in ready], logits, [r for _, r in ready]
            )
            for (s, r), first in zip(ready, firsts, strict=True):
                self._sample(s, logits[r : r + 1 + len(s.drafts)], first, now)
        self._report()
        return True

    # ------------------------------------------------------------------ internals
    def _score_buffer(self) -> np.ndarray:
        """Logits rows for a step that scores prompts: every sequence's draw rows plus
        _SCORE_ROWS scored positions (allocated at the first such step, then kept)."""
        if self._score_out is None:
            rows = self.n_slots * (1 + self._k) + _SCORE_ROWS
            self._score_out = np.zeros((rows, self._n_vocab), np.float32)
        return self._score_out

    def _scored(self, s: Seq) -> None:
        """s's prompt is scored: its PromptLogprobs, and the end of a max_tokens 0 request."""
        last = s.handle.request.max_tokens == 0
        s.handle._emit(s.scorer.result("length" if last else None))
        s.scorer = None
        if last:
            self.prompt_tokens_total += len(s.ids)
            s.finish = "length"
            self._finish(s, None)

    def _report(self) -> None:
        if self._obs is not None:
            self._obs.set_queue(len(self._running), len(self._waiting))
            self._obs.set_kv(*self.kv_cells())

    def _reap(self) -> None:
        for s in [s for s in self._running if s.handle.cancelled]:
            self._finish(s, Cancelled("[scheduler] request cancelled"))
        with self._cv:
            keep = deque(h for h in self._waiting if not h.cancelled)
            gone = [h for h in self._waiting if h.cancelled]
            self._waiting = keep
        for h in gone:
            h._emit(Cancelled("[scheduler] request cancelled"))
            if self._obs is not None:
                self._obs.on_request_end(len(h.request.prompt_ids), 0, "cancelled")

    def _finish(self, s: Seq, event: Event | None) -> None:
        self._running.remove(s)
        self._free.append(s.slot)
        self._used[s.slot] = self._steps
        status = s.finish or "error"  # metrics: "stop" / "length" (the finish reason)
        if isinstance(event, BaseException):
            status = "cancelled" if isinstance(event, Cancelled) else "error"
            s.handle._emit(event)
        if self._obs is not None:
            n_out = s.responder.count if s.responder is not None else 0
            self._obs.on_request_end(len(s.ids), n_out, status)

    @staticmethod
    def _reuse_limit(req: Request) -> int:
        """Prompt tokens a request may take from cached rows: all but the last, whose logits it
        needs; none when it scores its prompt (every position's logits)."""
        return 0 if req.prompt_logprobs >= 0 else len(req.prompt_ids) - 1

    def _best_prefix(self, ids: Sequence[int], limit: int) -> tuple[int, int]:
        """(slot, length <= limit) of the longest reusable prefix of ``ids`` any slot holds."""
        best, best_n = -1, 0
        for slot, cache in enumerate(self._slots):
            n = min(common_prefix(cache, ids), limit)
            if n > best_n and self._engine.kv_reusable(n, slot):
                best, best_n = slot, n
        return best, best_n

    def _admit(self) -> None:
        deferred: list[Handle] = []
        while self._free:
            with self._cv:
                if not self._waiting:
                    break
                handle = self._waiting.popleft()
            ids = handle.request.prompt_ids
            limit = self._reuse_limit(handle.request)
            src, n = self._best_prefix(ids, limit)
            computing = min(
                limit,
                max((common_prefix(s.ids, ids) for s in self._running if s.prefilling), default=0),
            )
            if computing > n and computing >= _SHARE_MIN:  # wait for it, then copy the rows
                deferred.append(handle)
                continue
            self._start(handle, src, n)
        if deferred:
            with self._cv:
                self._waiting.extendleft(reversed(deferred))

    def _start(self, handle: Handle, src: int, n: int) -> None:
        req = handle.request
        # Own slot: a free slot holding the prefix (no copy), else the free slot used longest
        # ago (its rows are the least likely prefix of a coming request), then copy into it.
        slot = src if src in self._free else min(self._free, key=lambda f: self._used[f])
        self._free.remove(slot)
        cache = self._slots[slot]
        try:
            if slot != src and n > 0:
                self._engine.copy_seq(src, slot, n)
                cache[:] = self._slots[src][:n]
            del cache[n:]
            sampler = make_sampler(
                _core(), self._n_vocab, req.params, self._tok.eos_ids, req.top_logprobs
            )
            window = req.params.penalty_window
            if window > 0:  # the penalties also see the end of the prompt
                for t in req.prompt_ids[-window:]:
                    sampler.accept(int(t))
            if req.constraint is not None:
                req.constraint.start(sampler)
        except MetallicError as exc:  # e.g. a logit_bias id outside the vocabulary
            self._free.append(slot)
            handle._emit(exc)
            return
        seq = Seq(handle, slot, sampler, n)
        if self._k:
            src = _spec.PromptLookup() if self._drafter is None else SlotDraft()
            seq.drafter = _spec.Speculator(src, self._k)
            seq.drafter.reset(req.prompt_ids)
        self._running.append(seq)

    def _plan(self) -> tuple[list[int], list[list[int]], list[Seq]]:
        """Tokens and segments of this step: decode tokens first, then prompt chunks."""
        tokens: list[int] = []
        segs: list[list[int]] = []
        sampled: list[Seq] = []
        self._step_seqs: list[Seq] = []
        self._step_lens: list[int] = []
        budget, rows, score_room = self._budget, 0, _SCORE_ROWS
        if self._k:  # drafts priced by what a token costs this step (StepCost)
            rho = self._step_cost.rho(sum(not s.prefilling for s in self._running))
            for s in self._running:
                s.drafter.price(rho)
        if self._drafter is not None:
            self._draft_in_batch()
        for s in sorted(self._running, key=lambda s: s.prefilling):
            if budget == 0:
                break
            drafts, s.drafts = s.drafts, []
            if s.prefilling:
                n = min(budget, len(s.ids) - s.done_prompt)
                if s.scorer is not None:  # every position's logits: at most score_room rows
                    n = min(n, score_room)
                    if n == 0:
                        continue
                    score_room -= n
                chunk = s.ids[s.done_prompt : s.done_prompt + n]
                pos0 = s.done_prompt
                want = s.done_prompt + n == len(s.ids) and s.handle.request.max_tokens > 0
            else:
                if self._drafter is not None:  # drafted above, within the same limits
                    s.drafts = drafts[: max(0, budget - 1)]
                elif s.drafter is not None:
                    s.drafts = s.drafter.propose(self._draft_limit(s, budget))
                chunk = [s.token, *s.drafts]
                n, pos0, want = len(chunk), s.pos, True
            s.at = len(tokens)
            tokens.extend(int(t) for t in chunk)
            n_rows = n if s.prefilling and s.scorer is not None else (1 + len(s.drafts)) * want
            s.row0, s.sample_row = rows, rows + n_rows - 1 - len(s.drafts)
            rows += n_rows
            segs.append([s.slot, n, pos0, n_rows])
            self._step_seqs.append(s)
            self._step_lens.append(n)
            if want:
                sampled.append(s)
            budget -= n
        self._scoring = score_room < _SCORE_ROWS
        return tokens, segs, sampled

    def _draft_limit(self, s: Seq, budget: int) -> int:
        """No draft past max_tokens, the context or the step's token budget."""
        left = s.handle.request.max_tokens - s.responder.count - 1
        return min(left, self._ctx - s.pos - 1, budget - 1)

    def _draft_in_batch(self) -> None:
        """Every decoding sequence's drafts from the draft model, in batched steps."""
        wants, seqs, budget = [], [], self._budget
        for s in self._running:
            s.drafts = []
            if not s.prefilling and budget > 0:
                k = s.drafter.wanted(self._draft_limit(s, budget))
                budget -= 1 + k
                if k > 0:
                    wants.append((s.slot, [*self._slots[s.slot], s.token], k))
                    seqs.append(s)
        for s, d in zip(seqs, self._drafter.draft(wants), strict=True):
            s.drafts = s.drafter.choose(d)

    def _ready(self, s: Seq) -> bool:
        """Readies s for its draw: its responder at the first token (the prompt's last logits),
        else the token just fed joins the sampler's history. False when s ended with an error."""
        try:
            if s.responder is None:
                s.responder = Responder(
                    self._tok,
                    s.sampler,
                    n_vocab=self._n_vocab,
                    context_length=self._ctx,
                    n_prompt=len(s.ids),
                    cached=s.cached,
                    max_tokens=s.handle.request.max_tokens,
                    stops=s.handle.request.stops,
                    logprobs=s.handle.request.top_logprobs >= 0,
                    constraint=s.handle.request.constraint,
                )
                self.prompt_tokens_total += len(s.ids) - s.cached
            else:
                s.sampler.accept(s.token)  # the token just fed joins the penalty history
                s.pos += 1
            s.responder.drafted += len(s.drafts)
        except MetallicError as exc:
            self._finish(s, exc)
            return False
        return True

    def _sample(self, s: Seq, rows: np.ndarray, first: int | MetallicError, now: float) -> None:
        """Takes `first`, the token drawn from rows[0] (or the error of that draw); with drafts
        fed after it, keeps drawing from the next row while the draw equals the draft
        (generate.stream's verification)."""
        if isinstance(first, MetallicError):  # e.g. the mask leaves no token: this request only
            self._finish(s, first)
            return
        token, j = first, 0
        try:
            while True:
                accepted = j < len(s.drafts) and token == s.drafts[j]
                if s.responder.count == 0:
                    s.responder.prompt_done(now - s.t0)
                    if self._obs is not None:
                        self._obs.on_first_token(now - s.handle.submitted)
                elif self._obs is not None:
                    self._obs.on_token(now - s.t_last)
                s.t_last = now
                r = s.responder.respond(token, s.pos, from_draft=accepted)
                self.generation_tokens_total += 1
                if s.drafter is not None:
                    s.drafter.append(token)
                s.handle._emit(r)
                if r.finish_reason is not None or not accepted:
                    break
                s.sampler.accept(token)  # a draft the sampler drew: already fed at s.pos
                s.pos += 1
                j += 1
                token = int(s.sampler.sample(rows[j]))
        except MetallicError as exc:  # a later draw's or the responder's: this request only
            self._finish(s, exc)
            return
        if s.drafts:  # rows of rejected drafts are not the sequence's: forget them
            del self._slots[s.slot][s.pos :]
            s.drafter.update(len(s.drafts), j)
        s.token = token
        if r.finish_reason is not None:
            s.finish = r.finish_reason
            self._finish(s, None)


def _core():
    from . import _core as core  # deferred: keeps `import metallic` cheap

    return core


__all__ = ["Event", "Handle", "QueueFull", "Request", "Scheduler"]
