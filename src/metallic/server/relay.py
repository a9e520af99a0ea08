"""Scheduler events to the requests on the event loop: one loop wake-up per step at most, and one
per ``interval`` seconds for the tokens of streams that run faster than that.

The scheduler's thread produces one event per running choice and step (a token each). Handing
each over with its own ``call_soon_threadsafe`` wakes the event loop's thread once per token of
every stream; where the engine's threads hold every core (2 threads on 2 cores), each wake-up
takes a core from a step in flight, and the step's other thread then waits for it at the next
kernel's barrier. Measured with benchmarks/serve_vs_api.py (SmolLM2 Q4_1, 2 threads, AMD EPYC
Zen 3, 2 cores): one stream through the server decoded at 0.86 / 0.88 / 0.90 of in-process
``stream_generate`` (medians of 12 paired prompts) with a write per token, 0.92 / 0.96 / 0.92
with the default 16 ms interval, in alternating runs.

:class:`EventRelay` collects the events of a step under a lock and wakes the loop once, at the
step's end (``step_end``, the Scheduler's ``on_step``), if an event of the step is urgent (the
caller's choice: a choice's first text, its last event, an error: neither the time to first token
nor the end waits), if the step took half the interval or more (slow steps: every step's tokens at
once), or if the last wake-up is ``interval`` ago; otherwise the events wait for a later step's.
Only streams faster than 2 / ``interval`` tokens per second are thus written in groups; a held
token goes out at the end of the step during which ``interval`` since the last write ran out (at
most ``interval`` plus that step late). Events keep their order; ``interval`` 0 writes every
step's events at its end. Measured at 8 streams (steps of ~15 ms), the default 16 ms
held tokens every other step and raised the inter-token p99 from ~24 to ~33 ms for no gain in
throughput: hence the half-interval rule.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

from ..errors import InvalidArgument

DEFAULT_INTERVAL_S = 0.016  # one frame at 60 Hz: a grouped write is not seen as a stutter


class EventRelay:
    """Events from the scheduler's thread into the ``asyncio.Queue`` each names, on one loop."""

    def __init__(self, interval: float):
        if not 0.0 <= interval <= 1.0:  # also rejects nan
            raise InvalidArgument(f"[server] stream interval: expected 0 .. 1 s, got {interval}")
        self.interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, object]] = []
        self._urgent = False
        self._wake_queued = False  # a drain is queued with call_soon_threadsafe
        self._last_wake = self._last_step = -math.inf

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop every queue belongs to; called in it before a request submits. A server
        restarted on a new loop (the old one closed) rebinds."""
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("[server] event relay: every request must run on one event loop")

    def push(self, queue: asyncio.Queue, item, urgent: bool) -> None:
        """Called in the scheduler's thread: ``item`` for ``queue``, written at this step's end
        when ``urgent``, else at the first step's end ``interval`` after the last write."""
        with self._lock:
            self._pending.append((queue, item))
            self._urgent = self._urgent or urgent

    def step_end(self) -> None:
        """Called in the scheduler's thread after each step: wakes the loop for the pending
        events if one is urgent, the step was slow or the interval has passed."""
        now = time.monotonic()
        fast, self._last_step = now - self._last_step < 0.5 * self.interval, now
        with self._lock:
            if not self._pending or self._wake_queued or self._loop is None:
                return
            if not self._urgent and fast and now - self._last_wake < self.interval:
                return
            self._wake_queued, self._urgent, self._last_wake = True, False, now
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed (the server is gone): nobody is listening
            with self._lock:
                self._pending.clear()
                self._wake_queued = False

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
            self._wake_queued = self._urgent = False
        for queue, item in items:
            queue.put_nowait(item)
