"""Helpers for ``bench.py``: statistics, memory, the bandwidth probe, bytes-per-token accounting,
machine description and the memory/load probe run in a fresh subprocess.

Nothing here imports metallic or llama_cpp at module level, so the probe subprocess of one engine
never pays the other engine's import or memory.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- statistics


def mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); sd is 0.0 for fewer than two values."""
    if not values:
        return float("nan"), float("nan")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


# ----------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    """Current resident set size of this process in bytes."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # Linux fallback without psutil
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's address space in bytes.

    Linux: ``VmHWM`` from /proc/self/status. Not ``ru_maxrss``: Linux carries that across
    fork+exec, so a probe child would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


class ForeignCpu:
    """Fraction of the machine's CPU time used by other processes between ``start`` and ``stop``
    (Linux /proc; None elsewhere): marks repetitions that other jobs slowed down."""

    def __init__(self):
        self._start = None

    @staticmethod
    def _snapshot() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                cpu = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            return None
        busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # minus idle and iowait
        return sum(cpu), busy, int(fields[11]) + int(fields[12])  # utime + stime, all threads

    def start(self) -> None:
        """Marks the beginning of the interval."""
        self._start = self._snapshot()

    def stop(self) -> float | None:
        """Others' share of all CPU time since ``start`` (0.0 .. 1.0)."""
        end = self._snapshot()
        if end is None or self._start is None:
            return None
        total, busy, ours = (e - s for e, s in zip(end, self._start, strict=True))
        return max(0.0, (busy - ours) / total) if total > 0 else None


# ----------------------------------------------------------------------------- bandwidth


def stream_read_gbs(threads: int, mib: int = 512, runs: int = 20) -> dict:
    """STREAM-style read bandwidth: an OR-reduction over a ``mib`` MiB buffer viewed as int64,
    split over ``threads`` Python threads (numpy releases the GIL inside the reduction).

    The OR reduction is a pure streaming read that numpy vectorises; on the reference machine it
    reaches the same rate as OpenBLAS sdot and ~30% more than float32 ``sum`` (whose pairwise
    summation is compute-bound on one core). Returns the best of ``runs`` and every run, GB/s.
    """
    buf = np.ones(mib * MIB // 8, dtype=np.int64)
    parts = np.array_split(buf, threads)
    np.bitwise_or.reduce(buf)  # fault the pages in before timing
    rates = []
    for _ in range(runs):
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(buf.nbytes / (time.perf_counter() - t0) / 1e9)
    del buf, parts
    return {"best_gbs": max(rates), "runs_gbs": rates, "mib": mib, "threads": threads}


# ----------------------------------------------------------------------------- bytes per token


def bytes_per_token(
    tensors: dict[str, tuple[tuple[int, ...], int]],
    config: dict,
    ctx_mean: float,
    kv_elem_bytes: int,
) -> dict:
    """Bytes one decoded token reads from memory.

    Args:
        tensors: canonical name -> (numpy-order shape, stored bytes) for every weight.
        config: the loader's config dict (n_layer, n_head_kv, head_dim, tied_embeddings).
        ctx_mean: mean number of KV positions each decoded token attends over.
        kv_elem_bytes: bytes per KV cache element (2 for f16).

    Every tensor is read in full except the token embedding table, of which one row is read;
    the output head is ``output.weight``, or the whole embedding table when embeddings are tied.
    KV: K and V rows of every layer for ``ctx_mean`` positions.
    """
    emb_shape, emb_bytes = tensors["token_embd.weight"]
    emb_row = emb_bytes // emb_shape[0]
    body = sum(nbytes for name, (_, nbytes) in tensors.items() if name != "token_embd.weight")
    head = emb_bytes if config["tied_embeddings"] else 0  # untied: output.weight is in `body`
    kv_per_pos = 2 * config["n_layer"] * config["n_head_kv"] * config["head_dim"] * kv_elem_bytes
    weights = body + head + emb_row
    kv = kv_per_pos * ctx_mean
    return {
        "weights": int(weights),
        "embedding_row": int(emb_row),
        "tied_head": int(head),
        "kv_per_position": int(kv_per_pos),
        "kv_mean_context": float(ctx_mean),
        "kv": float(kv),
        "total": float(weights + kv),
    }


def tensor_table(bundle) -> dict[str, tuple[tuple[int, ...], int]]:
    """name -> (shape, bytes) from a ``metallic.loader`` bundle."""
    return {
        name: (tuple(shape), int(data.nbytes)) for name, (_, shape, data) in bundle.weights.items()
    }


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "f16c", "amx")))
    except OSError:
        pass
    return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _kernel_paths() -> dict:
    """Which x86 kernel branches this build of metallic runs (SIMD at all; vpdpbusd or not)."""
    from metallic import _core

    k = _core.kernels
    return {"simd": bool(k.simd_available()), "vnni": bool(k.vnni())}


def machine_info() -> dict:
    """CPU model and flags, cores, OS, date and versions (llama_cpp only if importable)."""
    import metallic

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "metallic": metallic.__version__,
        "metallic_git": _git_commit(),
        "metallic_kernels": _kernel_paths(),
    }
    try:
        import llama_cpp

        info["llama_cpp_python"] = llama_cpp.__version__
        info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except ImportError:
        info["llama_cpp_python"] = None
    return info


# ----------------------------------------------------------------------------- probe


def run_probe(engine: str, payload: dict) -> dict:
    """Runs ``bench.py --probe ENGINE`` in a fresh interpreter (payload as JSON on stdin) and
    returns its JSON answer: load seconds, RSS before/after load and peak RSS."""
    cmd = [sys.executable, str(HERE / "bench.py"), "--probe", engine]
    env = dict(os.environ)
    import metallic  # the child imports the same package as this process (dev tree or installed)

    src = str(Path(metallic.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(
        cmd, input=json.dumps(payload), capture_output=True, text=True, env=env, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"[bench] probe {engine} failed ({out.returncode}):\n{out.stderr[-4000:]}"
        )
    return json.loads(out.stdout.strip().splitlines()[-1])
