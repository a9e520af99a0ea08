"""``metallic-server --draft``: speculative decoding inside continuous batching, through the
OpenAI SDK. Concurrent greedy and seeded answers with n-gram drafts or a draft model equal
``stream_generate`` alone on a separately loaded copy (test_server.py's reference)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
tiny_models = pytest.importorskip("tiny_models")

from test_server import CTX, Running, _alone, _text, wait_idle  # noqa: E402

import metallic  # noqa: E402
from metallic.server.app import ServerState  # noqa: E402
from metallic.server.cli import main  # noqa: E402
from metallic.server.metrics import ServerMetrics  # noqa: E402

LOAD = {"device": "cpu", "threads": 2, "context_length": CTX, "parallel": 4, "batch_size": 32}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("server-draft")
    (d / "a").mkdir()
    (d / "b").mkdir()
    return (
        tiny_models.make_model(d / "a", "llama", "q8_0", "gguf", tied=False).path,
        tiny_models.make_model(d / "b", "llama", "f32", "gguf", tied=False).path,
    )


@pytest.fixture(scope="module")
def ref(paths):
    with metallic.load(paths[0], device="cpu", threads=1, context_length=CTX) as model:
        yield model


def _serve(model, draft):
    metrics = ServerMetrics()
    sched = model.scheduler(max_queue=64, observer=metrics, draft=draft, num_draft_tokens=4)
    sched.start()
    return sched, Running(ServerState(model, sched, metrics, "tiny"))


@pytest.mark.parametrize("kind", ["prompt-lookup", "model"])
def test_concurrent_answers_with_drafts_equal_alone(paths, ref, kind):
    prompts = [" ".join(["ab cd ef"] * (3 + i)) for i in range(6)]
    kws = [{"max_tokens": 24}, {"max_tokens": 16, "temperature": 0.9, "seed": 7}]
    want = {
        (i, j): _text(_alone(ref, p, **kw))
        for i, p in enumerate(prompts)
        for j, kw in enumerate(kws)
    }
    with metallic.load(paths[0], **LOAD) as model:
        draft = "prompt-lookup" if kind == "prompt-lookup" else metallic.load(paths[1], **LOAD)
        sched, run = _serve(model, draft)
        got = {}
        try:

            def one(i, j):
                kw = kws[j]
                c = run.client()
                if j == 0:  # streamed
                    chunks = c.completions.create(
                        model="tiny", prompt=prompts[i], temperature=0, stream=True, **kw
                    )
                    got[(i, j)] = "".join(ch.choices[0].text for ch in chunks if ch.choices)
                else:
                    r = c.completions.create(model="tiny", prompt=prompts[i], **kw)
                    got[(i, j)] = r.choices[0].text

            threads = [threading.Thread(target=one, args=key) for key in want]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert got == want
            wait_idle(run)
        finally:
            run.stop()
            sched.stop()
            if not isinstance(draft, str):
                draft.close()


def test_cli_draft_model_errors_are_one_line(paths, tmp_path, capsys):
    missing = str(tmp_path / "missing.gguf")
    assert main(["--model", str(paths[0]), "--draft", missing, "--context-length", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("metallic-server: FileNotFound:") and err.count("\n") == 1
