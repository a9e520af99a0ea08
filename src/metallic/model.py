"""``metallic.load`` and the ``Model`` it returns."""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from . import batch as _batch
from . import batch_run as _batch_run
from . import constrain as _constrain
from . import generate as _gen
from . import prompt_cache as _prompt_cache
from . import speculative as _spec
from .errors import Busy, Cancelled, Closed, ContextOverflow, InvalidArgument
from .generate import GenerationResponse
from .prompt_scores import check_prompt_logprobs
from .sampling import SamplingParams, check_logprobs, make_sampler


def _core():
    from . import _core as core  # deferred: keeps `import metallic` cheap

    return core


_INTERRUPTED = "[generate] interrupted (Ctrl-C): stopped at a layer boundary; the model is ready"


class Model:
    """A loaded model: tokenizer + native engine. Not for concurrent use from several threads
    (a second concurrent call raises ``errors.Busy``); use one Model per thread."""

    def __init__(self, bundle, tokenizer, engine, *, load_seconds: float):
        self._bundle = bundle
        self._tokenizer = tokenizer
        self._engine = engine
        self._lock = threading.Lock()
        self._n_vocab = int(engine.n_vocab)
        self._logits1 = np.zeros((1, self._n_vocab), dtype=np.float32)
        self._cache: list[int] = []  # token ids whose KV rows are valid (positions 0..n-1)
        self._llg_index = None  # constrain.TokenizerIndex, built on first use
        self._fp: str | None = None  # prompt-cache fingerprint, computed on first use
        self.load_seconds = load_seconds
        self.arch = bundle.arch
        self.source = bundle.source

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Frees the KV cache and native buffers and unmaps the weights. Idempotent."""
        if self._engine is None:
            return
        with self._lock:
            self._engine.close()
            self._engine = None
            self._cache.clear()
            self._bundle.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() is the supported way
        with contextlib.suppress(Exception):
            self.close()

    @property
    def closed(self) -> bool:
        return self._engine is None

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def context_length(self) -> int:
        return int(self._live("context_length").context_length)

    @property
    def device(self) -> str:
        return str(self._live("device").device)

    def stats(self) -> dict:
        """What the device issued. ``dispatches`` / ``bytes_bound``: totals since load (kernel
        dispatches and the bytes their bound buffers span on the Metal devices; ops run on the
        CPU, which does not count bytes). ``last_tokens``, ``last_layer_dispatches``,
        ``last_layer_bytes``: the transformer layers of the last forward batch (a decoded token is
        a batch of one), and ``dispatches_per_layer`` = last_layer_dispatches / n_layer."""
        s = dict(self._live("stats").stats())
        s["dispatches_per_layer"] = s["last_layer_dispatches"] / max(1, s["n_layer"])
        return s

    def _live(self, where: str):
        if self._engine is None:
            raise Closed(f"[{where}] the model was closed")
        return self._engine

    # ------------------------------------------------------------------ inputs
    def _prompt_ids(self, prompt, *, special: bool = True) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidArgument("[generate] prompt: expected a non-empty string, got ''")
            ids = self._tokenizer.encode(prompt, add_special_tokens=special)
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            for i, t in enumerate(prompt):
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                    raise InvalidArgument(
                        f"[generate] prompt[{i}]: expected a token id (int), got {t!r}"
                    )
            ids = [int(t) for t in prompt]
        else:
            raise InvalidArgument(
                f"[generate] prompt: expected a str or a list of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise InvalidArgument("[generate] prompt: expected at least one token, got none")
        bad = [t for t in ids if not 0 <= t < self._n_vocab]
        if bad:
            raise InvalidArgument(
                f"[generate] prompt: token id {bad[0]} is outside the vocabulary [0, {self._n_vocab})"
            )
        ctx = self.context_length
        if len(ids) >= ctx:
            raise ContextOverflow(
                f"[generate] prompt: {len(ids)} tokens leave no room to generate in "
                f"context_length {ctx}"
            )
        return ids

    # ------------------------------------------------------------------ generation
    def stream_generate(
        self,
        prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop=None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: dict[int, float] | None = None,
        min_tokens: int = 0,
        logprobs: bool = False,
        top_logprobs: int = 0,
        response_format: dict | None = None,
        draft=None,
        num_draft_tokens: int = _spec.DEFAULT_DRAFT_TOKENS,
        _special: bool = True,
    ) -> Iterator[GenerationResponse]:
        """Yields a GenerationResponse per generated token (see its docstring).

        The KV of the longest prefix shared with the previous call's prompt + output is reused
        (``cached_tokens`` in each response); only the rest of the prompt is computed.

        Args:
            prompt: text (tokenized; BOS added only if the model's tokenizer adds it) or a list
                of token ids used exactly as given.
            max_tokens: tokens to generate at most (> 0).
            temperature, top_k, top_p, min_p, repetition_penalty, seed, presence_penalty,
                frequency_penalty, logit_bias, min_tokens: see SamplingParams.
            stop: a string or list of strings; generation ends before the first occurrence,
                which is never emitted (it may span tokens).
            logprobs: report each token's log-probability (``response.logprob``).
            top_logprobs: also the k (0..100) most likely alternatives (implies logprobs).
            response_format: constrain the output (see metallic.constrain): ``{"type":
                "json_schema", "schema": {...}}``, ``{"type": "json_object"}`` or ``{"type":
                "regex", "regex": "..."}``. Needs ``pip install metallic[constrained]``.
            draft: speculative decoding (metallic.speculative): None, ``"prompt-lookup"``
                (drafts from n-grams of the prompt and the output so far) or a loaded smaller
                Model with the same vocabulary. The output is the same token for token (greedy
                and seeded sampling); ``response.from_draft`` marks accepted drafts.
            num_draft_tokens: tokens drafted per step (1..32) when ``draft`` is set.
        """
        engine = self._live("stream_generate")
        k = _spec.check_num_draft_tokens(num_draft_tokens)
        drafter = _spec.make_speculator(draft, self, k)
        args = locals()  # every option stream_generate shares with _request, validated there
        req = self._request(prompt, special=_special, **{n: args[n] for n in _REQUEST_OPTIONS})
        sampler = make_sampler(
            _core(), self._n_vocab, req.params, self._tokenizer.eos_ids, req.top_logprobs
        )
        return self._run(
            engine,
            sampler,
            req.params,
            req.prompt_ids,
            req.max_tokens,
            req.stops,
            req.top_logprobs >= 0,
            req.constraint,
            drafter,
            draft if drafter is not None and not isinstance(draft, str) else None,
        )

    def _request(
        self,
        prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop=None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: dict[int, float] | None = None,
        min_tokens: int = 0,
        logprobs: bool = False,
        top_logprobs: int = 0,
        response_format: dict | None = None,
        special: bool = True,
        prompt_logprobs: int | None = None,
    ) -> _batch.Request:
        """Validates stream_generate's arguments into a batch.Request (every check at once);
        ``prompt_logprobs`` (batched requests only) scores the prompt, and then max_tokens may
        be 0."""
        params = SamplingParams(
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed=seed,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            logit_bias=logit_bias,
            min_tokens=min_tokens,
        )
        scored = check_prompt_logprobs(prompt_logprobs)
        max_tokens = _gen.check_max_tokens(max_tokens, zero_ok=scored >= 0)
        stops = _gen.check_stop(stop)
        k = check_logprobs(logprobs, top_logprobs)
        grammar = None if response_format is None else _constrain.grammar_of(response_format)
        ids = self._prompt_ids(prompt, special=special)
        for t in params.logit_bias or {}:
            if t >= self._n_vocab:
                raise InvalidArgument(
                    f"[sampling] logit_bias: expected token ids in [0, {self._n_vocab}), got {t}"
                )
        constraint = None
        if grammar is not None:
            if self._llg_index is None:
                self._llg_index = _constrain.TokenizerIndex(self._tokenizer, self._n_vocab)
            constraint = _constrain.GrammarConstraint(self._llg_index, grammar)
        return _batch.Request(ids, max_tokens, params, stops, k, constraint, scored)

    def batch_generate(self, prompts: Sequence, **kwargs) -> _batch_run.BatchResponse:
        """Generates for every prompt at once on the model's slots (``load(parallel=N)``):
        continuous batching, up to N sequences per step, the rest queued (see metallic.batch).

        ``prompts``: texts or token-id lists; the other arguments are stream_generate's and
        apply to every prompt. Returns a BatchResponse (texts in prompt order, each request's
        last GenerationResponse or error). A greedy request gives the same text as
        ``generate`` alone. Slot 0's KV is the model's own cache, so a later ``generate`` may
        reuse what the batch left there. ``draft="prompt-lookup"`` or a loaded draft model with
        at least this model's ``parallel`` (and ``num_draft_tokens``) drafts for every request
        in batched steps; the output is the same. ``prompt_logprobs=k`` (0..100) scores each
        prompt: ``BatchResponse.prompt_logprobs[i]`` holds every prompt token's log-probability
        given those before it (and the k best alternatives); with it ``max_tokens=0`` only
        scores. A scored prompt is computed whole (no prefix reuse).
        """
        self._live("batch_generate")
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise InvalidArgument(
                "[batch_generate] prompts: expected a non-empty list of prompts (str or token "
                f"ids), got {type(prompts).__name__}"
            )
        special = kwargs.pop("_special", True)
        draft = kwargs.pop("draft", None)
        k = kwargs.pop("num_draft_tokens", _spec.DEFAULT_DRAFT_TOKENS)
        requests = [self._request(p, special=special, **kwargs) for p in prompts]
        if not self._lock.acquire(blocking=False):
            raise Busy("[batch_generate] another generation is running on this model")
        try:
            return _batch_run.batch_generate(self, requests, draft, k)
        except KeyboardInterrupt as exc:
            raise Cancelled(_INTERRUPTED) from exc
        finally:
            self._lock.release()

    def scheduler(
        self,
        *,
        max_queue: int = 256,
        observer=None,
        draft=None,
        num_draft_tokens: int = _spec.DEFAULT_DRAFT_TOKENS,
    ) -> _batch.Scheduler:
        """A continuous-batching Scheduler over this model's slots (what the server runs)."""
        self._live("scheduler")
        return _batch.Scheduler(
            self,
            max_queue=max_queue,
            observer=observer,
            draft=draft,
            num_draft_tokens=num_draft_tokens,
        )

    def _run(
        self, engine, sampler, params, ids, max_tokens, stops, logprobs, constraint, drafter, dm
    ):
        if not self._lock.acquire(blocking=False):
            raise Busy(
                "[generate] another generation is running on this model; use one model per thread"
            )
        if dm is not None and not dm._lock.acquire(blocking=False):  # the draft model's KV too
            self._lock.release()
            raise Busy("[generate] draft: another generation is running on the draft model")
        try:
            yield from _gen.stream(
                engine,
                sampler,
                self._tokenizer,
                ids,
                max_tokens=max_tokens,
                stops=stops,
                logits_buf=self._logits1,
                penalty_window=params.penalty_window,
                cache=self._cache,
                logprobs=logprobs,
                constraint=constraint,
                drafter=drafter,
            )
        except (KeyboardInterrupt, Cancelled) as exc:  # Ctrl-C: the native call stopped early
            raise Cancelled(_INTERRUPTED) from exc
        finally:
            if dm is not None:
                dm._lock.release()
            self._lock.release()

    def generate(self, prompt, **kwargs) -> str:
        """Generates and returns the whole text (same arguments as stream_generate)."""
        return "".join(r.text for r in self.stream_generate(prompt, **kwargs))

    def _chat_prompt(self, messages, add_generation_prompt: bool = True) -> str:
        return self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt
        )

    def stream_chat(self, messages: Sequence[dict], **kwargs) -> Iterator[GenerationResponse]:
        """stream_generate over the chat template's rendering of ``messages``.

        The template writes any BOS itself, so the rendering is tokenized without adding one.
        Earlier turns are usually a prefix of the new rendering, so their KV is reused.
        """
        return self.stream_generate(self._chat_prompt(messages), _special=False, **kwargs)

    def chat(self, messages: Sequence[dict], **kwargs) -> str:
        """Renders ``messages`` ([{"role", "content"}, ...]) with the chat template and generates."""
        return "".join(r.text for r in self.stream_chat(messages, **kwargs))

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits of shape (len(token_ids), vocab) for the ids in a fresh context.

        Nothing cached is reused; afterwards the KV cache holds ``token_ids``.
        """
        engine = self._live("logits")
        if isinstance(token_ids, str):
            raise InvalidArgument("[logits] token_ids: expected a list of token ids, got a str")
        ids = self._prompt_ids(list(token_ids)) if len(token_ids) < self.context_length else None
        if ids is None:
            raise ContextOverflow(
                f"[logits] token_ids: {len(token_ids)} tokens exceed context_length {self.context_length}"
            )
        out = np.empty((len(ids), self._n_vocab), dtype=np.float32)
        if not self._lock.acquire(blocking=False):
            raise Busy("[logits] another call is running on this model")
        try:
            self._cache.clear()
            engine.forward(np.asarray(ids, dtype=np.int32), 0, out, True)
            self._cache.extend(ids)
        except (KeyboardInterrupt, Cancelled) as exc:
            raise Cancelled(_INTERRUPTED) from exc
        finally:
            self._lock.release()
        return out

    # ------------------------------------------------------------------ prompt cache
    @property
    def cached_tokens(self) -> tuple[int, ...]:
        """Token ids whose KV rows the engine holds now (positions 0..n-1)."""
        return tuple(self._cache)

    def reset_cache(self) -> None:
        """Forget the cached KV: the next call recomputes its whole prompt."""
        if not self._lock.acquire(blocking=False):
            raise Busy("[reset_cache] a generation is running on this model")
        try:
            self._cache.clear()
        finally:
            self._lock.release()

    def save_prompt_cache(self, path, prompt=None, *, messages=None) -> int:
        """Writes a prompt-cache file (see metallic.prompt_cache); returns its token count.

        With ``prompt`` (text or ids, tokenized as in generate) or ``messages`` (rendered with
        the chat template, no generation prompt), that prefix is computed first (reusing what
        is cached); without either, the current cache (``cached_tokens``) is saved.
        """
        engine = self._live("save_prompt_cache")
        if prompt is not None and messages is not None:
            raise InvalidArgument(
                "[save_prompt_cache] prompt, messages: expected at most one, got both"
            )
        ids = None
        if messages is not None:
            text = self._chat_prompt(messages, add_generation_prompt=False)
            ids = self._prompt_ids(text, special=False)
        elif prompt is not None:
            ids = self._prompt_ids(prompt)
        if not self._lock.acquire(blocking=False):
            raise Busy("[save_prompt_cache] another call is running on this model")
        try:
            if ids is not None:
                _gen.prefill(engine, self._cache, ids, None)
                del self._cache[len(ids) :]
            _prompt_cache.save(path, engine, self._fingerprint(), self._cache)
            return len(self._cache)
        finally:
            self._lock.release()

    def load_prompt_cache(self, path) -> int:
        """Loads a file from save_prompt_cache into the KV cache; returns its token count.

        Raises InvalidArgument when the file was made by another model (fingerprint) or with
        another KV dtype, CorruptFile / UnsupportedFormat for a damaged or foreign file.
        """
        engine = self._live("load_prompt_cache")
        if not self._lock.acquire(blocking=False):
            raise Busy("[load_prompt_cache] another call is running on this model")
        try:
            fp = self._fingerprint()
            self._cache.clear()
            self._cache.extend(_prompt_cache.load(path, engine, fp))
            return len(self._cache)
        finally:
            self._lock.release()

    def _fingerprint(self) -> str:
        if self._fp is None:
            self._fp = _prompt_cache.fingerprint(self._bundle)
        return self._fp


# The options stream_generate hands to Model._request: its keyword parameters but the prompt,
# the tokenization flag and the drafting ones (one list, so no option is ever left out).
_REQUEST_OPTIONS = tuple(
    n
    for n in inspect.signature(Model._request).parameters
    if n not in ("self", "prompt", "special", "prompt_logprobs")
)
