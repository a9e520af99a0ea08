"""Tests for metallic.chat: HF-compatible template environment and typed errors."""

from __future__ import annotations

import datetime

import pytest

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
