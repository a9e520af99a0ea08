"""SentencePiece GGUF vocabularies (metallic._gguf_spm): ids equal llama.cpp's, round trips, byte
fallback, marker tokens, streaming, malformed metadata.

Reference ids live in tests/fixtures/spm_tokenizer.json, written by
scripts/make_tokenizer_fixtures.py with llama.cpp (llama-cpp-python), HF transformers and the
sentencepiece library; none of them is needed here. The fixture also holds the synthetic
vocabulary: SentencePiece BPE trained by that script, with byte fallback, control tokens
(<s>, </s>, <start_of_turn>, <end_of_turn>), <unk> and a user-defined <tool>.

What round-trips (``decode(encode(s, add_special_tokens=False))``), for text without a literal
``▁`` (U+2581, which decodes to a space):
* no space prefix (Gemma): exactly ``s``, marker tokens included;
* space prefix (Llama 2): ``s`` with one ``" "`` added after each marker token that is followed
  by text, because llama.cpp prefixes a space to the text after every marker and decoding only
  drops the one at the very start. So exactly ``s`` when ``s`` holds no marker.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metallic import errors
from metallic.tokenizer import Tokenizer

FIXTURE = json.loads(
    (pathlib.Path(__file__).parent.parent / "fixtures" / "spm_tokenizer.json").read_text("utf-8")
)
SYN = FIXTURE["synthetic"]
TEXTS = FIXTURE["texts"]
VOCAB = {t: i for i, t in enumerate(SYN["tokens"])}
MARKERS = sorted(
    (t for t, k in zip(SYN["tokens"], SYN["types"], strict=True) if k in (2, 3, 4)), key=len
)[::-1]
_MARKER_RE = re.compile("(" + "|".join(map(re.escape, MARKERS)) + ")")
# Strings where HF transformers gives other ids than llama.cpp (ours follow llama.cpp):
# * Llama-style files: transformers' Metaspace(prepend_scheme="first") adds no "▁" to text that
#   already starts with one or that follows a marker token; llama.cpp and sentencepiece always do.
# * Gemma: transformers respells the space-run tokens ("  ") as "▁▁", so a literal U+2581 in the
#   text merges into them; llama.cpp matches them as raw spaces only.
HF_DIFFERS = {
    "gemma-3-270m": {"▁ literal sentencepiece space ▁▁"},
    "synthetic-llama": {
        " Hello",
        "  two leading and two trailing  ",
        " ",
        "   ",
        "<start_of_turn>user\nWhat's 2+2?<end_of_turn>\n<start_of_turn>model\n",
        "call <tool> now",
        "▁ literal sentencepiece space ▁▁",
    },
    "synthetic-gemma": set(),
}


def spm_meta(prefix: bool = True, **changes) -> dict:
    """GGUF tokenizer metadata of the synthetic vocabulary (``changes``: key suffix -> value)."""
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",  # ignored for SentencePiece, as in llama.cpp
        "tokenizer.ggml.tokens": list(SYN["tokens"]),
        "tokenizer.ggml.scores": list(SYN["scores"]),
        "tokenizer.ggml.token_type": list(SYN["types"]),
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": prefix,
    }
    for key, value in changes.items():
        full = f"tokenizer.ggml.{key}"
        if value is _DROP:
            meta.pop(full, None)
        else:
            meta[full] = value
    return meta


_DROP = object()
_TOKENIZERS: dict[bool, Tokenizer] = {}


def synthetic(prefix: bool) -> Tokenizer:
    if prefix not in _TOKENIZERS:
        _TOKENIZERS[prefix] = Tokenizer.from_gguf(spm_meta(prefix), "synthetic.gguf")
    return _TOKENIZERS[prefix]


def check_fixture_ids(tok: Tokenizer, name: str) -> None:
    refs = FIXTURE["vocabularies"][name]
    assert refs["llama_cpp"] is not None, "fixture written without llama.cpp"
    for i, text in enumerate(TEXTS):
        ids = tok.encode(text)
        assert ids == refs["llama_cpp"][i], (name, text)
        if refs["sentencepiece"] is not None and refs["sentencepiece"][i] is not None:
            assert ids == refs["sentencepiece"][i], (name, text)
        assert (ids != refs["transformers"][i]) == (text in HF_DIFFERS[name]), (name, text)


def spm_reference(text: str, prefix: bool) -> list[int]:
    """llama.cpp's SPM tokenizer written out naively (no BOS): the oracle for hypothesis.

    Markers are cut out; the text after the start or a marker gets " " when ``prefix``;
    spaces become ▁; then the adjacent pair whose join is the best-scoring token merges (leftmost
    on ties) until none is a token; leftovers become <0xXX> byte tokens.
    """
    out: list[int] = []
    after_marker = True
    for part in _MARKER_RE.split(text):
        if part in VOCAB and part in MARKERS:
            out.append(VOCAB[part])
            after_marker = True
            continue
        if not part:
            continue
        syms = list(((" " if prefix and after_marker else "") + part).replace(" ", "\u2581"))
        while True:
            best, best_score = -1, None
            for j in range(len(syms) - 1):
                tid = VOCAB.get(syms[j] + syms[j + 1])
                if tid is not None and (best_score is None or SYN["scores"][tid] > best_score):
                    best, best_score = j, SYN["scores"][tid]
            if best < 0:
                break
            syms[best : best + 2] = [syms[best] + syms[best + 1]]
        for sym in syms:
            out += [VOCAB[sym]] if sym in VOCAB else [VOCAB[f"<0x{b:02X}>"] for b in sym.encode()]
        after_marker = False
    return out


_PIECES = [t for t, k in zip(SYN["tokens"], SYN["types"], strict=True) if k == 1]
TEXT = st.lists(
    st.one_of(
        st.sampled_from(_PIECES).map(lambda p: p.replace("\u2581", " ")),
        st.sampled_from([" ", "  ", "\n", "\t", "🎉", "中", "é", "\u0fff", "<0x41>", "<s"]),
        st.sampled_from(MARKERS),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=12,
).map("".join)
HYP = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- ids against references
@pytest.mark.parametrize("name", ["synthetic-llama", "synthetic-gemma"])
def test_synthetic_ids_match_references(name):
    check_fixture_ids(synthetic(name == "synthetic-llama"), name)


@pytest.mark.parametrize("prefix", [True, False])
def test_matches_llama_cpp_algorithm(prefix):
    tok = synthetic(prefix)

    @HYP
    @given(TEXT)
    def check(text):
        assert tok.encode(text, add_special_tokens=False) == spm_reference(text, prefix)

    check()


def test_markers_whole_and_byte_fallback():
    tok = synthetic(False)
    assert tok.encode("<start_of_turn><end_of_turn><tool><unk></s>", add_special_tokens=False) == [
        VOCAB[m] for m in ("<start_of_turn>", "<end_of_turn>", "<tool>", "<unk>", "</s>")
    ]
    assert "🎉" not in VOCAB and "\u0fff" not in VOCAB  # -> one byte token per UTF-8 byte
    assert tok.encode("🎉\u0fff", add_special_tokens=False) == [
        VOCAB[f"<0x{b:02X}>"] for b in "🎉\u0fff".encode()
    ]
    # Text spelling a byte token is text, not the byte (llama.cpp never cuts byte tokens out).
    assert VOCAB["<0x41>"] not in tok.encode("<0x41>", add_special_tokens=False)
    llama = synthetic(True)
    assert llama.encode("hi")[0] == 1 and llama.encode("hi", add_special_tokens=False)[0] != 1
    assert llama.encode("") == [1] and llama.encode("", add_special_tokens=False) == []
    assert llama.bos_id == 1 and llama.eos_ids == frozenset({2, VOCAB["<end_of_turn>"]})


def test_llama_cpp_defaults_when_keys_are_missing():
    drop = {k: _DROP for k in ("unknown_token_id", "bos_token_id", "eos_token_id")}
    drop.update(add_bos_token=_DROP, add_space_prefix=_DROP)
    tok = Tokenizer.from_gguf(spm_meta(**drop), "t")  # unk 0, bos 1, eos 2, BOS, space prefix
    assert tok.bos_id == 1 and 2 in tok.eos_ids
    ids = tok.encode("hi")
    assert ids[0] == 1 and ids[1:] == synthetic(True).encode("hi", add_special_tokens=False)


def test_vocabulary_without_byte_tokens_uses_unk():
    # No <0xXX> tokens at all: unknown characters become <unk>, consecutive ones fused (as
    # sentencepiece does; llama.cpp would fail to find the byte tokens).
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -5.0, -6.0, -7.0, -1.0, -2.0, -3.0],
        "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1, 1],
    }
    tok = Tokenizer.from_gguf(meta, "t")
    assert tok.encode("ab zz b", add_special_tokens=False) == [8, 3, 0, 3, 5]


def _small(tokens: list[str], scores: list[float], types: list[int], prefix: bool = False):
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": prefix,
    }
    return Tokenizer.from_gguf(meta, "small.gguf")


def test_llama_cpp_rules_where_hf_merges_could_not_follow():
    # The three former differences from llama.cpp (the HF rebuild could not express them):
    # * markers are cut longest first over the whole text, not leftmost-longest: "bcd" (3 bytes)
    #   is taken before "ab" in "abcd";
    # * a token whose characters are not tokens still forms: "xy" without "x" or "y";
    # * two different tokens with the same score merge leftmost first, whatever their ids.
    tokens = ["<unk>", "<s>", "</s>", "ab", "bcd", "a", "c", "d", "xy", "cd", "dc", "zz"]
    scores = [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0, -2.0, -2.0, -0.5]
    types = [2, 3, 3, 4, 4, 1, 1, 1, 1, 1, 1, 1]
    tok = _small(tokens, scores, types)
    assert tok.encode("abcd", add_special_tokens=False) == [5, 4]  # "a" "bcd"
    assert tok.encode("xy", add_special_tokens=False) == [8]
    # "dcd": "dc" (id 10) and "cd" (id 9) both score -2; the leftmost pair "dc" merges first
    # ("dcd" is no token): ids [10, 7]; a race by id would take "cd" first: [7, 9].
    assert tok.encode("dcd", add_special_tokens=False) == [10, 7]


def test_control_tokens_stay_text_for_the_grammar_encoder():
    tok = synthetic(False)
    spm = tok._hf
    marker = "<start_of_turn>"
    assert spm.encode_bytes(marker.encode()) != [VOCAB[marker]]  # control: text, not the marker
    assert spm.encode_bytes(b"<tool>") == [VOCAB["<tool>"]]  # user-defined: always cut out
    assert spm.encode_bytes("é".encode()) == tok.encode("é", add_special_tokens=False)


def test_decode_and_pieces():
    tok = synthetic(True)
    assert tok._hf.id_to_token(VOCAB["<s>"]) == "<s>" and tok._hf.id_to_token(10**9) is None
    assert tok._hf.token_to_id("<tool>") == VOCAB["<tool>"] and tok._hf.token_to_id("zzz!") is None
    with pytest.raises(errors.InvalidArgument, match=r"token id: expected an id in \[0, "):
        tok._hf.token_bytes(-1)
    with pytest.raises(errors.InvalidArgument, match="expected valid Unicode"):
        tok.encode("a\udc80b")
    # The unfinished character at the end becomes one U+FFFD, as in the streaming decoder.
    ids = [VOCAB["<0xF0>"], VOCAB["<0x9F>"]]
    assert tok.decode(ids) == "\ufffd" == "".join(_stream(tok, ids))


# ---------------------------------------------------------------- round trips
def _with_marker_spaces(text: str) -> str:
    """``text`` with " " after each marker that is followed by non-marker text."""
    parts = [p for p in _MARKER_RE.split(text) if p]
    return "".join(
        p + " " if p in MARKERS and i + 1 < len(parts) and parts[i + 1] not in MARKERS else p
        for i, p in enumerate(parts)
    )


@HYP
@given(TEXT.filter(lambda t: "\u2581" not in t))
def test_roundtrip(text):
    gemma_style, llama_style = synthetic(False), synthetic(True)
    assert gemma_style.decode(gemma_style.encode(text, add_special_tokens=False)) == text
    ids = llama_style.encode(text, add_special_tokens=False)
    assert llama_style.decode(ids) == _with_marker_spaces(text)
    if not _MARKER_RE.search(text):
        assert llama_style.decode(llama_style.encode(text), skip_special_tokens=True) == text


def test_literal_sentencepiece_space_decodes_to_space():
    tok = synthetic(False)
    assert tok.decode(tok.encode("a\u2581b", add_special_tokens=False)) == "a b"


# ---------------------------------------------------------------- streaming
def _stream(tok: Tokenizer, ids: list[int], **kw) -> list[str]:
    det = tok.detokenizer(**kw)
    return [*(det.add(i) for i in ids), det.finalize()]


@HYP
@given(TEXT, st.booleans())
def test_stream_equals_decode(text, prefix):
    tok = synthetic(prefix)
    ids = tok.encode(text)
    chunks = _stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids)
    assert all("\ufffd" not in c for c in chunks) or "\ufffd" in text
    skipped = "".join(_stream(tok, ids, skip_special_tokens=True))
    assert skipped == tok.decode(ids, skip_special_tokens=True)


@HYP
@given(st.data())
def test_stream_random_ids_never_split_a_character(data):
    tok = synthetic(True)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))
    for chunk in _stream(tok, ids):
        chunk.encode("utf-8")  # no lone surrogates
    if "\ufffd" not in tok.decode(ids):
        assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_stream_holds_back_byte_tokens():
    tok = synthetic(False)
    ids = tok.encode("a🎉", add_special_tokens=False)
    assert ids[1:] == [VOCAB[f"<0x{b:02X}>"] for b in "🎉".encode()]  # <0xF0> <0x9F> ...
    det = tok.detokenizer()
    assert [det.add(i) for i in ids] == ["a", "", "", "", "🎉"]
    det = tok.detokenizer()
    assert [det.add(i) for i in ids[:3]] == ["a", "", ""] and det.finalize() == "\ufffd"


# ---------------------------------------------------------------- malformed metadata
_BYTE_41_AS_NORMAL = [
    1 if t == "<0x41>" else k for t, k in zip(SYN["tokens"], SYN["types"], strict=True)
]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"scores": _DROP}, "scores"),
        ({"scores": [0.0] * 5}, "scores"),
        ({"scores": [*SYN["scores"][:-1], float("nan")]}, rf"scores\[{len(SYN['scores']) - 1}\]"),
        ({"scores": ["x"] * len(SYN["scores"])}, r"scores\[0\]"),
        ({"scores": "abc"}, "scores"),
        ({"tokens": _DROP}, "tokens"),
        ({"tokens": [1, 2, 3]}, "tokens"),
        ({"tokens": [*SYN["tokens"][:-1], "<s>"]}, "tokens"),  # duplicate
        ({"token_type": [1, 1]}, "token_type"),
        ({"token_type": [9] * len(SYN["types"])}, "token_type"),
        ({"token_type": ["1"] * len(SYN["types"])}, "token_type"),
        ({"token_type": [[1]] * len(SYN["types"])}, "token_type"),
        ({"tokens": [t if t != "<0x41>" else "<0xZZ>" for t in SYN["tokens"]]}, r"tokens\[\d+\]"),
        ({"tokens": [t if t != "<0x41>" else "<0x4>" for t in SYN["tokens"]]}, r"tokens\[\d+\]"),
        ({"tokens": [t if t != "<0x41>" else "<0x4a>" for t in SYN["tokens"]]}, r"tokens\[\d+\]"),
        ({"token_type": _BYTE_41_AS_NORMAL}, "tokens: expected all 256 byte tokens"),
        ({"add_space_prefix": "yes"}, "add_space_prefix"),
        ({"unknown_token_id": 10**6}, "unknown_token_id"),
        ({"unknown_token_id": -1}, "unknown_token_id"),
        ({"bos_token_id": True}, "bos_token_id"),
        ({"add_bos_token": 1}, "add_bos_token"),
    ],
)
def test_malformed_metadata(changes, key):
    with pytest.raises(
        errors.CorruptFile, match=rf"^\[tokenizer\] f\.gguf: tokenizer\.ggml\.{key}"
    ):
        Tokenizer.from_gguf(spm_meta(**changes), "f.gguf")


def test_other_tokenizer_models_are_not_implemented():
    with pytest.raises(errors.NotImplementedFeature, match=r"^\[tokenizer\] f: .*'t5'"):
        Tokenizer.from_gguf(spm_meta(model="t5"), "f")


# ---------------------------------------------------------------- real Gemma-3-270M
@pytest.fixture(scope="module")
def gemma(gemma3_path) -> Tokenizer:
    from metallic.gguf import GGUFFile

    with GGUFFile(gemma3_path) as f:
        meta = dict(f.metadata)
    return Tokenizer.from_gguf(meta, str(gemma3_path))


def test_gemma3_ids_match_references(gemma):
    check_fixture_ids(gemma, "gemma-3-270m")


def test_gemma3_vocabulary_facts(gemma):
    assert gemma.vocab_size == 262144 and gemma.bos_id == 2
    assert gemma.eos_ids == frozenset({1, 106})  # <eos>, and <end_of_turn> (an EOG marker)
    assert gemma.chat_template is None  # the base model's GGUF ships no template
    # add_space_prefix is false in the file: "Hello" and " Hello" are different tokens.
    assert gemma.encode("Hello", add_special_tokens=False) == [9259]
    assert gemma.encode(" Hello", add_special_tokens=False) == [26352]
    assert gemma.encode("a  b\n\n", add_special_tokens=False) == [236746, 138, 236763, 108]
    # ids above: llama.cpp (llama-cpp-python 0.3.36, vocab_only, add_bos=False, special=True)
    for text in TEXTS:
        if "\u2581" not in text:
            assert gemma.decode(gemma.encode(text, add_special_tokens=False)) == text


def test_gemma3_chat_markers(gemma):
    # A Gemma-style template (the file has none): BOS written by the template, turn markers.
    template = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>"
        "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    tok = Tokenizer(
        gemma._hf,
        source="gemma",
        bos_id=gemma.bos_id,
        eos_ids=gemma.eos_ids,
        eos_id=1,
        add_bos=True,
        chat_template=template,
    )
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    text = tok.apply_chat_template(messages)
    assert text.startswith("<bos><start_of_turn>user\nHi there<end_of_turn>\n")
    assert text.endswith("<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == 2 and ids.count(2) == 1 and ids.count(105) == 4 and ids.count(106) == 3
    assert tok.decode(ids) == text
    assert "".join(_stream(tok, ids, skip_special_tokens=True)) == tok.decode(
        ids, skip_special_tokens=True
    )


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_gemma3_stream(gemma, data):
    ids = data.draw(st.lists(st.integers(0, gemma.vocab_size - 1), max_size=24))
    for chunk in _stream(gemma, ids):
        chunk.encode("utf-8")
    if "\ufffd" not in gemma.decode(ids):
        assert "".join(_stream(gemma, ids)) == gemma.decode(ids)
    text = data.draw(TEXT)
    encoded = gemma.encode(text)
    assert "".join(_stream(gemma, encoded)) == gemma.decode(encoded)
