"""Chat-template rendering for :class:`metallic.tokenizer.Tokenizer`.

Templates are Jinja2 text shipped with the model (``tokenizer.chat_template`` in a GGUF,
``chat_template`` in ``tokenizer_config.json``). They run in an immutable sandbox with the
conventions HF ``transformers`` templates rely on: ``trim_blocks`` / ``lstrip_blocks``, the
``loopcontrols`` extension, a ``raise_exception(msg)`` helper, ``strftime_now(fmt)`` and a
``tojson`` filter that keeps non-ASCII text as is.

Error mapping (all messages start with ``[tokenizer] chat_template:``):

* the template does not compile → :class:`~metallic.errors.CorruptFile` (the model file is bad);
* the template calls ``raise_exception`` or fails while rendering (a missing key, a type error,
  a sandbox violation) → :class:`~metallic.errors.InvalidArgument` (usually the messages);
* ``messages`` is not a list of ``{"role": str, "content": str}`` dicts →
  :class:`~metallic.errors.InvalidArgument`.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import errors

_TAG = "[tokenizer] chat_template"

#: Used when a model ships no template: plain ChatML (``<|im_start|>role\ncontent<|im_end|>\n``
#: per message, then ``<|im_start|>assistant\n`` when a generation prompt is asked for).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _RaisedByTemplate(Exception):
    """Raised by the template's own ``raise_exception(msg)`` call."""


def _raise_exception(message: object) -> None:
    raise _RaisedByTemplate(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
        undefined=jinja2.Undefined,
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Check that ``messages`` is a list of dicts with ``str`` ``role`` and ``content``.

    Args:
        messages: what the caller passed to ``apply_chat_template``.

    Returns:
        A shallow copy of the list (so the template cannot see later mutations).

    Raises:
        errors.InvalidArgument: naming the first offending message and field.
    """
    if not isinstance(messages, (list, tuple)):
        raise errors.InvalidArgument(
            f"{_TAG}: messages: expected a list of dicts, got {type(messages).__name__}"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise errors.InvalidArgument(
                f"{_TAG}: messages[{i}]: expected a dict, got {type(message).__name__}"
            )
        for key in ("role", "content"):
            value = message.get(key)
            if not isinstance(value, str):
                raise errors.InvalidArgument(
                    f"{_TAG}: messages[{i}]['{key}']: expected str, got {type(value).__name__}"
                )
    return list(messages)


class ChatTemplate:
    """A compiled chat template (compiled lazily on first use, then cached).

    Args:
        source: the Jinja2 template text.
        origin: where it came from, for error messages (a file path or GGUF key).
    """

    def __init__(self, source: str, origin: str = "chat_template") -> None:
        if not isinstance(source, str):
            raise errors.CorruptFile(
                f"[tokenizer] {origin}: expected a template string, got {type(source).__name__}"
            )
        self.source = source
        self.origin = origin
        self._compiled: jinja2.Template | None = None

    def _template(self) -> jinja2.Template:
        if self._compiled is None:
            try:
                self._compiled = _environment().from_string(self.source)
            except jinja2.TemplateSyntaxError as exc:
                raise errors.CorruptFile(
                    f"[tokenizer] {self.origin}: expected a valid Jinja2 template, "
                    f"got a syntax error at line {exc.lineno}: {exc.message}"
                ) from exc
        return self._compiled

    def render(
        self,
        messages: object,
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "",
        eos_token: str = "",
    ) -> str:
        """Render ``messages`` into the prompt text.

        Args:
            messages: list of ``{"role": str, "content": str}`` dicts (extra keys are passed on).
            add_generation_prompt: append the assistant header so the model answers next.
            bos_token: text of the BOS token, for templates that write it themselves.
            eos_token: text of the EOS token.

        Returns:
            The prompt text (special markers as text; encode it with the tokenizer).
        """
        checked = validate_messages(messages)
        template = self._template()
        try:
            return template.render(
                messages=checked,
                add_generation_prompt=bool(add_generation_prompt),
                bos_token=bos_token,
                eos_token=eos_token,
            )
        except _RaisedByTemplate as exc:
            raise errors.InvalidArgument(
                f"{_TAG}: expected messages the template accepts, got its error: {exc}"
            ) from exc
        except Exception as exc:  # any failure inside user-supplied template code
            raise errors.InvalidArgument(
                f"{_TAG}: expected the template to render, got {type(exc).__name__}: {exc}"
            ) from exc
