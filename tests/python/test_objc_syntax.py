"""The Metal device's Objective-C++ (native/metal/), checked on Linux where it is never built.

scripts/check_objc.sh syntax-checks metal_device.mm with clang-19 against GNUstep Foundation and
the stand-in Metal declarations in tests/objc_stubs/; native/metal/embed_shaders.py produces the
shader source the device compiles at first use.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from emu_harness import unless_available

ROOT = Path(__file__).resolve().parents[2]


def _embed_shaders():
    spec = importlib.util.spec_from_file_location(
        "embed_shaders", ROOT / "native/metal/embed_shaders.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_embedded_source_holds_every_kernel_and_no_quoted_include():
    src = _embed_shaders().flatten(ROOT / "shaders", [ROOT / "native"])
    assert not re.search(r'^\s*#\s*include\s+"', src, re.M)  # newLibraryWithSource resolves none
    kernels = set()
    for f in (ROOT / "shaders").glob("*.metal"):
        kernels |= set(re.findall(r'METALLIC_KERNEL\("(\w+)"', f.read_text()))
    assert kernels and kernels == set(re.findall(r'METALLIC_KERNEL\("(\w+)"', src))
    # Each shared header once (#pragma once honoured by inlining): its structs are defined once.
    assert src.count("struct GemvArgs {") == 1


def test_embed_shaders_names_a_missing_include(tmp_path):
    (tmp_path / "a.metal").write_text('#include "nope.h"\n')
    with pytest.raises(
        SystemExit, match=r'\[embed_shaders\] .*a\.metal: include "nope\.h" not found'
    ):
        _embed_shaders().flatten(tmp_path, [])


@unless_available(
    None
    if shutil.which("clang++-19") and shutil.which("gnustep-config")
    else "needs clang++-19 (scripts/install_clang.sh) and gnustep-config (libgnustep-base-dev)"
)
def test_metal_device_mm_passes_the_syntax_check():
    r = subprocess.run(
        ["bash", "scripts/check_objc.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_embed_shaders_writes_the_flat_metal_source_for_the_metallib(tmp_path):
    """--metal-out: the same flattened source as the embedded header, for `xcrun metal` (the
    Apple build compiles it into metallic.metallib when the Metal compiler exists)."""
    header, flat = tmp_path / "src.h", tmp_path / "flat.metal"
    mod = _embed_shaders()
    assert (
        mod.main(
            [
                "--out",
                str(header),
                "--metal-out",
                str(flat),
                str(ROOT / "shaders"),
                str(ROOT / "native"),
            ]
        )
        == 0
    )
    text = flat.read_text()
    assert text == mod.flatten(ROOT / "shaders", [ROOT / "native"])
    assert text in header.read_text()
