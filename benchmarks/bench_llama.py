"""The llama.cpp side of ``bench.py`` (llama-cpp-python, an optional benchmark dependency).

Same GGUF, same threads for single-token and batch work, same prompt token ids, f16 KV cache,
flash attention off unless asked (llama-cpp-python's own default), the whole prompt in one
batch and one micro-batch (n_batch = n_ubatch = N), logits of the last position only.
"""

from __future__ import annotations

import time

import numpy as np

GGML_TYPE_F16 = 1


class LlamaRunner:
    """Times llama.cpp through llama-cpp-python on token ids given by the caller."""

    def __init__(self, path: str, *, threads: int, n_ctx: int, n_batch: int, flash_attn: bool):
        import llama_cpp

        self._lib = llama_cpp
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            type_k=GGML_TYPE_F16,
            type_v=GGML_TYPE_F16,
            flash_attn=flash_attn,
            logits_all=False,
            verbose=False,
        )
        self.load_seconds = time.perf_counter() - t0
        self.n_vocab = int(self.llm.n_vocab())
        self.settings = {
            "n_ctx": int(self.llm.n_ctx()),
            "n_batch": int(self.llm.n_batch),
            "n_ubatch": int(self.llm.context_params.n_ubatch),
            "n_threads": threads,
            "n_threads_batch": threads,
            "type_k": "f16",
            "type_v": "f16",
            "flash_attn": flash_attn,
            "use_mmap": True,
        }

    def _argmax(self) -> int:
        """Greedy pick from the last computed logits (a view of llama.cpp's buffer, no copy)."""
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def prompt(self, ids: list[int]) -> float:
        """Seconds for one batch of ``ids`` from position 0.

        ``reset()`` is needed: it sets n_tokens = 0, so ``eval`` removes every cached KV row
        (``kv_cache_seq_rm(-1, 0, -1)``, included in the time; negligible) and starts at 0.
        """
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - t0

    def ttft(self, ids: list[int]) -> float:
        """Seconds from the prompt to its first greedy token."""
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        self._argmax()
        return time.perf_counter() - t0

    def generate(self, short_ids: list[int], n_gen: int) -> tuple[float, list[int]]:
        """(seconds, tokens) of ``n_gen`` single-token evals after an untimed short prompt, each
        followed by a greedy argmax (numpy over the logits view; ~10 us, as our C++ argmax)."""
        self.llm.reset()
        self.llm.eval(short_ids)
        token = self._argmax()
        out = []
        t0 = time.perf_counter()
        for _ in range(n_gen):
            self.llm.eval([token])
            token = self._argmax()
            out.append(token)
        return time.perf_counter() - t0, out

    def close(self) -> None:
        """Frees the llama.cpp context and model."""
        self.llm.close()


def probe(payload: dict) -> dict:
    """The memory/load probe for llama.cpp (run in a fresh process by ``bench.py --probe``)."""
    from bench_util import peak_rss_bytes, rss_bytes

    rss0 = rss_bytes()
    runner = LlamaRunner(
        payload["model"],
        threads=payload["threads"],
        n_ctx=payload["n_ctx"],
        n_batch=payload["n_batch"],
        flash_attn=payload["flash_attn"],
    )
    rss1 = rss_bytes()
    runner.prompt(payload["ids"])
    runner.generate(payload["short_ids"], payload["n_gen"])
    out = {
        "load_s": runner.load_seconds,
        "rss_base": rss0,
        "rss_after_load": rss1,
        "rss_after_run": rss_bytes(),
        "peak_rss": peak_rss_bytes(),
    }
    runner.close()
    return out
