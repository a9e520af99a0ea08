"""A lean HTTP/1.1 client on asyncio streams: the serving benchmark's load generator.

The benchmark's clients share the machine with the server they measure. On 2 cores httpx's async
client cost about 0.5 ms of CPU per streamed chunk, this one about 0.25 ms (measured on AMD EPYC,
both clients against the same metallic-server stream of 400 tokens): the difference is CPU that
either server would otherwise have had, and it cost the measured stream about 10 % of its rate.

One connection per request (``Connection: close``: the loopback connect is ~0.1 ms, next to a
TTFT of tens of ms), the request written at once, then the status line, the headers and the body:
by ``Content-Length``, by chunked transfer coding, or to the end of the connection. A request's
``timeout`` is one timer that aborts its connection (no per-read timers). Every transport
failure, timeout or malformed response raises ClientError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

LINE_LIMIT = 1 << 20  # longest header or SSE line read (a chunk of many top_logprobs fits)


class ClientError(Exception):
    """A connection that failed or timed out, or a response that is not HTTP/1.x."""


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host[:port]/path?query`` as (host, port, request target)."""
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ClientError(f"[sse_client] url: expected http://host[:port]/path, got {url!r}")
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return u.hostname, u.port or 80, target


def request_bytes(method: str, host: str, port: int, target: str, body: bytes | None) -> bytes:
    """The request's head and body as one write."""
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    head.append("Accept: */*")
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")


def parse_head(lines: list[bytes]) -> tuple[int, dict[str, str]]:
    """Status code and headers (names lower-cased) of a response head, without its blank line."""
    if not lines:
        raise ClientError("[sse_client] response: expected a status line, got none")
    parts = lines[0].decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ClientError(
            f"[sse_client] status line: expected 'HTTP/1.x NNN', got {lines[0][:80]!r}"
        )
    headers = {}
    for raw in lines[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise ClientError(f"[sse_client] header: expected 'name: value', got {raw[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def chunk_size(line: bytes) -> int:
    """The size of a chunk of chunked transfer coding from its size line (extensions ignored)."""
    text = line.split(b";", 1)[0].strip()
    try:
        size = int(text, 16)
    except ValueError:
        size = -1
    if size < 0 or not text or text[:1] in (b"+", b"-"):
        raise ClientError(f"[sse_client] chunk size: expected hex digits, got {line[:40]!r}")
    return size


class Response:
    """A response whose body is read as it arrives: ``aiter_lines`` or ``aread``."""

    def __init__(self, status_code: int, headers: dict[str, str], reader, expired=lambda: False):
        self.status_code = status_code
        self.headers = headers
        self._reader = reader
        self._expired = expired  # True once the request's timer aborted the connection
        self.content = b""

    async def _pieces(self) -> AsyncIterator[bytes]:
        r, h = self._reader, self.headers
        if "chunked" in h.get("transfer-encoding", "").lower():
            while True:
                size = chunk_size(await r.readline())
                if size == 0:
                    while (await r.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return
                data = await r.readexactly(size + 2)
                if data[-2:] != b"\r\n":
                    raise ClientError("[sse_client] chunk: expected CRLF after its data")
                yield data[:-2]
        elif "content-length" in h:
            try:
                left = int(h["content-length"])
            except ValueError:
                left = -1
            if left < 0:
                raise ClientError(f"[sse_client] Content-Length: got {h['content-length']!r}")
            while left:
                data = await r.read(min(left, 1 << 16))
                if not data:
                    raise ClientError(f"[sse_client] body: {left} bytes missing at its end")
                left -= len(data)
                yield data
        else:
            while data := await r.read(1 << 16):
                yield data
            if self._expired():  # the timer's abort reads as the end of the body
                raise ClientError("[sse_client] body: cut by the request's timeout")

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines (UTF-8, without line endings), each as soon as it is complete."""
        rest = b""
        async for piece in self._pieces():
            lines = (rest + piece).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line.decode("utf-8", "replace").removesuffix("\r")
        if rest:
            yield rest.decode("utf-8", "replace")

    async def aread(self) -> bytes:
        """The whole body (kept in ``content``)."""
        self.content = b"".join([p async for p in self._pieces()])
        return self.content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return _json.loads(self.content)


class LeanClient:
    """``stream(method, url, json=...)`` and ``request(...)`` (body read), httpx's shapes."""

    def __init__(self, timeout: float = 600.0, connect_timeout: float = 10.0):
        self.timeout, self.connect_timeout = timeout, connect_timeout

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, json=None) -> AsyncIterator[Response]:
        host, port, target = split_url(url)
        body = None if json is None else _json.dumps(json).encode()
        loop = asyncio.get_running_loop()
        timed_out = False
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=LINE_LIMIT), self.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise ClientError(f"[sse_client] connect to {host}:{port}: {e!r}") from e

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            writer.transport.abort()

        timer = loop.call_later(self.timeout, expire)
        try:
            writer.write(request_bytes(method, host, port, target, body))
            head = []
            while (line := await reader.readline()) not in (b"\r\n", b"\n"):
                if not line:
                    raise ClientError("[sse_client] response: connection closed in its head")
                head.append(line)
            status, headers = parse_head(head)
            yield Response(status, headers, reader, lambda: timed_out)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ClientError) as e:
            # Only the reads' own failures: the caller's exceptions pass through unchanged.
            if timed_out:
                raise ClientError(
                    f"[sse_client] {url}: no complete answer in {self.timeout} s"
                ) from e
            if isinstance(e, ClientError):
                raise
            raise ClientError(f"[sse_client] {url}: {e!r}") from e
        finally:
            timer.cancel()
            writer.close()

    async def request(self, method: str, url: str, json=None) -> Response:
        async with self.stream(method, url, json=json) as resp:
            await resp.aread()
            return resp
