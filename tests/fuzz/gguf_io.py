"""GGUF layout for structure-aware mutation: where every integer field lies, and a writer.

:func:`parse` walks a *valid* GGUF file (the fuzzer's seeds) and returns a :class:`Doc` (the
metadata and tensor table as plain values) plus a list of :class:`Field` (offset, width, kind)
for every length, count, type code, dim, offset and numeric value, so mutations can aim at the
bytes a reader trusts. :func:`serialize` writes a :class:`Doc` back (recomputing the padding),
which is how semantic edits (a changed metadata value, a deleted key) stay well-formed files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# GGUF value type -> struct format of a scalar; 8 = string, 9 = array.
SCALAR_FMT = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
T_STRING, T_ARRAY = 8, 9


@dataclass(frozen=True)
class Field:
    """One integer (or float) field of the file: ``size`` bytes at ``off``."""

    off: int
    size: int
    kind: str  # version count strlen vtype scalar arrtype arrlen ndims dim ttype toff
    label: str
    value: int | float


@dataclass
class Doc:
    """A GGUF file as values: ``kvs`` hold the encoded payload that follows each value type."""

    version: int
    kvs: list[tuple[str, int, bytes]]
    tensors: list[tuple[str, list[int], int, int]]  # name, ne (innermost first), type, rel off
    data: bytes

    def kv_index(self, key: str) -> int | None:
        """Index of ``key`` in :attr:`kvs`, or None."""
        return next((i for i, (k, _, _) in enumerate(self.kvs) if k == key), None)


def gstr(s: str | bytes) -> bytes:
    """A GGUF string: u64 length + bytes."""
    b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_value(vtype: int, value: object) -> bytes:
    """Payload of a value of ``vtype``; an array is ``(element_type, [items])``."""
    if vtype == T_STRING:
        return gstr(value)  # type: ignore[arg-type]
    if vtype == T_ARRAY:
        etype, items = value  # type: ignore[misc]
        body = b"".join(encode_value(etype, v) for v in items)
        return struct.pack("<IQ", etype, len(items)) + body
    return struct.pack(SCALAR_FMT[vtype], value)


class _Walker:
    def __init__(self, blob: bytes) -> None:
        self.b = blob
        self.pos = 0
        self.fields: list[Field] = []

    def num(self, fmt: str, kind: str, label: str) -> int | float:
        (v,) = struct.unpack_from(fmt, self.b, self.pos)
        self.fields.append(Field(self.pos, struct.calcsize(fmt), kind, label, v))
        self.pos += struct.calcsize(fmt)
        return v

    def string(self, label: str) -> str:
        n = int(self.num("<Q", "strlen", label))
        s = self.b[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def value(self, vtype: int, label: str) -> None:
        if vtype == T_STRING:
            self.string(label)
        elif vtype == T_ARRAY:
            etype = int(self.num("<I", "arrtype", label))
            n = int(self.num("<Q", "arrlen", label))
            for _ in range(n):
                self.value(etype, label)
        else:
            self.num(SCALAR_FMT[vtype], "scalar", label)


def parse(blob: bytes) -> tuple[Doc, list[Field], int]:
    """Parse a valid GGUF file.

    Returns:
        ``(doc, fields, data_start)``.
    """
    w = _Walker(blob)
    if blob[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    w.pos = 4
    version = int(w.num("<I", "version", "version"))
    n_tensors = int(w.num("<Q", "count", "n_tensors"))
    n_kv = int(w.num("<Q", "count", "n_kv"))
    kvs = []
    for _ in range(n_kv):
        key = w.string("key")
        vtype = int(w.num("<I", "vtype", key))
        start = w.pos
        w.value(vtype, key)
        kvs.append((key, vtype, blob[start : w.pos]))
    tensors = []
    for _ in range(n_tensors):
        name = w.string("tensor name")
        n_dims = int(w.num("<I", "ndims", name))
        ne = [int(w.num("<Q", "dim", name)) for _ in range(n_dims)]
        gtype = int(w.num("<I", "ttype", name))
        rel = int(w.num("<Q", "toff", name))
        tensors.append((name, ne, gtype, rel))
    doc = Doc(version, kvs, tensors, b"")
    align = _alignment(doc)
    data_start = -(-w.pos // align) * align
    doc.data = blob[data_start:]
    return doc, w.fields, data_start


def _alignment(doc: Doc) -> int:
    i = doc.kv_index("general.alignment")
    if i is not None:
        _, vtype, payload = doc.kvs[i]
        if vtype in (4, 10) and len(payload) == struct.calcsize(SCALAR_FMT[vtype]):
            (a,) = struct.unpack(SCALAR_FMT[vtype], payload)
            if 0 < a <= 1 << 16 and not a & (a - 1):
                return a
    return 32


def serialize(doc: Doc) -> bytes:
    """Write ``doc`` (padding after the tensor table follows its ``general.alignment``)."""
    out = [b"GGUF", struct.pack("<IQQ", doc.version, len(doc.tensors), len(doc.kvs))]
    for key, vtype, payload in doc.kvs:
        out += [gstr(key), struct.pack("<I", vtype), payload]
    for name, ne, gtype, rel in doc.tensors:
        out += [
            gstr(name),
            struct.pack(f"<I{len(ne)}Q", len(ne), *ne),
            struct.pack("<IQ", gtype, rel),
        ]
    head = b"".join(out)
    head += b"\0" * (-len(head) % _alignment(doc))
    return head + doc.data
