"""Hugging Face safetensors reader: one file or a sharded set, zero-copy numpy views over mmaps.

File layout: u64 little-endian header length N | N bytes of UTF-8 JSON | data section. The JSON
object maps tensor names to ``{"dtype": "F16", "shape": [rows, cols], "data_offsets": [b, e]}``
(offsets relative to the data section start, end exclusive) plus an optional ``__metadata__``
object of string -> string. A sharded checkpoint has ``model.safetensors.index.json`` whose
``weight_map`` maps each tensor name to its shard file in the same folder.

Everything is validated before a tensor byte is touched: header length within a cap and the file,
JSON shape, dtype names, shapes, offsets inside the data section and equal to shape x itemsize,
and no two tensors overlapping. Tensor bytes are never copied.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ._mapped import TensorInfo, close_mmap, find_overlap, open_readonly_mmap
from .dtypes import DType
from .errors import Closed, CorruptFile, FileNotFound, InvalidArgument, UnsupportedDType

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 8
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# dtype name -> DType for the types metallic computes with.
SUPPORTED_DTYPES: dict[str, DType] = {"F32": DType.F32, "F16": DType.F16, "BF16": DType.BF16}
# Other dtype names of the safetensors format (-> UnsupportedDType naming the tensor).
KNOWN_DTYPES = frozenset(
    {"F64", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}
    | {"F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}
)
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
_TAG = "load_safetensors"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class SafetensorsFile:
    """One parsed and validated ``.safetensors`` file.

    Attributes:
        path: the file path.
        metadata: the ``__metadata__`` object (str -> str), empty when absent.
        tensors: name -> :class:`metallic.gguf.TensorInfo` (absolute offsets), header order.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        """Open and validate ``path``.

        Args:
            path: a ``.safetensors`` file.

        Raises:
            FileNotFound: missing file.
            CorruptFile: malformed header, offsets or overlaps.
            UnsupportedDType: a tensor dtype other than F32/F16/BF16.
        """
        self.path = str(path)
        self._mm, self._size = open_readonly_mmap(path, _TAG)
        self.metadata: dict[str, str] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except Exception:
            self.close()
            raise

    def _err(self, cls: type[Exception], msg: str) -> Exception:
        return cls(f"[{_TAG}] {self.path}: {msg}")

    def _parse(self) -> None:
        size = self._size
        if size < 8:
            raise self._err(CorruptFile, f"truncated: {size} bytes, expected an 8-byte header size")
        (n,) = struct.unpack_from("<Q", self._mm, 0)
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise self._err(
                CorruptFile,
                f"header length {n}, expected 2..{min(MAX_HEADER_BYTES, size - 8)} "
                f"(cap {MAX_HEADER_BYTES}, file {size} bytes)",
            )
        raw = self._mm[8 : 8 + n]
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise self._err(CorruptFile, f"header is not valid UTF-8 JSON ({e})") from None
        if not isinstance(header, dict):
            raise self._err(CorruptFile, f"header is a {type(header).__name__}, expected object")
        base = 8 + n
        data_len = size - base
        spans: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            if name == "__metadata__":
                self._read_metadata(entry)
                continue
            info = self._tensor(name, entry, base, data_len)
            self.tensors[name] = info
            if info.nbytes:
                spans.append((info.offset, info.offset + info.nbytes, name))
        hit = find_overlap(spans)
        if hit:
            a, b, start_b, end_a = hit
            raise self._err(
                CorruptFile,
                f"tensor {b}: bytes from {start_b - base} overlap tensor {a} (ends {end_a - base})",
            )

    def _read_metadata(self, entry: Any) -> None:
        if not isinstance(entry, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
        ):
            raise self._err(CorruptFile, "key __metadata__: expected an object of str -> str")
        self.metadata = dict(entry)

    def _tensor(self, name: str, entry: Any, base: int, data_len: int) -> TensorInfo:
        if not isinstance(entry, dict):
            raise self._err(CorruptFile, f"tensor {name}: entry is not an object")
        missing = {"dtype", "shape", "data_offsets"} - entry.keys()
        if missing:
            raise self._err(CorruptFile, f"tensor {name}: missing {sorted(missing)}")
        dt, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dt, str):
            raise self._err(CorruptFile, f"tensor {name}: dtype {dt!r} is not a string")
        if dt not in SUPPORTED_DTYPES:
            kind = "is not supported" if dt in KNOWN_DTYPES else "is unknown"
            raise self._err(
                UnsupportedDType, f"tensor {name}: dtype {dt} {kind} (expected F32, F16 or BF16)"
            )
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(_is_int(d) and d >= 0 for d in shape)
        ):
            raise self._err(
                CorruptFile,
                f"tensor {name}: shape {shape!r}, expected a list of <= {MAX_DIMS} "
                "non-negative ints",
            )
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise self._err(
                CorruptFile, f"tensor {name}: data_offsets {offs!r}, expected [begin, end]"
            )
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise self._err(
                CorruptFile,
                f"tensor {name}: data_offsets [{begin}, {end}] outside the data section "
                f"of {data_len} bytes",
            )
        nbytes = _ITEMSIZE[dt]
        for d in shape:
            nbytes *= d
        if end - begin != nbytes:
            shp = "x".join(map(str, shape)) or "scalar"
            raise self._err(
                CorruptFile,
                f"tensor {name}: {dt} {shp}: expected {nbytes} bytes, got {end - begin}",
            )
        return TensorInfo(name, SUPPORTED_DTYPES[dt], tuple(shape), base + begin, nbytes)

    def data(self, name: str) -> np.ndarray:
        """Zero-copy bytes of tensor ``name``.

        Args:
            name: tensor name.

        Returns:
            A read-only 1-D ``uint8`` view of the mmap, exactly ``nbytes`` long.

        Raises:
            Closed: after :meth:`close`.
            InvalidArgument: unknown name.
        """
        if self._mm is None:
            raise Closed(f"[{_TAG}] {self.path}: file is closed")
        info = self.tensors.get(name)
        if info is None:
            raise InvalidArgument(f"[{_TAG}] {self.path}: no tensor named {name!r}")
        if info.nbytes == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def close(self) -> None:
        """Release the mapping (deferred to GC while views of it are alive)."""
        mm: mmap.mmap | None = self._mm
        self._mm = None
        close_mmap(mm)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafetensorsModel:
    """All tensors of a checkpoint: one ``model.safetensors`` or a sharded index.

    Attributes:
        source: the file or index path used in messages.
        tensors: name -> :class:`TensorInfo` across all shards.
        files: the open shard files.
    """

    def __init__(self, source: str, files: list[SafetensorsFile], owner: dict[str, int]) -> None:
        self.source = source
        self.files = files
        self._owner = owner
        self.tensors: dict[str, TensorInfo] = {
            name: files[i].tensors[name] for name, i in owner.items()
        }

    def data(self, name: str) -> np.ndarray:
        """Zero-copy bytes of tensor ``name`` (see :meth:`SafetensorsFile.data`).

        Args:
            name: tensor name.

        Returns:
            A read-only 1-D ``uint8`` view of the owning shard's mmap.
        """
        i = self._owner.get(name)
        if i is None:
            raise InvalidArgument(f"[{_TAG}] {self.source}: no tensor named {name!r}")
        return self.files[i].data(name)

    def close(self) -> None:
        """Close every shard."""
        for f in self.files:
            f.close()

    def __enter__(self) -> SafetensorsModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_safetensors(path: str | os.PathLike) -> SafetensorsModel:
    """Open a safetensors checkpoint.

    Args:
        path: a ``.safetensors`` file, a ``*.index.json`` file, or a folder holding
            ``model.safetensors.index.json`` (preferred) or ``model.safetensors``.

    Returns:
        A :class:`SafetensorsModel`; call ``.close()`` when done.

    Raises:
        FileNotFound: no checkpoint at ``path``, or a shard named by the index is missing.
        CorruptFile: malformed index or shard; a tensor in two shards; a weight_map entry
            absent from its shard.
    """
    p = Path(path)
    if p.is_dir():
        if (p / INDEX_NAME).is_file():
            p = p / INDEX_NAME
        elif (p / SINGLE_NAME).is_file():
            p = p / SINGLE_NAME
        else:
            raise FileNotFound(f"[{_TAG}] {p}: no {SINGLE_NAME} or {INDEX_NAME}")
    if p.name.endswith(".json"):
        return _open_index(p)
    f = SafetensorsFile(p)
    return SafetensorsModel(str(p), [f], dict.fromkeys(f.tensors, 0))


