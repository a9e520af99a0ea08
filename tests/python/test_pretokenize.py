"""The hand-written pre-tokenizer scanners (native/tokenizer/pretokenize.cpp) against the regexes
they stand for, run by HF ``tokenizers``' own regex engine (an independent implementation).

Each family of :data:`metallic._gguf_vocab.PRE_TOKENIZERS` is a sequence of regexes, each
splitting every piece into its matches and the text between them (``Split(..., "isolated")``).
The words of arbitrary text must be the same, character for character.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, pre_tokenizers

from metallic import _core
from metallic._gguf_vocab import PRE_TOKENIZERS

# Characters where the rules differ: every White_Space kind, \r\n, apostrophes and contraction
# letters in both cases, ASCII and other digits (Nd, No, Nl), punctuation and symbols that the
# "default" family treats as punctuation, letters of several scripts, marks, emoji.
_TRICKY = list(" \t\n\r\x0b\x0c\x85\xa0\u1680\u2002\u2028\u2029\u202f\u3000\x1c")
_TRICKY += list("'sStTmMdDrReEvVlL") + list("0123456789٣²Ⅻ½") + list("$+<=>^~|.,!?-_()[]…«»")
_TRICKY += list("aZéПعह東\u0301😀") + ["\ud7ff", "\U0010fffd"]
TEXT = st.text(st.one_of(st.sampled_from(_TRICKY), st.characters(blacklist_categories=("Cs",))))
WORDS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def reference_words(family: str, text: str) -> list[str]:
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[family]]
    return [w for w, _ in pre_tokenizers.Sequence(splits).pre_tokenize_str(text)]


def native_words(family: str, text: str) -> list[str]:
    data = text.encode()
    return [data[b:e].decode() for b, e in _core.pre_tokenize(family, data)]


@pytest.mark.parametrize("family", sorted(PRE_TOKENIZERS))
def test_words_match_the_regexes(family):
    @WORDS
    @given(TEXT)
    def check(text):
        assert native_words(family, text) == reference_words(family, text)

    check()


@pytest.mark.parametrize("family", sorted(PRE_TOKENIZERS))
@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello world",
        "   leading and trailing   ",
        "a\n\n  b\r\n\tc  \n",
        "I'm sure they've done it, WE'LL see. DON'T 's",
        "12345 1234567 ٣٣٣٣ ²²",
        "x=1+2^3|y~z<w>$ ... !!",
        "tab\tsep\u00a0nbsp\u3000ideo",
    ],
)
def test_words_of_known_texts(family, text):
    assert native_words(family, text) == reference_words(family, text)


def test_invalid_utf8_bytes_are_words_of_their_own_class():
    data = b"ab\xffcd \x80\xc3"
    spans = _core.pre_tokenize("gpt2", data)
    assert b"".join(data[b:e] for b, e in spans) == data  # every byte in exactly one word


def test_unknown_family_is_invalid_argument():
    from metallic import errors

    with pytest.raises(errors.InvalidArgument, match=r"^\[tokenizer\] pre: expected one of"):
        _core.pre_tokenize("bert", b"x")
