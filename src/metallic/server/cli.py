"""``metallic-server``: the OpenAI-compatible server (``pip install "metallic[server]"``).

Loads the model once with ``--parallel`` sequence slots, starts the continuous-batching
scheduler and serves the app of :mod:`.app` with uvicorn until SIGINT / SIGTERM; then it stops
accepting connections, lets the requests in flight finish (``--drain-timeout``), stops the
scheduler and frees the model.

Exit status: 0 after a clean shutdown, 1 a metallic error while loading (one line
``metallic-server: <Class>: message``), 2 a bad argument.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..cli import DEVICES, KV_CACHE_DTYPES, UsageError, _float_in, _int_in, _Parser
from .relay import DEFAULT_INTERVAL_S

PROG = "metallic-server"
EXIT_ERROR, EXIT_USAGE = 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Serve a model over an OpenAI-compatible HTTP API with continuous batching.",
    )
    p.add_argument("--model", "-m", default=None, help="GGUF file, HF folder or registry name")
    p.add_argument("--model-alias", default=None, help="model id reported by /v1/models")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8080, help="TCP port (8080)")
    p.add_argument(
        "--parallel",
        "-np",
        type=_int_in(1, 256),
        default=4,
        help="sequences decoded together, each with its own KV cache slot (4)",
    )
    p.add_argument("--threads", "-t", type=_int_in(1, 1024), default=None, help="CPU threads")
    p.add_argument(
        "--context-length",
        "-c",
        type=_int_in(16, 1 << 22),
        default=4096,
        help="tokens of KV cache per slot: prompt + output of one request (4096)",
    )
    p.add_argument(
        "--batch-size",
        type=_int_in(1, 8192),
        default=256,
        help="tokens per step over all slots: decode tokens first, then prompt chunks (256)",
    )
    p.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="f16",
        help="KV cache storage; q8_0 / q4_0 quantize its rows (f16)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument(
        "--api-key",
        default=os.environ.get("METALLIC_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1/* and /metrics ($METALLIC_API_KEY)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="allow browser requests from this origin (repeatable; '*' for any)",
    )
    p.add_argument(
        "--max-queue",
        type=_int_in(0, 1 << 20),
        default=256,
        help="requests that may wait for a slot; beyond that 429 with Retry-After (256)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_int_in(0, 86400),
        default=60,
        help="seconds the requests in flight get to finish after SIGTERM (60)",
    )
    p.add_argument(
        "--draft",
        default=None,
        metavar="prompt-lookup|MODEL",
        help="speculative decoding for every request, batched: n-gram drafts from its context, "
        "or a smaller model sharing the vocabulary (GGUF, HF folder or registry name; loaded "
        "with the same --parallel, --threads, --context-length)",
    )
    p.add_argument(
        "--num-draft-tokens", type=_int_in(1, 32), default=6, help="drafted tokens per step (6)"
    )
    p.add_argument(
        "--stream-interval-ms",
        type=_float_in(0.0, 1000.0),
        default=1000.0 * DEFAULT_INTERVAL_S,
        help="a stream faster than 2 tokens per interval gets its tokens written in groups, "
        "at most this often; its first and last token are never held (16; 0: every step)",
    )
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"))
    return p


def serve(args: argparse.Namespace) -> int:
    import contextlib

    import uvicorn

    from ..errors import MetallicError
    from .app import create_app, load_options, open_state

    try:
        state = open_state(
            args.model,
            load_options(args),
            draft=args.draft,
            num_draft_tokens=args.num_draft_tokens,
            max_queue=args.max_queue,
            model_id=args.model_alias,
            api_key=args.api_key,
            progress=sys.stderr.isatty(),
            stream_interval=args.stream_interval_ms / 1000.0,
        )
    except MetallicError as exc:
        print(f"{PROG}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    scheduler = state.scheduler

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        scheduler.start()
        yield
        state.ready = False  # the listener is closed and the requests in flight are done
        scheduler.stop(drain=True)

    app = create_app(state, cors_origins=tuple(args.cors_origin))
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level or "info",
        timeout_graceful_shutdown=args.drain_timeout,
        access_log=args.log_level == "debug",
    )
    print(
        f"{PROG}: {state.model_id} on {state.model.device}, {args.parallel} slots of {args.context_length} "
        f"tokens: http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    try:
        _DrainingServer(config).run()
    finally:
        scheduler.stop(drain=False, timeout=5)
        state.close()
    return 0


def _draining_server_class():
    import contextlib
    import signal

    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, except that SIGINT / SIGTERM end in a clean exit (status 0) after
        the drain instead of re-raising the signal once uvicorn is done."""

        @contextlib.contextmanager
        def capture_signals(self):
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return DrainingServer


def _DrainingServer(config):  # noqa: N802 - a deferred class
    return _draining_server_class()(config)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
