"""Tests for metallic.tokenizer: GGUF rebuild == tokenizer.json, known ids, streaming, errors."""

from __future__ import annotations

import json
import pathlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from metallic import errors
from metallic.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_TOKEN = "<tool_call>"  # GGUF token type 4 (user-defined)
SAMPLES = [
    "Hello world",
    " Hello  world\t\ttabs\n\nnewlines  ",
    "The year 2024 had 365 days; π≈3.14159 and 1234567",
    "def f(x):\n    return x**2  # square\n\tpass\r\n",
    "日本語のテキストと中文字符",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Emoji: 🎉👩\u200d👩\u200d👧\u200d👦🇫🇷 done",
    "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "I'm sure they've done it, we'll see. DON'T YOU'LL",
    f"call {USER_TOKEN}x{USER_TOKEN} now",
    "   leading and trailing spaces   ",
    "",
]
CORPUS = [s for s in SAMPLES if s] + [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "for i in range(10):\n    print(i, i * 2)\n",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "الخط العربي جميل جدا",
    "हिन्दी भाषा भारत में बोली जाती है",
    "東京は日本の首都です。中文也很好。",
    "café naïve résumé 😀😃😄 ✓ ∑ ∞",
]
# Reference pre-tokenizers, spelled as the models' own tokenizer.json files do.
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _reference_pre(pre: str):
    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
        )
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    regex = _LLAMA3_RE if pre == "llama-bpe" else _LLAMA3_RE.replace(r"{1,3}", "")
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


