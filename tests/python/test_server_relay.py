"""metallic.server.relay.EventRelay: when a step's events reach the event loop, on a fake clock.

The producer (this thread, standing in for the scheduler's) pushes and ends steps; the loop runs
only between steps, to take what the relay handed over. Checked: order, urgent events and slow
steps written at the step's end, fast streams' tokens held at most one interval plus one step,
everything written once an urgent event comes."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metallic.errors import InvalidArgument
from metallic.server import relay as relay_mod
from metallic.server.relay import EventRelay


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(relay_mod.time, "monotonic", c)
    return c


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _taken(loop, queue) -> list:
    loop.run_until_complete(asyncio.sleep(0))  # runs the drains call_soon_threadsafe queued
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_interval_zero_writes_every_step(clock, loop):
    r = EventRelay(0.0)
    r.bind(loop)
    q = asyncio.Queue()
    for k in range(3):
        r.push(q, k, urgent=False)
        clock.now += 0.001
        r.step_end()
        assert _taken(loop, q) == [k]


def test_fast_steps_are_grouped_and_urgent_events_are_not(clock, loop):
    r = EventRelay(0.016)
    r.bind(loop)
    q = asyncio.Queue()
    r.push(q, "first", urgent=True)  # a choice's first text
    r.step_end()
    assert _taken(loop, q) == ["first"]
    got = []
    for k in range(8):  # 4 ms steps: a write per 16 ms
        clock.now += 0.004
        r.push(q, k, urgent=False)
        r.step_end()
        got.append(_taken(loop, q))
    assert got == [[], [], [], [0, 1, 2, 3], [], [], [], [4, 5, 6, 7]]
    clock.now += 0.004
    r.push(q, 8, urgent=False)
    r.push(q, "end", urgent=True)  # the last event: at this step's end
    r.step_end()
    assert _taken(loop, q) == [8, "end"]


def test_slow_steps_are_written_every_step(clock, loop):
    r = EventRelay(0.016)
    r.bind(loop)
    queues = [asyncio.Queue() for _ in range(3)]
    r.step_end()  # the first step after an idle while is slow too
    for k in range(4):  # 9 ms steps (over half the interval): no holding
        clock.now += 0.009
        for i, q in enumerate(queues):
            r.push(q, (i, k), urgent=False)
        r.step_end()
        assert [_taken(loop, q) for q in queues] == [[(i, k)] for i in range(3)]


def test_a_closed_loop_and_a_second_loop(clock, loop):
    r = EventRelay(0.0)
    r.bind(loop)
    r.bind(loop)  # the same loop again: fine
    other = asyncio.new_event_loop()
    with pytest.raises(RuntimeError, match=r"\[server\] event relay: every request"):
        r.bind(other)
    other.close()
    q = asyncio.Queue()
    loop.close()
    r.push(q, 1, urgent=True)
    r.step_end()  # the server is gone: dropped, no error in the scheduler's thread
    r.push(q, 2, urgent=True)
    r.step_end()
    again = asyncio.new_event_loop()  # the app served again on a new loop
    try:
        r.bind(again)
        r.push(q, 3, urgent=True)
        r.step_end()
        assert _taken(again, q) == [3]
    finally:
        again.close()


@pytest.mark.parametrize("bad", [-0.001, 1.5, math.nan, math.inf])
def test_interval_is_checked(bad):
    with pytest.raises(
        InvalidArgument, match=r"\[server\] stream interval: expected 0 .. 1 s"
    ) as e:
        EventRelay(bad)
    assert isinstance(e.value, ValueError)


def test_unbound_relay_holds_events(clock, loop):
    r = EventRelay(0.0)
    q = asyncio.Queue()
    r.push(q, 1, urgent=True)
    r.step_end()  # no loop yet: kept
    r.bind(loop)
    r.push(q, 2, urgent=False)
    clock.now += 1.0
    r.step_end()
    assert _taken(loop, q) == [1, 2]


_steps = st.lists(
    st.tuples(
        st.floats(0.0005, 0.05),  # the step's duration
        st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=4),  # (queue, urgent)
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(interval=st.sampled_from([0.0, 0.004, 0.016, 0.1]), steps=_steps)
def test_order_bound_and_completeness(interval, steps):
    """Any steps and pushes: each queue gets its items in push order, none held past the end of
    the step during which the interval since its own step's end ran out, and all of them once an
    urgent event ends a step."""
    c = Clock()
    mp = pytest.MonkeyPatch()
    mp.setattr(relay_mod.time, "monotonic", c)
    lp = asyncio.new_event_loop()
    try:
        r = EventRelay(interval)
        r.bind(lp)
        queues = [asyncio.Queue() for _ in range(3)]
        pushed = [[] for _ in queues]
        got = [[] for _ in queues]
        n = 0
        for dur, pushes in steps:
            c.now += dur
            for qi, urgent in pushes:
                r.push(queues[qi], (n, c.now), urgent)
                pushed[qi].append(n)
                n += 1
            r.step_end()
            for qi, q in enumerate(queues):
                for k, t in _taken(lp, q):
                    assert c.now - t <= interval + dur + 1e-9, (k, c.now - t)
                    got[qi].append(k)
        for qi in range(len(queues)):
            assert got[qi] == pushed[qi][: len(got[qi])]  # in order, none twice
        c.now += 0.001
        r.push(queues[0], (n, c.now), True)
        pushed[0].append(n)
        r.step_end()
        for qi, q in enumerate(queues):
            got[qi] += [k for k, _ in _taken(lp, q)]
        assert got == pushed
    finally:
        lp.close()
        mp.undo()
