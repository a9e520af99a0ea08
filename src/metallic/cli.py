"""``metallic-run``: generate text from a model on the command line.

This module only parses and validates arguments, then calls the public API
(``metallic.load`` → ``model.stream_generate``), or runs the chat REPL (``metallic.repl``) for
``--interactive`` or ``--chat`` without ``--prompt``. Generated text goes to stdout as it arrives; the
run summary, progress and errors go to stderr. ``metallic`` is imported only after the arguments
are valid, so ``--help`` and argument errors stay instant.

Exit status: 0 success, 1 a metallic error (one line ``metallic-run: <Class>: message``), 2 a bad
argument (one line ``metallic-run: error: ...``), 130 interrupted, 141 stdout closed early.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROG = "metallic-run"
DEFAULT_PROMPT = "Write a short poem about the sea."
DEVICES = ("auto", "cpu", "metal", "metal-emulated")
KV_CACHE_DTYPES = ("f16", "f32", "q8_0", "q4_0")  # metallic.load's kv_cache_dtype values
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141


class UsageError(Exception):
    """A bad command-line argument; reported as one ``metallic-run: error: ...`` line."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        raise UsageError(message)


def _int_in(lo: int, hi: int = 2**31 - 1) -> Callable[[str], int]:
    """An integer in [lo, hi] (the upper bounds keep values inside the native integer types)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {value}")
        return value

    return parse


def _float_in(
    lo: float, hi: float, *, lo_open: bool = False, what: str = ""
) -> Callable[[str], float]:
    """A float in [lo, hi] (or (lo, hi] with ``lo_open``); NaN and infinities are rejected."""
    expected = what or f"a float in {'(' if lo_open else '['}{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``metallic-run`` argument parser."""
    p = _Parser(prog=PROG, description="Generate text with a metallic model.")
    p.add_argument(
        "--model",
        default=None,
        help="registry name (e.g. smollm2), a .gguf file, or a Hugging Face folder "
        "(default: the registry default)",
    )
    p.add_argument(
        "--prompt",
        default=None,
        help=f"prompt text; '-' reads it from stdin (default: {DEFAULT_PROMPT!r}; with --chat "
        "and no --prompt: the interactive chat REPL)",
    )
    p.add_argument(
        "--max-tokens",
        type=_int_in(1),
        default=256,
        help="maximum tokens to generate (default: %(default)s)",
    )
    p.add_argument(
        "--temp",
        type=_float_in(0.0, math.inf, what="a finite float >= 0"),
        default=0.0,
        help="sampling temperature, 0 = greedy (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=_int_in(0),
        default=0,
        help="keep the k most likely tokens, 0 = off (default: %(default)s)",
    )
    p.add_argument(
        "--top-p",
        type=_float_in(0.0, 1.0, lo_open=True),
        default=1.0,
        help="nucleus sampling mass in (0, 1] (default: %(default)s)",
    )
    p.add_argument(
        "--min-p",
        type=_float_in(0.0, 1.0),
        default=0.0,
        help="drop tokens below min_p * p_max, in [0, 1] (default: %(default)s)",
    )
    p.add_argument(
        "--repetition-penalty",
        default=1.0,
        type=_float_in(0.0, math.inf, lo_open=True, what="a finite float > 0"),
        help="penalty on recently seen tokens, 1 = off (default: %(default)s)",
    )
    p.add_argument(
        "--presence-penalty",
        type=_float_in(-2.0, 2.0),
        default=0.0,
        help="OpenAI presence penalty in [-2, 2] (default: %(default)s)",
    )
    p.add_argument(
        "--frequency-penalty",
        type=_float_in(-2.0, 2.0),
        default=0.0,
        help="OpenAI frequency penalty in [-2, 2] (default: %(default)s)",
    )
    p.add_argument(
        "--min-tokens",
        type=_int_in(0),
        default=0,
        help="tokens to generate before EOS may end the reply (default: %(default)s)",
    )
    p.add_argument(
        "--stop",
        action="append",
        type=_nonempty("--stop"),
        default=None,
        help="stop string (repeatable); generation ends before it, and it is never printed",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json-schema",
        default=None,
        help="constrain the output to JSON valid for this schema (JSON text or @file)",
    )
    fmt.add_argument("--regex", default=None, help="constrain the output to match this regex")
    p.add_argument("--seed", type=_int_in(0, 2**64 - 1), default=None, help="sampling seed")
    p.add_argument(
        "--interactive",
        "-i",
        action="store_true",
        help="chat REPL: keeps the conversation and its KV cache; /reset, /exit",
    )
    p.add_argument("--system", default=None, help="system message for chat and the REPL")
    p.add_argument(
        "--prompt-cache",
        default=None,
        metavar="FILE",
        help="load the KV cache from FILE if it exists, and save it there after the run",
    )
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompt in the model's chat template (default: on when the model has one)",
    )
    p.add_argument(
        "--threads", type=_int_in(1, 1024), default=None, help="CPU threads (default: automatic)"
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="(default: %(default)s)")
    p.add_argument(
        "--context-length",
        type=_int_in(2, 1 << 22),
        default=4096,
        help="KV cache length in tokens (default: %(default)s)",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default=None,
        help="KV cache storage; q8_0 / q4_0: per-block quantized rows, about 1/2 and "
        "1/4 of f16's memory (default: f16)",
    )
    p.add_argument(
        "--quantize",
        choices=("q8_0", "q4_0"),
        default=None,
        help="quantize float (F32/F16/BF16) weights at load (default: as stored)",
    )
    p.add_argument(
        "--draft",
        default=None,
        help="speculative decoding: 'prompt-lookup' (n-gram drafts from the context) or a draft "
        "model (registry name or path) sharing the model's vocabulary; same output, faster",
    )
    p.add_argument(
        "--num-draft-tokens",
        type=_int_in(1, 32),
        default=None,
        help="tokens drafted per step at most (default: 6; adapts to the acceptance)",
    )
    p.add_argument("--verbose", action="store_true", help="print the model path and load time")
    return p


