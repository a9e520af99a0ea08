"""``/v1/completions`` with several prompts, ``echo`` and prompt scoring, through the OpenAI SDK.

lm-evaluation-harness scores multiple-choice tasks with ``echo: true, logprobs: k,
max_tokens: 0 or 1`` and reads the legacy ``tokens / token_logprobs / top_logprobs /
text_offset`` of the echoed prompt (llama-server and mlx_lm.server refuse ``echo``). References:
each answer equals ``stream_generate`` alone on a separately loaded copy (test_server.py's
``ref``), and the prompt's log-probabilities equal ``Model.logits`` of that copy with a float64
log-softmax (tolerance of test_prompt_scores.py: 1e-5).
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("tiny_models")

import test_server as ts  # noqa: E402
from test_prompt_scores import TOL, reference_log_softmax  # noqa: E402
from test_server import _alone, _text, wait_idle  # noqa: E402

tiny_path, ref, server = ts.tiny_path, ts.ref, ts.server  # its fixtures, one model per module


def _scores(ref, ids):
    """The prompt's reference scores, the float64 logits and their log-softmax."""
    logits, lsm = reference_log_softmax(ref, ids)
    return [None] + [float(lsm[i, ids[i + 1]]) for i in range(len(ids) - 1)], logits, lsm


def _tok(ref, t):
    return ref.tokenizer.decode([t])


def test_several_prompts_and_n(server, ref):
    """Choice i * n + j is prompt i's j-th; usage sums the prompts."""
    c = server.client()
    prompts = ["The sea is", "Once upon a time", "1 2 3"]
    r = c.completions.create(model="tiny", prompt=prompts, max_tokens=5, n=2, temperature=0)
    assert [ch.index for ch in r.choices] == list(range(6))
    for i, p in enumerate(prompts):
        want = _alone(ref, p, max_tokens=5)
        assert r.choices[2 * i].text == r.choices[2 * i + 1].text == _text(want)
    n_prompt = sum(len(ref._prompt_ids(p)) for p in prompts)
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 30
    ids = [ref._prompt_ids(p) for p in prompts[:2]]
    r2 = c.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert [ch.text for ch in r2.choices] == [r.choices[0].text, r.choices[2].text]
    wait_idle(server)


def test_echo_scores_the_prompt(server, ref):
    c = server.client()
    prompt = "The sea is deep and the sky is blue"
    ids = ref._prompt_ids(prompt)
    want_lp, logits, lsm = _scores(ref, ids)
    r = c.completions.create(
        model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=3, temperature=0
    )
    ch = r.choices[0]
    assert ch.text == prompt and ch.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    lp = ch.logprobs
    assert lp.tokens == [_tok(ref, t) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(want_lp[1:], abs=TOL)
    for i in range(1, len(ids)):
        best = np.argsort(-logits[i - 1], kind="stable")[:3]
        # keyed by text as OpenAI's legacy shape: byte tokens may share one (the last wins)
        want = {_tok(ref, int(t)): float(lsm[i - 1, t]) for t in best}
        assert lp.top_logprobs[i] == pytest.approx(want, abs=TOL)
    offsets = np.cumsum([0] + [len(t) for t in lp.tokens[:-1]]).tolist()
    assert lp.text_offset == offsets
    wait_idle(server)


def test_echo_then_generate_like_lm_eval(server, ref):
    """lm-eval's gguf backend: echo, logprobs 10, max_tokens 1, temperature 0; the echoed
    prompt's entries, then the generated token's, one list, offsets running on."""
    c = server.client()
    prompt = "Question: what is the sea? Answer: water"
    ids = ref._prompt_ids(prompt)
    want = _alone(ref, prompt, max_tokens=1, logprobs=True, top_logprobs=10)
    r = c.completions.create(
        model="tiny", prompt=prompt, max_tokens=1, echo=True, logprobs=10, temperature=0
    )
    ch = r.choices[0]
    assert ch.text == prompt + _text(want)
    lp = ch.logprobs
    assert len(lp.tokens) == len(ids) + 1
    assert set(lp.top_logprobs[-1]) == {_tok(ref, t) for t, _ in want[0].top_logprobs}
    assert lp.token_logprobs[-1] == pytest.approx(want[0].logprob, abs=TOL)
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(_scores(ref, ids)[0][1:], abs=TOL)
    assert lp.text_offset[len(ids)] == sum(len(t) for t in lp.tokens[: len(ids)])
    wait_idle(server)


def test_echo_streams(server, ref):
    c = server.client()
    prompts = ["A B C", "The sea"]
    for kw in ({}, {"logprobs": 1}):
        chunks = list(
            c.completions.create(
                model="tiny", prompt=prompts, max_tokens=4, temperature=0, echo=True,
                stream=True, stream_options={"include_usage": True}, **kw,
            )
        )  # fmt: skip
        texts = ["", ""]
        for chunk in chunks[:-1]:
            texts[chunk.choices[0].index] += chunk.choices[0].text
        assert texts == [p + _text(_alone(ref, p, max_tokens=4)) for p in prompts]
        first = {}
        for chunk in chunks[:-1]:
            first.setdefault(chunk.choices[0].index, chunk.choices[0])
        assert [first[i].text for i in (0, 1)] == prompts  # the echo comes first, whole
        if kw:
            assert first[0].logprobs.token_logprobs[0] is None
        assert chunks[-1].usage.completion_tokens == 8
    only = list(
        c.completions.create(model="tiny", prompt="A B", max_tokens=0, echo=True, stream=True)
    )
    assert [(ch.choices[0].text, ch.choices[0].finish_reason) for ch in only] == [("A B", "length")]
    wait_idle(server)


def test_echo_without_logprobs_and_token_prompts(server, ref):
    c = server.client()
    ids = ref._prompt_ids("The sea is")
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=3, echo=True, temperature=0)
    assert r.choices[0].text == ref.tokenizer.decode(ids) + _text(_alone(ref, ids, max_tokens=3))
    assert r.choices[0].logprobs is None
    wait_idle(server)


def test_max_tokens_zero_without_echo_is_a_400(server):
    req = urllib.request.Request(
        server.url + "/v1/completions",
        data=json.dumps({"prompt": "x", "max_tokens": 0}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 400
    body = json.loads(info.value.read())
    assert body["error"]["param"] == "max_tokens"


def test_a_bad_prompt_among_several_is_named(server):
    c = server.client()
    with pytest.raises(ts.openai.BadRequestError) as info:
        c.completions.create(model="tiny", prompt=["fine", [5] * (ts.CTX + 10)], max_tokens=2)
    assert info.value.body["param"] == "prompt[1]"
    assert info.value.body["message"].startswith("prompt[1]: ")
    wait_idle(server)
