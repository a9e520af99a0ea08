"""Engine.forward_batch (ragged batches over sequence slots) and Engine.copy_seq.

References:
* cpu: a ragged batch gives every token the logits it gets when its sequence runs alone through
  ``forward`` (bit for bit: the kernels are batch invariant, and the ragged rope/attention call
  runs each token's arithmetic as the plain call does), for every family, with sliding-window
  rings wrapping, f32 and f16 caches.
* metal-emulated (the Metal plan splits a ragged call into one launch per sequence): against the
  NumPy reference of tests/reference.py with test_sliding_ring's TOL_F32 (f32 weights and cache).
* Every malformed batch is a typed error naming the segment, and the engine stays usable.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metallic._core")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import emu_harness  # noqa: E402
import metallic  # noqa: E402
import reference as ref  # noqa: E402
import tiny_families as tf  # noqa: E402
import tiny_models as tm  # noqa: E402
from metallic import _core, errors  # noqa: E402

TOL_F32 = 2e-5  # as test_sliding_ring.py: f32 weights and cache, measured worst 4.5e-7
CONTEXT = 64
FAMILIES = ["llama", "qwen3", "gemma3", "gemma2", "mistral", "phi3"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_batch")


def _model(models_dir, family: str) -> tm.TinyModel:
    return tm.make_model(models_dir, family, "f32", "gguf", tf.USUAL_TIED.get(family, False))


def _load(m, *, device="cpu", parallel=4, batch_size=8, kv="f32"):
    return metallic.load(
        m.path,
        device=device,
        threads=2,
        context_length=CONTEXT,
        kv_cache_dtype=kv,
        batch_size=batch_size,
        parallel=parallel,
    )


def _seqs(m, lengths, seed):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, m.cfg["vocab_size"], n)] for n in lengths]


def _alone(engine, seq):
    out = np.empty((len(seq), engine.n_vocab), np.float32)
    engine.forward(np.asarray(seq, np.int32), 0, out, True)
    return out


def _ragged(engine, seqs, chunks):
    """Runs ``seqs`` in slots 0.. as ragged batches; ``chunks(step, i, left)`` says how many of
    sequence i's next tokens join the step (0: none). Returns {(i, position): logits row}."""
    pos = [0] * len(seqs)
    got = {}
    step = 0
    while any(p < len(s) for p, s in zip(pos, seqs, strict=True)):
        tokens, segs = [], []
        for i, s in enumerate(seqs):
            n = min(chunks(step, i, len(s) - pos[i]), len(s) - pos[i])
            if n <= 0:
                continue
            tokens += s[pos[i] : pos[i] + n]
            segs.append([i, n, pos[i], 1])
        step += 1
        if not segs:
            continue
        rows = engine.forward_batch(np.asarray(tokens, np.int32), np.asarray(segs, np.int64))
        assert rows == len(segs)
        logits = engine.batch_logits()
        for j, (i, n, p0, _) in enumerate(segs):
            got[(i, p0 + n - 1)] = logits[j].copy()
            pos[i] += n
    return got


