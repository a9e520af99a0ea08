"""``metallic.load``: resolve, open, (optionally) quantize, then build the tokenizer and engine."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import InvalidArgument
from .families import resolve_context
from .model import Model, _core
from .quantize import check_target, quantize_weights

DEVICES = ("auto", "cpu", "metal", "metal-emulated")
_BULKY_TOKENIZER_KEYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
)
_KV_DTYPES = {"f16": 1, "f32": 0, "q8_0": 8, "q4_0": 2}  # DType ids (cli.KV_CACHE_DTYPES)


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


def _build_tokenizer(bundle):
    from .tokenizer import Tokenizer

    md = bundle.gguf_metadata
    if md is None:
        return Tokenizer.from_folder(bundle.folder)
    tokenizer = Tokenizer.from_gguf(md, bundle.source)
    # The vocabulary arrays (~100k Python strings for a 50k vocab) now live in the tokenizer;
    # drop them from the metadata so they don't stay resident for the model's lifetime.
    for key in _BULKY_TOKENIZER_KEYS:
        md.pop(key, None)
    return tokenizer


def _check_args(device, threads, context_length, kv_cache_dtype, batch_size=256) -> None:
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
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or not 1 <= batch_size <= 8192
    ):
        raise InvalidArgument(
            f"[load] batch_size: expected an int in [1, 8192], got {batch_size!r}"
        )
    if kv_cache_dtype not in _KV_DTYPES:
        raise InvalidArgument(
            f"[load] kv_cache_dtype: expected one of {', '.join(_KV_DTYPES)}, "
            f"got {kv_cache_dtype!r}"
        )


def load(
    path_or_name: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    threads: int | None = None,
    context_length: int = 4096,
    kv_cache_dtype: str = "f16",
    quantize: str | None = None,
    progress: bool = False,
    batch_size: int = 256,
    parallel: int = 1,
) -> Model:
    """Loads a model.

    Args:
        path_or_name: a .gguf file, an HF folder (config.json + safetensors + tokenizer.json),
            a registry name (see models/registry.json), or None for the default model.
        device: "auto" (cpu off macOS), "cpu", "metal" or "metal-emulated".
        threads: CPU threads (None: the cores this process may use).
        context_length: tokens of KV cache to allocate (prompt + generation).
        kv_cache_dtype: "f16" (default, half the memory of "f32"), "f32", or "q8_0" / "q4_0":
            each K and V row quantized per block of 32 as it is written (GGML's Q8_0 / Q4_0
            blocks: 34 / 18 bytes per 32 values, vs 64 for f16), read directly by attention;
            every device, head_dim a multiple of 32. Cost vs f32 in README.md.
        quantize: None, "q8_0" or "q4_0": quantize the float (F32/F16/BF16) matrices at load.
        progress: show progress bars for fetching and loading.
        batch_size: prompt tokens per forward pass (llama.cpp's n_batch): bounds activation
            memory; a sliding-window layer keeps window + batch_size KV rows.
        parallel: sequence slots (1..256), each with its own KV cache of ``context_length``
            positions, for ``Model.batch_generate`` and the server's continuous batching. The
            cache is one zeroed allocation: a slot's pages cost memory only once it holds rows.

    Returns:
        A Model; close it (or use ``with``) to free memory.
    """
    _check_args(device, threads, context_length, kv_cache_dtype, batch_size)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or not 1 <= parallel <= 256:
        raise InvalidArgument(f"[load] parallel: expected an int in [1, 256], got {parallel!r}")
    target = check_target(quantize)
    native_device = "cpu" if device == "auto" else device
    n_threads = threads or _default_threads()

    t0 = time.perf_counter()
    path = _resolve_path(path_or_name, progress)
    from .loader import open_model

    bar = _LoadProgress(progress, path)
    bundle = open_model(path)
    try:
        weights, evictable = bundle.weights, True  # loader tensors: read-only file mappings
        if target is not None:
            bar.step("quantize")
            weights, _ = quantize_weights(weights, target, threads=n_threads)
            evictable = False  # quantized tensors live in ordinary memory
        bar.step("tokenizer")
        # Sequential on purpose: building the tokenizer in a thread beside the engine's repack
        # measured slower (0.24 s vs 0.20 s on 2 cores: GIL and core contention).
        tokenizer = _build_tokenizer(bundle)
        bar.step("engine")
        # Settings that depend on the context length (phi3's longrope factors) are fixed here,
        # once per load, as llama.cpp does; the bundle keeps the resolved config so that the
        # prompt-cache fingerprint tells the two apart.
        bundle.config = resolve_context(bundle.config, context_length)
        core = _core()
        cfg = core.ModelConfig()
        for key, value in bundle.config.items():
            setattr(cfg, key, getattr(core.Activation, value) if key == "activation" else value)
        native_weights = {
            name: core.Weight(int(dt), list(shape), data)
            for name, (dt, shape, data) in weights.items()
        }
        engine = core.Engine(
            cfg,
            native_weights,
            device=native_device,
            threads=n_threads,
            context_length=context_length,
            kv_dtype=_KV_DTYPES[kv_cache_dtype],
            weights_evictable=evictable,
            batch_size=batch_size,
            n_seq=parallel,
        )
    except BaseException:
        bundle.close()
        raise
    finally:
        bar.close()
    return Model(bundle, tokenizer, engine, load_seconds=time.perf_counter() - t0)
