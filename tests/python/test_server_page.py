"""The chat page at ``/`` (src/metallic/server/static/index.html) in a real headless Chromium.

A ``metallic.server`` subprocess serves a tiny random-weight model (untied head: its greedy
replies are visible characters such as ``at<at<``, which also shows that model text never becomes
markup); Playwright drives Debian's ``chromium`` (``executable_path``, no browser download). Each
test collects the browser console: any error fails it, except the 401s the wrong-key test causes.

Skips when the ``playwright`` package, the ``chromium`` binary ($METALLIC_CHROMIUM overrides the
path) or the server extras are missing; ``scripts/install_chromium.sh`` installs the binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi: pip install 'metallic[server]'")
pytest.importorskip("uvicorn", reason="the server needs uvicorn: pip install 'metallic[server]'")
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the page test drives Chromium with playwright: pip install playwright",
)
CHROMIUM = os.environ.get("METALLIC_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "no chromium binary: bash scripts/install_chromium.sh (or set METALLIC_CHROMIUM)",
        allow_module_level=True,
    )

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import serve_bench as sb  # noqa: E402  (ServerProcess, free_port)

import tiny_models  # noqa: E402

API_KEY = "page-test-key"
HOST = "127.0.0.1"
WAIT_MS = 20_000  # one turn of the tiny model takes ~0.2 s; this only bounds a broken page
IDLE = "document.body.dataset.state === 'idle'"
TOK_S = re.compile(r"\b\d+(\.\d+)? tok/s\b")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a metallic.server subprocess (API key required) over a tiny model."""
    model = tiny_models.make_model(tmp_path_factory.mktemp("page"), "llama", "q8_0", tied=False)
    port = sb.free_port(HOST)
    cmd = [
        sys.executable, "-m", "metallic.server", "--model", str(model.path), "--host", HOST,
        "--port", str(port), "--parallel", "2", "-t", "1", "-c", "128", "--api-key", API_KEY,
        "--drain-timeout", "5",
    ]  # fmt: skip
    with sb.ServerProcess("page", cmd, stop_timeout=15.0) as proc:  # SIGTERM on exit
        base = f"http://{HOST}:{port}"
        proc.wait_ready(base + "/health", timeout=60.0)
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class PageRun:
    """One browser tab on the chat page with its console errors and chat requests."""

    def __init__(self, page, base: str):
        self.page, self.base = page, base
        self.errors: list[str] = []
        self.bodies: list[dict] = []  # JSON bodies the page POSTed to /v1/chat/completions
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", self._on_request)

    def _on_request(self, request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/chat/completions"):
            self.bodies.append(request.post_data_json)

    def open(self, temperature: str = "0", max_tokens: str = "16") -> None:
        self.page.goto(self.base + "/")
        self.page.fill("#temperature", temperature)
        self.page.fill("#max-tokens", max_tokens)

    def send(self, text: str, *, enter: bool = False) -> None:
        """Types ``text``, sends it (Send or the Enter key) and waits until the page is idle."""
        self.page.fill("#prompt", text)
        if enter:
            self.page.press("#prompt", "Enter")
        else:
            self.page.click("#send")
        self.page.wait_for_function(IDLE, timeout=WAIT_MS)

    def texts(self, selector: str) -> list[str]:
        return [e.text_content() for e in self.page.query_selector_all(selector)]


@pytest.fixture
def run(browser, server):
    """A fresh tab (own storage) whose stored API key is the server's, as a returning user's."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.add_init_script(
        f"try {{ localStorage.setItem('metallic.apiKey', {json.dumps(API_KEY)}); }} catch (_) {{}}"
    )
    try:
        yield PageRun(context.new_page(), server)
    finally:
        context.close()


def _api(base: str, path: str, body: dict | None = None, key: str = API_KEY) -> tuple[int, dict]:
    """(status, JSON body) of a request to the server outside the browser."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _api_reply(base: str, page_body: dict) -> str:
    """The server's non-streamed answer to the request the page streamed."""
    body = {k: v for k, v in page_body.items() if k not in ("stream", "stream_options")}
    status, answer = _api(base, "/v1/chat/completions", body)
    assert status == 200, answer
    return answer["choices"][0]["message"]["content"]


def test_two_turns_stream_the_api_reply_with_tok_s(run):
    run.open()
    status, models = _api(run.base, "/v1/models")
    assert status == 200
    run.page.wait_for_function(
        "document.getElementById('model-name').textContent !== ''", timeout=WAIT_MS
    )
    assert run.page.text_content("#model-name") == models["data"][0]["id"]

    run.send("Hello there")
    assert run.page.get_attribute("body", "data-state") == "idle"
    assert run.page.is_enabled("#send") and run.page.is_disabled("#stop")
    first = run.bodies[0]
    assert first["messages"] == [{"role": "user", "content": "Hello there"}]
    assert (first["temperature"], first["max_tokens"], first["stream"]) == (0, 16, True)
    assert first["model"] == models["data"][0]["id"]
    reply = _api_reply(run.base, first)
    assert reply.strip(), "the tiny model should answer visible text"
    assert run.texts(".msg.user .content") == ["Hello there"]
    assert run.texts(".msg.assistant .content") == [reply]
    stats = run.page.text_content("#stats")
    assert TOK_S.search(stats) and "16 tokens" in stats and "finish: length" in stats, stats
    assert run.page.text_content(".msg.assistant .meta") == stats
    assert run.page.text_content("#error") == "" and run.page.is_hidden("#error")

    run.send("And then?", enter=True)  # the Enter key sends too
    second = run.bodies[1]
    assert second["messages"] == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And then?"},
    ]
    assert run.texts(".msg.user .content") == ["Hello there", "And then?"]
    assert run.texts(".msg.assistant .content") == [reply, _api_reply(run.base, second)]
    assert TOK_S.search(run.page.text_content("#stats"))
    assert run.page.text_content("#error") == ""
    assert run.page.input_value("#prompt") == ""

    run.page.click("#clear")  # New chat: the history is gone from the page and the next request
    assert run.texts(".msg .content") == [] and run.page.text_content("#stats") == ""
    run.send("Hello there")
    assert run.bodies[2]["messages"] == [{"role": "user", "content": "Hello there"}]
    assert run.texts(".msg.assistant .content") == [reply]
    assert run.errors == []