@pytest.mark.parametrize("kv", ["f32", "f16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_batch_equals_each_sequence_alone(models_dir, family, kv) -> None:
    """Three sequences of 20, 5 and 26 tokens (rings of 16 rows wrap: window 8 + batch 8) in
    chunks of 1..4 tokens that start and end at different steps: prefill chunks beside decode
    tokens, as continuous batching runs them."""
    m = _model(models_dir, family)
    with _load(m, kv=kv, parallel=3) as model:
        e = model._engine
        seqs = _seqs(m, (20, 5, 26), seed=1)
        want = [_alone(e, s) for s in seqs]
        got = _ragged(e, seqs, lambda step, i, left: (1 + (i + step) % 4) if step >= i else 0)
        for (i, p), row in got.items():
            np.testing.assert_array_equal(row, want[i][p], err_msg=f"{family} seq {i} pos {p}")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    pattern=st.lists(st.integers(0, 5), min_size=1, max_size=12),
)
def test_any_schedule_gives_the_same_logits(models_dir, lengths, pattern) -> None:
    """Hypothesis over sequence lengths and chunk schedules (0 = a sequence sits a step out)."""
    m = _model(models_dir, "gemma3")
    with _load(m, parallel=4) as model:
        e = model._engine
        seqs = _seqs(m, lengths, seed=len(lengths) * 31 + sum(pattern))
        want = [_alone(e, s) for s in seqs]

        def chunks(step, i, left):
            n = pattern[(step + 3 * i) % len(pattern)]
            return max(n, 1) if step > 40 else n  # always finishes

        def budgeted(step, i, left):  # at most batch_size (8) tokens in a step over all slots
            return min(chunks(step, i, left), 8 // len(seqs))

        for (i, p), row in _ragged(e, seqs, budgeted).items():
            np.testing.assert_array_equal(row, want[i][p])


@emu_harness.NEEDS_EMULATOR
@pytest.mark.parametrize("family", ["llama", "gemma3", "phi3"])
def test_ragged_batch_through_the_metal_plan(models_dir, family) -> None:
    m = _model(models_dir, family)
    with _load(m, device="metal-emulated", parallel=3) as model:
        e = model._engine
        seqs = _seqs(m, (20, 5, 26), seed=2)
        # phi3: longrope's long factors, as metallic picks them for a context over 16
        kw = {"longrope_long": ref.longrope_original(m.cfg) < CONTEXT} if family == "phi3" else {}
        want = [ref.forward(m.cfg, m.ref_weights, s, **kw) for s in seqs]
        got = _ragged(e, seqs, lambda step, i, left: 1 + (i + step) % 2)
        for (i, p), row in got.items():
            err = float(
                np.abs(row.astype(np.float64) - want[i][p]).max() / np.abs(want[i][p]).max()
            )
            assert err <= TOL_F32, f"{family} seq {i} pos {p}: rel err {err:.3e}"


def test_segments_without_logits_write_no_rows(models_dir) -> None:
    m = _model(models_dir, "llama")
    with _load(m, parallel=3) as model:
        e = model._engine
        s = _seqs(m, (4, 4), seed=3)
        want = _alone(e, s[1])
        segs = np.asarray([[0, 4, 0, 0], [2, 4, 0, 1]], np.int64)
        assert e.forward_batch(np.asarray(s[0] + s[1], np.int32), segs) == 1
        np.testing.assert_array_equal(e.batch_logits()[0], want[-1])


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_copy_seq_continues_like_the_source(models_dir, family) -> None:
    """Slot 2 takes slot 0's first 12 positions (prefix reuse across requests) and continues
    with other tokens: the logits equal that whole sequence computed alone; a ring layer keeps
    its last window rows, so the copy is as good as the source."""
    m = _model(models_dir, family)
    with _load(m, parallel=3) as model:
        e = model._engine
        a, tail = _seqs(m, (20, 6), seed=4)
        b = a[:12] + tail
        want = _alone(e, b)
        e.forward_batch(np.asarray(a[:8], np.int32), np.asarray([[0, 8, 0, 0]], np.int64))
        e.forward_batch(np.asarray(a[8:12], np.int32), np.asarray([[0, 4, 8, 0]], np.int64))
        e.copy_seq(0, 2, 12)
        assert e.kv_reusable(12, 2)
        e.forward_batch(np.asarray(tail, np.int32), np.asarray([[2, 6, 12, 1]], np.int64))
        np.testing.assert_array_equal(e.batch_logits()[0], want[-1])


def test_copy_seq_refuses_rows_a_ring_lost(models_dir) -> None:
    m = _model(models_dir, "mistral")  # every layer windowed (8), rings of 8 + 4 rows
    with _load(m, parallel=2, batch_size=4) as model:
        e = model._engine
        (a,) = _seqs(m, (30,), seed=5)
        for p in range(0, 28, 4):
            e.forward_batch(
                np.asarray(a[p : p + 4], np.int32), np.asarray([[0, 4, p, 0]], np.int64)
            )
        assert not e.kv_reusable(20, 0) and e.kv_reusable(28, 0)
        with pytest.raises(errors.InvalidArgument, match="no longer in its sliding-window ring"):
            e.copy_seq(0, 1, 20)
        e.copy_seq(0, 1, 28)
        assert e.kv_reusable(28, 1)
        with pytest.raises(errors.InvalidArgument, match=r"\[engine.copy_seq\] slot"):
            e.copy_seq(0, 2, 4)


def _bad_batches(v):
    ok = [0, 1, 2]
    return [
        (ok, [[0, 3, 0, 1], [0, 1, 3, 1]], errors.InvalidArgument, "already has segment"),
        (ok, [[5, 3, 0, 1]], errors.InvalidArgument, "slot: expected 0..3"),
        (ok, [[-1, 3, 0, 1]], errors.InvalidArgument, "slot"),
        (ok, [[0, 0, 0, 1]], errors.InvalidArgument, "n"),
        (ok, [[0, 3, -2, 1]], errors.InvalidArgument, "pos0: expected >= 0"),
        (ok, [[0, 3, 62, 1]], errors.ContextOverflow, "context overflow"),
        (ok, [[0, 2, 0, 1]], errors.InvalidArgument, r"tokens: expected 2 \(the segments' sum\)"),
        (list(range(9)), [[0, 9, 0, 1]], errors.InvalidArgument, "at most batch_size 8"),
        ([0, v, 1], [[0, 3, 0, 1]], errors.InvalidArgument, "token 1: expected an id"),
        (ok, [[0, 3, 0]], errors.ShapeMismatch, "k x 4"),
        (ok, [[i, 1, 0, 1] for i in range(5)], errors.InvalidArgument, "segments: expected 1..4"),
    ]


def test_malformed_batches_are_typed_errors(models_dir) -> None:
    m = _model(models_dir, "llama")
    with _load(m) as model:
        e = model._engine
        v = e.n_vocab
        for tokens, segs, exc, msg in _bad_batches(v):
            with pytest.raises(exc, match=msg):
                e.forward_batch(np.asarray(tokens, np.int32), np.asarray(segs, np.int64))
        (s,) = _seqs(m, (5,), seed=6)
        e.forward_batch(np.asarray(s, np.int32), np.asarray([[3, 5, 0, 1]], np.int64))
        np.testing.assert_array_equal(e.batch_logits()[0], _alone(e, s)[-1])


def test_parallel_is_checked(models_dir) -> None:
    m = _model(models_dir, "llama")
    for bad in (0, 257, True, 2.0):
        with pytest.raises(errors.InvalidArgument, match="parallel"):
            _load(m, parallel=bad)


def test_slots_cost_memory_only_when_used(models_dir) -> None:
    """The KV cache is parallel x one slot's bytes, in one zeroed allocation."""
    m = _model(models_dir, "gemma3")
    with _load(m, parallel=1) as one, _load(m, parallel=5) as five:
        assert five._engine.kv_cache_bytes == 5 * one._engine.kv_cache_bytes
        assert five._engine.n_seq == 5 and one._engine.n_seq == 1


def _samplers(n_vocab: int) -> list:
    """Greedy, plain temperature, truncated with logprobs and penalties, and one whose mask
    allows no token (its draw fails)."""
    out = [
        _core.Sampler(n_vocab, 0.0),
        _core.Sampler(n_vocab, 0.9, seed=3),
        _core.Sampler(n_vocab, 0.7, 5, 0.9, 0.05, 1.2, 8, 5, top_logprobs=3),
        _core.Sampler(n_vocab, 1.0, seed=9),
    ]
    out[3].mask_enabled = True
    out[3].mask[:] = 0
    for t in (1, 2, 2):
        out[2].accept(t)
    return out


def _check_sample_rows(models_dir, device: str) -> None:
    """engine.sample_rows (the scheduler's parallel first draws): every token, logprob and RNG
    state as the same sampler's own sample() of its row gives; a failed draw comes back as its
    typed error without touching the others."""
    m = _model(models_dir, "llama")
    with _load(m, device=device) as model:
        e = model._engine
        n = int(e.n_vocab)
        logits = (np.random.default_rng(1).standard_normal((5, n)) * 3).astype(np.float32)
        rows = [4, 0, 2, 1]
        for _ in range(3):  # three draws in a row: the RNG streams stay in step
            alone, batched = _samplers(n), _samplers(n)
            want = []
            for s, r in zip(alone, rows, strict=True):
                try:
                    want.append(s.sample(logits[r]))
                except errors.InvalidArgument as exc:
                    want.append(exc)
            got = e.sample_rows(batched, logits, rows)
            assert got[:3] == want[:3]
            assert isinstance(got[3], errors.InvalidArgument) and str(got[3]) == str(want[3])
            np.testing.assert_array_equal(batched[2].logprob_values, alone[2].logprob_values)
            assert e.sample_rows([], logits, []) == []


def test_sample_rows_draws_as_each_sampler_alone(models_dir) -> None:
    _check_sample_rows(models_dir, "cpu")


@emu_harness.NEEDS_EMULATOR
def test_sample_rows_on_the_metal_plan(models_dir) -> None:
    _check_sample_rows(models_dir, "metal-emulated")  # draws one after another there


def test_sample_rows_checks_its_arguments(models_dir) -> None:
    m = _model(models_dir, "llama")
    with _load(m) as model:
        e = model._engine
        n = int(e.n_vocab)
        logits = np.zeros((2, n), np.float32)
        s = _core.Sampler(n, 0.0)
        with pytest.raises(errors.InvalidArgument, match="each draw needs its own"):
            e.sample_rows([s, s], logits, [0, 1])
        with pytest.raises(errors.InvalidArgument, match=r"rows\[0\]: expected 0..1, got 2"):
            e.sample_rows([s], logits, [2])
        with pytest.raises(errors.InvalidArgument, match="one per sampler"):
            e.sample_rows([s], logits, [0, 1])
        with pytest.raises(errors.ShapeMismatch, match=f"expected one for n_vocab {n}"):
            e.sample_rows([_core.Sampler(n + 1, 0.0)], logits, [0])
        with pytest.raises(errors.ShapeMismatch, match=f"rows x {n}"):
            e.sample_rows([s], np.zeros((2, n - 1), np.float32), [0])
        assert e.sample_rows([s], logits, [1]) == [0]  # the engine is still usable
