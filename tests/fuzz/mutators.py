"""Deterministic mutation plans and how to apply them.

A *plan* is ``(seed_name, ops)``; every op is a JSON-able list, so a failing case prints as a
reproducible recipe and any subset of its ops can be re-applied (minimisation). Ops:

* byte level, on one file: ``["flip", file, off, bit]``, ``["put", file, off, hex]``,
  ``["trunc", file, length]``, ``["insert", file, off, hex]``, ``["delete", file, off, n]``,
  ``["swap", file, off_a, off_b, n]``;
* GGUF metadata, re-serialised so the file stays well formed: ``["gkv", key, vtype, value]``
  (an array value is ``[element_type, items]``), ``["gkv_del", key]``;
* JSON documents (``*.json`` files, or the header of a ``*.safetensors`` file, whose length
  field is recomputed): ``["jset", file, path, value]``, ``["jdel", file, path]``;
* ``["rm", file]``.

Semantic ops apply first, then byte ops, then removals; offsets past the end are clamped.
:func:`plan` derives a case from ``(master_seed, case_id)`` alone (``random.Random`` seeded by
a string is stable across processes), so every worker and the runner agree on it.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

from fuzz import gguf_io, hf_mutators
from fuzz.values import FLOAT_EDGES, int_near, template

Files = dict[str, bytes]
Op = list[Any]

# ---------------------------------------------------------------------------- apply


def apply(files: Files, ops: list[Op]) -> Files:
    """The seed's files with ``ops`` applied (a new dict; removed files are absent)."""
    out = dict(files)
    semantic = [o for o in ops if o[0] in ("gkv", "gkv_del", "jset", "jdel")]
    byte_ops = [o for o in ops if o[0] in ("flip", "put", "trunc", "insert", "delete", "swap")]
    gkv = [o for o in semantic if o[0].startswith("gkv")]
    if gkv and "model.gguf" in out:
        out["model.gguf"] = _apply_gkv(out["model.gguf"], gkv)
    for op in semantic:
        if op[0] in ("jset", "jdel"):
            out[op[1]] = _apply_json(out.get(op[1]), op)
    for op in byte_ops:
        if op[1] in out:
            out[op[1]] = _apply_bytes(out[op[1]], op)
    for op in ops:
        if op[0] == "rm":
            out.pop(op[1], None)
    return out


def _apply_bytes(b: bytes, op: Op) -> bytes:
    kind, n = op[0], len(b)
    if kind == "trunc":
        return b[: min(op[2], n)]
    off = min(op[2], n)
    if kind == "flip":
        if off >= n:
            return b
        return b[:off] + bytes([b[off] ^ (1 << op[3])]) + b[off + 1 :]
    if kind == "put":
        data = bytes.fromhex(op[3])
        return b[:off] + data + b[off + len(data) :]
    if kind == "swap":
        o2, size = min(op[3], n), op[4]
        if max(off, o2) + size > n or abs(off - o2) < size:
            return b
        x, y = b[off : off + size], b[o2 : o2 + size]
        b = b[:off] + y + b[off + size :]
        return b[:o2] + x + b[o2 + size :]
    if kind == "insert":
        return b[:off] + bytes.fromhex(op[3]) + b[off:]
    return b[:off] + b[off + op[3] :]  # delete


def _apply_gkv(blob: bytes, ops: list[Op]) -> bytes:
    doc, _, _ = gguf_io.parse(blob)
    for op in ops:
        i = doc.kv_index(op[1])
        if op[0] == "gkv_del":
            if i is not None:
                del doc.kvs[i]
            continue
        entry = (op[1], op[2], gguf_io.encode_value(op[2], op[3]))
        if i is None:
            doc.kvs.append(entry)
        else:
            doc.kvs[i] = entry
    return gguf_io.serialize(doc)


def _apply_json(raw: bytes | None, op: Op) -> bytes:
    st = op[1].endswith(".safetensors")
    data = b""
    if raw is None:
        doc: Any = {}
    elif st:
        (n,) = struct.unpack_from("<Q", raw)
        doc, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    else:
        doc = json.loads(raw)
    path = op[2]
    if not path:
        doc = op[3] if op[0] == "jset" else {}
    else:
        try:
            node = doc
            for key in path[:-1]:
                node = node[key]
            if op[0] == "jset":
                node[path[-1]] = op[3]
            elif isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                del node[path[-1]]
        except (KeyError, IndexError, TypeError):  # an earlier op reshaped the document
            return raw if raw is not None else b"{}"
    text = json.dumps(doc).encode("utf-8", "surrogatepass")
    if not st:
        return text
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


