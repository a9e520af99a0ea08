"""Prompt-cache files: the KV rows of a token prefix, saved to skip recomputing it later.

Layout (little-endian)::

    magic    8 bytes  b"MTLKV\\x00\\x00\\x01"
    version  u32      2 (1: before sliding-window rings; refused)
    hlen     u32      length of the JSON header
    header   hlen     JSON: {"fingerprint": str, "n_tokens": int, "kv_dtype": int,
                             "kv_bytes": int}
    tokens   n_tokens * int32
    kv       kv_bytes   Engine.read_kv layout: (layer, K then V, kv head, position, head_dim);
                        a sliding-window layer holds its last min(n_tokens, window) positions

The fingerprint hashes the model config, the weight table (names, dtypes, shapes) and the
weights file's name and size, so a file made by another model (or another quantization) is
refused with a typed error instead of feeding it foreign KV rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from .dtypes import DType
from .errors import CorruptFile, FileNotFound, InvalidArgument, UnsupportedFormat

MAGIC = b"MTLKV\x00\x00\x01"
VERSION = 2
_FIXED = struct.Struct("<8sII")
_MAX_HEADER = 1 << 16


def _kv_name(dtype_id: int) -> str:
    """A KV dtype id as load()'s kv_cache_dtype spells it ("q8_0"), or the raw id if unknown."""
    try:
        return DType(dtype_id).name.lower()
    except ValueError:
        return f"dtype id {dtype_id}"


def fingerprint(bundle) -> str:
    """sha256 over config, weight table and the weights file's name and size."""
    src = Path(bundle.source)
    try:
        size = (
            src.stat().st_size
            if src.is_file()
            else sum(p.stat().st_size for p in sorted(src.glob("*.safetensors")))
        )
    except OSError:
        size = -1
    table = sorted((n, int(dt), list(shape)) for n, (dt, shape, _) in bundle.weights.items())
    doc = {
        "arch": bundle.arch,
        "config": {
            k: (v if isinstance(v, (int, float, bool, str)) else repr(v))
            for k, v in sorted(bundle.config.items())
        },
        "weights": table,
        "file": [src.name, size],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def save(path: str | os.PathLike, engine, fp: str, tokens: list[int]) -> int:
    """Writes the KV of ``tokens`` (positions 0..n-1, valid in ``engine``); returns bytes written."""
    n = len(tokens)
    if n == 0:
        raise InvalidArgument(
            "[save_prompt_cache] cache: expected at least one cached token, got none"
        )
    kv = np.empty(engine.kv_bytes(n), dtype=np.uint8)
    engine.read_kv(n, kv)
    header = json.dumps(
        {"fingerprint": fp, "n_tokens": n, "kv_dtype": int(engine.kv_dtype), "kv_bytes": kv.size}
    ).encode()
    tmp = Path(f"{os.fspath(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(_FIXED.pack(MAGIC, VERSION, len(header)))
            f.write(header)
            f.write(np.asarray(tokens, dtype="<i4").tobytes())
            f.write(kv.tobytes())
        os.replace(tmp, path)  # never leaves a half-written file under the real name
    finally:
        if tmp.exists():
            tmp.unlink()
    return _FIXED.size + len(header) + 4 * n + kv.size


def load(path: str | os.PathLike, engine, fp: str) -> list[int]:
    """Reads a file written by :func:`save` into the engine's KV; returns its token ids."""
    where = f"[load_prompt_cache] {os.fspath(path)}"
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, after every check)
    except FileNotFoundError:
        raise FileNotFound(f"{where}: expected a prompt-cache file, got no such file") from None
    except OSError as exc:
        raise FileNotFound(f"{where}: expected a readable file, got {exc.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        fixed = f.read(_FIXED.size)
        if len(fixed) != _FIXED.size:
            raise CorruptFile(f"{where}: expected a {_FIXED.size}-byte preamble, got {len(fixed)}")
        magic, version, hlen = _FIXED.unpack(fixed)
        if magic != MAGIC:
            raise UnsupportedFormat(f"{where}: magic: expected {MAGIC!r}, got {magic!r}")
        if version != VERSION:
            raise UnsupportedFormat(f"{where}: version: expected {VERSION}, got {version}")
        if not 0 < hlen <= min(_MAX_HEADER, size - _FIXED.size):
            raise CorruptFile(f"{where}: header length: expected 1..{_MAX_HEADER}, got {hlen}")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptFile(f"{where}: header: expected JSON, got {exc}") from None
        n, kv_dtype, kv_bytes = _fields(header, where)
        if header["fingerprint"] != fp:
            raise InvalidArgument(
                f"{where}: fingerprint: expected this model's {fp[:16]}…, got "
                f"{str(header['fingerprint'])[:16]}… (the file was made by another model)"
            )
        if kv_dtype != int(engine.kv_dtype):
            raise InvalidArgument(
                f"{where}: kv_dtype: expected {_kv_name(int(engine.kv_dtype))} (this model's "
                f"KV cache), got {_kv_name(kv_dtype)} (load with kv_cache_dtype= the file's)"
            )
        if n >= engine.context_length:
            raise InvalidArgument(
                f"{where}: n_tokens: expected < context_length {engine.context_length}, got {n}"
            )
        want = engine.kv_bytes(n)
        if kv_bytes != want:
            raise CorruptFile(f"{where}: kv_bytes: expected {want} for {n} tokens, got {kv_bytes}")
        body = _FIXED.size + hlen + 4 * n + kv_bytes
        if size != body:
            raise CorruptFile(f"{where}: file size: expected {body} bytes, got {size}")
        tokens = np.frombuffer(f.read(4 * n), dtype="<i4")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= engine.n_vocab):
            raise CorruptFile(
                f"{where}: tokens: expected ids in [0, {engine.n_vocab}), got "
                f"{int(tokens.min())}..{int(tokens.max())}"
            )
        kv = np.empty(kv_bytes, dtype=np.uint8)
        got = f.readinto(memoryview(kv))
        if got != kv_bytes:
            raise CorruptFile(f"{where}: kv: expected {kv_bytes} bytes, got {got}")
    engine.write_kv(n, kv)
    return [int(t) for t in tokens]


def _fields(header: object, where: str) -> tuple[int, int, int]:
    keys = ("fingerprint", "n_tokens", "kv_dtype", "kv_bytes")
    if not isinstance(header, dict) or any(k not in header for k in keys):
        raise CorruptFile(f"{where}: header: expected the keys {', '.join(keys)}, got {header!r}")
    values = [header[k] for k in keys[1:]]
    if not isinstance(header["fingerprint"], str) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise CorruptFile(f"{where}: header: expected non-negative ints, got {header!r}")
    if values[0] == 0:
        raise CorruptFile(f"{where}: n_tokens: expected at least 1, got 0")
    return values[0], values[1], values[2]
