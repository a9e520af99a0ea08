"""``Model.batch_generate``: many prompts at once on a model's slots through the Scheduler
(metallic.batch), in the calling thread."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from .batch import Event, Request, Scheduler
from .generate import GenerationResponse
from .prompt_scores import PromptLogprobs


@dataclass(frozen=True)
class BatchResponse:
    """What ``Model.batch_generate`` returns: ``texts[i]`` for ``prompts[i]``, and per request
    its last ``GenerationResponse`` (finish_reason, token counts, speeds, cached_tokens; None
    when it generated nothing) or the error that ended it; ``seconds`` of wall time and
    aggregate generated tokens/s; with ``prompt_logprobs``, each prompt's PromptLogprobs."""

    texts: list[str]
    responses: list[GenerationResponse | None]
    errors: list[BaseException | None]
    seconds: float
    generation_tps: float
    prompt_logprobs: list[PromptLogprobs | None]


def batch_generate(
    model, requests: Sequence[Request], draft: str | None = None, num_draft_tokens: int = 6
) -> BatchResponse:
    """Runs ``requests`` on the model's slots in the calling thread (see Model.batch_generate)."""
    texts = [[] for _ in requests]
    last: list[GenerationResponse | None] = [None] * len(requests)
    errs: list[BaseException | None] = [None] * len(requests)
    scores: list[PromptLogprobs | None] = [None] * len(requests)

    def sink(i: int):
        def on_event(ev: Event) -> None:
            if isinstance(ev, BaseException):
                errs[i] = ev
            elif isinstance(ev, PromptLogprobs):
                scores[i] = ev
            else:
                texts[i].append(ev.text)
                last[i] = ev

        return on_event

    sched = Scheduler(
        model, max_queue=max(1, len(requests)), draft=draft, num_draft_tokens=num_draft_tokens
    )
    t0 = time.perf_counter()
    handles = [sched.submit(r, sink(i)) for i, r in enumerate(requests)]
    try:
        sched.run_until_idle()
    except BaseException:
        for h in handles:
            h.cancel()
        sched._reap()
        raise
    dt = max(time.perf_counter() - t0, 1e-9)
    n_gen = sum(r.generation_tokens for r in last if r is not None)
    return BatchResponse(["".join(t) for t in texts], last, errs, dt, n_gen / dt, scores)


__all__ = ["BatchResponse", "batch_generate"]
