"""``metallic.load`` and the ``Model`` it returns."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from . import constrain as _constrain
from . import generate as _gen
from . import prompt_cache as _prompt_cache
from .errors import Busy, Closed, ContextOverflow, InvalidArgument
from .generate import GenerationResponse
from .sampling import SamplingParams, check_logprobs, make_sampler

DEVICES = ("auto", "cpu", "metal", "metal-emulated")
_KV_DTYPES = {"f16": 1, "f32": 0}


def _core():
    from . import _core as core  # deferred: keeps `import metallic` cheap

    return core


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def _resolve_path(path_or_name: str | os.PathLike | None, progress: bool) -> Path:
    if path_or_name is not None:
        p = Path(path_or_name).expanduser()
        if p.exists() or os.sep in str(path_or_name) or str(path_or_name).endswith(".gguf"):
            return p
    from . import registry

    return registry.resolve(None if path_or_name is None else str(path_or_name), progress=progress)


class _LoadProgress:
    """A three-stage progress bar on stderr (parse, tokenizer, engine) when asked for."""

    def __init__(self, enabled: bool, path: Path):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=3, desc=f"load {path.name}: parse", unit="step", leave=False)

    def step(self, stage: str) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_description_str(self._bar.desc.rsplit(":", 1)[0] + f": {stage}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.total - self._bar.n)
            self._bar.close()


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
        """
        engine = self._live("stream_generate")
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
        max_tokens = _gen.check_max_tokens(max_tokens)
        stops = _gen.check_stop(stop)
        k = check_logprobs(logprobs, top_logprobs)
        grammar = None if response_format is None else _constrain.grammar_of(response_format)
        ids = self._prompt_ids(prompt, special=_special)
        sampler = make_sampler(_core(), self._n_vocab, params, self._tokenizer.eos_ids, k)
        constraint = None
        if grammar is not None:
            if self._llg_index is None:
                self._llg_index = _constrain.TokenizerIndex(self._tokenizer, self._n_vocab)
            constraint = _constrain.GrammarConstraint(self._llg_index, grammar)
        return self._run(engine, sampler, params, ids, max_tokens, stops, k >= 0, constraint)

    def _run(self, engine, sampler, params, ids, max_tokens, stops, logprobs, constraint):
        if not self._lock.acquire(blocking=False):
            raise Busy(
                "[generate] another generation is running on this model; use one model per thread"
            )
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
            )
        finally:
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


def load(
    path_or_name: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    threads: int | None = None,
    context_length: int = 4096,
    kv_cache_dtype: str = "f16",
    progress: bool = False,
) -> Model:
    """Loads a model.

    Args:
        path_or_name: a .gguf file, an HF folder (config.json + safetensors + tokenizer.json),
            a registry name (see models/registry.json), or None for the default model.
        device: "auto" (cpu off macOS), "cpu", "metal" or "metal-emulated".
        threads: CPU threads (None: the cores this process may use).
        context_length: tokens of KV cache to allocate (prompt + generation).
        kv_cache_dtype: "f16" (default, half the memory) or "f32".
        progress: show progress bars for fetching and loading.

    Returns:
        A Model; close it (or use ``with``) to free memory.
    """
    if device not in DEVICES:
        raise InvalidArgument(
            f"[load] device: expected one of {', '.join(DEVICES)}, got {device!r}"
        )
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024
    ):
        raise InvalidArgument(
            f"[load] threads: expected None or an int in [1, 1024], got {threads!r}"
        )
    if (
        not isinstance(context_length, int)
        or isinstance(context_length, bool)
        or not 1 < context_length <= 1 << 22
    ):
        raise InvalidArgument(
            f"[load] context_length: expected an int in [2, 4194304], got {context_length!r}"
        )
    if kv_cache_dtype not in _KV_DTYPES:
        raise InvalidArgument(
            f"[load] kv_cache_dtype: expected 'f16' or 'f32', got {kv_cache_dtype!r}"
        )
    native_device = "cpu" if device == "auto" else device

    t0 = time.perf_counter()
    path = _resolve_path(path_or_name, progress)
    from .loader import open_model
    from .tokenizer import Tokenizer

    bar = _LoadProgress(progress, path)
    bundle = open_model(path)
    try:
        bar.step("tokenizer")
        if bundle.gguf_metadata is not None:
            tokenizer = Tokenizer.from_gguf(bundle.gguf_metadata, bundle.source)
        else:
            tokenizer = Tokenizer.from_folder(bundle.folder)
        bar.step("engine")
        core = _core()
        cfg = core.ModelConfig()
        for key, value in bundle.config.items():
            setattr(cfg, key, getattr(core.Activation, value) if key == "activation" else value)
        weights = {
            name: core.Weight(int(dt), list(shape), data)
            for name, (dt, shape, data) in bundle.weights.items()
        }
        engine = core.Engine(
            cfg,
            weights,
            device=native_device,
            threads=threads or _default_threads(),
            context_length=context_length,
            kv_dtype=_KV_DTYPES[kv_cache_dtype],
            weights_evictable=True,  # loader tensors are views of read-only file mappings
        )
    except BaseException:
        bundle.close()
        raise
    finally:
        bar.close()
    return Model(bundle, tokenizer, engine, load_seconds=time.perf_counter() - t0)
