"""Tests for metallic.chat: HF-compatible template environment and typed errors."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import sys

import pytest

import metallic
from metallic import errors
from metallic.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate, validate_messages

MESSAGES = [{"role": "user", "content": "héllo"}]


def test_default_template_is_chatml():
    text = ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(
        [{"role": "system", "content": "s"}, *MESSAGES]
    )
    assert (
        text
        == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nhéllo<|im_end|>\n<|im_start|>assistant\n"
    )
    bare = ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(MESSAGES, add_generation_prompt=False)
    assert bare == "<|im_start|>user\nhéllo<|im_end|>\n"


def test_trim_and_lstrip_blocks():
    source = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}"
    assert ChatTemplate(source).render(MESSAGES) == "U:héllo\n"


def test_helpers_and_variables():
    source = (
        "{{ bos_token }}{{ messages | tojson }}|{{ strftime_now('%Y') }}|"
        "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{% endfor %}"
        "{{ add_generation_prompt }}{{ eos_token }}"
    )
    out = ChatTemplate(source).render(MESSAGES, bos_token="<s>", eos_token="</s>")
    year = str(datetime.datetime.now().year)
    assert out == f'<s>[{{"role": "user", "content": "héllo"}}]|{year}|True</s>'


def test_template_errors():
    with pytest.raises(errors.CorruptFile, match=r"^\[tokenizer\].*syntax error at line 1"):
        ChatTemplate("{% for x in %}").render(MESSAGES)
    with pytest.raises(errors.CorruptFile):
        ChatTemplate(3)  # type: ignore[arg-type]
    strict = "{% if messages[0].role != 'system' %}{{ raise_exception('need a system turn') }}{% endif %}"
    with pytest.raises(errors.InvalidArgument, match="need a system turn"):
        ChatTemplate(strict).render(MESSAGES)
    with pytest.raises(errors.InvalidArgument, match=r"^\[tokenizer\] chat_template"):
        ChatTemplate("{{ messages[5].content }}").render(MESSAGES)
    with pytest.raises(errors.InvalidArgument, match="render"):
        ChatTemplate("{{ messages.__class__.__mro__ }}{{ messages.append(1) }}").render(MESSAGES)


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        [["role", "user"]],
        [{"role": "user"}],
        [{"role": 1, "content": "x"}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    ],
)
def test_message_validation(bad):
    with pytest.raises(errors.InvalidArgument, match=r"^\[tokenizer\] chat_template: messages"):
        validate_messages(bad)
    with pytest.raises(errors.InvalidArgument):
        ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(bad)


# Found by the fuzzer (tests/fuzz): a hostile template could hang the process (nested loops) or
# allocate gigabytes (`*`, `**`, format widths) before any error. Each now ends in
# InvalidArgument quickly.
@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "steps",
        ),
        (
            "{% for a in 'x' * 100000 %}{% for b in 'y' * 100000 %}x{% endfor %}{% endfor %}",
            "steps",
        ),
        ("{{ 'x' * 10000000000 }}", r"`\*` would build"),
        ("{{ [1] * 100000000 }}", r"`\*` would build"),
        ("{{ 2 ** 99999999999 }}", r"`\*\*` would build"),
        ("{{ '{:>2000000000}'.format('a') }}", "format width"),
        ("{{ '{0:>2000000000}'.format_map({'0': 1}) }}", "format width"),
        ("{{ '%2000000000d' % 1 }}", "format width"),
        ("{{ '%2000000000d' | format(1) }}", "format width"),
        ("{{ 'x' | center(2000000000) }}", "center width"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ],
)
def test_render_limits(source, fragment):
    import sys
    import time

    before = sys.gettrace()
    t0 = time.monotonic()
    with pytest.raises(errors.InvalidArgument, match=fragment):
        ChatTemplate(source).render(MESSAGES)
    assert time.monotonic() - t0 < 10
    assert sys.gettrace() is before  # the step counter is removed again


def test_render_limits_leave_normal_templates_alone():
    long = [{"role": "user", "content": "x" * 1000}] * 500
    text = ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(long)
    assert text.count("<|im_start|>") == 501
    assert ChatTemplate("{{ 'ab' * 3 }}{{ 2 ** 10 }}{{ '%5d' % 7 }}").render(MESSAGES) == (
        "ababab1024    7"
    )


# jinja2 costs ~20 ms to import (an eighth of loading SmolLM2), so metallic imports it when the
# first template is compiled, not with the package or the tokenizer. HF tokenizers (~5 ms) is
# checked on the same path: a GGUF vocabulary runs natively and needs only from_folder's import.
_IMPORT_PROBE = """
import json, sys
seen = {}
def note(stage):
    seen[stage] = [m for m in ("jinja2", "tokenizers") if m in sys.modules]
import metallic
note("import metallic")
with metallic.load(sys.argv[1], device="cpu", threads=1, context_length=16) as model:
    note("metallic.load")
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    note("apply_chat_template")
print(json.dumps({"seen": seen, "text": text}))
"""


def test_jinja2_is_imported_by_the_first_render_only(tmp_path):
    tiny_models = pytest.importorskip("tiny_models")
    model = tiny_models.make_model(tmp_path, "llama", "f32", "gguf")
    src = str(pathlib.Path(metallic.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, str(model.path)],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["seen"] == {
        "import metallic": [],
        "metallic.load": [],
        "apply_chat_template": ["jinja2"],
    }
    assert out["text"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