# ---------------------------------------------------------------------------- plans


def load_seeds(root: str | Path) -> dict[str, Files]:
    """Seed name -> {file name: bytes} for every seed folder under ``root``."""
    return {
        d.name: {f.name: f.read_bytes() for f in sorted(d.iterdir())}
        for d in sorted(Path(root).iterdir())
        if d.is_dir()
    }


def plan(seeds: dict[str, Files], master_seed: int, case: int) -> tuple[str, list[Op]]:
    """The mutation plan of case ``case``: ``(seed_name, ops)``."""
    rng = random.Random(f"metallic-fuzz:{master_seed}:{case}")
    name = rng.choice(sorted(seeds))
    files = seeds[name]
    n_ops = rng.choice([1, 1, 1, 1, 2, 2, 3])
    gen = _gguf_op if "model.gguf" in files else hf_mutators.op
    return name, [gen(rng, name, files) for _ in range(n_ops)]


_LAYOUT: dict[str, tuple[gguf_io.Doc, list[gguf_io.Field], int]] = {}
_KIND_WEIGHTS = {
    "count": 2,
    "version": 0.5,
    "strlen": 4,
    "vtype": 2,
    "arrtype": 1,
    "arrlen": 3,
    "ndims": 2,
    "dim": 5,
    "ttype": 3,
    "toff": 4,
    "scalar": 3,
}
_TTYPES = [*range(0, 42), 255, 2**31, 2**32 - 1]


def _layout(name: str, blob: bytes) -> tuple[gguf_io.Doc, list[gguf_io.Field], int]:
    if name not in _LAYOUT:
        _LAYOUT[name] = gguf_io.parse(blob)
    return _LAYOUT[name]


def _gguf_op(rng: random.Random, name: str, files: Files) -> Op:
    blob = files["model.gguf"]
    doc, fields, data_start = _layout(name, blob)
    f = "model.gguf"
    r = rng.random()
    if r < 0.30:  # an integer field set to an edge value
        kinds = sorted({x.kind for x in fields})
        kind = rng.choices(kinds, [_KIND_WEIGHTS[k] for k in kinds])[0]
        fld = rng.choice([x for x in fields if x.kind == kind])
        if kind == "scalar" and isinstance(fld.value, float):
            val = struct.pack("<f" if fld.size == 4 else "<d", rng.choice(FLOAT_EDGES))
        else:
            val = int_near(rng, int(fld.value), fld.size).to_bytes(fld.size, "little")
        return ["put", f, fld.off, val.hex()]
    if r < 0.42:
        off = rng.randrange(data_start) if rng.random() < 0.8 else rng.randrange(len(blob))
        return ["flip", f, off, rng.randrange(8)]
    if r < 0.49:
        cut = rng.choice(
            [
                rng.randrange(data_start),
                rng.choice(fields).off + rng.randrange(4),
                rng.randrange(data_start, len(blob)),
                len(blob) - 1,
            ]
        )
        return ["trunc", f, cut]
    if r < 0.54:  # two tensors swap data offsets
        offs = [x for x in fields if x.kind == "toff"]
        a, b = rng.sample(offs, 2)
        return ["swap", f, a.off, b.off, 8]
    if r < 0.62:  # a tensor's GGML type code
        fld = rng.choice([x for x in fields if x.kind == "ttype"])
        return ["put", f, fld.off, rng.choice(_TTYPES).to_bytes(4, "little").hex()]
    if r < 0.66:
        fld = rng.choice(fields)
        if rng.random() < 0.5:
            return ["delete", f, fld.off, rng.choice([1, 4, 8, fld.size])]
        return ["insert", f, fld.off, rng.randbytes(rng.choice([1, 4, 8])).hex()]
    if r < 0.71:
        keys = [k for k, _, _ in doc.kvs]
        return ["gkv_del", rng.choice(keys)]
    return _gkv(rng, doc)


