"""Typed exception hierarchy for metallic.

Every failure that crosses the native boundary arrives as a subclass of :class:`MetallicError`
whose ``code`` mirrors ``metallic::ErrorCode`` in ``native/core/error.h``. Each class also
subclasses the builtin a Python user would reach for (``FileNotFoundError``, ``ValueError``,
``MemoryError``...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Mirror of the native ``metallic::ErrorCode`` (same values)."""

    INVALID_ARGUMENT = 1
    FILE_NOT_FOUND = 2
    CORRUPT_FILE = 3
    UNSUPPORTED_FORMAT = 4
    UNSUPPORTED_DTYPE = 5
    UNSUPPORTED_ARCHITECTURE = 6
    SHAPE_MISMATCH = 7
    OUT_OF_MEMORY = 8
    CONTEXT_OVERFLOW = 9
    DEVICE_UNAVAILABLE = 10
    KERNEL_FAILURE = 11
    CANCELLED = 12
    NOT_IMPLEMENTED = 13
    CLOSED = 14
    BUSY = 15


class MetallicError(Exception):
    """Base class of every metallic error. ``code`` is an :class:`ErrorCode`."""

    code: ErrorCode = ErrorCode.INVALID_ARGUMENT


class InvalidArgument(MetallicError, ValueError):
    code = ErrorCode.INVALID_ARGUMENT


class FileNotFound(MetallicError, FileNotFoundError):
    code = ErrorCode.FILE_NOT_FOUND


class CorruptFile(MetallicError, ValueError):
    code = ErrorCode.CORRUPT_FILE


class UnsupportedFormat(MetallicError, ValueError):
    code = ErrorCode.UNSUPPORTED_FORMAT


class UnsupportedDType(MetallicError, ValueError):
    code = ErrorCode.UNSUPPORTED_DTYPE


class UnsupportedArchitecture(MetallicError, ValueError):
    code = ErrorCode.UNSUPPORTED_ARCHITECTURE


class ShapeMismatch(MetallicError, ValueError):
    code = ErrorCode.SHAPE_MISMATCH


class OutOfMemory(MetallicError, MemoryError):
    code = ErrorCode.OUT_OF_MEMORY


class ContextOverflow(MetallicError, ValueError):
    code = ErrorCode.CONTEXT_OVERFLOW


class DeviceUnavailable(MetallicError, RuntimeError):
    code = ErrorCode.DEVICE_UNAVAILABLE


class KernelFailure(MetallicError, RuntimeError):
    code = ErrorCode.KERNEL_FAILURE


class Cancelled(MetallicError):
    code = ErrorCode.CANCELLED


class NotImplementedFeature(MetallicError, NotImplementedError):
    code = ErrorCode.NOT_IMPLEMENTED


class Closed(MetallicError, RuntimeError):
    code = ErrorCode.CLOSED


class Busy(MetallicError, RuntimeError):
    code = ErrorCode.BUSY


_BY_CODE: dict[int, type[MetallicError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        FileNotFound,
        CorruptFile,
        UnsupportedFormat,
        UnsupportedDType,
        UnsupportedArchitecture,
        ShapeMismatch,
        OutOfMemory,
        ContextOverflow,
        DeviceUnavailable,
        KernelFailure,
        Cancelled,
        NotImplementedFeature,
        Closed,
        Busy,
    )
}
assert set(_BY_CODE) == set(ErrorCode), "every ErrorCode needs a class"  # import-time invariant


def from_code(code: int, message: str) -> MetallicError:
    """Build the exception for a native error code (used by the native exception translator)."""
    cls = _BY_CODE.get(int(code), MetallicError)
    return cls(message)


__all__ = [
    "ErrorCode",
    "MetallicError",
    "from_code",
    *(c.__name__ for c in _BY_CODE.values()),
]
