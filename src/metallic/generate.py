"""The generation loop: one native call for the prompt, one per generated token.

``stream_tokens`` is the single internal step generator (token, logits view); ``stream`` turns
it into ``GenerationResponse`` objects with streaming detokenization, stop strings and timing.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
        prompt_tps: prompt processing speed, tokens per second.
        generation_tokens: tokens generated so far (including this one).
        generation_tps: generation speed so far, tokens per second.
        peak_memory: peak resident memory of the process, bytes.
        finish_reason: "stop" (EOS or a stop string), "length" (max_tokens or the context is
            full), or None while generation goes on.
    """

    text: str
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: int
    finish_reason: str | None


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


def check_max_tokens(max_tokens: object) -> int:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        raise InvalidArgument(f"[generate] max_tokens: expected an int > 0, got {max_tokens!r}")
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
    """Finds stop strings across token boundaries; holds back text that may start one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.pending = ""
            return buf[:cut], True
        # Hold back the longest suffix of buf that is a proper prefix of some stop string.
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


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
) -> Iterator[GenerationResponse]:
    """Runs the prompt, then yields one response per generated token (see GenerationResponse)."""
    ids = np.ascontiguousarray(prompt_ids, dtype=np.int32)
    n_prompt = int(ids.shape[0])
    ctx = engine.context_length
    eos = tokenizer.eos_ids
    if penalty_window > 0:  # the repetition penalty also sees the end of the prompt
        for t in ids[-penalty_window:]:
            sampler.accept(int(t))
    t0 = time.perf_counter()
    engine.forward(ids, 0, logits_buf, False)
    token = sampler.sample(logits_buf[0])
    t1 = time.perf_counter()
    prompt_tps = n_prompt / max(t1 - t0, 1e-9)
    detok = tokenizer.detokenizer()
    matcher = _StopMatcher(stops)
    pos = n_prompt
    for i in range(1, max_tokens + 1):
        finish = None
        if token in eos:
            text, finish = detok.finalize(), "stop"
            text, _ = matcher.push(text)
            text += matcher.flush()
        else:
            text, stopped = matcher.push(detok.add(token))
            if stopped:
                finish = "stop"
            elif i == max_tokens or pos >= ctx:
                tail, _ = matcher.push(detok.finalize())
                text += tail + matcher.flush()
                finish = "length"
        elapsed = max(time.perf_counter() - t1, 1e-9)
        yield GenerationResponse(
            text=text,
            token=int(token),
            prompt_tokens=n_prompt,
            prompt_tps=prompt_tps,
            generation_tokens=i,
            generation_tps=i / elapsed,
            peak_memory=peak_rss_bytes(),
            finish_reason=finish,
        )
        if finish is not None:
            return
        token = engine.decode(int(token), pos, sampler)
        pos += 1