@pytest.fixture(scope="module")
def trained() -> tuple[list[str], list[str]]:
    """A 700-token byte-level BPE trained here: (tokens by id, merges as 'a b')."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = _reference_pre("smollm")
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(CORPUS * 4, trainer=trainer)
    hf.add_tokens([AddedToken(USER_TOKEN, normalized=False)])
    model = json.loads(hf.to_str())["model"]
    vocab = hf.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def gguf_meta(trained, pre: str = "smollm", **extra) -> dict:
    tokens, merges = trained
    types = [3 if t in SPECIALS else 4 if t == USER_TOKEN else 1 for t in tokens]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": list(tokens),
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": list(merges),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    meta.update(extra)
    return {k: v for k, v in meta.items() if v is not None}


def reference(trained, pre: str, tmp_path: pathlib.Path) -> HFTokenizer:
    """The same vocab as an HF tokenizer.json (saved and reloaded from disk)."""
    tokens, merges = trained
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre == "llama-bpe"))
    hf.pre_tokenizer = _reference_pre(pre)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, normalized=False) for s in SPECIALS])
    hf.add_tokens([AddedToken(USER_TOKEN, normalized=False)])
    path = tmp_path / f"{pre}.json"
    hf.save(str(path))
    return HFTokenizer.from_file(str(path))


FAMILIES = ["smollm", "llama-bpe", "qwen2", "gpt-2"]
# Valid Unicode text: this hypothesis (6.155) draws lone surrogates from st.characters() now and
# then, which both tokenizers refuse (ours with InvalidArgument: test_encode_decode_errors).
_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from(list("0123456789 \t\n'sdmlvert.,;🎉中П")),
    ),
    max_size=40,
)


@pytest.mark.parametrize("pre", FAMILIES)
def test_gguf_matches_tokenizer_json(trained, tmp_path, pre):
    ref = reference(trained, pre, tmp_path)
    tok = Tokenizer.from_gguf(
        gguf_meta(trained, pre, **{"tokenizer.ggml.add_bos_token": False}), "t"
    )
    for text in SAMPLES:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("<|im_start|>user<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert len(tok.encode(USER_TOKEN)) == 1


@pytest.mark.parametrize("pre", FAMILIES)
def test_gguf_matches_tokenizer_json_fuzz(trained, tmp_path, pre):
    ref = reference(trained, pre, tmp_path)
    tok = Tokenizer.from_gguf(
        gguf_meta(trained, pre, **{"tokenizer.ggml.add_bos_token": False}), "t"
    )

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_TEXT)
    def check(text):
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text

    check()


def test_gguf_file_roundtrip_via_gguf_writer(trained, tmp_path):
    gguf = pytest.importorskip("gguf")
    tokens, merges = trained
    meta = gguf_meta(trained)
    path = tmp_path / "tok.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{{ messages[0]['content'] }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    read = _read_gguf_meta(path)
    tok = Tokenizer.from_gguf(read, str(path))
    direct = Tokenizer.from_gguf(meta, "direct")
    for text in SAMPLES:
        assert tok.encode(text) == direct.encode(text)
    assert tok.chat_template == "{{ messages[0]['content'] }}"
    assert tok.bos_id == 1 and tok.eos_ids == frozenset({0, 2})  # + control <|endoftext|> (EOG)


def _read_gguf_meta(path: pathlib.Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=60))
def test_roundtrip_arbitrary_text(trained, text):
    tok = _cached(trained)
    assert tok.decode(tok.encode(text)) == text


_CACHE: dict = {}


def _cached(trained, pre: str = "smollm") -> Tokenizer:
    if pre not in _CACHE:
        _CACHE[pre] = Tokenizer.from_gguf(gguf_meta(trained, pre), "t")
    return _CACHE[pre]


def test_bos_eos_policy(trained):
    llama3 = Tokenizer.from_gguf(gguf_meta(trained, "llama-bpe"), "t")  # llama3 adds BOS
    assert llama3.encode("hi")[0] == 1 and llama3.encode("hi", add_special_tokens=False)[0] != 1
    smol = Tokenizer.from_gguf(gguf_meta(trained), "t")
    assert smol.encode("hi")[0] != 1
    eos = Tokenizer.from_gguf(
        gguf_meta(trained, **{"tokenizer.ggml.eot_token_id": 0, "tokenizer.ggml.eom_token_id": 3}),
        "t",
    )
    assert eos.eos_ids == frozenset({0, 2, 3}) and eos.bos_id == 1
    added = Tokenizer.from_gguf(gguf_meta(trained, **{"tokenizer.ggml.add_eos_token": True}), "t")
    assert added.encode("hi")[-1] == 2
    np = pytest.importorskip("numpy")
    types = np.asarray(gguf_meta(trained)["tokenizer.ggml.token_type"], dtype=np.int32)
    extra = {"tokenizer.ggml.bos_token_id": np.uint32(1), "tokenizer.ggml.add_bos_token": np.True_}
    as_np = Tokenizer.from_gguf(
        gguf_meta(trained, **{"tokenizer.ggml.token_type": types}, **extra), "t"
    )
    assert as_np.encode("hi")[0] == 1 and as_np.encode("<|im_end|>") == [1, 2]
    default = Tokenizer.from_gguf(gguf_meta(trained, None), "t")  # missing pre -> "default"
    assert default.decode(default.encode(SAMPLES[2])) == SAMPLES[2]
    assert default.vocab_size == len(trained[0])
    assert default.chat_template is None
    assert default.decode(default.encode("<|im_end|>x"), skip_special_tokens=True) == "x"


# ---------------------------------------------------------------- streaming detokenizer
def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    det = tok.detokenizer()
    chunks = [det.add(i) for i in ids]
    return [*chunks, det.finalize()]


def _check_stream(tok: Tokenizer, ids: list[int]) -> None:
    chunks = _stream(tok, ids)
    for chunk in chunks:
        chunk.encode("utf-8")  # raises on a lone surrogate
    full = tok.decode(ids)
    if "\ufffd" not in full:
        assert "".join(chunks) == full
        assert all("\ufffd" not in c for c in chunks)


def test_stream_holds_back_partial_characters(trained):
    tok = _cached(trained)
    text = "a🎉b中"
    ids = tok.encode(text)
    chunks = _stream(tok, ids)
    assert "".join(chunks) == text
    assert all(c in ("", "a", "🎉", "b", "中") or c in text for c in chunks)
    det = tok.detokenizer()
    partial = [det.add(i) for i in tok.encode("🎉")[:-1]]
    assert "".join(partial) == ""
    assert det.finalize() == "\ufffd"  # an unfinished character is flushed as U+FFFD


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_stream_random_ids(trained, data):
    tok = _cached(trained)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))
    _check_stream(tok, ids)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=40))
def test_stream_of_encoded_text(trained, text):
    tok = _cached(trained)
    assert "".join(_stream(tok, tok.encode(text))) == text


def test_stream_skip_special(trained):
    tok = _cached(trained)
    det = tok.detokenizer(skip_special_tokens=True)
    assert "".join(det.add(i) for i in tok.encode("<|im_start|>hi")) == "hi"


# ---------------------------------------------------------------- from_folder
def test_from_folder(trained, tmp_path):
    reference(trained, "smollm", tmp_path).save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    cfg = {
        "bos_token": {"content": "<|im_start|>"},
        "eos_token": "<|im_end|>",
        "add_bos_token": True,
        "chat_template": [
            {"name": "tool_use", "template": "x"},
            {"name": "default", "template": template},
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.bos_id == 1 and tok.eos_ids == frozenset({0, 2})
    assert tok.encode("hi")[0] == 1 and tok.encode("hi", add_special_tokens=False)[0] != 1
    assert tok.chat_template == template
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[user]x"
    _check_stream(tok, tok.encode(SAMPLES[8]))


def test_from_folder_sentencepiece_style_decoder(tmp_path):
    """Metaspace-style vocab with byte fallback: streaming equals decode."""
    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    for piece in ["▁", "a", "b", "c", "▁a", "▁ab", "ab", "<s>", "</s>"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "a"), ("a", "b"), ("▁a", "b")]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    hf.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_folder(tmp_path)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(st.sampled_from(list("abc é中🎉")), max_size=20))
    def check(text):
        ids = tok.encode(text)
        assert "".join(_stream(tok, ids)) == tok.decode(ids)

    check()


# ---------------------------------------------------------------- real SmolLM2 GGUF
SMOL_IDS = {
    "Hello world": [19556, 905],
    " Hello  world\t\ttabs\n\nnewlines  ": [38699, 216, 905, 197, 197, 100, 7366, 198, 198, 2241, 5110, 256],
    "The year 2024 had 365 days; π≈3.14159": [504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 37, 2009, 43, 25143, 40533, 226, 35, 30, 33, 36, 33, 37, 41],
    "def f(x):\n    return x**2  # square\n": [1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216, 907, 5222, 198],
    "日本語のテキストと中文字符": [23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 7365, 118, 28589, 29184, 36518, 40562, 116],
    "Привет, мир! Как дела?": [155, 249, 46879, 16464, 32547, 28, 41337, 7872, 9175, 17, 5470, 244, 6511, 13760, 33427, 42292, 6511, 47],
    "مرحبا بالعالم": [21706, 20602, 44626, 31462, 10805, 45726, 22208, 34966, 22208, 21706],
    "नमस्ते दुनिया": [30658, 35090, 38770, 16525, 26293, 30581, 12335, 116, 42990, 30658, 27011, 32932, 18075],
    "Emoji: 🎉👩\u200d👩\u200d👧\u200d👦🇫🇷 done": [10809, 33777, 42, 15107, 232, 227, 10813, 235, 119, 321, 231, 10813, 235, 119, 321, 231, 10813, 235, 117, 321, 231, 10813, 235, 116, 10813, 225, 121, 10813, 225, 132, 2294],
    "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n": [1, 4093, 198, 1780, 506, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198],
    "I'm sure they've done it, we'll see. DON'T": [57, 5248, 2090, 502, 3543, 2294, 357, 28, 392, 3060, 963, 30, 422, 2154, 23, 68],
    "   leading and trailing spaces   ": [256, 2899, 284, 35079, 5600, 333],
}  # fmt: skip  # ground truth: llama.cpp (llama-cpp-python 0.3, vocab_only, special=True)


@pytest.fixture(scope="module")
def smol(smollm2_path) -> Tokenizer:
    pytest.importorskip("gguf")
    meta = _read_gguf_meta(smollm2_path)
    start = time.perf_counter()
    tok = Tokenizer.from_gguf(meta, str(smollm2_path))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"building the SmolLM2 tokenizer took {elapsed * 1e3:.0f} ms"
    return tok


def test_smollm2_known_ids(smol):
    assert smol.vocab_size == 49152 and smol.bos_id == 1 and smol.eos_ids == frozenset({0, 2})
    # 2 = <|im_end|> (tokenizer.ggml.eos_token_id); 0 = the control token <|endoftext|>, an
    # end-of-generation marker (llama.cpp adds such control tokens to its EOG set too).
    for text, ids in SMOL_IDS.items():
        assert smol.encode(text) == ids, text
        assert smol.decode(ids) == text
    assert smol.encode("Hi") == [26843]  # SmolLM2 adds no BOS


def test_smollm2_chat_template(smol):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    text = smol.apply_chat_template(messages)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = smol.encode(text)
    assert ids.count(1) == 5 and ids.count(2) == 4  # markers are single tokens
    no_prompt = smol.apply_chat_template(messages[1:2], add_generation_prompt=False)
    assert no_prompt.startswith("<|im_start|>system\n") and no_prompt.endswith("Hi<|im_end|>\n")


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_smollm2_stream_random_ids(smol, data):
    ids = data.draw(st.lists(st.integers(0, smol.vocab_size - 1), max_size=24))
    _check_stream(smol, ids)


# ---------------------------------------------------------------- error paths
def _bad(trained, **changes) -> dict:
    meta = gguf_meta(trained)
    for key, value in changes.items():
        full = f"tokenizer.ggml.{key}" if key != "chat_template" else "tokenizer.chat_template"
        if value is _DROP:
            meta.pop(full)
        else:
            meta[full] = value
    return meta


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "exc"),
    [
        ({"model": "llama"}, errors.CorruptFile),  # SentencePiece needs scores (test_spm_vocab)
        ({"model": "bert"}, errors.NotImplementedFeature),
        ({"model": _DROP}, errors.CorruptFile),
        ({"pre": "no-such-pre"}, errors.UnsupportedFormat),
        ({"pre": 7}, errors.UnsupportedFormat),
        ({"tokens": _DROP}, errors.CorruptFile),
        ({"tokens": "abc"}, errors.CorruptFile),
        ({"tokens": []}, errors.CorruptFile),
        ({"tokens": [b"a", b"b"]}, errors.CorruptFile),
        ({"merges": _DROP}, errors.CorruptFile),
        ({"merges": ["Ġ zzzz"]}, errors.CorruptFile),  # unknown right token
        ({"merges": ["nospace"]}, errors.CorruptFile),
        ({"merges": [5]}, errors.CorruptFile),
        ({"token_type": [1, 1]}, errors.CorruptFile),  # wrong length
        ({"bos_token_id": 10**6}, errors.CorruptFile),  # >= vocab size
        ({"eos_token_id": -1}, errors.CorruptFile),
        ({"eot_token_id": True}, errors.CorruptFile),
        ({"add_bos_token": "yes"}, errors.CorruptFile),
        ({"add_bos_token": True, "bos_token_id": _DROP}, errors.CorruptFile),
        ({"chat_template": 42}, errors.CorruptFile),
    ],
)
def test_gguf_errors(trained, changes, exc):
    with pytest.raises(exc, match=r"^\[tokenizer\]"):
        Tokenizer.from_gguf(_bad(trained, **changes), "f.gguf")


def test_gguf_structural_errors(trained):
    tokens, merges = trained
    with pytest.raises(errors.InvalidArgument):
        Tokenizer.from_gguf([1, 2], "f.gguf")  # type: ignore[arg-type]
    types = gguf_meta(trained)["tokenizer.ggml.token_type"]
    with pytest.raises(errors.CorruptFile, match="token_type"):
        Tokenizer.from_gguf(_bad(trained, token_type=[9] * len(types)), "f")
    with pytest.raises(errors.CorruptFile, match="unique"):
        Tokenizer.from_gguf(_bad(trained, tokens=[*tokens[:-1], tokens[0]]), "f")
    a, b = merges[-1].split(" ")  # the joined token vanishes from the vocab
    dropped = [t if t != a + b else "\x00gone" for t in tokens]
    with pytest.raises(errors.CorruptFile, match="merges"):
        Tokenizer.from_gguf(_bad(trained, tokens=dropped), "f")


def test_encode_decode_errors(trained):
    tok = _cached(trained)
    for bad in (b"bytes", None, 3):
        with pytest.raises(errors.InvalidArgument, match=r"^\[tokenizer\] encode"):
            tok.encode(bad)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument):
        tok.encode("lone \ud800 surrogate")
    for bad in ([tok.vocab_size], [-1], [1.0], ["a"], "abc", 5):
        with pytest.raises(errors.InvalidArgument, match=r"^\[tokenizer\] decode"):
            tok.decode(bad)  # type: ignore[arg-type]
    det = tok.detokenizer()
    for bad in (tok.vocab_size, -1, 2.5):
        with pytest.raises(errors.InvalidArgument, match=r"^\[tokenizer\] detokenizer"):
            det.add(bad)  # type: ignore[arg-type]


def test_native_bpe_long_words_and_raw_bytes(trained, tmp_path):
    # Long single words (merged by a priority queue, not quadratically), raw non-UTF-8 bytes (the
    # grammar engine's encoder) and a merge list with a repeated pair (the first rank counts, as
    # in llama.cpp).
    tok = _cached(trained)
    ref = reference(trained, "smollm", tmp_path)
    for word in ("a" * 20000, "the" * 5000, " " * 10000, "\n" * 3000 + "x"):
        assert tok.encode(word, add_special_tokens=False) == ref.encode(word).ids
    raw = tok._hf.encode_bytes(b"ok \xff\xfe\xc3")
    assert b"".join(tok._hf.token_bytes(t) for t in raw) == b"ok \xff\xfe\xc3"
    tokens, merges = trained
    again = Tokenizer.from_gguf(gguf_meta((tokens, [*merges, merges[0]]), "smollm"), "t")
    assert again.encode(SAMPLES[0]) == tok.encode(SAMPLES[0])


def test_folder_errors(trained, tmp_path):
    with pytest.raises(errors.FileNotFound):
        Tokenizer.from_folder(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(errors.CorruptFile, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)
    reference(trained, "smollm", tmp_path).save(str(tmp_path / "tokenizer.json"))
    cases = [
        ("tokenizer_config.json", "{oops", "valid JSON"),
        ("tokenizer_config.json", "[1]", "JSON object"),
        ("tokenizer_config.json", json.dumps({"bos_token": "<nope>"}), "bos_token"),
        ("tokenizer_config.json", json.dumps({"chat_template": 3}), "chat_template"),
        ("tokenizer_config.json", json.dumps({"add_bos_token": True}), "BOS"),
        ("generation_config.json", json.dumps({"eos_token_id": [2, 10**6]}), "eos_token_id"),
    ]
    for name, text, needle in cases:
        for other in ("tokenizer_config.json", "generation_config.json"):
            (tmp_path / other).unlink(missing_ok=True)
        (tmp_path / name).write_text(text)
        with pytest.raises(errors.CorruptFile, match=needle):
            Tokenizer.from_folder(tmp_path)


def test_from_folder_more_tokens_than_model_rows(trained, tmp_path):
    # Found by the fuzzer: a tokenizer.json larger than the model's embedding produced ids the
    # model rejects only at generation time; it is now a CorruptFile when the folder loads.
    reference(trained, "smollm", tmp_path).save(str(tmp_path / "tokenizer.json"))
    n = Tokenizer.from_folder(tmp_path).vocab_size
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": n - 1}))
    with pytest.raises(errors.CorruptFile, match=f"at most {n - 1} tokens"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": n + 64}))  # padded model
    assert Tokenizer.from_folder(tmp_path).vocab_size == n
