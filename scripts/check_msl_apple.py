"""Apple-path check of the Metal shaders on Linux: every shaders/*.metal file, and the flattened
source the Metal device hands to newLibraryWithSource (native/metal/embed_shaders.py), compiled
through the non-emulator branch (METALLIC_EMU undefined) with clang++-19 -fsyntax-only.

    python3 scripts/check_msl_apple.py              # installs what is missing, checks shaders/
    python3 scripts/check_msl_apple.py --no-install tests/apple_msl/broken/goto.metal

What stands in for Apple's compiler (tests/apple_msl/):
- include/msl_prelude.h, force-included: the language's keywords. device / constant / threadgroup
  are distinct clang address spaces (a pointer into one never converts to another) and `thread` is
  the default one; half, bfloat, the `h` literal suffix; __METAL_VERSION__ 310.
- include/metal_stdlib: the standard library, declarations only, written from Apple's Metal Shading
  Language Specification, not from the emulator's header; with -nostdinc nothing else is reachable.
- plugin/: a clang plugin registering the Metal attributes with their subjects ([[kernel]],
  [[host_name]], [[buffer(i)]], [[threadgroup(i)]], the built-in inputs) and checking MSL's rules on
  the AST (address spaces on pointers, program-scope variables, threadgroup variables, kernel
  parameters, host names, casts, swizzles, restricted C++). It needs the clang-19 plugin headers
  (libclang-19-dev, llvm-19-dev) and a clang built without assertions (Debian's): the attribute
  list MSL allows after `template` in an explicit instantiation is an error clang can only be told
  to ignore there when its assertions are off.
The plugin is built once per source version into build/msl_apple/ (about 20 s on 2 cores).
Exit status: 0 when every file passes, 1 when one fails, 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MSL_DIR = ROOT / "tests" / "apple_msl"
INCLUDE_DIR = MSL_DIR / "include"
PLUGIN_DIR = MSL_DIR / "plugin"
PLUGIN_SOURCES = (PLUGIN_DIR / "msl_lex.cpp", PLUGIN_DIR / "msl_sema.cpp")
PLUGIN_HEADERS = (PLUGIN_DIR / "msl_plugin.h",)
DEFAULT_BUILD_DIR = ROOT / "build" / "msl_apple"
CLANG = "clang++-19"
LLVM_CONFIG = "llvm-config-19"
LLVM_INCLUDE = Path("/usr/lib/llvm-19/include")
DEV_PACKAGES = ("libclang-19-dev", "llvm-19-dev")
FLAT_NAME = "metal_shader_source.metal"  # what the Metal device compiles, as one file

# The language: MSL 3.x's specification ("Metal and C++14") bases it on C++14, MSL 4 on C++17. The check parses
# C++17 (-std=c++17, the newer base) and turns every C++17-only construct into an error
# (-Wpre-c++17-compat): a shader that passes is C++14 that every MSL 3 and 4 compiler accepts
# without a warning (MSL 3 compilers accept most C++17 syntax only as an extension, with a
# warning). C++20 syntax (concepts, consteval, designated initializers) is an error outright. MSL
# has no exceptions and no RTTI (its C++ "Restrictions"), and no C or C++ library: only the stand-ins are on the
# include path.
LANGUAGE = ("-x", "c++", "-std=c++17", "-fsyntax-only", "-fno-exceptions", "-fno-rtti")
INCLUDES = ("-nostdinc", "-nostdinc++", "-isystem", str(INCLUDE_DIR), "-include", "msl_prelude.h")
# Warnings, all errors: the usual sets, plus what matters on a GPU (VLAs, narrowing float and int
# conversions, shadowing, fallthrough, unreachable code, maybe-uninitialized). Left out:
# -Wsign-conversion (unsigned index arithmetic is the shaders' idiom) and -Wdouble-promotion (it
# also fires on half -> float, which MSL does implicitly; the plugin reports promotions to double).
WARNINGS = (
    "-Werror",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Wpre-c++17-compat",
    "-Wshadow",
    "-Wundef",
    "-Wvla",
    "-Wfloat-conversion",
    "-Wimplicit-int-conversion",
    "-Wshorten-64-to-32",
    "-Wimplicit-fallthrough",
    "-Wunreachable-code",
    "-Wconditional-uninitialized",
    "-Wloop-analysis",
    "-Wcomma",
    "-Wextra-semi",
    "-Wcast-qual",
    "-ferror-limit=0",
)
PLUGIN_FLAGS = ("-fPIC", "-fno-rtti", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror")


class CheckError(RuntimeError):
    """A tool, the plugin build or the input is not what the check needs."""


@dataclass(frozen=True)
class Result:
    name: str  # the file as the user knows it
    returncode: int
    output: str  # clang's diagnostics, address spaces named as in MSL

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _plugin_headers_present() -> bool:
    return (LLVM_INCLUDE / "clang" / "Sema" / "ParsedAttr.h").is_file() and (
        LLVM_INCLUDE / "llvm" / "ADT" / "DenseSet.h"
    ).is_file()


def missing_tools() -> str | None:
    """Why the check cannot run here, or None."""
    if shutil.which(CLANG) is None:
        return f"{CLANG} is not installed (scripts/install_clang.sh)"
    if not _plugin_headers_present() or shutil.which(LLVM_CONFIG) is None:
        return f"the clang-19 plugin headers are missing (apt-get install {' '.join(DEV_PACKAGES)})"
    return None


def install_tools() -> None:
    """Installs clang-19 and the plugin headers when missing, saying so; nothing else."""
    if shutil.which(CLANG) is None:
        print(f"check_msl_apple: installing {CLANG} (scripts/install_clang.sh)", flush=True)
        subprocess.run(["bash", str(ROOT / "scripts" / "install_clang.sh")], check=True)
    if _plugin_headers_present() and shutil.which(LLVM_CONFIG) is not None:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt = [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEV_PACKAGES]
    print(
        f"check_msl_apple: installing {' '.join(DEV_PACKAGES)} (clang plugin headers)", flush=True
    )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(apt, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(apt, env=env, stdout=subprocess.DEVNULL, check=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise CheckError(f"[check_msl_apple] {cmd[0]}: expected on PATH, not found") from e


def _require_release_clang() -> str:
    """clang's version line; fails unless clang was built without assertions (see the docstring)."""
    mode = _run([LLVM_CONFIG, "--assertion-mode"]).stdout.strip()
    if mode != "OFF":
        raise CheckError(
            f"[check_msl_apple] {LLVM_CONFIG} --assertion-mode: expected OFF, got {mode or 'nothing'}"
        )
    return _run([CLANG, "--version"]).stdout.splitlines()[0]


