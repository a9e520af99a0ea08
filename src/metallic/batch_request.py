"""The requests of continuous batching (metallic.batch): what is submitted (:class:`Request`),
what comes back (:data:`Event`, through a :class:`Handle`) and a running request's state
(:class:`Seq`), apart from the Scheduler that steps them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import speculative as _spec
from .errors import Busy
from .generate import Constraint, GenerationResponse, Responder
from .prompt_scores import PromptLogprobs, PromptScorer
from .sampling import SamplingParams

_log = logging.getLogger("metallic")


class QueueFull(Busy):
    """The scheduler's waiting queue is full (HTTP 429)."""


@dataclass
class Request:
    """One sequence to generate: validated arguments of ``stream_generate``."""

    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    stops: tuple[str, ...] = ()
    top_logprobs: int = -1  # -1: no log-probabilities; k >= 0: the chosen token and k best
    constraint: Constraint | None = None
    prompt_logprobs: int = -1  # -1: off; k >= 0: score the prompt (k best), max_tokens may be 0


Event = GenerationResponse | PromptLogprobs | BaseException
"""What a handle receives: with ``prompt_logprobs``, the prompt's scores first (the last event
when max_tokens is 0); a response per token (the last has ``finish_reason``), or the error that
ended the request (``Cancelled`` after ``cancel()``)."""


class Handle:
    """A submitted request: ``cancel()`` it; its events go to the ``on_event`` callback."""

    def __init__(self, request: Request, on_event: Callable[[Event], None]):
        self.request = request
        self._on_event = on_event
        self.cancelled = False
        self.done = False
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        """Stops the request at the next step boundary; its slot is freed then."""
        self.cancelled = True

    def _emit(self, event: Event) -> None:
        """Hands ``event`` to on_event; a callback that raises cancels this request only (the
        error is logged), never the other requests of the step or the scheduler."""
        if isinstance(event, BaseException) or event.finish_reason is not None:
            self.done = True
        try:
            self._on_event(event)
        except Exception:
            _log.exception("[scheduler] on_event raised: its request is cancelled")
            self.cancelled = True


class Seq:
    """A running request: its slot, sampler and where its prompt and output stand."""

    def __init__(self, handle: Handle, slot: int, sampler, cached: int):
        self.handle = handle
        self.slot = slot
        self.sampler = sampler
        self.ids = handle.request.prompt_ids
        self.done_prompt = cached  # prompt tokens whose KV is in the slot
        self.cached = cached
        self.pos = len(self.ids)  # position of the next token fed in decode
        self.token = -1  # the token to feed next (decode)
        self.responder: Responder | None = None
        self.t0 = time.perf_counter()
        self.t_last = 0.0
        self.at = 0  # index of its first token in this step's batch
        self.finish: str | None = None  # the last response's finish_reason
        self.drafter: _spec.Speculator | None = None
        self.drafts: list[int] = []  # fed after `token` this step, to verify
        k = handle.request.prompt_logprobs
        self.scorer = PromptScorer(self.ids, k) if k >= 0 else None
        self.row0 = 0  # its first logits row in this step's batch
        self.sample_row = 0  # the row its first draw of this step reads

    @property
    def prefilling(self) -> bool:
        return self.done_prompt < len(self.ids)


__all__ = ["Event", "Handle", "QueueFull", "Request", "Seq"]
