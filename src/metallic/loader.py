"""``open_model``: a GGUF file or an HF folder -> validated config + zero-copy canonical weights.

The bundle (docs/CONTRACTS.md section 2) holds numpy ``uint8`` views of the file mmaps; nothing
is copied. A fused tensor (phi3's ``attn_qkv``) becomes one entry per part, each a view of its row
range (the family's ``split_fused`` hook; see ``metallic.families``). ``close()`` drops the views
and then closes the mmaps (a mapping whose views are still referenced elsewhere is left to the
garbage collector rather than invalidated).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .dtypes import DType, row_nbytes
from .errors import CorruptFile, FileNotFound, UnsupportedFormat
from .families import family_name, get_family
from .families.base import GGUF_IGNORED, check_tensors
from .gguf import MAGIC, GGUFFile
from .safetensors import INDEX_NAME, SINGLE_NAME, SafetensorsModel, open_safetensors

TAG = "open_model"
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_SMALL_TENSOR = 1 << 20  # elements of a GGUF tensor read as a hyper-parameter (rope factors)

Weights = dict[str, tuple[DType, tuple[int, ...], np.ndarray]]
Table = dict[str, tuple[DType, tuple[int, ...]]]
# canonical name -> (tensor name in the file, first byte, end byte or None for the whole tensor)
Where = dict[str, tuple[str, int, int | None]]


class ModelBundle:
    """Everything the engine needs from a checkpoint.

    Attributes:
        arch: family name after aliases ("llama", "qwen2").
        args: the family's ModelArgs.
        config: every ``_core.ModelConfig`` field -> value (``activation`` is the member name).
        weights: canonical name -> (dtype, numpy-order shape, uint8 1-D mmap view).
        gguf_metadata: GGUF metadata, or None for HF folders.
        folder: the HF folder (tokenizer files), or None for GGUF.
        source: path shown in messages.
    """

    def __init__(
        self,
        *,
        arch: str,
        args: Any,
        config: dict[str, Any],
        weights: Weights,
        gguf_metadata: dict[str, Any] | None,
        folder: Path | None,
        source: str,
        closers: list[Any],
    ) -> None:
        self.arch = arch
        self.args = args
        self.config = config
        self.weights = weights
        self.gguf_metadata = gguf_metadata
        self.folder = folder
        self.source = source
        self._closers = closers

    def close(self) -> None:
        """Drop the weight views, then close the files (idempotent)."""
        self.weights = {}
        closers, self._closers = self._closers, []
        for c in closers:
            c.close()

    def __enter__(self) -> ModelBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ModelBundle(arch={self.arch!r}, source={self.source!r}, {len(self.weights)} weights)"
        )


def open_model(path: str | os.PathLike) -> ModelBundle:
    """Open a model checkpoint.

    Args:
        path: a ``.gguf`` file (or any file starting with the GGUF magic), or an HF folder with
            ``config.json`` and ``model.safetensors`` or ``model.safetensors.index.json``.

    Returns:
        A validated :class:`ModelBundle`; call ``close()`` (or use ``with``) when done.

    Raises:
        FileNotFound: missing path.
        UnsupportedFormat: neither a GGUF file nor a complete HF folder.
        UnsupportedArchitecture: unknown architecture or an unsupported variant.
        CorruptFile, ShapeMismatch, UnsupportedDType, NotImplementedFeature: see the readers
            and :func:`metallic.families.base.check_tensors`.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFound(f"[{TAG}] {p}: no such file or folder")
    if p.is_dir():
        return _open_hf(p)
    if _is_gguf(p):
        return _open_gguf(p)
    raise UnsupportedFormat(
        f"[{TAG}] {p}: not a GGUF file (magic {MAGIC!r}) and not an HF folder "
        f"(config.json + {SINGLE_NAME} or {INDEX_NAME})"
    )


def _is_gguf(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return p.suffix == ".gguf"  # let GGUFFile report the precise error


# ---------------------------------------------------------------------------- GGUF


def _open_gguf(p: Path) -> ModelBundle:
    g = GGUFFile(p)
    try:
        src = g.path
        md = g.metadata
        arch = md.get("general.architecture")
        if not isinstance(arch, str):
            raise CorruptFile(f"[{TAG}] {src}: missing metadata key general.architecture")
        fam = get_family(arch)
        arg_tensors = tuple(getattr(fam, "GGUF_ARG_TENSORS", ()))
        if arg_tensors:
            small = {n: _small_f32(g, n, src) for n in arg_tensors if n in g.tensors}
            args = fam.args_from_gguf(md, source=src, tensors=small)
        else:
            args = fam.args_from_gguf(md, source=src)
        args = dataclasses.replace(args, tie_word_embeddings="output.weight" not in g.tensors)
        factors = (
            _small_f32(g, "rope_freqs.weight", src) if "rope_freqs.weight" in g.tensors else None
        )
        config = fam.native_config(args, "gguf", factors, source=src)
        tokens = md.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list) and len(tokens) != config["n_vocab"]:
            # llama.cpp's rule: one embedding row per token, no more, no fewer.
            raise CorruptFile(
                f"[{TAG}] {src}: key tokenizer.ggml.tokens: expected {config['n_vocab']} "
                f"tokens (the vocabulary size), got {len(tokens)}"
            )
        skip = GGUF_IGNORED | set(arg_tensors)
        table = {n: (t.dtype, t.shape) for n, t in g.tensors.items() if n not in skip}
        table, where = _split_fused(fam, config, table, {n: n for n in table}, src)
        _check(fam, config, table, src)
        weights: Weights = {n: (dt, shp, _view(g.data, where[n])) for n, (dt, shp) in table.items()}
        return ModelBundle(
            arch=family_name(arch),
            args=args,
            config=config,
            weights=weights,
            gguf_metadata=md,
            folder=None,
            source=src,
            closers=[g],
        )
    except BaseException:
        g.close()
        raise


