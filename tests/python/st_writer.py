"""Tiny safetensors writer for tests (float32 / float16 / bfloat16-as-uint16).

``write_safetensors(path, {name: array}, metadata=None, dtypes=None)`` writes one file; bf16
tensors are passed as ``uint16`` arrays of raw bf16 bits with ``dtypes={name: "BF16"}``.
``raw_safetensors(header, data)`` builds arbitrary (possibly malformed) bytes for error tests.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

_NP_TO_ST = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bf16 bit patterns (uint16), for building test data.

    Args:
        x: float32 array.

    Returns:
        uint16 array of the same shape.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def raw_safetensors(header: dict, data: bytes, *, header_len: int | None = None) -> bytes:
    """Bytes of a safetensors file from an explicit header dict and data section.

    Args:
        header: the JSON header (may be malformed on purpose).
        data: the data section bytes.
        header_len: override of the 8-byte length field (for corrupt-length tests).

    Returns:
        The file bytes.
    """
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    n = len(hb) if header_len is None else header_len
    return struct.pack("<Q", n) + hb + data


def write_safetensors(
    path: str | Path,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    dtypes: dict[str, str] | None = None,
) -> Path:
    """Write a valid safetensors file.

    Args:
        path: destination.
        tensors: name -> array (float32, float16, or uint16 holding bf16 bits).
        metadata: optional ``__metadata__`` (str -> str).
        dtypes: per-name dtype override, e.g. ``{"w": "BF16"}`` for uint16 arrays.

    Returns:
        The path.
    """
    dtypes = dtypes or {}
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    chunks: list[bytes] = []
    off = 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dt = dtypes.get(name) or _NP_TO_ST.get(arr.dtype)
        if dt is None:
            raise TypeError(f"{name}: pass dtypes={{{name!r}: ...}} for {arr.dtype}")
        b = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    p = Path(path)
    p.write_bytes(raw_safetensors(header, b"".join(chunks)))
    return p
