#!/usr/bin/env python3
"""Regenerate tests/fixtures/spm_tokenizer.json: SentencePiece token ids from independent tokenizers.

Not a CI step and not a test dependency: run it by hand when the cases or the references change.

    pip install torch==2.13.0 transformers sentencepiece gguf   # references, not CI deps
    pip install llama-cpp-python==0.3.36   # optional: llama.cpp ids (builds from source, ~7 min
                                           # on 2 cores; /work/shared/REFERENCE.md has the flags)
    PYTHONPATH=src python3 scripts/make_tokenizer_fixtures.py [--out PATH]

What it writes:

* ``synthetic``: a small SentencePiece BPE vocabulary (byte fallback, control and user-defined
  symbols) trained here with the ``sentencepiece`` package on :data:`CORPUS`, stored as the GGUF
  arrays llama.cpp's converter writes (``tokens``, ``scores``, ``token_type``). The tests rebuild
  GGUF metadata from it without needing ``sentencepiece``.
* ``texts``: :data:`CASES`. ``vocabularies``: for each vocabulary (Gemma-3-270M from the
  registry; the synthetic one written as a Llama-2-style GGUF, ``add_space_prefix`` true + BOS,
  and as a Gemma-style one, no space prefix) a list of ids per text under each reference name
  (None where it was not run), with BOS/EOS as the model adds them: HF
  ``transformers`` (``AutoTokenizer.from_pretrained(dir, gguf_file=name)``, which builds its own
  tokenizer from the GGUF metadata), from llama.cpp when ``llama_cpp`` is importable
  (``Llama(path, vocab_only=True).tokenize(text, add_bos=True, special=True)``), and for the
  Llama-2-style file from the ``sentencepiece`` model itself (texts without marker tokens).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "spm_tokenizer.json"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello there!",
    "def main(argv):\n    for i in range(10):\n        print(i * 2)  # twice\n    return 0\n",
    "Numbers: 12345, 3.14159, 2024-11-24 and 1000000 people.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Привет, мир!",
    "東京は日本の首都です。中文也很好。日本語のテキスト。",
    "مرحبا بالعالم. الخط العربي جميل جدا.",
    "नमस्ते दुनिया। हिन्दी भाषा भारत में बोली जाती है।",
    "It's what they've said: we'll see, I'm sure. DON'T SHOUT.",
    "    indented    text  with   runs of     spaces\tand\ttabs\n\n\nnewlines",
    "café naïve résumé über straße",
] * 8
CONTROL = ["<start_of_turn>", "<end_of_turn>"]
USER_DEFINED = ["<tool>"]
VOCAB_SIZE = 700

CASES = [
    "Hello world",
    "hello",
    " Hello",
    "Hello ",
    "  two leading and two trailing  ",
    "a  b   c    d",
    " ",
    "   ",
    "line one\nline two\n\nline four\n",
    "tabs\there\t\tand\t\t\tthere",
    "\r\n windows \r\n",
    "The year 2024 had 365 days; π≈3.14159 and 1234567",
    "Punctuation!? (yes) [no] {maybe} <tag> 'quote' \"double\" ...",
    "def f(x):\n    return x**2  # square\n",
    "for (int i = 0; i < n; ++i) { s += a[i]; }",
    "日本語のテキストと中文字符",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Emoji: 🎉👩\u200d👩\u200d👧\u200d👦🇫🇷 done",
    "absent: \u0fff \U000e0001 \U0010fffd ꙮ 𓀀",  # rare / unassigned: byte fallback
    "<start_of_turn>user\nWhat's 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "text<end_of_turn>",
    "<start_of_turn>",
    "<start_of_turn><end_of_turn>",
    "call <tool> now",
    "▁ literal sentencepiece space ▁▁",
    "<0x41> is not a byte token in text",
    "I'm sure they've done it, we'll see. DON'T",
    "mixed Ελληνικά ქართული 한국어 text",
    "",
]


def train_synthetic(work: pathlib.Path):
    """SentencePiece BPE on CORPUS: ({"tokens", "scores", "types"} as llama.cpp writes, model)."""
    import sentencepiece as spm

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(work / "spm"),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=False,
        control_symbols=CONTROL,
        user_defined_symbols=USER_DEFINED,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            kind = 2
        elif sp.is_control(i):
            kind = 3
        elif sp.is_unused(i):
            kind = 5
        elif sp.is_byte(i):
            kind = 6
        elif tokens[-1] in USER_DEFINED:
            kind = 4
        else:
            kind = 1
        types.append(kind)
    return {"tokens": tokens, "scores": scores, "types": types}, sp


def sentencepiece_ids(sp) -> list[list[int] | None]:
    """The ``sentencepiece`` library's own ids (BOS first) for the Llama-2-style file.

    Only for texts without control / user-defined symbols: sentencepiece keeps control symbols as
    plain text and does not prefix a space after a user-defined one, while llama.cpp cuts both
    out and prefixes a space to the text after each.
    """
    marked = [*CONTROL, *USER_DEFINED]
    return [None if any(m in text for m in marked) else [1, *sp.encode(text)] for text in CASES]


def write_gguf(path: pathlib.Path, arch: str, vocab: dict, *, space_prefix: bool) -> None:
    """A tensor-free GGUF holding the vocabulary and the few hyper-parameters loaders require."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_key_length(16)
    w.add_value_length(16)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(vocab["tokens"]))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab["tokens"])
    w.add_token_scores(vocab["scores"])
    w.add_token_types(vocab["types"])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reference_ids(path: pathlib.Path) -> dict[str, list[list[int]] | None]:
    """{"transformers": ids per case, "llama_cpp": ids per case, or None without llama_cpp}."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    out: dict[str, list[list[int]] | None] = {
        "transformers": [hf(text)["input_ids"] for text in CASES],
        "llama_cpp": None,
    }
    try:
        import llama_cpp
    except ImportError:
        print("llama_cpp not importable: llama.cpp ids not recorded", file=sys.stderr)
        return out
    model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    # add_bos=True is llama_tokenize's add_special: BOS/EOS as the file's add_*_token flags say.
    out["llama_cpp"] = [model.tokenize(t.encode(), add_bos=True, special=True) for t in CASES]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    import transformers

    from metallic import registry

    fixture: dict = {
        "generator": "scripts/make_tokenizer_fixtures.py",
        "transformers": transformers.__version__,
        "llama_cpp": None,
        "texts": CASES,
        "synthetic": None,
        "vocabularies": {},
    }
    try:
        import llama_cpp

        fixture["llama_cpp"] = llama_cpp.__version__
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        vocab, sp = train_synthetic(work)
        fixture["synthetic"] = vocab
        files = {"gemma-3-270m": registry.resolve("gemma-3-270m")}
        for name, arch, prefix in (
            ("synthetic-llama", "llama", True),
            ("synthetic-gemma", "gemma3", False),
        ):
            folder = work / name
            folder.mkdir()
            files[name] = folder / f"{name}.gguf"
            write_gguf(files[name], arch, vocab, space_prefix=prefix)
        for name, path in files.items():
            ids = reference_ids(pathlib.Path(path))
            ids["sentencepiece"] = sentencepiece_ids(sp) if name == "synthetic-llama" else None
            fixture["vocabularies"][name] = ids
            for ref in ("llama_cpp", "sentencepiece"):
                if ids[ref] is not None:
                    same = sum(
                        a == b for a, b in zip(ids[ref], ids["transformers"], strict=True) if a
                    )
                    known = sum(a is not None for a in ids[ref])
                    print(f"{name}: transformers == {ref} on {same} of {known} strings")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