def _nonempty(flag: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("expected a non-empty string, got ''")
        return text

    return parse


def _response_format(args: argparse.Namespace) -> dict | None:
    """``--json-schema`` / ``--regex`` as a response_format dict (validated JSON)."""
    if args.regex is not None:
        if not args.regex:
            raise UsageError("argument --regex: expected a non-empty regex, got ''")
        return {"type": "regex", "regex": args.regex}
    if args.json_schema is None:
        return None
    import json

    text = args.json_schema
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"argument --json-schema: expected a readable file, got {exc}"
            ) from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"argument --json-schema: expected JSON, got {exc}") from None
    if not isinstance(schema, (dict, bool)):
        raise UsageError(
            f"argument --json-schema: expected a JSON object, got {type(schema).__name__}"
        )
    return {"type": "json_schema", "schema": schema}


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    """stream_generate keyword arguments; the newer options only when set."""
    kwargs: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temp,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }
    optional = {
        "presence_penalty": (args.presence_penalty, 0.0),
        "frequency_penalty": (args.frequency_penalty, 0.0),
        "min_tokens": (args.min_tokens, 0),
        "stop": (args.stop, None),
        "response_format": (_response_format(args), None),
    }
    kwargs.update({k: v for k, (v, default) in optional.items() if v != default})
    draft = getattr(args, "draft_model", args.draft)
    if draft is not None:
        kwargs["draft"] = draft
        if args.num_draft_tokens is not None:
            kwargs["num_draft_tokens"] = args.num_draft_tokens
    return kwargs


def _read_prompt(arg: str) -> str:
    if arg == "-":
        if sys.stdin is None:
            raise UsageError("argument --prompt: expected text on stdin, got no stdin")
        text = sys.stdin.read()
        text = text[:-1] if text.endswith("\n") else text  # the shell's final newline
        text = text[:-1] if text.endswith("\r") else text
    else:
        text = arg
    if not text:
        raise UsageError("argument --prompt: expected non-empty text, got an empty prompt")
    return text


def _model_path(arg: str | None) -> str | None:
    """Return an existing path for path-like ``--model`` values, None for registry names."""
    if arg is None:
        return None
    if not arg.strip():
        raise UsageError("argument --model: expected a registry name or a path, got ''")
    path = Path(arg).expanduser()
    separators = [s for s in (os.sep, os.altsep) if s]
    looks_like_path = (
        path.suffix.lower() in (".gguf", ".safetensors", ".json")
        or any(s in arg for s in separators)
        or arg.startswith((".", "~"))
        or path.exists()
    )
    if not looks_like_path:
        return None
    if not path.exists():
        raise UsageError(f"argument --model: expected an existing file or folder, got {arg!r}")
    if not (path.is_file() or path.is_dir()):
        raise UsageError(f"argument --model: expected a regular file or folder, got {arg!r}")
    return str(path)


def _one_line(text: object) -> str:
    return " ".join(str(text).splitlines())


