"""Chat-template rendering for :class:`metallic.tokenizer.Tokenizer`.

Templates are Jinja2 text shipped with the model (``tokenizer.chat_template`` in a GGUF,
``chat_template`` in ``tokenizer_config.json``). They run in an immutable sandbox with the
conventions HF ``transformers`` templates rely on: ``trim_blocks`` / ``lstrip_blocks``, the
``loopcontrols`` extension, a ``raise_exception(msg)`` helper, ``strftime_now(fmt)`` and a
``tojson`` filter that keeps non-ASCII text as is. jinja2 is imported when the first template is
compiled (:func:`_sandbox_class`), not with this module, so loading a model does not pay for it.

Error mapping (all messages start with ``[tokenizer] chat_template:``):

* the template does not compile → :class:`~metallic.errors.CorruptFile` (the model file is bad);
* the template calls ``raise_exception`` or fails while rendering (a missing key, a type error,
  a sandbox violation) → :class:`~metallic.errors.InvalidArgument` (usually the messages);
* ``messages`` is not a list of ``{"role": str, "content": str}`` dicts →
  :class:`~metallic.errors.InvalidArgument`.

A template comes from a file that may be hostile, so rendering is bounded: the sandbox already
blocks attribute tricks and caps one ``range`` at 100k items; on top of that ``*`` may not build
a sequence over :data:`MAX_SEQUENCE` items, ``**`` may not build an integer over
:data:`MAX_POWER_BITS` bits, ``%`` / ``format`` / ``center`` may not ask for widths of
:data:`MAX_WIDTH` or more, and one render may execute at most :data:`MAX_STEPS` template lines
(counted by a ``sys.settrace`` hook on the template's own frames only, removed afterwards), so
nested loops end in :class:`~metallic.errors.InvalidArgument` instead of hanging.
DEBT: other amplifiers (``str.replace`` of a long string by a long one) are only bounded by the
memory allocator, whose ``MemoryError`` also ends in ``InvalidArgument``.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import sys
from typing import TYPE_CHECKING, Any

from . import errors

if TYPE_CHECKING:  # jinja2 itself is imported on first compile: see _sandbox_class
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

_TAG = "[tokenizer] chat_template"

#: Used when a model ships no template: plain ChatML (``<|im_start|>role\ncontent<|im_end|>\n``
#: per message, then ``<|im_start|>assistant\n`` when a generation prompt is asked for).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Gemma's turn format, for Gemma vocabularies without a template of their own (the base models'
# GGUF files carry none): roles user / model, a system message folded into the first user turn
# (Gemma has no system role), no BOS (encoding adds it, as the model asks).
GEMMA_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '')"
    " + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% if role == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def default_template(has_token) -> str:
    """The template for a model that ships none: Gemma's turns when the vocabulary has
    ``<start_of_turn>`` / ``<end_of_turn>`` and no ChatML markers, else ChatML.

    Args:
        has_token: ``str -> bool``, whether the vocabulary holds a token.

    Returns:
        Jinja2 text.
    """
    gemma = has_token("<start_of_turn>") and has_token("<end_of_turn>")
    return GEMMA_CHAT_TEMPLATE if gemma and not has_token("<|im_start|>") else DEFAULT_CHAT_TEMPLATE


MAX_SEQUENCE = 1 << 22  # items a `*` may build (characters of a str, elements of a list)
MAX_POWER_BITS = 1 << 16  # bits of an integer a `**` may build
MAX_WIDTH = 100_000  # field width / precision in `%`, `format`, `center`
MAX_STEPS = 2_000_000  # template source lines executed in one render (~1 s)
_WIDE = re.compile(rf"\d{{{len(str(MAX_WIDTH))},}}")  # a number of MAX_WIDTH or more


class _RaisedByTemplate(Exception):
    """Raised by the template's own ``raise_exception(msg)`` call."""


class _LimitExceeded(Exception):
    """A render went past one of the resource caps above."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_format(fmt: object) -> None:
    if isinstance(fmt, str) and _WIDE.search(fmt):
        raise _LimitExceeded(f"a format width or precision of {MAX_WIDTH} or more in {fmt!r:.60}")


@functools.cache
def _sandbox_class() -> type[ImmutableSandboxedEnvironment]:
    """The sandbox class, built on first use so that ``import metallic`` and loading a model do
    not import jinja2 (~20 ms); only compiling a template does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Sandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox plus size caps on the operators that amplify their input."""

        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if _is_int(n) and hasattr(seq, "__len__") and len(seq) * n > MAX_SEQUENCE:
                        raise _LimitExceeded(f"`*` would build {len(seq) * n} items")
            elif operator == "**":
                bits = left.bit_length() * right if _is_int(left) and _is_int(right) else 0
                if bits > MAX_POWER_BITS:
                    raise _LimitExceeded(f"`**` would build a {bits}-bit int")
            elif operator == "%":
                _check_format(left)
            return super().call_binop(context, operator, left, right)

        def wrap_str_format(self, value: Any) -> Any:
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:  # value is str.format / str.format_map of a template string
                _check_format(value.__self__)
            return wrapped

    return _Sandbox


class _StepBudget:
    """Counts lines executed in template frames (filename ``<template>``); raises past the cap."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        return self._local if frame.f_code.co_filename == "<template>" else None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.left -= 1
            if self.left < 0:
                raise _LimitExceeded(f"the render ran more than {MAX_STEPS} template steps")
        return self._local


def _raise_exception(message: object) -> None:
    raise _RaisedByTemplate(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _capped_format(value: Any, *args: Any, **kwargs: Any) -> str:
    from jinja2.filters import do_format  # loaded already: only a template calls this

    _check_format(value)
    return do_format(value, *args, **kwargs)


def _capped_center(value: Any, width: int = 80) -> str:
    if not _is_int(width) or width >= MAX_WIDTH:
        raise _LimitExceeded(f"center width {width!r:.20}, expected an int below {MAX_WIDTH}")
    from jinja2.filters import do_center  # loaded already: only a template calls this

    return do_center(value, width)


def _environment() -> ImmutableSandboxedEnvironment:
    import jinja2
    import jinja2.ext

    env = _sandbox_class()(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
        undefined=jinja2.Undefined,
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    env.filters["format"] = _capped_format
    env.filters["center"] = _capped_center
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
            from jinja2 import TemplateSyntaxError  # deferred: see _sandbox_class

            try:
                self._compiled = _environment().from_string(self.source)
            except TemplateSyntaxError as exc:
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
        previous = sys.gettrace()
        sys.settrace(_StepBudget(MAX_STEPS))
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
        except _LimitExceeded as exc:
            raise errors.InvalidArgument(
                f"{_TAG}: expected a template within the render limits, got {exc}"
            ) from exc
        except (Exception, RecursionError) as exc:  # any failure inside user-supplied code
            raise errors.InvalidArgument(
                f"{_TAG}: expected the template to render, got {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            sys.settrace(previous)
