"""Native error codes ↔ metallic.errors classes (native/core/error.h, native/bindings/errors.cpp)."""

from __future__ import annotations

import builtins
import re

import pytest

from metallic import _core, errors
from metallic.errors import ErrorCode

# The builtin each class must also be (so `except ValueError` etc. keep working), from the
# metallic.errors docstring and class definitions; None: only MetallicError (Cancelled).
BUILTIN = {
    ErrorCode.INVALID_ARGUMENT: ValueError,
    ErrorCode.FILE_NOT_FOUND: FileNotFoundError,
    ErrorCode.CORRUPT_FILE: ValueError,
    ErrorCode.UNSUPPORTED_FORMAT: ValueError,
    ErrorCode.UNSUPPORTED_DTYPE: ValueError,
    ErrorCode.UNSUPPORTED_ARCHITECTURE: ValueError,
    ErrorCode.SHAPE_MISMATCH: ValueError,
    ErrorCode.OUT_OF_MEMORY: MemoryError,
    ErrorCode.CONTEXT_OVERFLOW: ValueError,
    ErrorCode.DEVICE_UNAVAILABLE: RuntimeError,
    ErrorCode.KERNEL_FAILURE: RuntimeError,
    ErrorCode.CANCELLED: None,
    ErrorCode.NOT_IMPLEMENTED: NotImplementedError,
    ErrorCode.CLOSED: RuntimeError,
    ErrorCode.BUSY: RuntimeError,
}


def snake_upper(camel: str) -> str:
    """'InvalidArgument' -> 'INVALID_ARGUMENT', 'UnsupportedDType' -> 'UNSUPPORTED_DTYPE'."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", camel).upper()


def error_classes() -> dict[ErrorCode, type[errors.MetallicError]]:
    found: dict[ErrorCode, type[errors.MetallicError]] = {}
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.MetallicError):
            if obj is errors.MetallicError:
                continue
            assert obj.code not in found, (
                f"{obj.__name__} and {found[obj.code].__name__} share a code"
            )
            found[obj.code] = obj
    return found


def test_every_code_has_exactly_one_exported_class():
    classes = error_classes()
    assert set(classes) == set(ErrorCode)
    assert set(BUILTIN) == set(ErrorCode)  # this table is complete too
    for code, cls in classes.items():
        assert isinstance(cls.code, ErrorCode) and cls.code == code


def test_native_codes_match_python_enum():
    native = dict(_core.ERROR_CODES)
    assert all(isinstance(v, int) for v in native.values())
    assert len(set(native.values())) == len(native), "native values must be distinct"
    mapped = {snake_upper(name): value for name, value in native.items()}
    assert mapped == {c.name: int(c) for c in ErrorCode}


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_raise_for_test_translates_each_code(code):
    cls = error_classes()[code]
    with pytest.raises(errors.MetallicError) as ei:
        _core._raise_for_test(int(code), f"boom {code.name} ✓")
    assert type(ei.value) is cls, f"{code.name}: got {type(ei.value).__name__}, want {cls.__name__}"
    assert str(ei.value) == f"[test] boom {code.name} ✓"
    assert ei.value.code == code
    want = BUILTIN[code]
    if want is not None:
        assert isinstance(ei.value, want)
    # Builtins a user might catch too broadly must not swallow unrelated classes.
    for other in (ValueError, MemoryError, FileNotFoundError, RuntimeError, NotImplementedError):
        if want is None or not issubclass(want, other):
            assert not isinstance(ei.value, other), f"{cls.__name__} is unexpectedly a {other}"


def test_cancelled_is_not_a_value_or_runtime_error():
    # A cancelled generation must not be caught by `except (ValueError, RuntimeError)` handlers.
    assert not issubclass(errors.Cancelled, (ValueError, RuntimeError))
    assert issubclass(errors.Cancelled, Exception)


def test_from_code_unknown_falls_back_to_base():
    exc = errors.from_code(999, "[x] y")
    assert type(exc) is errors.MetallicError and str(exc) == "[x] y"


def test_all_exports_exist():
    for name in errors.__all__:
        assert hasattr(errors, name), name
    assert not any(hasattr(builtins, n) for n in errors.__all__ if n != "ErrorCode"), (
        "a class shadows a builtin name"
    )