def _small_f32(g: GGUFFile, name: str, src: str) -> np.ndarray:
    """A present 1-D F32 tensor that holds hyper-parameters (rope_freqs, longrope factors)."""
    info = g.tensors[name]
    if info.dtype != DType.F32 or len(info.shape) != 1 or info.shape[0] > MAX_SMALL_TENSOR:
        raise CorruptFile(
            f"[{TAG}] {src}: tensor {name}: expected 1-D F32 of at most {MAX_SMALL_TENSOR} "
            f"values, got {info.dtype.name} {'x'.join(map(str, info.shape))}"
        )
    # Tiny (head_dim/2 floats): copied so no view outlives close().
    return g.data(name).view("<f4").astype(np.float64)


def _split_fused(
    fam: ModuleType, config: dict[str, Any], table: Table, file_names: dict[str, str], src: str
) -> tuple[Table, Where]:
    """Replace each fused tensor by its parts (the family's ``split_fused`` hook).

    Args:
        fam: the family module.
        config: its native config (row counts).
        table: canonical name -> (dtype, shape), as read.
        file_names: canonical name -> the tensor's name in the file.
        src: file path for messages.

    Returns:
        (the table with parts in place of fused tensors, where each entry's bytes lie).

    Raises:
        ShapeMismatch: a fused tensor's shape (from the hook).
        CorruptFile: two tensors (or parts) with one canonical name.
    """
    split = getattr(fam, "split_fused", None)
    out: Table = {}
    where: Where = {}
    for canon, (dt, shape) in table.items():
        fname = file_names[canon]
        parts = split(canon, shape, config, source=src, file_name=fname) if split else None
        if parts is None:
            entries = [(canon, tuple(shape), 0, None)]
        else:
            # Row-major: rows [first, first + rows) are one contiguous byte range.
            row = row_nbytes(DType(dt), shape[-1], where=f"{src}: tensor {fname}")
            entries = [(n, (r, shape[-1]), f * row, (f + r) * row) for n, f, r in parts]
        for name, shp, start, stop in entries:
            if name in out:
                raise CorruptFile(
                    f"[{TAG}] {src}: tensors {where[name][0]} and {fname} both map to {name}"
                )
            out[name] = (dt, shp)
            where[name] = (fname, start, stop)
    return out, where


def _view(data: Any, at: tuple[str, int, int | None]) -> np.ndarray:
    """The bytes of one entry: the whole file tensor, or a slice of it (a view, no copy)."""
    fname, start, stop = at
    whole = data(fname)
    return whole if stop is None else whole[start:stop]


# ---------------------------------------------------------------------------- HF folder


def _open_hf(folder: Path) -> ModelBundle:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UnsupportedFormat(f"[{TAG}] {folder}: not a model folder: config.json is missing")
    if not (folder / INDEX_NAME).is_file() and not (folder / SINGLE_NAME).is_file():
        raise UnsupportedFormat(
            f"[{TAG}] {folder}: no weights: {SINGLE_NAME} or {INDEX_NAME} is missing"
        )
    hf_config = _read_config(cfg_path)
    arch = hf_config.get("model_type")
    if not isinstance(arch, str):
        archs = hf_config.get("architectures")
        arch = archs[0] if isinstance(archs, list) and archs else None
        if not isinstance(arch, str):
            raise CorruptFile(f"[{TAG}] {cfg_path}: missing key model_type (and architectures)")
    fam = get_family(arch)
    args = fam.args_from_hf(hf_config, source=str(cfg_path))
    st = open_safetensors(folder)
    try:
        src = st.source
        table, hf_names = _hf_table(fam, st, src)
        tied = bool(args.tie_word_embeddings) or "output.weight" not in table
        if tied:
            table.pop("output.weight", None)  # HF ignores lm_head when embeddings are tied
        args = dataclasses.replace(args, tie_word_embeddings=tied)
        config = fam.native_config(args, "hf", source=src)
        table, where = _split_fused(fam, config, table, hf_names, src)
        _check(fam, config, table, src)
        weights: Weights = {
            n: (dt, shp, _view(st.data, where[n])) for n, (dt, shp) in table.items()
        }
        return ModelBundle(
            arch=family_name(arch),
            args=args,
            config=config,
            weights=weights,
            gguf_metadata=None,
            folder=folder,
            source=src,
            closers=[st],
        )
    except BaseException:
        st.close()
        raise


def _read_config(cfg_path: Path) -> dict[str, Any]:
    size = cfg_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CorruptFile(f"[{TAG}] {cfg_path}: {size} bytes, cap {MAX_CONFIG_BYTES}")
    try:
        doc = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptFile(f"[{TAG}] {cfg_path}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CorruptFile(f"[{TAG}] {cfg_path}: expected a JSON object")
    return doc


def _hf_table(
    fam: ModuleType, st: SafetensorsModel, src: str
) -> tuple[dict[str, tuple[DType, tuple[int, ...]]], dict[str, str]]:
    table: dict[str, tuple[DType, tuple[int, ...]]] = {}
    hf_names: dict[str, str] = {}
    for name, info in st.tensors.items():
        canon = fam.canonical_name(name)
        if canon is None:
            continue
        if canon in table:
            raise CorruptFile(
                f"[{TAG}] {src}: tensors {hf_names[canon]} and {name} both map to {canon}"
            )
        table[canon] = (info.dtype, info.shape)
        hf_names[canon] = name
    return table, hf_names


def _check(fam: ModuleType, config: dict[str, Any], table: dict, src: str) -> None:
    check_tensors(config, table, fam.ARCH, src)
