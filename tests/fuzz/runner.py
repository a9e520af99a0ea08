"""Runs fuzz cases on a pool of fork servers, minimises failures and saves reproducers.

Design: a case is ``(master_seed, case_id)``; :func:`fuzz.mutators.plan` turns it into a seed
model and 1-3 ops (bit flips, truncation, length/count/dim/offset fields set to huge, "negative"
or off-by-one values, swapped offsets, changed dtype codes, metadata and JSON values of the wrong
type or range, hostile chat templates...). ``workers`` server processes (``fuzz.worker``) each
take an interleaved shard and fork one child per case, so a signal, a hang or an allocation past
the child's ``RLIMIT_AS`` is caught and attributed to its case. A failing case is re-run with
every proper subset of its ops to find the smallest one that fails the same way, and the mutated
files of that subset are saved with ``plan.json`` under ``out_dir/case-<id>/``; re-run one with
``PYTHONPATH=src:tests python -m fuzz.worker --repro <that folder>``.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import mutators

FAILURES = frozenset({"bad", "crash", "hang", "harness", "lost"})
TESTS = Path(__file__).resolve().parent.parent


@dataclass
class Report:
    """What a run found."""

    seed: int
    cases: int
    seconds: float
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    failures: list[dict] = field(default_factory=list)

    @property
    def per_minute(self) -> float:
        return self.cases / max(self.seconds, 1e-9) * 60

    def summary(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.errors.most_common(8))
        return (
            f"fuzz seed {self.seed}: {self.cases} cases in {self.seconds:.1f}s "
            f"({self.per_minute:.0f}/min); outcomes {dict(self.outcomes)}; typed errors: {top}"
        )

    def describe_failures(self) -> str:
        lines = []
        for f in self.failures:
            lines += [
                f"--- case {f['case']} ({f['seed_name']}): {f['outcome']}",
                f"ops: {json.dumps(f.get('min_ops', f.get('ops')))}",
                f"reproducer: {f.get('repro', '-')}",
                (f.get("detail") or "")[-4000:],
            ]
        return "\n".join(lines)


def _env() -> dict[str, str]:
    import metallic

    paths = [str(TESTS), str(Path(metallic.__file__).resolve().parent.parent)]
    old = os.environ.get("PYTHONPATH")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def run_jobs(
    jobs: list[dict],
    *,
    corpus: Path,
    seed: int,
    work: Path,
    tag: str,
    timeout: float,
    mem_mb: int,
) -> list[dict]:
    """Run ``jobs`` on one fork server; a job the server never answered comes back "lost"."""
    scratch = work / f"scratch-{tag}"
    scratch.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fuzz.worker", "--corpus", str(corpus), "--seed", str(seed)]
    cmd += ["--scratch", str(scratch), "--timeout", str(timeout), "--mem-mb", str(mem_mb)]
    log = work / f"worker-{tag}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=_env()
        )
        lines = "".join(json.dumps(j) + "\n" for j in jobs).encode()
        out, _ = proc.communicate(lines)
    results = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    tail = log.read_text(errors="replace")[-2000:]
    for job in jobs[len(results) :]:
        detail = f"fork server exited {proc.returncode} before this job; log tail:\n{tail}"
        results.append({**job, "outcome": "lost", "detail": detail, "seed_name": "?"})
    return results


def run(
    corpus: Path,
    *,
    seed: int,
    cases: int,
    workers: int,
    work: Path,
    timeout: float = 30.0,
    mem_mb: int = 2048,
    minimize: int = 5,
) -> Report:
    """Run cases ``0 .. cases-1`` of ``seed`` on ``workers`` servers.

    Args:
        corpus: the seed folder (:func:`fuzz.corpus.build`).
        seed: master seed.
        cases: number of cases.
        workers: parallel fork servers.
        work: scratch, logs and reproducers (``work/repro``).
        timeout: seconds per case before it counts as a hang.
        mem_mb: address-space cap of each case (0: none, e.g. under AddressSanitizer).
        minimize: failing cases to minimise and save (the rest are listed as they are).

    Returns:
        The :class:`Report`.
    """
    t0 = time.monotonic()
    shards = [[{"case": c} for c in range(w, cases, workers)] for w in range(workers)]
    kw = dict(corpus=corpus, seed=seed, work=work, timeout=timeout, mem_mb=mem_mb)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda a: run_jobs(a[1], tag=str(a[0]), **kw), enumerate(shards)))
    report = Report(seed, cases, time.monotonic() - t0)
    seeds = mutators.load_seeds(corpus)
    for res in itertools.chain.from_iterable(parts):
        report.outcomes[res["outcome"]] += 1
        if res["outcome"] == "typed":
            report.errors[res["detail"].split(":", 1)[0]] += 1
        if res["outcome"] in FAILURES:
            res["ops"] = mutators.plan(seeds, seed, res["case"])[1]
            report.failures.append(res)
    report.failures.sort(key=lambda f: f["case"])
    for f in report.failures[:minimize]:
        _minimize(f, seeds, kw)
    return report


def _minimize(fail: dict, seeds: dict, kw: dict) -> None:
    """Smallest subset of the case's ops with the same outcome; save its files."""
    n = len(fail["ops"])
    subsets = [list(s) for k in range(1, n) for s in itertools.combinations(range(n), k)]
    best = list(range(n))
    if subsets:
        jobs = [{"case": fail["case"], "subset": s} for s in subsets]
        for res in run_jobs(jobs, tag="min", **kw):
            if res["outcome"] == fail["outcome"]:
                best = res["subset"]
                fail["detail"] = res.get("detail", fail.get("detail"))
                break
    ops = [fail["ops"][i] for i in best]
    fail["min_ops"] = ops
    out = kw["work"] / "repro" / f"case-{fail['case']}"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in mutators.apply(seeds[fail["seed_name"]], ops).items():
        (out / name).write_bytes(data)
    plan = {"seed": kw["seed"], "case": fail["case"], "seed_name": fail["seed_name"], "ops": ops}
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    fail["repro"] = str(out)