def _gkv(rng: random.Random, doc: gguf_io.Doc) -> Op:
    """A metadata value replaced (or added) with something plausible but wrong."""
    arch = "llama"
    i = doc.kv_index("general.architecture")
    if i is not None:
        arch = doc.kvs[i][2][8:].decode()
    a = arch
    ints = [
        f"{a}.embedding_length",
        f"{a}.block_count",
        f"{a}.feed_forward_length",
        f"{a}.attention.head_count",
        f"{a}.attention.head_count_kv",
        f"{a}.attention.key_length",
        f"{a}.attention.value_length",
        f"{a}.rope.dimension_count",
        f"{a}.context_length",
        f"{a}.vocab_size",
        "general.alignment",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ]
    floats = [
        f"{a}.attention.layer_norm_rms_epsilon",
        f"{a}.rope.freq_base",
        f"{a}.rope.scaling.factor",
        f"{a}.rope.scale_linear",
    ]
    strings = {
        "general.architecture": ["llama", "qwen2", "mistral", "gpt2", "", "LLAMA", "qwen3"],
        "tokenizer.ggml.model": ["gpt2", "llama", "bert", "", "t5"],
        "tokenizer.ggml.pre": ["default", "qwen2", "llama3", "gpt-2", "nope", ""],
        f"{a}.rope.scaling.type": ["none", "linear", "yarn", "llama3", ""],
    }
    r = rng.random()
    if r < 0.35:
        key = rng.choice(ints)
        val = rng.choice([0, 1, 2, 3, 5, 8, 16, 17, 32, 64, 332, 333, 334, 4096, 2**31, 2**32 - 1])
        if rng.random() < 0.1:  # a per-layer array where one number is expected
            return ["gkv", key, 9, [4, [val] * rng.choice([0, 1, 2, 3])]]
        vtype = rng.choice([4, 4, 4, 5, 10, 11, 0, 6, 8, 7])
        if vtype == 5:
            val = rng.choice([val, -1, -(2**31)]) if val < 2**31 else -1
        elif vtype == 0:
            val &= 0xFF
        elif vtype == 6:
            val = float(val) + rng.choice([0.0, 0.5])
        elif vtype == 8:
            val = str(val)
        elif vtype == 7:
            val = val & 1
        return ["gkv", key, vtype, val]
    if r < 0.5:
        key = rng.choice(floats)
        if rng.random() < 0.2:
            return ["gkv", key, 8, "1e-5"]
        return ["gkv", key, rng.choice([6, 6, 12]), rng.choice(FLOAT_EDGES)]
    if r < 0.62:
        key = rng.choice(sorted(strings))
        return ["gkv", key, 8, rng.choice(strings[key])]
    if r < 0.72:
        return ["gkv", "tokenizer.chat_template", 8, template(rng)]
    if r < 0.8:
        key = rng.choice(["tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"])
        return ["gkv", key, *rng.choice([[7, 1], [7, 0], [0, 2], [8, "yes"], [4, 1]])]
    return _gkv_vocab(rng, doc)


def _gkv_vocab(rng: random.Random, doc: gguf_io.Doc) -> Op:
    """tokenizer.ggml.tokens / merges / token_type edited as lists."""
    which = rng.choice(["tokens", "merges", "token_type"])
    key = f"tokenizer.ggml.{which}"
    i = doc.kv_index(key)
    if i is None:
        return ["gkv_del", key]
    items, etype = _decode_array(doc.kvs[i][2])
    r = rng.randrange(8)
    if r == 0:
        items = items[:-1]
    elif r == 1:
        items = items[: rng.randrange(len(items) + 1)]
    elif r == 2 and items:
        items = [*items, items[rng.randrange(len(items))]]
    elif r == 3 and items:
        j = rng.randrange(len(items))
        items[j] = rng.choice(["", "zz qq", "\u0120", "a b c", "x" * 70000]) if etype == 8 else 99
    elif r == 4:
        items = []
    elif r == 5:
        items = list(reversed(items))
    elif r == 6:
        return ["gkv", key, 9, [4, list(range(len(items)))]]
    else:
        items = [*items, "\u0120t \u0120t" if etype == 8 else 3]
    return ["gkv", key, 9, [etype, items]]


def _decode_array(payload: bytes) -> tuple[list, int]:
    etype, n = struct.unpack_from("<IQ", payload)
    pos, items = 12, []
    for _ in range(n):
        if etype == 8:
            (ln,) = struct.unpack_from("<Q", payload, pos)
            items.append(payload[pos + 8 : pos + 8 + ln].decode())
            pos += 8 + ln
        else:
            fmt = gguf_io.SCALAR_FMT[etype]
            items.append(struct.unpack_from(fmt, payload, pos)[0])
            pos += struct.calcsize(fmt)
    return items, etype