def _open_index(index: Path) -> SafetensorsModel:
    try:
        text = index.read_bytes()
    except FileNotFoundError:
        raise FileNotFound(f"[{_TAG}] {index}: no such file") from None
    if len(text) > MAX_HEADER_BYTES:
        raise CorruptFile(f"[{_TAG}] {index}: {len(text)} bytes, cap {MAX_HEADER_BYTES}")
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptFile(f"[{_TAG}] {index}: not valid UTF-8 JSON ({e})") from None
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()
    ):
        raise CorruptFile(f"[{_TAG}] {index}: key weight_map: expected an object of str -> str")
    shard_names = sorted(set(wmap.values()))
    for s in shard_names:
        if not s or s != Path(s).name or s in (".", ".."):
            raise CorruptFile(f"[{_TAG}] {index}: key weight_map: shard {s!r} is not a file name")
    files: list[SafetensorsFile] = []
    try:
        for s in shard_names:
            shard = index.parent / s
            if not shard.is_file():
                raise FileNotFound(f"[{_TAG}] {index}: shard {s} is missing")
            files.append(SafetensorsFile(shard))
        slot = {s: i for i, s in enumerate(shard_names)}
        owner: dict[str, int] = {}
        for i, f in enumerate(files):
            for name in f.tensors:
                if name in owner:
                    raise CorruptFile(
                        f"[{_TAG}] {index}: tensor {name}: present in shards "
                        f"{shard_names[owner[name]]} and {shard_names[i]}"
                    )
                owner[name] = i
        for name, s in wmap.items():
            if owner.get(name) != slot[s]:
                raise CorruptFile(
                    f"[{_TAG}] {index}: tensor {name}: weight_map says {s}, "
                    f"but that shard does not hold it"
                )
    except Exception:
        for f in files:
            f.close()
        raise
    return SafetensorsModel(str(index), files, owner)
