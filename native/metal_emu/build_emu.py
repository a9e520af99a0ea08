"""Builds an emulator library: the runtime plus every .metal file of the given directories,
rewritten (rewrite.py) and compiled as C++20 by clang (gcc cannot: ext_vector_type swizzles,
_Float16 arithmetic).

    python build_emu.py --out libmetallic_shaders_emu.so --work DIR SHADER_DIR [SHADER_DIR ...]
        [--cxx clang++-19] [--sanitize none|thread|address] [--driver main.cpp] [--jobs N]
        [--headers DIR]  (shader directory whose files are only included, not compiled)

Each shader directory's .h and .metal files are rewritten into DIR/gen/<n>/ (line numbers kept
with #line, so errors name the original files); shaders include each other with quotes and the
shared structs with "core/..." from native/. `--driver` links an executable instead of a shared
library (the sanitizer runs). Exits non-zero with the compiler's message on any error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NATIVE = HERE.parent
sys.path.insert(0, str(HERE))
import rewrite  # noqa: E402

BASE_FLAGS = [
    "-std=c++20",
    "-fPIC",
    "-fexcess-precision=16",  # every half op rounds to half, as on the GPU
    "-fno-fast-math",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-unknown-attributes",
    "-Werror=return-type",
]
SANITIZE = {
    "none": ["-O2"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
    "address": [
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
    ],
}


def _display(path: Path) -> str:
    """Path shown in messages: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(NATIVE.parent))
    except ValueError:
        return str(path)


def _rewrite_dir(src: Path, dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    units = []
    for f in sorted(src.iterdir()):
        if f.suffix not in (".h", ".metal"):
            continue
        text = rewrite.rewrite(f.read_text(encoding="utf-8"), _display(f))
        out = dst / f.name
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            out.write_text(text, encoding="utf-8")
        if f.suffix == ".metal":
            units.append(out)
    return units


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"[build_emu] {shlex.join(cmd)}\n{r.stdout}{r.stderr}")


def build(
    out: Path,
    work: Path,
    dirs: list[Path],
    cxx: str,
    sanitize: str,
    driver: Path | None,
    jobs: int,
    headers=(),
) -> None:
    gen = work / "gen"
    include = ["-I", str(HERE), "-I", str(NATIVE)]
    units: list[tuple[Path, list[str]]] = []
    n_compiled = len(dirs)
    dirs = list(dirs) + list(headers)
    for i, d in enumerate(dirs):
        if not d.is_dir():
            raise RuntimeError(f"[build_emu] shader directory {d}: not a directory")
        g = gen / str(i)
        # A file's own directory comes first, then every shader directory (broken test kernels
        # include shaders/defines.h).
        inc = ["-I", str(g)] + [x for j in range(len(dirs)) for x in ("-I", str(gen / str(j)))]
        new = _rewrite_dir(d, g)
        if i < n_compiled:
            units += [(u, inc) for u in new]
    flags = BASE_FLAGS + SANITIZE[sanitize]
    objs = work / f"obj-{sanitize}"
    objs.mkdir(parents=True, exist_ok=True)
    jobs_list = [(HERE / "runtime.cpp", objs / "runtime.o", [])]
    jobs_list += [(u, objs / f"{u.parent.name}_{u.stem}.o", inc) for u, inc in units]
    if driver is not None:
        jobs_list.append((driver, objs / "driver.o", []))

    def compile_one(job):
        src, obj, inc = job
        lang = ["-x", "c++"] if src.suffix == ".metal" else []
        f = flags
        if sanitize == "thread" and src.name == "runtime.cpp":
            # The runtime only annotates fibers and sync points for TSan; its own bookkeeping
            # must not be instrumented (see runtime.cpp, EMU_TSAN).
            f = [x for x in flags if x != "-fsanitize=thread"] + ["-DEMU_TSAN_ANNOTATE=1"]
        _run([cxx, *f, *include, *inc, *lang, "-c", str(src), "-o", str(obj)])
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        objects = list(ex.map(compile_one, jobs_list))
    link = [] if driver is not None else ["-shared"]
    san = [f for f in SANITIZE[sanitize] if f.startswith("-fsanitize")]
    tmp = out.with_name(out.name + ".tmp")
    _run([cxx, *link, *san, "-o", str(tmp), *map(str, objects), "-lpthread"])
    os.replace(tmp, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--cxx", default="clang++-19")
    ap.add_argument("--sanitize", default="none", choices=sorted(SANITIZE))
    ap.add_argument("--driver", type=Path)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--headers", type=Path, action="append", default=[], help="shader dir only included"
    )
    ap.add_argument("dirs", nargs="+", type=Path)
    a = ap.parse_args()
    try:
        build(a.out, a.work, a.dirs, a.cxx, a.sanitize, a.driver, a.jobs, a.headers)
    except (RuntimeError, rewrite.RewriteError, OSError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