def _print_summary(last: Any) -> None:
    """mlx-lm's end-of-run summary from the last GenerationResponse, on stderr."""
    lines = (
        "=" * 10,
        f"Prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tokens-per-sec",
        f"Generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tokens-per-sec",
        f"Peak memory: {last.peak_memory / 1e9:.3f} GB",
    )
    if getattr(last, "draft_tokens", 0):
        rate = last.accepted_tokens / last.draft_tokens
        lines += (
            f"Draft: {last.accepted_tokens} of {last.draft_tokens} drafted tokens accepted "
            f"({rate:.0%})",
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


def _generate(model: Any, args: argparse.Namespace, prompt: str | None) -> int:
    tokenizer = model.tokenizer
    template = tokenizer.chat_template  # by default chat only with the model's own template
    use_chat = bool(template) if args.chat is None else args.chat
    if use_chat and not tokenizer.knows_chat_format:  # --chat: also a family format (Gemma)
        raise UsageError("argument --chat: expected a model with a chat template, got none")
    sampling = _sampling(args)
    if prompt is None:  # the REPL
        if not tokenizer.knows_chat_format:
            raise UsageError(
                "argument --interactive: expected a model with a chat template, got none"
            )
        from . import repl

        interactive = sys.stdin.isatty() and sys.stderr.isatty()
        return repl.run(
            model,
            sampling,
            inp=sys.stdin,
            out=sys.stdout,
            err=sys.stderr,
            interactive=interactive,
            system=args.system,
        )
    # Chat: the template writes any BOS itself, so Model.stream_chat tokenizes its rendering
    # without adding one (the same path as Model.chat).
    run = model.stream_chat if use_chat else model.stream_generate
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": prompt})
    stream = run(messages if use_chat else prompt, **sampling)
    last = None
    out = sys.stdout
    for response in stream:
        if response.text:
            out.write(response.text)
            out.flush()
        last = response
    out.write("\n")
    out.flush()
    if last is not None:
        _print_summary(last)
    return 0


def _with_prompt_cache(model: Any, args: argparse.Namespace, prompt: str | None) -> int:
    """Runs _generate between loading and saving ``--prompt-cache`` (when given)."""
    path = args.prompt_cache
    if path is None:
        return _generate(model, args, prompt)
    if Path(path).is_file():
        n = model.load_prompt_cache(path)
        if args.verbose:
            print(f"[{PROG}] prompt cache: {n} tokens from {path}", file=sys.stderr)
    code = _generate(model, args, prompt)
    model.save_prompt_cache(path)
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        repl = args.interactive or (args.chat is True and args.prompt is None)
        if repl and args.prompt is not None:
            raise UsageError("argument --interactive: expected no --prompt, got one")
        if repl and args.chat is False:
            raise UsageError("argument --interactive: expected chat mode, got --no-chat")
        prompt = (
            None if repl else _read_prompt(DEFAULT_PROMPT if args.prompt is None else args.prompt)
        )
        path = _model_path(args.model)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)

    try:
        import metallic
        from metallic import registry
        from metallic.errors import Cancelled, MetallicError
    except ImportError as exc:
        print(f"{PROG}: ImportError: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    if path is None and args.model is not None and not registry.is_registry_name(args.model):
        names = ", ".join(registry.known_names())
        raise UsageError(
            f"argument --model: expected a registry name ({names}) or a path to a .gguf file "
            f"or model folder, got {args.model!r}"
        )
    try:
        if path is None:
            path = str(registry.resolve(args.model, progress=True))
        start = time.perf_counter()
        model = metallic.load(
            path,
            device=args.device,
            threads=args.threads,
            context_length=args.context_length,
            progress=sys.stderr.isatty(),
            **({"quantize": args.quantize} if args.quantize else {}),
            **({"kv_cache_dtype": args.kv_cache_dtype} if args.kv_cache_dtype else {}),
        )
        if args.verbose:
            print(f"[{PROG}] model: {path}", file=sys.stderr)
            print(f"[{PROG}] loaded in {time.perf_counter() - start:.3f} s", file=sys.stderr)
        draft = None
        try:
            if args.draft is not None and args.draft != "prompt-lookup":
                draft_path = _model_path(args.draft) or str(registry.resolve(args.draft))
                draft = metallic.load(
                    draft_path,
                    device=args.device,
                    threads=args.threads,
                    context_length=args.context_length,
                )
            args.draft_model = draft if draft is not None else args.draft
            return _with_prompt_cache(model, args, prompt)
        finally:
            if draft is not None:
                draft.close()
            model.close()
    except (MetallicError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        if isinstance(exc, Cancelled):  # Ctrl-C inside a native call: quiet, like KeyboardInterrupt
            return EXIT_INTERRUPTED
        print(f"{PROG}: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metallic-run`` console script.

    Args:
        argv: arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        The process exit status (see the module docstring).
    """
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # never die on a terminal's narrow encoding
    try:
        return _run(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
