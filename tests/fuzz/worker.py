"""Fork server: runs fuzz cases in child processes so a crash, a hang or a runaway allocation
costs one case, never the test run.

The server imports metallic once, then for each job line on stdin (``{"case": N}``,
``{"case": N, "subset": [i, ...]}`` to re-run part of a case's ops, or ``{"seed_name": s,
"ops": [...]}``) writes the mutated files into its scratch folder and forks. The child caps its
address space (``RLIMIT_AS``; 0 disables the cap, needed under AddressSanitizer), loads the model
on the CPU with a 32-token context and, when that works, runs ``logits``, two short generations,
``chat`` and the decoders. It reports one JSON object through a pipe:

* ``ok``: loaded and ran (``steps`` lists typed errors of individual steps);
* ``typed``: loading raised a :class:`metallic.errors.MetallicError` (the expected outcome);
* ``bad``: any other exception (including ``MemoryError`` and Rust panics) or wrong output.

The server adds ``crash`` (the child died from a signal or exited without a report) and
``hang`` (no report within ``--timeout`` seconds; the child is killed). One JSON line per job
goes to stdout.

``python -m fuzz.worker --repro DIR`` runs a saved reproducer in-process with a full traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fuzz import mutators  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]


def _selftest(ops: list) -> None:
    """Deliberate failures (``["selftest", kind]``) that prove the harness catches each kind."""
    for op in ops:
        if op[0] != "selftest":
            continue
        if op[1] == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif op[1] == "hang":
            time.sleep(3600)
        elif op[1] == "untyped":
            raise ValueError("selftest: an untyped exception")
        elif op[1] == "alloc":
            bytearray(64 << 30)  # must hit RLIMIT_AS -> MemoryError -> "bad"


def target(path: Path, ops: list | None = None) -> dict:
    """Load ``path`` and exercise the model; MetallicErrors are the expected failures."""
    import numpy as np

    import metallic
    from metallic.errors import MetallicError

    _selftest(ops or [])
    try:
        model = metallic.load(path, device="cpu", threads=1, context_length=32)
    except MetallicError as e:
        return {"outcome": "typed", "stage": "load", "detail": f"{type(e).__name__}: {e}"[:500]}
    steps: list[str] = []
    try:
        n = int(model._n_vocab)
        ids = [1 % n, 2 % n, 3 % n]
        tok = model.tokenizer

        def logits() -> None:
            out = model.logits(ids)
            if out.shape != (3, n) or out.dtype != np.float32:
                raise AssertionError(f"logits shape {out.shape} {out.dtype}, expected (3, {n})")

        def detok() -> None:
            d = tok.detokenizer()
            text = "".join(d.add(i) for i in range(min(tok.vocab_size, 64))) + d.finalize()
            if not isinstance(text, str):
                raise AssertionError("detokenizer returned a non-str")

        for stage, fn in (
            ("logits", logits),
            ("generate_ids", lambda: model.generate(ids, max_tokens=2)),
            ("generate_text", lambda: model.generate("Hello world 12", max_tokens=2)),
            ("chat", lambda: model.chat(MESSAGES, max_tokens=2, temperature=0.7, seed=1)),
            ("decode", lambda: tok.decode(list(range(min(tok.vocab_size, 64))))),
            ("detokenizer", detok),
        ):
            try:
                fn()
            except MetallicError as e:
                steps.append(f"{stage}: {type(e).__name__}")
    finally:
        model.close()
    return {"outcome": "ok", "stage": "run", "steps": steps}


def _model_path(folder: Path) -> Path:
    gguf = folder / "model.gguf"
    return gguf if gguf.exists() else folder


def run_case(folder: Path, ops: list, timeout: float, mem_bytes: int) -> dict:
    """Fork a child that runs :func:`target` on ``folder``; classify how it ended.

    The child's stderr goes to ``folder/../stderr.txt``, whose tail (a sanitizer report, a
    fatal error) is added to the detail of a failing case.
    """
    r, w = os.pipe()
    err_path = folder.parent / "stderr.txt"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # stdout is the server's result stream
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(err, 2)
            if mem_bytes:
                resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
            res = target(_model_path(folder), ops)
        except BaseException:  # noqa: BLE001 - everything that is not a MetallicError counts
            res = {"outcome": "bad", "stage": "?", "detail": traceback.format_exc()[-3000:]}
        try:
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    t0 = time.monotonic()
    chunks: list[bytes] = []
    hung = False
    while True:
        left = t0 + timeout - time.monotonic()
        ready = select.select([r], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        data = os.read(r, 1 << 16)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    ms = round((time.monotonic() - t0) * 1000, 1)
    if hung:
        res = {"outcome": "hang", "stage": "?", "detail": f"no result after {timeout}s"}
    elif os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        res = {"outcome": "crash", "stage": "?", "detail": f"killed by {sig}"}
    else:
        try:
            res = json.loads(b"".join(chunks))
        except ValueError:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
            res = {"outcome": "crash", "stage": "?", "detail": f"exit {code}, no report"}
    if res["outcome"] not in ("ok", "typed"):
        try:
            tail = err_path.read_text(errors="replace")[-6000:]
        except OSError:
            tail = ""
        if tail.strip():
            res["detail"] = f"{res['detail']}\n--- stderr of the case:\n{tail}"
    res["ms"] = ms
    return res


def serve(args: argparse.Namespace) -> None:
    """Read job lines from stdin until EOF; write one result line per job."""
    import metallic._core  # noqa: F401

    import metallic  # noqa: F401 - imported once here, inherited by every child
    import metallic.loader  # noqa: F401
    import metallic.tokenizer  # noqa: F401

    seeds = mutators.load_seeds(args.corpus)
    scratch = Path(args.scratch)
    mem = int(args.mem_mb) << 20
    for line in sys.stdin:
        job = json.loads(line)
        if "ops" in job:
            name, ops = job["seed_name"], job["ops"]
        else:
            name, ops = mutators.plan(seeds, args.seed, job["case"])
            if job.get("subset") is not None:
                ops = [ops[i] for i in job["subset"]]
        case_dir = scratch / "case"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        try:
            for fname, data in mutators.apply(seeds[name], ops).items():
                (case_dir / fname).write_bytes(data)
        except Exception:  # a fuzzer bug: reported as a failure, the server goes on
            res = {"outcome": "harness", "stage": "apply", "detail": traceback.format_exc()}
        else:
            res = run_case(case_dir, ops, args.timeout, mem)
        res.update(case=job.get("case"), subset=job.get("subset"), seed_name=name)
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", help="seed folder (fuzz.corpus.build)")
    p.add_argument("--seed", type=int, default=0, help="master seed of the case plans")
    p.add_argument("--scratch", help="folder for the current case's files")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    p.add_argument("--mem-mb", type=int, default=2048, help="RLIMIT_AS of a case (0: none)")
    p.add_argument("--repro", help="run one saved reproducer folder in-process")
    args = p.parse_args()
    if args.repro:
        print(json.dumps(target(_model_path(Path(args.repro))), indent=2))
        return
    serve(args)


if __name__ == "__main__":
    main()
