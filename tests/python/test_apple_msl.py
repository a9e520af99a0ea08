"""The Apple-path shader check (scripts/check_msl_apple.py): shaders/*.metal and the flattened
source the Metal device compiles, through the non-emulator branch, with clang++-19, stand-in MSL
headers written from Apple's specification (tests/apple_msl/include) and a clang plugin for Metal's
attributes and address-space rules (tests/apple_msl/plugin).

Every real shader must pass; every deliberately broken shader in tests/apple_msl/broken/ must fail
with the diagnostics its `// expect:` lines name, and with no other error; putting back the
unqualified METALLIC_KERNEL of issue #10 must fail every shader file; MSL forms the shaders do not
use yet (tests/apple_msl/valid/) must pass.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

from emu_harness import unless_available

ROOT = Path(__file__).resolve().parents[2]
BROKEN = sorted((ROOT / "tests" / "apple_msl" / "broken").glob("*.metal"))
VALID = ROOT / "tests" / "apple_msl" / "valid" / "msl_forms.metal"
FIXED_MACRO = "decltype(metallic::func<__VA_ARGS__>) metallic::func<__VA_ARGS__>;"
OLD_MACRO = "decltype(func<__VA_ARGS__>) func<__VA_ARGS__>;"  # before issue #10


def _load_check():
    spec = importlib.util.spec_from_file_location(
        "check_msl_apple", ROOT / "scripts" / "check_msl_apple.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


check = _load_check()
needs_tools = unless_available(check.missing_tools())


@pytest.fixture(scope="module")
def plugin() -> Path:
    return check.build_plugin()  # cached in build/msl_apple/ (shared with the script)


@pytest.fixture(scope="module")
def broken_results(plugin) -> dict[str, object]:
    results = check.check_files(BROKEN, plugin, [ROOT / "native"])
    return {Path(r.name).name: r for r in results}


def _expectations(path: Path) -> list[str]:
    found = re.findall(r"^// expect: (.+)$", path.read_text(), re.M)
    assert found, f"{path.name}: no `// expect:` line"
    return found


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if " error: " in line]


@needs_tools
def test_every_shader_and_the_embedded_source_pass(plugin):
    results = check.check_shaders(plugin)
    shaders = sorted(p.name for p in (ROOT / "shaders").glob("*.metal"))
    assert [Path(r.name).name for r in results[:-1]] == shaders
    assert check.FLAT_NAME in results[-1].name
    failed = [f"{r.name}\n{r.output}" for r in results if not r.ok]
    assert not failed, "\n".join(failed)


@needs_tools
def test_msl_forms_the_shaders_do_not_use_yet_pass(plugin):
    """No false alarm on MSL the shaders could start using: the `kernel` keyword, explicit
    instantiations with a full signature, threadgroup parameters and struct arrays, ..."""
    (result,) = check.check_files([VALID], plugin, [ROOT / "native"])
    assert result.ok, result.output


@needs_tools
@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_shader_fails_with_its_diagnostic(path, broken_results):
    result = broken_results[path.name]
    expected = _expectations(path)
    assert not result.ok, f"{path.name} passed the check"
    for pattern in expected:
        assert re.search(pattern, result.output), (
            f"{path.name}: no match for {pattern!r}\n{result.output}"
        )
    # Each error is one the file is about: the check fails for the stated reason only.
    stray = [e for e in _errors(result.output) if not any(re.search(p, e) for p in expected)]
    assert not stray, f"{path.name}: unexpected errors\n" + "\n".join(stray)


def test_broken_shaders_cover_every_class_the_check_claims():
    names = {p.stem for p in BROKEN}
    claimed = {
        "global_instantiation",  # the defect of issue #10
        "address_space_mismatch",  # threadgroup pointer where a device pointer is expected
        "attribute_on_helper",  # Metal attribute in the wrong place
        "unknown_attribute",
        "exceptions",
        "rtti",
        "cxx20_concept",  # C++20 (the check parses C++17)
        "cxx17_if_constexpr",  # C++17-only syntax (MSL 3 is C++14-based)
        "undeclared_library_function",  # not in the MSL stand-in
        "program_scope_constexpr",
        "pointer_without_address_space",
        "threadgroup_outside_kernel",
    }
    assert claimed <= names, sorted(claimed - names)


@needs_tools
def test_reverting_the_fix_fails_every_shader_file(plugin, tmp_path):
    shaders = tmp_path / "shaders"
    shutil.copytree(ROOT / "shaders", shaders)
    defines = shaders / "defines.h"
    text = defines.read_text()
    assert text.count(FIXED_MACRO) == 1, "defines.h: the qualified METALLIC_KERNEL moved"
    defines.write_text(text.replace(FIXED_MACRO, OLD_MACRO))
    results = check.check_shaders(plugin, shaders, [ROOT / "native"])
    metal_files = sorted(p.name for p in (ROOT / "shaders").glob("*.metal"))  # 11 today
    assert metal_files
    failing = {Path(r.name).name for r in results[:-1] if not r.ok}
    assert failing == set(metal_files)
    assert not results[-1].ok  # the flattened source too
    for r in results:
        assert re.search(
            r"explicit instantiation of 'metallic::\w+' must occur in namespace", r.output
        )


def test_diagnostics_name_the_msl_address_spaces():
    clang = (
        "cannot pass pointer to address space '1' as a pointer to generic address space; "
        "'__attribute__((address_space(3))) float *'"
    )
    assert check.msl_names(clang) == (
        "cannot pass pointer to device address space as a pointer to thread address space; "
        "'threadgroup float *'"
    )


def test_the_check_sees_only_its_own_msl_headers(tmp_path):
    cmd = check.compile_command(tmp_path / "x.metal", tmp_path / "p.so", [ROOT / "native"])
    assert "-nostdinc" in cmd and "-nostdinc++" in cmd and "-fno-exceptions" in cmd
    assert "-fno-rtti" in cmd and "-std=c++17" in cmd and "-Werror" in cmd
    includes = [cmd[i + 1] for i, a in enumerate(cmd) if a in ("-isystem", "-I")]
    assert includes == [str(check.INCLUDE_DIR), str(ROOT / "native")]
    for header in check.INCLUDE_DIR.iterdir():  # declarations of their own, nothing included
        assert not re.search(r"^\s*#\s*include", header.read_text(), re.M), header.name
