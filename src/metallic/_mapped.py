"""Shared pieces of the weight-file readers: read-only mmaps, tensor table entries, overlap check.

Both :mod:`metallic.gguf` and :mod:`metallic.safetensors` map the file read-only and hand out
``uint8`` numpy views of the mapping (zero copy); closing a mapping that still has live views is
deferred to the garbage collector instead of invalidating the views.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass

from .dtypes import DType
from .errors import FileNotFound, InvalidArgument, UnsupportedFormat


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of a tensor table.

    Attributes:
        name: tensor name as stored in the file.
        dtype: storage type.
        shape: numpy-order shape (outermost first; the last dim is the row length).
        offset: absolute byte offset of the first byte in the file.
        nbytes: exact byte size (``dtypes.tensor_nbytes(dtype, shape)``).
    """

    name: str
    dtype: DType
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def open_readonly_mmap(path: str | os.PathLike, tag: str) -> tuple[mmap.mmap | None, int]:
    """Map a file read-only.

    Args:
        path: file to map.
        tag: message tag, e.g. ``"load_gguf"``.

    Returns:
        ``(mmap, size)``; the mmap is None for an empty file (mmap cannot map 0 bytes).

    Raises:
        FileNotFound: the path does not exist.
        UnsupportedFormat: the path is a directory.
        InvalidArgument: any other OS error (permissions, ...).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None, 0
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
    except FileNotFoundError:
        raise FileNotFound(f"[{tag}] {path}: no such file") from None
    except IsADirectoryError:
        raise UnsupportedFormat(f"[{tag}] {path}: is a directory, expected a file") from None
    except OSError as e:
        raise InvalidArgument(f"[{tag}] {path}: cannot open: {e.strerror or e}") from None


def close_mmap(mm: mmap.mmap | None) -> None:
    """Close ``mm`` unless views of it are still alive (then the GC frees it with the last view).

    Args:
        mm: the mmap, or None.
    """
    if mm is None:
        return
    # DEBT: while a numpy view still references the mapping, close() raises BufferError; closing
    # would invalidate the view, so the mapping lives until the last view is garbage collected.
    with contextlib.suppress(BufferError):
        mm.close()


def find_overlap(spans: list[tuple[int, int, str]]) -> tuple[str, str, int, int] | None:
    """First pair of overlapping byte ranges.

    Args:
        spans: ``(start, end, name)`` byte ranges (end exclusive), any order; sorted in place.

    Returns:
        ``(earlier_name, later_name, later_start, earlier_end)`` or None when disjoint.
    """
    spans.sort()
    for i in range(1, len(spans)):
        _, end_a, a = spans[i - 1]
        start_b, _, b = spans[i]
        if start_b < end_a:
            return a, b, start_b, end_a
    return None
