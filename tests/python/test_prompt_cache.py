"""Prompt-cache files (src/metallic/prompt_cache.py, Model.save_prompt_cache/load_prompt_cache).

A loaded cache must give bitwise the logits of computing its tokens afresh (the file holds the
exact KV bytes), and every malformed or foreign file must end in a typed error.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import metallic
from metallic import errors, prompt_cache

tiny_models = pytest.importorskip("tiny_models")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    a = tiny_models.make_model(tmp_path_factory.mktemp("pca"), "llama", "q8_0", "gguf")
    b = tiny_models.make_model(tmp_path_factory.mktemp("pcb"), "llama", "q8_0", "gguf", seed=7)
    with (
        metallic.load(a.path, threads=2, context_length=64) as ma,
        metallic.load(b.path, threads=2, context_length=64) as mb,
        metallic.load(a.path, threads=2, context_length=64, kv_cache_dtype="f32") as m32,
    ):
        yield ma, mb, m32


SYSTEM = [5, 9, 33, 41, 7, 100, 12, 19, 3, 77, 54]


def test_save_load_round_trip_reuses_and_matches(models, tmp_path):
    model = models[0]
    path = tmp_path / "sys.mkv"
    model.reset_cache()
    assert model.save_prompt_cache(path, SYSTEM) == len(SYSTEM)
    prompt = SYSTEM + [60, 61, 62]
    fresh = model.logits(prompt)[-1]
    want = [r.token for r in model.stream_generate(prompt, max_tokens=6)]
    model.reset_cache()
    assert model.load_prompt_cache(path) == len(SYSTEM)
    assert model.cached_tokens == tuple(SYSTEM)
    rs = list(model.stream_generate(prompt, max_tokens=6))
    assert rs[0].cached_tokens == len(SYSTEM)
    assert [r.token for r in rs] == want
    model.reset_cache()
    model.load_prompt_cache(path)
    list(model.stream_generate(prompt, max_tokens=1))
    np.testing.assert_array_equal(np.array(model._engine.last_logits()), fresh)


def test_save_current_cache_and_messages(models, tmp_path):
    model = models[0]
    model.reset_cache()
    with pytest.raises(errors.InvalidArgument, match=r"^\[save_prompt_cache\]"):
        model.save_prompt_cache(tmp_path / "empty.mkv")
    list(model.stream_generate(SYSTEM, max_tokens=3))
    n = model.save_prompt_cache(tmp_path / "cur.mkv")
    assert n == len(SYSTEM) + 2  # the prompt and all generated tokens but the last
    msgs = [{"role": "system", "content": "be brief"}]
    n = model.save_prompt_cache(tmp_path / "msgs.mkv", messages=msgs)
    text = model.tokenizer.apply_chat_template(msgs, add_generation_prompt=False)
    assert model.cached_tokens == tuple(model.tokenizer.encode(text, add_special_tokens=False))
    chat = list(model.stream_chat([*msgs, {"role": "user", "content": "hi"}], max_tokens=1))
    assert chat[0].cached_tokens == n
    with pytest.raises(errors.InvalidArgument, match="at most one"):
        model.save_prompt_cache(tmp_path / "x.mkv", SYSTEM, messages=msgs)


def test_foreign_model_and_dtype_are_refused(models, tmp_path):
    a, b, a32 = models
    path = tmp_path / "a.mkv"
    a.save_prompt_cache(path, SYSTEM)
    with pytest.raises(errors.InvalidArgument, match=r"^\[load_prompt_cache\] .*fingerprint"):
        b.load_prompt_cache(path)
    with pytest.raises(errors.InvalidArgument, match="kv_dtype"):
        a32.load_prompt_cache(path)
    assert b.cached_tokens == ()  # a refused file leaves nothing half-loaded behind


def _rewrite(src, dst, *, magic=None, version=None, header=None, cut=0, extra=b""):
    data = src.read_bytes()
    m, v, hlen = struct.unpack_from("<8sII", data)
    head = json.loads(data[16 : 16 + hlen])
    if header:
        head.update(header)
    hb = json.dumps(head).encode()
    out = struct.pack("<8sII", magic or m, version or v, len(hb)) + hb + data[16 + hlen :]
    dst.write_bytes((out[:-cut] if cut else out) + extra)
    return dst


@pytest.mark.parametrize(
    "change, cls, what",
    [
        ({"magic": b"GGUF\0\0\0\0"}, errors.UnsupportedFormat, "magic"),
        ({"version": 9}, errors.UnsupportedFormat, "version"),
        ({"cut": 1}, errors.CorruptFile, "file size"),
        ({"extra": b"\0"}, errors.CorruptFile, "file size"),
        ({"header": {"n_tokens": 0}}, errors.CorruptFile, "n_tokens"),
        ({"header": {"n_tokens": 64}}, errors.InvalidArgument, "n_tokens"),
        ({"header": {"n_tokens": "3"}}, errors.CorruptFile, "header"),
        ({"header": {"kv_bytes": 5}}, errors.CorruptFile, "kv_bytes"),
    ],
)
def test_malformed_files_are_typed_errors(models, tmp_path, change, cls, what):
    model = models[0]
    good = tmp_path / "good.mkv"
    model.save_prompt_cache(good, SYSTEM)
    bad = _rewrite(good, tmp_path / "bad.mkv", **change)
    with pytest.raises(cls, match=what):
        model.load_prompt_cache(bad)


def test_short_and_missing_files(models, tmp_path):
    model = models[0]
    with pytest.raises(errors.FileNotFound):
        model.load_prompt_cache(tmp_path / "missing.mkv")
    (tmp_path / "short").write_bytes(b"MTL")
    with pytest.raises(errors.CorruptFile, match="preamble"):
        model.load_prompt_cache(tmp_path / "short")
    good = tmp_path / "g.mkv"
    model.save_prompt_cache(good, SYSTEM)
    data = bytearray(good.read_bytes())
    hlen = struct.unpack_from("<I", data, 12)[0]
    data[16:17] = b"!"  # header no longer JSON
    (tmp_path / "j").write_bytes(bytes(data))
    with pytest.raises(errors.CorruptFile, match="JSON"):
        model.load_prompt_cache(tmp_path / "j")
    data = bytearray(good.read_bytes())
    struct.pack_into("<i", data, 16 + hlen, 10**6)  # first token id outside the vocabulary
    (tmp_path / "t").write_bytes(bytes(data))
    with pytest.raises(errors.CorruptFile, match="tokens"):
        model.load_prompt_cache(tmp_path / "t")


def test_engine_kv_api_checks_sizes(models):
    eng = models[0]._engine
    with pytest.raises(errors.ShapeMismatch, match=r"^\[engine.read_kv\]"):
        eng.read_kv(3, np.empty(eng.kv_bytes(3) - 1, np.uint8))
    with pytest.raises(errors.InvalidArgument, match=r"^\[engine.write_kv\] n_tokens"):
        eng.write_kv(65, np.empty(eng.kv_bytes(65), np.uint8))


def test_fingerprint_depends_on_the_weights(models):
    a, b, _ = models
    assert prompt_cache.fingerprint(a._bundle) != prompt_cache.fingerprint(b._bundle)
