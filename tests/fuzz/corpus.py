"""Seed models for the fuzzer: small, valid, realistic GGUF files and HF folders.

Each seed is a folder ``<root>/<name>/`` holding either ``model.gguf`` or the files of an HF
checkpoint (config.json, safetensors or a sharded index, tokenizer.json, tokenizer_config.json,
generation_config.json). They come from ``tests/tiny_models.py`` (same tokenizer, same layouts as
the forward tests) with a smaller size so a case loads in milliseconds; one GGUF re-encodes its
matrices as K-quants (Q4_K / Q5_K / Q6_K, with Q8_0 where a row is not a multiple of 256).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import kquant_np  # noqa: E402
import tiny_models  # noqa: E402
from fuzz import gguf_io  # noqa: E402

VERSION = "4"  # bump when the seeds change (the cache key)
SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
# name -> (family, dtype, fmt, tied, size overrides)
SEEDS: dict[str, tuple[str, str, str, bool, dict]] = {
    "gguf-llama-f32-rope": ("llama", "f32", "gguf", True, {"rope_scaling": "llama3"}),
    "gguf-llama-q4_0": ("llama", "q4_0", "gguf", False, {}),
    "gguf-llama-q8_0": ("llama", "q8_0", "gguf", True, {}),
    "gguf-llama-f16": ("llama", "f16", "gguf", False, {}),
    "gguf-qwen2-q4_1": ("qwen2", "q4_1", "gguf", False, {}),
    "gguf-qwen2-bf16": ("qwen2", "bf16", "gguf", True, {}),
    "gguf-llama-kquant": ("llama", "f32", "gguf", False, {"kquant": True}),
    "hf-llama-f32": ("llama", "f32", "hf", True, {}),
    "hf-qwen2-bf16": ("qwen2", "bf16", "hf", False, {}),
    "hf-llama-f16-sharded": ("llama", "f16", "hf", False, {"shards": 2}),
}


def build(root: str | Path) -> Path:
    """Write every seed under ``root`` (reused when ``root/VERSION`` matches).

    Returns:
        ``root``.
    """
    root = Path(root)
    stamp = root / "VERSION"
    if stamp.is_file() and stamp.read_text() == VERSION:
        return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (family, dtype, fmt, tied, extra) in SEEDS.items():
            extra = dict(extra)
            size = dict(SMALL)
            if extra.pop("rope_scaling", None):
                size["rope_scaling"] = tiny_models.LLAMA3_SCALING
            kquant = extra.pop("kquant", False)
            if kquant:
                size |= {"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 1}
                size |= {"num_attention_heads": 16, "num_key_value_heads": 4}
            (Path(tmp) / name).mkdir()
            model = tiny_models.make_model(Path(tmp) / name, family, dtype, fmt, tied, **size)
            out = root / name
            out.mkdir()
            if fmt == "gguf":
                blob = model.path.read_bytes()
                (out / "model.gguf").write_bytes(_to_kquant(blob) if kquant else blob)
                continue
            for f in model.path.iterdir():
                shutil.copy(f, out / f.name)
            gen = {"bos_token_id": tiny_models.BOS_ID, "eos_token_id": [tiny_models.EOS_ID, 0]}
            (out / "generation_config.json").write_text(json.dumps(gen))
            if extra.get("shards"):
                _shard(out, int(extra["shards"]))
    stamp.write_text(VERSION)
    return root


def _to_kquant(blob: bytes) -> bytes:
    """Re-encode the F32 matrices of a GGUF as K-quants (Q8_0 where rows are short)."""
    doc, _, _ = gguf_io.parse(blob)
    ktypes = [kquant_np.Q4_K, kquant_np.Q5_K, kquant_np.Q6_K]
    tensors, chunks, off = [], [], 0
    for i, (name, ne, gtype, rel) in enumerate(doc.tensors):
        n = int(np.prod(ne))
        raw = doc.data[rel : rel + 4 * n]
        if len(ne) == 2 and gtype == 0:
            x = np.frombuffer(raw, "<f4").reshape(ne[1], ne[0])
            gtype = ktypes[i % 3] if ne[0] % 256 == 0 else kquant_np.Q8_0
            raw = kquant_np.quantize(gtype, x).tobytes()
        raw += b"\0" * (-len(raw) % 32)
        tensors.append((name, ne, gtype, off))
        chunks.append(raw)
        off += len(raw)
    doc.tensors, doc.data = tensors, b"".join(chunks)
    return gguf_io.serialize(doc)


def _shard(folder: Path, n: int) -> None:
    """Split ``model.safetensors`` into ``n`` shards plus ``model.safetensors.index.json``."""
    blob = (folder / "model.safetensors").read_bytes()
    (hlen,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8 : 8 + hlen])
    data = blob[8 + hlen :]
    names = [k for k in header if k != "__metadata__"]
    wmap = {}
    for s in range(n):
        shard = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part, chunks, off = {"__metadata__": {"format": "pt"}}, [], 0
        for name in names[s::n]:
            b, e = header[name]["data_offsets"]
            part[name] = {**header[name], "data_offsets": [off, off + e - b]}
            chunks.append(data[b:e])
            off += e - b
            wmap[name] = shard
        hb = json.dumps(part).encode()
        hb += b" " * (-len(hb) % 8)
        (folder / shard).write_bytes(struct.pack("<Q", len(hb)) + hb + b"".join(chunks))
    index = {"metadata": {"total_size": len(data)}, "weight_map": wmap}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors").unlink()
