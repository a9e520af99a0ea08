"""``metallic-run --chat`` interactive mode: a REPL that keeps the conversation and its KV cache.

Each line read is a user turn; the reply streams to ``out`` and a one-line summary (tokens,
tok/s, reused prompt tokens) goes to ``err``. Commands: ``/reset`` forgets the conversation,
``/exit`` (or end of input) leaves. Works with piped input: no prompt marker is printed unless
``interactive`` and end of input ends the loop cleanly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

PROMPT = ">>> "
HELP = "Type a message; /reset clears the conversation, /exit (or Ctrl-D) quits."


def _turn_summary(last: Any, seconds: float) -> str:
    cached = getattr(last, "cached_tokens", 0)
    return (
        f"[{last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s, "
        f"prompt {last.prompt_tokens} tokens ({cached} cached), {seconds:.2f} s]"
    )


def run(
    model: Any,
    sampling: dict[str, Any],
    *,
    inp: TextIO,
    out: TextIO,
    err: TextIO,
    interactive: bool,
    system: str | None = None,
    clock: Callable[[], float] | None = None,
) -> int:
    """Runs the REPL until /exit or end of input; returns the exit status (0).

    Args:
        model: a metallic Model (anything with ``stream_chat`` works).
        sampling: keyword arguments for every ``stream_chat`` call (max_tokens, temperature...).
        inp, out, err: line source, reply sink, status sink.
        interactive: print the ``>>>`` marker and the help line (a terminal on both ends).
        system: an optional system message that starts (and survives /reset in) every
            conversation.
    """
    import time

    from .errors import ContextOverflow

    now = clock or time.perf_counter
    base = [{"role": "system", "content": system}] if system else []
    messages: list[dict[str, str]] = list(base)
    if interactive:
        print(HELP, file=err, flush=True)
    while True:
        if interactive:
            err.write(PROMPT)
            err.flush()
        line = inp.readline()
        if not line:  # end of input
            if interactive:
                err.write("\n")
            return 0
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            return 0
        if command == "/reset":
            messages = list(base)
            print("[conversation reset]", file=err, flush=True)
            continue
        messages.append({"role": "user", "content": text})
        start = now()
        pieces: list[str] = []
        last = None
        try:
            for response in model.stream_chat(messages, **sampling):
                if response.text:
                    out.write(response.text)
                    out.flush()
                    pieces.append(response.text)
                last = response
        except ContextOverflow as exc:
            messages.pop()
            out.write("\n")
            print(f"[context full: {exc}; /reset to start over]", file=err, flush=True)
            continue
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": "".join(pieces)})
        if last is not None:
            print(_turn_summary(last, now() - start), file=err, flush=True)
