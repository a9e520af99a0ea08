"""The OpenAI-compatible HTTP app over one model and its continuous-batching Scheduler.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both
with SSE streaming), ``GET /health``, ``GET /metrics`` (Prometheus text) and a chat page at
``/``. Request bodies are parsed and validated by :mod:`.protocol` (every error in OpenAI's
``{"error": {...}}`` shape naming the parameter); each choice of a request becomes one
``metallic.batch.Request`` on the scheduler, whose events come back to the event loop through
the server's :class:`.relay.EventRelay` (one loop wake-up per step at most, and per
``stream_interval`` seconds for the tokens of fast streams; a choice's first text and its end are
not delayed), and a request's events already there go out in one write. A client that goes away
(streaming or not, during the prompt too) has its requests cancelled, which frees their slots at
the scheduler's next step.

Used by ``metallic-server`` (:mod:`.cli`) and the Ray Serve deployment (:mod:`.ray`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import os
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors
from ..batch import QueueFull
from ..prompt_scores import PromptLogprobs
from . import shapes
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (
    APIError,
    ParsedRequest,
    api_error_from,
    parse_chat,
    parse_completion,
    parse_json_body,
)
from .relay import DEFAULT_INTERVAL_S, EventRelay

MAX_BODY_BYTES = 16 << 20  # a request body larger than this is a 413
LEGACY_MAX_TOKENS = 16  # OpenAI's default max_tokens of /v1/completions
_DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is there


@dataclasses.dataclass
class ServerState:
    """What the app serves: the model, its scheduler (started by the caller) and metrics."""

    model: object
    scheduler: object
    metrics: ServerMetrics
    model_id: str
    api_key: str | None = None
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    ready: bool = True
    # Tokenization and grammar compilation run in worker threads; the model's tokenizer index
    # is built lazily, so request preparation is serialized.
    prep_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    draft_model: object = None  # a draft Model the scheduler drafts with, closed with the model
    relay: EventRelay = dataclasses.field(default_factory=lambda: EventRelay(DEFAULT_INTERVAL_S))

    def __post_init__(self) -> None:
        self.scheduler.on_step = self.relay.step_end  # the relay writes at each step's end

    def close(self) -> None:
        """Frees the model and the draft model (the scheduler must have stopped)."""
        self.model.close()
        if self.draft_model is not None:
            self.draft_model.close()


# The metallic.load options metallic-server and a Ray replica forward (same names on both).
LOAD_OPTIONS = ("device", "threads", "context_length", "kv_cache_dtype", "batch_size", "parallel")


def load_options(settings) -> dict:
    """``metallic.load`` keyword arguments from an object with the LOAD_OPTIONS attributes
    (metallic-server's parsed arguments, a Ray replica's EngineSettings)."""
    return {k: getattr(settings, k) for k in LOAD_OPTIONS}


def open_state(
    model_ref,
    load: dict,
    *,
    draft=None,
    num_draft_tokens: int = 6,
    max_queue: int = 256,
    model_id: str | None = None,
    api_key: str | None = None,
    progress: bool = False,
    stream_interval: float = DEFAULT_INTERVAL_S,
) -> ServerState:
    """Loads ``model_ref`` with ``metallic.load(**load)`` and, when ``draft`` names a model
    rather than ``"prompt-lookup"``, the draft model with the same settings (same slots); then
    the Scheduler (not started) and metrics. What metallic-server and a Ray replica serve.
    ``model_id`` defaults to the file name; ``stream_interval``: relay.py. On failure nothing
    stays open."""
    import metallic

    relay = EventRelay(stream_interval)  # checks it before anything loads

    model = metallic.load(model_ref, progress=progress, **load)
    draft_model = None
    try:
        if draft is not None and draft != "prompt-lookup":
            draft_model = draft = metallic.load(draft, **load)
        metrics = ServerMetrics()
        scheduler = model.scheduler(
            max_queue=max_queue, observer=metrics, draft=draft, num_draft_tokens=num_draft_tokens
        )
    except BaseException:
        model.close()
        if draft_model is not None:
            draft_model.close()
        raise
    alias = model_id or os.path.basename(str(model.source)).removesuffix(".gguf")
    return ServerState(
        model, scheduler, metrics, alias, api_key=api_key, draft_model=draft_model, relay=relay
    )


def create_app(state: ServerState, *, cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """The FastAPI app serving ``state`` (see the module docstring)."""
    app = FastAPI(title="metallic", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metallic = state
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, f"[server] {exc.detail}", code="not_found")
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        err = api_error_from(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        _authorize(state, request)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        _authorize(state, request)
        return JSONResponse(shapes.model_list([state.model_id], state.created))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _complete(state, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(state, request, "completion")

    @app.get("/")
    async def page() -> HTMLResponse:
        html = resources.files("metallic.server").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html)

    return app


def _authorize(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    got = request.headers.get("authorization", "")
    want = f"Bearer {state.api_key}"
    if not hmac.compare_digest(got.encode(), want.encode()):
        raise APIError(
            401,
            "[server] Authorization: expected 'Bearer <the server's API key>', got "
            + ("a wrong key" if got else "none"),
            code="invalid_api_key",
        )


def _prepare(state: ServerState, parsed: ParsedRequest) -> tuple[list, list[str]]:
    """One validated batch.Request per choice, and each choice's echoed text (worker thread:
    tokenizes, compiles grammars)."""
    model = state.model
    with state.prep_lock:
        if parsed.kind == "chat":
            ids = model._prompt_ids(model._chat_prompt(parsed.messages), special=False)
            return _choices(model, parsed, ids), [""] * parsed.n
        reqs, echoes = [], []
        for i, prompt in enumerate(parsed.prompts):
            try:
                ids = model._prompt_ids(prompt, special=True)
                reqs += _choices(model, parsed, ids)
            except (APIError, errors.MetallicError) as exc:
                if len(parsed.prompts) == 1:
                    raise
                err = api_error_from(exc)  # which of the prompts
                raise APIError(
                    err.status, f"prompt[{i}]: {err.message}", param=f"prompt[{i}]", code=err.code
                ) from exc
            text = "" if not parsed.echo else prompt if isinstance(prompt, str) else None
            echoes += [model.tokenizer.decode(ids) if text is None else text] * parsed.n
        return reqs, echoes


def _choices(model, parsed: ParsedRequest, ids: list[int]) -> list:
    """The n batch.Requests of one prompt's ids (the caller holds prep_lock)."""
    room = model.context_length - len(ids)
    max_tokens = parsed.max_tokens
    if max_tokens is None:
        max_tokens = room if parsed.kind == "chat" else min(LEGACY_MAX_TOKENS, room)
    elif max_tokens > room:
        raise APIError(
            400,
            f"[server] max_tokens: the prompt's {len(ids)} tokens plus {max_tokens} to "
            f"generate exceed the context length {model.context_length}: expected at most "
            f"{room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    scored = parsed.top_logprobs if parsed.wants_logprobs else 0  # echo: the prompt's scores
    out = []
    for i in range(parsed.n):
        kw = parsed.generate_kwargs()
        if parsed.seed is not None:  # n choices of one seed differ: seed, seed + 1, ...
            kw["seed"] = (parsed.seed + i) % (1 << 64)
        if parsed.echo and (parsed.wants_logprobs or max_tokens == 0):
            # DEBT: each of n echoed choices scores the prompt again (the scores are the same)
            kw["prompt_logprobs"] = scored
        out.append(model._request(ids, max_tokens=max_tokens, **kw))
    return out


async def _complete(state: ServerState, request: Request, kind: str) -> Response:
    _authorize(state, request)
    body = parse_json_body(await request.body(), max_bytes=MAX_BODY_BYTES)
    parsed = parse_chat(body) if kind == "chat" else parse_completion(body)
    if not state.ready:
        raise APIError(503, "[server] shutting down", code="unavailable")
    try:
        reqs, echoes = await run_in_threadpool(_prepare, state, parsed)
    except errors.MetallicError as exc:
        raise api_error_from(exc) from exc
    queue: asyncio.Queue = asyncio.Queue()
    relay = state.relay
    relay.bind(asyncio.get_running_loop())
    texted = [False] * len(reqs)  # in the scheduler's thread: has choice i sent text yet
    handles = []
    try:
        for i, r in enumerate(reqs):

            def on_event(ev, i=i):
                final = isinstance(ev, BaseException) or ev.finish_reason is not None
                first = (
                    not texted[i]
                    and not final
                    and (isinstance(ev, PromptLogprobs) or bool(ev.text))  # an echo is text
                )
                texted[i] = texted[i] or first
                relay.push(queue, (i, ev), urgent=final or first)

            handles.append(state.scheduler.submit(r, on_event))
            state.metrics.on_request_start()
    except QueueFull as exc:
        for h in handles:
            h.cancel()
        raise APIError(429, str(exc), code="queue_full") from exc
    except errors.Busy as exc:  # shutting down
        for h in handles:
            h.cancel()
        raise APIError(503, str(exc), code="unavailable") from exc
    run = _Run(state, parsed, handles, queue, echoes)
    if parsed.stream:
        return StreamingResponse(
            run.writes(),
            media_type=shapes.SSE_CONTENT_TYPE,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await run.collect(request)


class _Run:
    """One HTTP request's choices: turns scheduler events into OpenAI objects."""

    def __init__(self, state: ServerState, parsed: ParsedRequest, handles, queue, echoes):
        self.state = state
        self.parsed = parsed
        self.chat = parsed.kind == "chat"
        self.handles = handles
        self.queue = queue
        self.id = shapes.new_id("chat" if self.chat else "completion")
        self.created = int(time.time())
        n = len(handles)
        self.echoes = echoes  # each choice's prompt text when echoed, else ""
        self.texts = [[e] for e in echoes]
        self.lps = [[] for _ in range(n)]  # logprob entries not yet sent (stream) or all
        self.last = [None] * n  # each choice's final GenerationResponse
        self.want_lp = parsed.wants_logprobs

    def _cancel(self) -> None:
        for h in self.handles:
            if not h.done:
                h.cancel()

    def _entry(self, token: int, logprob: float | None, top) -> tuple:
        """(text, logprob, alternatives as (text, logprob) pairs when asked) of one token;
        top None: none (an echoed prompt's first token)."""
        dec = self.state.model.tokenizer.decode
        alts = None
        if self.parsed.top_logprobs > 0 and top is not None:
            alts = [(dec([t]), lp) for t, lp in top]
        return (dec([token]), logprob, alts)

    def _prompt_entries(self, p: PromptLogprobs) -> list[tuple]:
        """The echoed prompt's entries (its first token has no log-probability)."""
        tops = p.top_logprobs or [None] * len(p.tokens)
        return [self._entry(*e) for e in zip(p.tokens, p.logprobs, tops, strict=True)]

    def _logprobs(self, entries, text_offset: int = 0):
        if not self.want_lp:
            return None
        if self.chat:
            return shapes.chat_logprobs(entries)
        return shapes.completion_logprobs(entries, text_offset=text_offset)

    def _usage(self) -> dict:
        """Summed over the prompts (each counted once for its n choices)."""
        n, prompt, cached = self.parsed.n, 0, 0
        for p in range(0, len(self.last), n):
            done = [r for r in self.last[p : p + n] if r is not None]
            prompt += done[0].prompt_tokens if done else 0
            cached += min(r.cached_tokens for r in done) if done else 0
        gen = sum(r.generation_tokens for r in self.last if r is not None)
        return shapes.usage(prompt, gen, cached)

    async def _events(self) -> AsyncIterator[tuple[int, object]]:
        """(choice, response) until every choice finished; an error ends all of them."""
        open_ = len(self.handles)
        while open_:
            i, ev = await self.queue.get()
            if isinstance(ev, BaseException):
                self._cancel()
                raise api_error_from(ev) if not isinstance(ev, APIError) else ev
            if isinstance(ev, PromptLogprobs):
                if self.want_lp:
                    self.lps[i][:0] = self._prompt_entries(ev)
            elif self.want_lp:
                self.lps[i].append(self._entry(ev.token, ev.logprob, ev.top_logprobs or ()))
            if ev.finish_reason is not None:
                self.last[i] = ev
                open_ -= 1
            yield i, ev

    async def writes(self) -> AsyncIterator[bytes]:
        """stream()'s SSE chunks, those of the events already queued joined into one write."""
        chunks = self.stream()
        try:
            pending = []
            async for chunk in chunks:
                pending.append(chunk)
                if self.queue.empty():
                    yield b"".join(pending)
                    pending = []
            if pending:
                yield b"".join(pending)
        finally:
            await chunks.aclose()

    async def stream(self) -> AsyncIterator[bytes]:
        p, sid, model = self.parsed, self.id, self.state.model_id
        offsets = [0] * len(self.handles)
        try:
            scored = [r.prompt_logprobs >= 0 for r in (h.request for h in self.handles)]
            for i, echo in enumerate(self.echoes):  # an echo that waits for no scores
                if echo and not scored[i]:
                    c = shapes.completion_choice(i, echo, None, None)
                    yield shapes.sse(shapes.text_completion_chunk(sid, self.created, model, [c]))
                    offsets[i] = len(echo)
            if self.chat:
                for i in range(len(self.handles)):
                    choice = shapes.chat_chunk_choice(i, role=True)
                    yield shapes.sse(shapes.chat_chunk(sid, self.created, model, [choice]))
            try:
                async for i, r in self._events():
                    reason = r.finish_reason
                    if isinstance(r, PromptLogprobs):  # the echo, with the prompt's scores
                        lp = self._logprobs(self.lps[i]) if self.lps[i] else None
                        self.lps[i] = []
                        c = shapes.completion_choice(i, self.echoes[i], reason, lp)
                        chunk = shapes.text_completion_chunk(
                            sid, self.created, model, [c], include_usage=p.include_usage
                        )
                        yield shapes.sse(chunk)
                        offsets[i] = len(self.echoes[i])
                        continue
                    if not r.text and reason is None:
                        continue  # held back (a partial character or stop string)
                    lp = self._logprobs(self.lps[i], offsets[i]) if self.lps[i] else None
                    self.lps[i] = []
                    if self.chat:
                        choices = [shapes.chat_chunk_choice(i, content=r.text, logprobs=lp)]
                        if reason is not None:
                            choices.append(shapes.chat_chunk_choice(i, reason=reason))
                        for c in choices:
                            chunk = shapes.chat_chunk(
                                sid, self.created, model, [c], include_usage=p.include_usage
                            )
                            yield shapes.sse(chunk)
                    else:
                        c = shapes.completion_choice(i, r.text, reason, lp)
                        chunk = shapes.text_completion_chunk(
                            sid, self.created, model, [c], include_usage=p.include_usage
                        )
                        yield shapes.sse(chunk)
                    offsets[i] += len(r.text)
            except APIError as err:  # after the stream started: an error event, then the end
                yield shapes.sse(err.body())
                return
            if p.include_usage:
                make = shapes.chat_usage_chunk if self.chat else shapes.text_completion_usage_chunk
                yield shapes.sse(make(sid, self.created, model, self._usage()))
            yield shapes.SSE_DONE
        finally:  # the client went away (or the stream ended): free the slots
            self._cancel()

    async def collect(self, request: Request) -> Response:
        events = self._events()
        try:
            while True:
                nxt = asyncio.ensure_future(events.__anext__())
                while True:
                    done, _ = await asyncio.wait({nxt}, timeout=_DISCONNECT_POLL_S)
                    if done:
                        break
                    if await request.is_disconnected():
                        nxt.cancel()
                        self._cancel()
                        return Response(status_code=499)
                try:
                    i, r = nxt.result()
                except StopAsyncIteration:
                    break
                if not isinstance(r, PromptLogprobs):  # the echo is texts[i][0]
                    self.texts[i].append(r.text)
        finally:
            self._cancel()
        model = self.state.model_id
        choices = []
        for i, r in enumerate(self.last):
            text = "".join(self.texts[i])
            lp = self._logprobs(self.lps[i])
            if self.chat:
                choices.append(shapes.chat_choice(i, text, r.finish_reason, lp))
            else:
                choices.append(shapes.completion_choice(i, text, r.finish_reason, lp))
        make = shapes.chat_completion if self.chat else shapes.text_completion
        return JSONResponse(make(self.id, self.created, model, choices, self._usage()))
