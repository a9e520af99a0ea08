"""The chat REPL (src/metallic/repl.py) and ``metallic-run --chat`` / ``--interactive``.

Input is piped (no TTY): no prompt marker, end of input ends the loop, nothing hangs.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import metallic
from metallic import cli, repl

tiny_models = pytest.importorskip("tiny_models")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return tiny_models.make_model(tmp_path_factory.mktemp("repl"), "llama", "q8_0", "gguf").path


@pytest.fixture(scope="module")
def tiny(tiny_path):
    with metallic.load(tiny_path, device="cpu", threads=2, context_length=256) as model:
        yield model


def _run(model, text, **kw):
    out, err = io.StringIO(), io.StringIO()
    code = repl.run(
        model,
        {"max_tokens": 4, "logit_bias": {2: -100.0}},
        inp=io.StringIO(text),
        out=out,
        err=err,
        interactive=False,
        **kw,
    )
    return code, out.getvalue(), err.getvalue()


SUMMARY = re.compile(r"^\[(\d+) tokens, [\d.]+ tok/s, prompt (\d+) tokens \((\d+) cached\), ")


def test_turns_keep_the_conversation_and_its_kv(tiny):
    code, out, err = _run(tiny, "hello\nand more\n\n/reset\nhello\n")
    assert code == 0
    turns = [
        SUMMARY.match(line) for line in err.splitlines() if line.startswith("[") and "tok" in line
    ]
    assert len(turns) == 3 and all(turns)
    prompt = [int(m.group(2)) for m in turns]
    cached = [int(m.group(3)) for m in turns]
    assert prompt[1] > prompt[0] and cached[1] >= prompt[0]  # turn 2 reuses turn 1's KV
    assert "[conversation reset]" in err
    assert prompt[2] == prompt[0]  # after /reset the conversation starts over
    assert out.endswith("\n")  # each reply ends its line
    assert ">>>" not in err  # not interactive: no prompt marker


def test_exit_command_and_end_of_input(tiny):
    code, out, err = _run(tiny, "/exit\nnever read\n")
    assert code == 0 and out == "" and "tok/s" not in err
    code, out, _ = _run(tiny, "")
    assert code == 0 and out == ""


def test_system_message_survives_reset(tiny):
    seen = []

    class Spy:
        def stream_chat(self, messages, **kw):
            seen.append([dict(m) for m in messages])
            return tiny.stream_chat(messages, **kw)

    _run(Spy(), "a\n/reset\nb\n", system="be brief")
    assert seen[0][0] == {"role": "system", "content": "be brief"}
    assert seen[1] == [seen[0][0], {"role": "user", "content": "b"}]


def test_context_overflow_is_reported_and_the_loop_goes_on(tiny_path):
    with metallic.load(tiny_path, threads=2, context_length=24) as small:
        code, out, err = _run(small, "x " * 40 + "\nhi\n")
    assert code == 0 and "context full" in err and "/reset" in err
    assert err.count("tok/s") == 1  # the short second turn still ran


def test_interactive_marker(tiny):
    err = io.StringIO()
    repl.run(
        tiny,
        {"max_tokens": 2},
        inp=io.StringIO("/exit\n"),
        out=io.StringIO(),
        err=err,
        interactive=True,
    )
    assert repl.HELP in err.getvalue() and repl.PROMPT in err.getvalue()


def test_cli_chat_without_prompt_runs_the_repl(tiny_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\nhow are you\n"))
    code = cli.main(
        [
            "--model",
            str(tiny_path),
            "--chat",
            "--max-tokens",
            "3",
            "--threads",
            "2",
            "--context-length",
            "256",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.count("tok/s") == 2 and "cached" in err


@pytest.mark.parametrize("argv", [["--interactive", "--prompt", "x"], ["-i", "--no-chat"]])
def test_cli_repl_argument_errors(capsys, argv):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("metallic-run: error: argument --interactive")


def test_cli_repl_subprocess_piped_stdin_does_not_hang(tiny_path):
    src = str(Path(cli.__file__).resolve().parents[1])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "metallic.cli",
            "--model",
            str(tiny_path),
            "-i",
            "--max-tokens",
            "2",
            "--threads",
            "2",
            "--context-length",
            "128",
        ],
        input="hello\n/exit\n",
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("tok/s") == 1
