"""The generation loop: one native call for the (uncached part of the) prompt, one per token.

``stream`` runs the prompt, then turns each sampled token into a ``GenerationResponse`` with
streaming detokenization, stop strings, log-probabilities, constrained decoding and timing. It
keeps ``cache`` (the token ids whose KV rows are valid in the engine) up to date after every
native call, so a later prompt that shares a prefix recomputes only the rest.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import InvalidArgument


@dataclass(frozen=True)
class GenerationResponse:
    """One step of ``stream_generate``.

    Attributes:
        text: the new text since the previous response (may be empty while a multi-byte
            character or a possible stop string is held back).
        token: the token id generated at this step.
        prompt_tokens: number of prompt tokens.
        prompt_tps: prompt processing speed, tokens per second (over the tokens actually
            computed, i.e. prompt_tokens - cached_tokens).
        generation_tokens: tokens generated so far (including this one).
        generation_tps: generation speed so far, tokens per second.
        peak_memory: peak resident memory of the process, bytes (refreshed every 32 tokens
            and on the final response).
        finish_reason: "stop" (EOS, a stop string, or the output constraint is complete),
            "length" (max_tokens or the context is full), or None while generation goes on.
        cached_tokens: prompt tokens whose KV was reused from the previous call (not computed).
        logprob: with ``logprobs=True``, log-probability of ``token`` (log_softmax of the
            model's raw logits: before logit_bias, penalties, mask and temperature); else None.
        top_logprobs: with ``top_logprobs=k``, the k most likely (token, logprob) pairs of the
            same distribution, most likely first; else None.
        from_draft: the token was drafted (speculative decoding) and the target accepted it.
        draft_tokens, accepted_tokens: drafted and accepted tokens so far (speculative decoding;
            accepted_tokens / draft_tokens is the acceptance rate).
    """

    text: str
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: int
    finish_reason: str | None
    cached_tokens: int = 0
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    from_draft: bool = False
    draft_tokens: int = 0
    accepted_tokens: int = 0


class Constraint(Protocol):
    """Per-request output constraint (see metallic.constrain): fills the sampler's mask."""

    def start(self, sampler) -> None:
        """Write the mask of the first token into ``sampler.mask`` and enable it."""

    def advance(self, token: int) -> bool:
        """Consume ``token``; True if the output is complete, else write the next mask."""


_PEAK_EVERY = 32  # refresh GenerationResponse.peak_memory every this many tokens (and at the end)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes.

    On Linux this reads VmHWM from /proc/self/status: ru_maxrss survives fork+exec, so a child of
    a larger parent would report the parent's peak.
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def check_max_tokens(max_tokens: object, *, zero_ok: bool = False) -> int:
    """max_tokens > 0 (>= 0 with zero_ok: a scored prompt may generate nothing)."""
    least = 0 if zero_ok else 1
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < least:
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidArgument(f"[generate] max_tokens: expected an int {bound}, got {max_tokens!r}")
    return max_tokens


def check_stop(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidArgument(
            f"[generate] stop: expected a non-empty string or a list of them, got {stop!r}"
        )
    return tuple(stop)


class _StopMatcher:
    """Finds stop strings across token boundaries; holds back text that may start one.

    The result does not depend on how the text is split into chunks: generation stops before the
    earliest-starting stop string of the whole text. A stop found at position c is therefore
    only acted on once no other stop string could still complete at a start before c.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def _partial(self, buf: str) -> int:
        """Earliest p where buf[p:] is a proper prefix of some stop (len(buf) if none)."""
        for p in range(len(buf)):
            rest = buf[p:]
            if any(len(s) > len(rest) and s.startswith(rest) for s in self.stops):
                return p
        return len(buf)

    def _resolve(self, buf: str, final: bool) -> tuple[str, bool]:
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        hold = len(buf) if final else self._partial(buf)
        if cut >= 0 and (final or cut <= hold):
            self.pending = ""
            return buf[:cut], True
        keep = min(hold, cut) if cut >= 0 else hold
        self.pending = buf[keep:]
        return buf[:keep], False

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        if not self.stops:
            return text, False
        return self._resolve(self.pending + text, final=False)

    def flush(self) -> tuple[str, bool]:
        """End of text: (the rest to emit, whether a held-back stop string ended it)."""
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        return self._resolve(self.pending, final=True)


class TextStream:
    """Token ids → text as it streams: UTF-8-safe detokenization, then stop strings."""

    def __init__(self, tokenizer, stops: tuple[str, ...], *, model_vocab_size: int | None = None):
        self._detok = tokenizer.detokenizer(model_vocab_size=model_vocab_size)
        self._stop = _StopMatcher(stops)

    def add(self, token: int) -> tuple[str, bool]:
        """(text safe to emit now, a stop string was reached)."""
        return self._stop.push(self._detok.add(token))

    def finish(self) -> tuple[str, bool]:
        """Flushes held-back bytes and text: (the rest to emit, a stop string was reached)."""
        tail, stopped = self._stop.push(self._detok.finalize())
        if stopped:
            return tail, True
        rest, stopped = self._stop.flush()
        return tail + rest, stopped


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefill(engine, cache: list[int], ids: Sequence[int], logits_buf: np.ndarray | None) -> int:
    """Makes the engine's KV hold ``ids``, reusing the longest cached prefix; returns its length.

    At least the last token is recomputed when ``logits_buf`` is given (its logits are needed).
    ``cache`` is truncated before the native call and extended after it succeeds, so it never
    names a row that a failed or cancelled call may have left half written.
    """
    n = len(ids)
    reuse = common_prefix(cache, ids)
    if logits_buf is not None:
        reuse = min(reuse, n - 1)
    if reuse > 0 and not engine.kv_reusable(reuse):
        reuse = 0  # a sliding-window ring no longer holds the window before position `reuse`
    del cache[reuse:]
    if reuse < n:
        rest = np.ascontiguousarray(ids[reuse:], dtype=np.int32)
        out = logits_buf if logits_buf is not None else np.empty((1, engine.n_vocab), np.float32)
        engine.forward(rest, reuse, out, False)
        cache.extend(int(t) for t in rest)
    return reuse


class Responder:
    """Turns one sequence's sampled tokens into GenerationResponses: text (UTF-8-safe, stop
    strings held back), finish reason (EOS, stop string, complete constraint, max_tokens, full
    context), log-probabilities and timing. Shared by ``stream`` and the batch scheduler."""

    def __init__(
        self,
        tokenizer,
        sampler,
        *,
        n_vocab: int,
        context_length: int,
        n_prompt: int,
        cached: int,
        max_tokens: int,
        stops: tuple[str, ...],
        logprobs: bool,
        constraint: Constraint | None,
    ):
        self._texts = TextStream(tokenizer, stops, model_vocab_size=int(n_vocab))
        self._eos = tokenizer.eos_ids
        self._ctx = context_length
        self._n_prompt = n_prompt
        self._cached = cached
        self._max_tokens = max_tokens
        self._constraint = constraint
        self._lp_val = sampler.logprob_values if logprobs else None
        self._lp_ids = sampler.logprob_ids if logprobs else None
        self.prompt_tps = 0.0
        self._t1 = 0.0
        self.count = 0  # responses made
        self._peak = 0
        self.drafted = 0  # speculative decoding: tokens drafted and accepted so far
        self.accepted = 0

    def prompt_done(self, seconds: float) -> None:
        """The prompt took ``seconds`` (for prompt_tps); generation timing starts now."""
        self.prompt_tps = (self._n_prompt - self._cached) / max(seconds, 1e-9)
        self._t1 = time.perf_counter()

    def respond(self, token: int, pos: int, from_draft: bool = False) -> GenerationResponse:
        """The response for ``token``, sampled from the logits of position ``pos - 1``."""
        self.count += 1
        self.accepted += from_draft
        i = self.count
        texts = self._texts
        finish = None
        if token in self._eos:
            text, finish = texts.finish()[0], "stop"
        else:
            text, stopped = texts.add(token)
            if stopped or (self._constraint is not None and self._constraint.advance(token)):
                finish = "stop"
            elif i == self._max_tokens or pos >= self._ctx:
                finish = "length"
            if finish is not None and not stopped:
                tail, stopped = texts.finish()
                text += tail
                finish = "stop" if stopped else finish
        elapsed = max(time.perf_counter() - self._t1, 1e-9)
        if finish is not None or i % _PEAK_EVERY == 1:  # a /proc read, not every token
            self._peak = peak_rss_bytes()
        lp = top = None
        if self._lp_val is not None:
            lp = float(self._lp_val[0])
            top = tuple(zip(self._lp_ids[1:].tolist(), self._lp_val[1:].tolist(), strict=True))
        return GenerationResponse(
            text=text,
            token=int(token),
            prompt_tokens=self._n_prompt,
            prompt_tps=self.prompt_tps,
            generation_tokens=i,
            generation_tps=i / elapsed,
            peak_memory=self._peak,
            finish_reason=finish,
            cached_tokens=self._cached,
            logprob=lp,
            top_logprobs=top,
            from_draft=from_draft,
            draft_tokens=self.drafted,
            accepted_tokens=self.accepted,
        )


def stream(
    engine,
    sampler,
    tokenizer,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    stops: tuple[str, ...],
    logits_buf: np.ndarray,
    penalty_window: int,
    cache: list[int],
    logprobs: bool = False,
    constraint: Constraint | None = None,
    drafter=None,
) -> Iterator[GenerationResponse]:
    """Runs the prompt, then yields one response per generated token (see GenerationResponse).

    With a ``drafter`` (a metallic.speculative.Speculator), each step feeds the last token and
    the tokens it proposes in one forward with every row's logits, then emits the
    drafts the sampler agrees with and the sampler's token after them: the same tokens, drawn
    from the same logits with the same random numbers, as without drafts.
    """
    n_prompt = len(prompt_ids)
    if penalty_window > 0:  # the penalties also see the end of the prompt
        for t in prompt_ids[-penalty_window:]:
            sampler.accept(int(t))
    if constraint is not None:
        constraint.start(sampler)
    t0 = time.perf_counter()
    cached = prefill(engine, cache, prompt_ids, logits_buf)
    token = sampler.sample(logits_buf[0])
    out = Responder(
        tokenizer,
        sampler,
        n_vocab=engine.n_vocab,
        context_length=engine.context_length,
        n_prompt=n_prompt,
        cached=cached,
        max_tokens=max_tokens,
        stops=stops,
        logprobs=logprobs,
        constraint=constraint,
    )
    out.prompt_done(time.perf_counter() - t0)
    pos = n_prompt
    if drafter is not None:  # a speculative.Speculator
        drafter.reset(prompt_ids)
        rows = np.zeros((drafter.k_max + 1, engine.n_vocab), np.float32)
    ctx = engine.context_length
    while True:
        r = out.respond(token, pos)
        yield r
        if r.finish_reason is not None:
            return
        fed = int(token)
        drafts = []
        if drafter is not None:
            drafter.append(fed)
            # no draft past max_tokens or the context: every drafted row must be fed
            t_draft = time.perf_counter()
            drafts = drafter.propose(min(max_tokens - out.count - 1, ctx - pos - 1))
            t_draft = time.perf_counter() - t_draft  # a draft model's forwards count as cost
        if not drafts:
            if drafter is None:
                token = engine.decode(fed, pos, sampler)
            else:  # the speculator weighs drafts against the measured cost of a decode
                t = time.perf_counter()
                token = engine.decode(fed, pos, sampler)
                drafter.observe_decode(time.perf_counter() - t)
            cache.append(fed)  # its KV row at `pos` is now valid
            pos += 1
            continue
        n = len(drafts)
        batch = np.asarray([fed, *drafts], np.int32)
        t = time.perf_counter()
        engine.forward(batch, pos, rows[: n + 1], True)
        drafter.observe_verify(n, time.perf_counter() - t + t_draft)
        out.drafted += n
        cache.append(fed)
        sampler.accept(fed)
        pos += 1
        token = sampler.sample(rows[0])
        j = 0
        while j < n and token == drafts[j]:  # the sampler drew the draft: it is already fed
            r = out.respond(token, pos, from_draft=True)
            cache.append(int(token))
            drafter.append(int(token))
            yield r
            if r.finish_reason is not None:
                return
            sampler.accept(int(token))
            pos += 1
            j += 1
            token = sampler.sample(rows[j])
        drafter.update(n, j)
