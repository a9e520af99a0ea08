"""benchmarks/sse_client.py: the serving benchmark's HTTP/1.1 client. Body framing (chunked
transfer coding in any split, Content-Length, to EOF) against bodies built here per RFC 9112,
malformed heads and bodies, and real sockets: Python's http.server speaking HTTP/1.1 chunked
coding, a server that stalls (the request's timeout) and a closed port. No model."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import sse_client as sc  # noqa: E402


def chunked(body: bytes, cuts: list[int], ext: bool, trailer: bool) -> bytes:
    """``body`` in chunked transfer coding, cut at ``cuts`` (RFC 9112 section 7.1)."""
    out, at = [], 0
    for end in sorted({c for c in cuts if 0 < c < len(body)} | {len(body)}):
        piece = body[at:end]
        if piece:
            out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";x=1" if ext else b"", piece))
        at = end
    out.append(b"0\r\n" + (b"Expires: never\r\n" if trailer else b"") + b"\r\n")
    return b"".join(out)


def response(headers: dict[str, str], raw: bytes) -> sc.Response:
    """A Response over ``raw`` (call inside the event loop that reads it)."""
    reader = asyncio.StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    return sc.Response(200, headers, reader)


def read(headers: dict[str, str], raw: bytes) -> bytes:
    async def go():
        return await response(headers, raw).aread()

    return asyncio.run(go())


def lines_of(headers: dict[str, str], raw: bytes) -> list[str]:
    async def go():
        return [line async for line in response(headers, raw).aiter_lines()]

    return asyncio.run(go())


def expected_lines(body: bytes) -> list[str]:
    parts = body.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "replace").removesuffix("\r") for p in parts]


sse_bodies = st.lists(
    st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40),
    max_size=12,
).map(lambda ls: "".join(f"data: {s}\n\n" for s in ls).encode())


@settings(max_examples=200, deadline=None)
@given(sse_bodies, st.lists(st.integers(0, 600), max_size=20), st.booleans(), st.booleans())
def test_chunked_any_split_gives_the_body_and_its_lines(body, cuts, ext, trailer):
    raw = chunked(body, cuts, ext, trailer)
    hdr = {"transfer-encoding": "chunked"}
    assert lines_of(hdr, raw) == expected_lines(body)
    assert read(hdr, raw) == body


@settings(max_examples=100, deadline=None)
@given(sse_bodies)
def test_content_length_and_eof_bodies(body):
    hdr = {"content-length": str(len(body))}
    assert read(hdr, body + b"ignored: past the length") == body
    assert lines_of({}, body) == expected_lines(body)


def test_last_line_without_newline_and_crlf_lines():
    assert lines_of({}, b"a\r\nb\nc") == ["a", "b", "c"]


@pytest.mark.parametrize(
    "hdr, raw, match",
    [
        ({"transfer-encoding": "chunked"}, b"zz\r\nab\r\n0\r\n\r\n", "chunk size"),
        ({"transfer-encoding": "chunked"}, b"-2\r\nab\r\n0\r\n\r\n", "chunk size"),
        ({"transfer-encoding": "chunked"}, b"\r\n", "chunk size"),
        ({"transfer-encoding": "chunked"}, b"2\r\nabXY0\r\n\r\n", "CRLF"),
        ({"content-length": "10"}, b"abc", "7 bytes missing"),
        ({"content-length": "-1"}, b"abc", "Content-Length"),
        ({"content-length": "ten"}, b"abc", "Content-Length"),
    ],
)
def test_malformed_bodies_raise(hdr, raw, match):
    with pytest.raises(sc.ClientError, match=match):
        read(hdr, raw)


def test_truncated_chunk_raises_incomplete_read():
    with pytest.raises(asyncio.IncompleteReadError):  # LeanClient.stream maps it to ClientError
        read({"transfer-encoding": "chunked"}, b"10\r\nabc")


def test_parse_head_and_urls():
    status, headers = sc.parse_head([b"HTTP/1.1 429 Too Many\r\n", b"Retry-After:  1 \r\n"])
    assert (status, headers) == (429, {"retry-after": "1"})
    for bad in ([], [b"HTTP/2 200\r\n"], [b"HTTP/1.1 OK\r\n"], [b"HTTP/1.1 200\r\n", b"oops\r\n"]):
        with pytest.raises(sc.ClientError):
            sc.parse_head(bad)
    assert sc.split_url("http://127.0.0.1:8080/v1/x?a=1") == ("127.0.0.1", 8080, "/v1/x?a=1")
    assert sc.split_url("http://h") == ("h", 80, "/")
    with pytest.raises(sc.ClientError, match="url"):
        sc.split_url("https://h/x")
    req = sc.request_bytes("POST", "h", 1, "/p", b"{}")
    assert req.startswith(b"POST /p HTTP/1.1\r\nHost: h:1\r\nConnection: close\r\n")
    assert req.endswith(b"Content-Length: 2\r\n\r\n{}")


class _Chunked(BaseHTTPRequestHandler):
    """HTTP/1.1 with chunked coding (as uvicorn streams SSE); /stall never answers."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/stall":
            time.sleep(2.0)
            return
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in (b"data: " + body + b"\n", b"\n", b"data: [DO", b"NE]\n\n"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *a):
        pass


@pytest.fixture
def chunked_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chunked)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_stream_against_an_http11_server(chunked_server):
    async def go():
        client = sc.LeanClient(timeout=10.0)
        async with client.stream("POST", chunked_server + "/sse", json={"a": 1}) as resp:
            return resp.status_code, [line async for line in resp.aiter_lines()]

    assert asyncio.run(go()) == (200, ['data: {"a": 1}', "", "data: [DONE]", ""])


def test_timeout_and_refused_connection(chunked_server):
    client = sc.LeanClient(timeout=0.3)
    t0 = time.perf_counter()
    with pytest.raises(sc.ClientError, match="no complete answer in 0.3 s"):
        asyncio.run(client.request("POST", chunked_server + "/stall", json={}))
    assert time.perf_counter() - t0 < 1.5
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sc.ClientError, match="connect"):
        asyncio.run(sc.LeanClient().request("GET", f"http://127.0.0.1:{port}/"))