def test_stop_ends_the_stream_and_keeps_the_partial_reply(run):
    run.open(max_tokens="64")  # + the 30-token prompt: within -c 128
    # Click Stop from the page itself as soon as the first piece of the reply is shown: the
    # tiny model would finish 64 tokens before a click sent from here arrives.
    run.page.evaluate(
        """() => new MutationObserver((_, observer) => {
             const reply = document.querySelector('.msg.assistant .content');
             if (reply && reply.textContent) {
               observer.disconnect();
               document.getElementById('stop').click();
             }
           }).observe(document.getElementById('messages'),
                      { childList: true, subtree: true, characterData: true })"""
    )
    run.send("Tell me a long story")
    partial = run.texts(".msg.assistant .content")
    assert len(partial) == 1 and partial[0], partial
    full = _api_reply(run.base, run.bodies[0])
    assert full.startswith(partial[0]) and len(partial[0]) < len(full)
    stats = run.page.text_content("#stats")
    assert "finish: stopped" in stats and "64 tokens" not in stats, stats
    assert run.page.text_content("#error") == ""

    # The partial reply is part of the history, and the server took the next request.
    run.page.fill("#max-tokens", "4")
    run.send("Go on")
    assert run.bodies[1]["messages"][1] == {"role": "assistant", "content": partial[0]}
    assert len(run.texts(".msg.assistant .content")[1]) > 0
    assert "finish: length" in run.page.text_content("#stats")

    # Stop before the first token: the turn is withdrawn and its text is back in the composer.
    run.page.fill("#prompt", "Never mind")
    run.page.evaluate(
        "() => { document.getElementById('send').click(); document.getElementById('stop').click(); }"
    )
    run.page.wait_for_function(IDLE, timeout=WAIT_MS)
    assert len(run.texts(".msg.user .content")) == 2
    assert run.page.input_value("#prompt") == "Never mind"
    assert run.page.text_content("#stats") == "stopped"
    assert run.page.text_content("#error") == ""
    assert run.errors == []


def test_wrong_api_key_shows_the_server_message(run):
    run.open()
    run.page.fill("#api-key", "not-the-key")
    run.send("Hello there")
    status, body = _api(run.base, "/v1/chat/completions", run.bodies[0], key="not-the-key")
    assert status == 401
    message = body["error"]["message"]
    assert message.startswith("[server] Authorization")
    assert run.page.text_content("#error") == message and run.page.is_visible("#error")
    assert run.texts(".msg") == []  # the failed turn is withdrawn ...
    assert run.page.input_value("#prompt") == "Hello there"  # ... and its text given back
    assert run.page.evaluate("localStorage.getItem('metallic.apiKey')") == "not-the-key"
    # The browser logs each 401 response (the chat request, and /v1/models after the key
    # changed); nothing else.
    assert run.errors and all("status of 401" in e for e in run.errors), run.errors

    run.page.fill("#api-key", API_KEY)  # the right key: the same text goes through
    run.page.click("#send")
    run.page.wait_for_function(IDLE, timeout=WAIT_MS)
    assert run.page.text_content("#error") == ""
    assert run.texts(".msg.user .content") == ["Hello there"]
    assert run.texts(".msg.assistant .content") == [_api_reply(run.base, run.bodies[1])]


def test_error_event_after_the_stream_started_is_shown(run):
    # What the server sends when a request fails mid-stream (app.py: an error event, then the
    # end), with CRLF line ends and no space after "data:", both of which SSE allows.
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi <b>"}}]},
        {"error": {"message": "[server] boom", "type": "server_error"}},
    ]
    body = "".join(f"data:{json.dumps(e)}\r\n\r\n" for e in events)
    run.page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body),
    )
    run.open()
    run.send("Hello there")
    assert run.page.text_content("#error") == "[server] boom"
    assert run.texts(".msg.assistant .content") == ["Hi <b>"]  # text, never markup
    assert run.page.query_selector(".msg.assistant b") is None
    assert run.errors == []