def build_plugin(build_dir: Path = DEFAULT_BUILD_DIR) -> Path:
    """The plugin for the current sources, built once per version (a content hash in its name)."""
    version = _require_release_clang()
    digest = hashlib.sha256(version.encode())
    for path in (*PLUGIN_SOURCES, *PLUGIN_HEADERS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(PLUGIN_FLAGS).encode())
    out = build_dir / f"msl_apple-{digest.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build_dir) as tmp:
        objects, procs = [], []
        for src in PLUGIN_SOURCES:  # the two halves compile in parallel
            obj = Path(tmp) / (src.stem + ".o")
            cmd = [
                CLANG,
                *PLUGIN_FLAGS,
                "-c",
                "-isystem",
                str(LLVM_INCLUDE),
                str(src),
                "-o",
                str(obj),
            ]
            objects.append(obj)
            procs.append((src, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
        for src, proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise CheckError(f"[check_msl_apple] building {src.name}: clang failed\n{err}")
        linked = Path(tmp) / out.name
        r = _run([CLANG, "-shared", *map(str, objects), "-o", str(linked)])
        if r.returncode != 0:
            raise CheckError(f"[check_msl_apple] linking the plugin failed\n{r.stderr}")
        os.replace(linked, out)  # atomic: a concurrent build ends with the same file
    return out


def compile_command(source: Path, plugin: Path, include_dirs: list[Path]) -> list[str]:
    cmd = [CLANG, *LANGUAGE, *INCLUDES, *WARNINGS, f"-fplugin={plugin}"]
    for d in include_dirs:
        cmd += ["-I", str(d)]
    return [*cmd, str(source)]


_AS_NAMES = {"1": "device", "2": "constant", "3": "threadgroup"}


def msl_names(text: str) -> str:
    """Clang's diagnostics with address spaces named as in MSL (1 device, 2 constant,
    3 threadgroup, the default one thread)."""
    text = re.sub(r"__attribute__\(\(address_space\(([123])\)\)\)", lambda m: _AS_NAMES[m[1]], text)
    text = re.sub(r"address space '([123])'", lambda m: f"{_AS_NAMES[m[1]]} address space", text)
    text = text.replace("generic address space", "thread address space")
    # The plugin marks threadgroup variables in function bodies loader_uninitialized (no
    # constructor runs for them, as in MSL); clang's complaint about an initializer is MSL's rule.
    return text.replace(
        "variable with 'loader_uninitialized' attribute cannot have an initializer",
        "threadgroup variable cannot have an initializer",
    )


def check_source(source: Path, plugin: Path, include_dirs: list[Path], name: str = "") -> Result:
    """One translation unit through the Apple-path check."""
    cmd = compile_command(source, plugin, include_dirs)
    r = _run(cmd, cwd=ROOT, timeout=300)
    return Result(name or _display(source), r.returncode, msl_names(r.stdout + r.stderr))


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def flattened_source(shader_dir: Path, roots: list[Path]) -> str:
    """The one MSL source the Metal device compiles (native/metal/embed_shaders.py)."""
    spec = importlib.util.spec_from_file_location(
        "embed_shaders", ROOT / "native" / "metal" / "embed_shaders.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.flatten(shader_dir, roots)


def check_files(
    files: list[Path], plugin: Path, include_dirs: list[Path], jobs: int | None = None
) -> list[Result]:
    """Each file through the check, `jobs` at a time (default: one per CPU), in input order."""
    workers = max(1, jobs or os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda f: check_source(f, plugin, include_dirs), files))


def check_shaders(
    plugin: Path,
    shader_dir: Path = ROOT / "shaders",
    include_dirs: list[Path] | None = None,
    jobs: int | None = None,
    flat_path: Path | None = None,
) -> list[Result]:
    """Every *.metal file of `shader_dir` and their flattened source (last), written to
    `flat_path` (kept, for reading its diagnostics' lines) or to a temporary file."""
    roots = include_dirs if include_dirs is not None else [ROOT / "native"]
    files = sorted(shader_dir.glob("*.metal"))
    if not files:
        raise CheckError(f"[check_msl_apple] {shader_dir}: expected .metal files, found none")
    with tempfile.TemporaryDirectory() as tmp:
        flat = flat_path or Path(tmp) / FLAT_NAME
        flat.parent.mkdir(parents=True, exist_ok=True)
        flat.write_text(flattened_source(shader_dir, roots), encoding="utf-8")
        results = check_files([*files, flat], plugin, roots, jobs)
    name = f"{_display(flat)} (embed_shaders.flatten of {_display(shader_dir)})"
    return [*results[:-1], Result(name, results[-1].returncode, results[-1].output)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "files", nargs="*", type=Path, help=".metal files (default: shaders/ + flattened)"
    )
    ap.add_argument("--shaders", type=Path, default=ROOT / "shaders", help="shader directory")
    ap.add_argument(
        "--include", type=Path, action="append", help="quoted-include root (default: native/)"
    )
    ap.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR, help="plugin cache")
    ap.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPUs)")
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    args = ap.parse_args(argv)
    if not args.no_install:
        install_tools()
    missing = missing_tools()
    if missing is not None:
        print(f"check_msl_apple: {missing}", file=sys.stderr)
        return 2
    try:
        plugin = build_plugin(args.build_dir)
        roots = args.include or [ROOT / "native"]
        if args.files:
            results = check_files(args.files, plugin, roots, args.jobs)
        else:
            flat = args.build_dir / FLAT_NAME
            results = check_shaders(plugin, args.shaders, roots, args.jobs, flat)
    except CheckError as e:
        print(e, file=sys.stderr)
        return 2
    for r in results:
        print(f"check_msl_apple: {'ok  ' if r.ok else 'FAIL'} {r.name}")
        if not r.ok:
            print(r.output.rstrip())
    failed = sum(not r.ok for r in results)
    print(f"check_msl_apple: {len(results) - failed}/{len(results)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
