"""GGUF v2/v3 reader: header, metadata, tensor table and zero-copy tensor views over an mmap.

File layout (little-endian; a *string* is a u64 byte length followed by UTF-8 bytes, no NUL):

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv      x (string key, u32 value_type, value)          value: scalar | string | array
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 rel_offset)
    zero padding up to ``general.alignment`` (default 32) | tensor data (each offset aligned)

An array value is (u32 element_type, u64 count, count x element), elements may be arrays again.
``ne[0]`` is the row length (innermost); :class:`TensorInfo.shape` is numpy order (reversed ne).

Everything is validated before any tensor byte is touched: counts are bounded by the bytes left
in the file (a huge count in a small file fails before any allocation), every length is checked
against the file end, and the tensor table is checked for types, shapes, alignment, bounds,
overlaps and duplicate names. Tensor bytes are never copied: :meth:`GGUFFile.data` returns a
read-only ``uint8`` view of the mmap.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from ._mapped import TensorInfo, close_mmap, find_overlap, open_readonly_mmap
from .dtypes import BLOCK, DType
from .errors import (
    Closed,
    CorruptFile,
    InvalidArgument,
    MetallicError,
    UnsupportedDType,
    UnsupportedFormat,
)

__all__ = ["GGUFFile", "TensorInfo", "read_gguf", "KNOWN_GGML_TYPES"]

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_KEY_LEN = 65535  # spec: keys are at most 2^16 - 1 bytes
MAX_TENSOR_NAME_LEN = 64  # spec: tensor names are at most 64 bytes
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 4  # nested arrays deeper than this are rejected
MAX_KV = 1 << 20
MAX_TENSORS = 1 << 20

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")

# GGUF value types: id -> (name, struct, numpy dtype); 7 (BOOL), 8 (STRING), 9 (ARRAY) special.
T_BOOL, T_STRING, T_ARRAY = 7, 8, 9
_NUMERIC: dict[int, tuple[str, struct.Struct, np.dtype]] = {
    0: ("UINT8", struct.Struct("<B"), np.dtype("<u1")),
    1: ("INT8", struct.Struct("<b"), np.dtype("<i1")),
    2: ("UINT16", struct.Struct("<H"), np.dtype("<u2")),
    3: ("INT16", struct.Struct("<h"), np.dtype("<i2")),
    4: ("UINT32", struct.Struct("<I"), np.dtype("<u4")),
    5: ("INT32", struct.Struct("<i"), np.dtype("<i4")),
    6: ("FLOAT32", struct.Struct("<f"), np.dtype("<f4")),
    10: ("UINT64", struct.Struct("<Q"), np.dtype("<u8")),
    11: ("INT64", struct.Struct("<q"), np.dtype("<i8")),
    12: ("FLOAT64", struct.Struct("<d"), np.dtype("<f8")),
}
_INT_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})

# GGML type ids that exist upstream but that metallic.dtypes.DType does not store (-> the typed
# UnsupportedDType, naming the type); any other id not in DType is a corrupt file.
# fmt: off
KNOWN_GGML_TYPES: dict[int, str] = {
    4: "Q4_2", 5: "Q4_3", 9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
    26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8",
    34: "TQ1_0", 35: "TQ2_0", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8", 39: "MXFP4",
}
# fmt: on


class GGUFFile:
    """A parsed, fully validated GGUF file.

    Attributes:
        path: the file path.
        version: GGUF version (2 or 3).
        metadata: key -> value. Integers -> ``int``, floats -> ``float``, bool -> ``bool``,
            string -> ``str``; arrays of numbers or bools -> 1-D numpy arrays (owned copies, dtype
            of the GGUF element type: uint8 ... float64, bool); arrays of strings -> ``list[str]``;
            arrays of arrays -> ``list`` of those.
        value_types: key -> GGUF value type ids, e.g. ``(4,)`` for UINT32, ``(9, 8)`` for an
            array of strings, ``(9, 9)`` for an array of arrays.
        tensors: name -> :class:`TensorInfo`, in file order.
        alignment: the data alignment in bytes.
        data_offset: absolute offset of the tensor data section.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        """Open and validate ``path``.

        Args:
            path: a GGUF file.

        Raises:
            FileNotFound: missing path.
            UnsupportedFormat: bad magic or version.
            CorruptFile: malformed structure.
            UnsupportedDType: a tensor uses a GGML type metallic does not store.
        """
        self.path = str(path)
        self._mm, self._size = open_readonly_mmap(path, "load_gguf")
        self._pos = 0
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, tuple[int, ...]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except MetallicError:
            self.close()
            raise
        except (struct.error, IndexError, OverflowError, ValueError) as e:  # belt and braces
            self.close()
            raise self._err(CorruptFile, f"truncated or malformed ({e})") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public API

    def data(self, name: str) -> np.ndarray:
        """Zero-copy bytes of tensor ``name``.

        Args:
            name: tensor name.

        Returns:
            A read-only, C-contiguous 1-D ``uint8`` array of exactly ``nbytes`` bytes whose
            memory is the mmap (``np.shares_memory`` with every other view of the file).

        Raises:
            Closed: after :meth:`close`.
            InvalidArgument: unknown tensor name.
        """
        if self._mm is None:
            raise Closed(f"[load_gguf] {self.path}: file is closed")
        info = self.tensors.get(name)
        if info is None:
            raise InvalidArgument(f"[load_gguf] {self.path}: no tensor named {name!r}")
        return np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def close(self) -> None:
        """Release the mapping (deferred to GC while numpy views of it are alive)."""
        mm, self._mm = self._mm, None
        close_mmap(mm)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._mm is None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ parsing

    def _err(self, cls: type[MetallicError], msg: str) -> MetallicError:
        return cls(f"[load_gguf] {self.path}: {msg}")

    def _parse(self) -> None:
        mm, size = self._mm, self._size
        head = mm[:4] if mm is not None else b""
        if head != MAGIC[: len(head)] or not head:
            raise self._err(UnsupportedFormat, f"bad magic {head!r}, expected {MAGIC!r}")
        if size < _HEADER.size:
            raise self._err(CorruptFile, f"truncated header: {size} bytes, expected >= 24")
        _, version, n_tensors, n_kv = _HEADER.unpack_from(mm, 0)
        if version not in (2, 3):
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = " (big-endian file?)" if swapped in (2, 3) else ""
            raise self._err(UnsupportedFormat, f"version {version}{hint}, expected 2 or 3")
        self.version = version
        self._pos = _HEADER.size
        left = size - self._pos
        # Smallest KV: 8 (key len) + 1 (key) + 4 (type) + 1 (u8 value) = 14 bytes.
        if n_kv > MAX_KV or n_kv * 14 > left:
            raise self._err(
                CorruptFile, f"metadata count {n_kv} impossible for {left} bytes (cap {MAX_KV})"
            )
        # Smallest tensor info: 8 + 1 (name) + 4 (n_dims) + 8 (ne) + 4 (type) + 8 (offset).
        if n_tensors > MAX_TENSORS or n_tensors * 33 > left:
            raise self._err(
                CorruptFile,
                f"tensor count {n_tensors} impossible for {left} bytes (cap {MAX_TENSORS})",
            )
        for _ in range(n_kv):
            self._read_kv()
        self.alignment = self._alignment()
        seen: set[str] = set()
        raw = [self._read_tensor_info(seen) for _ in range(n_tensors)]
        self.data_offset = -(-self._pos // self.alignment) * self.alignment
        self._build_tensors(raw)

    def _read_string(self, what: str, max_len: int | None = None) -> str:
        mm, pos = self._mm, self._pos
        if pos + 8 > self._size:
            raise self._err(CorruptFile, f"{what}: truncated string length at offset {pos}")
        (n,) = _U64.unpack_from(mm, pos)
        pos += 8
        if n > self._size - pos:
            raise self._err(
                CorruptFile, f"{what}: string length {n} exceeds the {self._size - pos} bytes left"
            )
        if max_len is not None and not 0 < n <= max_len:
            raise self._err(CorruptFile, f"{what}: length {n}, expected 1..{max_len}")
        try:
            s = mm[pos : pos + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._err(CorruptFile, f"{what}: invalid UTF-8 ({e.reason})") from None
        self._pos = pos + n
        return s

    def _read_u32(self, what: str) -> int:
        if self._pos + 4 > self._size:
            raise self._err(CorruptFile, f"{what}: truncated at offset {self._pos}")
        (v,) = _U32.unpack_from(self._mm, self._pos)
        self._pos += 4
        return v

    def _read_u64(self, what: str) -> int:
        if self._pos + 8 > self._size:
            raise self._err(CorruptFile, f"{what}: truncated at offset {self._pos}")
        (v,) = _U64.unpack_from(self._mm, self._pos)
        self._pos += 8
        return v

    def _read_kv(self) -> None:
        key = self._read_string(f"metadata key at offset {self._pos}", MAX_KEY_LEN)
        if key in self.metadata:
            raise self._err(CorruptFile, f"key {key}: duplicate metadata key")
        vtype = self._read_u32(f"key {key}: value type")
        types: list[int] = [vtype]
        self.metadata[key] = self._read_value(key, vtype, types, 0)
        self.value_types[key] = tuple(types)

    def _read_value(self, key: str, vtype: int, types: list[int], depth: int) -> Any:
        if vtype in _NUMERIC:
            st = _NUMERIC[vtype][1]
            if self._pos + st.size > self._size:
                raise self._err(CorruptFile, f"key {key}: truncated {_NUMERIC[vtype][0]} value")
            (v,) = st.unpack_from(self._mm, self._pos)
            self._pos += st.size
            return v
        if vtype == T_BOOL:
            if self._pos + 1 > self._size:
                raise self._err(CorruptFile, f"key {key}: truncated BOOL value")
            b = self._mm[self._pos]
            if b > 1:
                raise self._err(CorruptFile, f"key {key}: BOOL byte {b}, expected 0 or 1")
            self._pos += 1
            return bool(b)
        if vtype == T_STRING:
            return self._read_string(f"key {key}")
        if vtype == T_ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self._err(CorruptFile, f"key {key}: arrays nested deeper than {depth}")
            etype = self._read_u32(f"key {key}: array element type")
            n = self._read_u64(f"key {key}: array length")
            if len(types) == depth + 1:
                types.append(etype)
            return self._read_array(key, etype, n, types, depth + 1)
        raise self._err(CorruptFile, f"key {key}: unknown value type {vtype}")

    def _read_array(self, key: str, etype: int, n: int, types: list[int], depth: int) -> Any:
        left = self._size - self._pos
        if etype in _NUMERIC or etype == T_BOOL:
            dt = _NUMERIC[etype][2] if etype != T_BOOL else np.dtype("u1")
            if n * dt.itemsize > left:
                raise self._err(
                    CorruptFile,
                    f"key {key}: array of {n} x {dt.itemsize} bytes exceeds the {left} bytes left",
                )
            arr = np.frombuffer(self._mm, dtype=dt, count=n, offset=self._pos).copy()
            self._pos += n * dt.itemsize
            if etype == T_BOOL:
                if n and int(arr.max()) > 1:
                    raise self._err(CorruptFile, f"key {key}: BOOL array holds a byte > 1")
                arr = arr.astype(np.bool_)
            return arr
        if etype == T_STRING:
            if n * 8 > left:
                raise self._err(
                    CorruptFile, f"key {key}: {n} strings cannot fit in the {left} bytes left"
                )
            return self._read_string_array(key, n)
        if etype == T_ARRAY:
            if n * 12 > left:
                raise self._err(
                    CorruptFile, f"key {key}: {n} arrays cannot fit in the {left} bytes left"
                )
            return [self._read_value(key, T_ARRAY, types, depth) for _ in range(n)]
        raise self._err(CorruptFile, f"key {key}: unknown array element type {etype}")

    def _read_string_array(self, key: str, n: int) -> list[str]:
        # Hot path (50k-260k tokenizer strings): read natively; on a malformed element, the
        # Python reader below words the error.
        strings, end = _core.gguf_strings(np.frombuffer(self._mm, np.uint8), self._pos, n)
        if strings is not None:
            self._pos = end
            return strings
        mm, pos, size = self._mm, self._pos, self._size
        unpack = _U64.unpack_from
        raw: list[bytes] = []
        append = raw.append
        i = 0
        try:
            for i in range(n):  # noqa: B007 (i names the failing element)
                (ln,) = unpack(mm, pos)
                start = pos + 8
                pos = start + ln
                append(mm[start:pos])
        except (struct.error, OverflowError):
            pos = size + 1
        if pos > size:  # a length ran past the end (slicing clamps, so check once here)
            raise self._err(
                CorruptFile, f"key {key}: string array truncated at element {min(i, n - 1)}"
            )
        self._pos = pos
        try:
            return [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError:
            for i, b in enumerate(raw):
                try:
                    b.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise self._err(
                        CorruptFile, f"key {key}: element {i}: invalid UTF-8 ({e.reason})"
                    ) from None
            raise  # unreachable: some element failed above

    def _alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        a = self.metadata["general.alignment"]
        vt = self.value_types["general.alignment"]
        if vt[0] not in _INT_TYPES or a <= 0 or a & (a - 1):
            raise self._err(
                CorruptFile,
                f"key general.alignment: expected a positive power-of-two integer, got {a!r}",
            )
        return int(a)

    def _read_tensor_info(self, seen: set[str]) -> tuple[str, tuple[int, ...], int, int]:
        name = self._read_string(f"tensor name at offset {self._pos}", MAX_TENSOR_NAME_LEN)
        if name in seen:
            raise self._err(CorruptFile, f"tensor {name}: duplicate tensor name")
        seen.add(name)
        n_dims = self._read_u32(f"tensor {name}: n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._err(CorruptFile, f"tensor {name}: n_dims {n_dims}, expected 1..{MAX_DIMS}")
        if self._pos + 8 * n_dims > self._size:
            raise self._err(CorruptFile, f"tensor {name}: truncated dims")
        ne = struct.unpack_from(f"<{n_dims}Q", self._mm, self._pos)
        self._pos += 8 * n_dims
        if min(ne) == 0:
            raise self._err(CorruptFile, f"tensor {name}: dims {list(ne)} contain 0")
        gtype = self._read_u32(f"tensor {name}: type")
        rel = self._read_u64(f"tensor {name}: offset")
        return name, tuple(reversed(ne)), gtype, rel

    def _build_tensors(self, raw: list[tuple[str, tuple[int, ...], int, int]]) -> None:
        size, align, base = self._size, self.alignment, self.data_offset
        if raw and base > size:
            raise self._err(
                CorruptFile, f"data section starts at {base}, beyond the file end {size}"
            )
        spans: list[tuple[int, int, str]] = []
        for name, shape, gtype, rel in raw:
            dtype = self._dtype(name, gtype)
            block, bbytes = BLOCK[dtype]
            if shape[-1] % block:
                raise self._err(
                    CorruptFile,
                    f"tensor {name}: row length {shape[-1]} is not a multiple of the "
                    f"{dtype.name} block size {block}",
                )
            nbytes = shape[-1] // block * bbytes
            for d in shape[:-1]:
                nbytes *= d
            if rel % align:
                raise self._err(
                    CorruptFile,
                    f"tensor {name}: offset {rel} is not a multiple of the alignment {align}",
                )
            if base + rel + nbytes > size:
                shp = "x".join(map(str, shape))
                raise self._err(
                    CorruptFile,
                    f"tensor {name}: {dtype.name} {shp} needs bytes {base + rel}..."
                    f"{base + rel + nbytes}, beyond the file end {size}",
                )
            self.tensors[name] = TensorInfo(name, dtype, shape, base + rel, nbytes)
            spans.append((base + rel, base + rel + nbytes, name))
        hit = find_overlap(spans)
        if hit:
            a, b, start_b, end_a = hit
            raise self._err(
                CorruptFile, f"tensor {b}: bytes from {start_b} overlap tensor {a} (ends {end_a})"
            )

    def _dtype(self, name: str, gtype: int) -> DType:
        try:
            return DType(gtype)
        except ValueError:
            pass
        if gtype in KNOWN_GGML_TYPES:
            raise self._err(
                UnsupportedDType,
                f"tensor {name}: GGML type {KNOWN_GGML_TYPES[gtype]} (id {gtype}) is not supported",
            )
        raise self._err(CorruptFile, f"tensor {name}: unknown GGML type id {gtype}")


def read_gguf(path: str | os.PathLike | Path) -> GGUFFile:
    """Open and validate a GGUF file (same as ``GGUFFile(path)``).

    Args:
        path: the file.

    Returns:
        The parsed :class:`GGUFFile`; call ``.close()`` when done.
    """
    return GGUFFile(path)
