"""A lean HTTP/1.1 client for the raw passthrough to plain-http backends: one asyncio protocol per kept-alive
connection, the response parsed by llhttp (httptools), the body handed over as it arrives.

Why not aiohttp's client, as everywhere else: it spent ~80 µs of CPU per request here (the session's request
object, timers, traces, cookie jar, URL building, payload registry), more than the rest of the gateway's own work
on a 1-token reply. A relayed request needs none of that: its bytes are known, its headers checked already.

What the relay reads of a response is what aiohttp's ClientResponse has under the same names (status, reason,
headers, content_type, content_length, content.readany(), read(), close()), and a body that breaks off raises
aiohttp's ClientPayloadError, so the relay's handling and `HttpBackend.classify` take either.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

_HIGH_WATER = 1 << 18  # bytes held for a slow reader before the backend's socket is paused
_HEAD_LIMIT = 1 << 16  # a response head larger than this is not an HTTP server's answer
_KEEP_IDLE_S = 30.0


class ConnectFailed(aiohttp.ClientConnectionError):
    """No connection: refused, unreachable, or the name did not resolve."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ConnectTimeout(aiohttp.ClientConnectionError):
    """No connection within the connect timeout."""


class BadResponse(aiohttp.ClientPayloadError):
    """The backend's bytes are not an HTTP/1.1 response (or its head is larger than any server's)."""


class Response:
    """One response: its head once parsed, its body as a stream of chunks (itself: `content.readany()`)."""

    def __init__(self, conn: _Connection, method: str) -> None:
        self._conn: _Connection | None = conn
        self._head_only = method == "HEAD"
        self.status = 0
        self.reason = ""
        self._raw: list[tuple[str, str]] = []
        self._headers: CIMultiDictProxy[str] | None = None
        self.content_length: int | None = None
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content(self) -> Response:
        return self

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(self._raw))
        return self._headers

    @property
    def content_type(self) -> str:
        value = self.headers.get("Content-Type", "application/octet-stream")
        return value.partition(";")[0].strip().lower()

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last call, at once if there are some; b"" at the end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._held >= _HIGH_WATER and self._conn is not None:
            self._conn.resume()
        self._held = 0
        return data

    async def read(self) -> bytes:
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Done with it: a body read to its end leaves the connection to the next request; one cut short closes
        it (the backend sees the disconnect), and a reader still waiting gets "Connection closed"."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.response = None
            conn.abort()
        if not self._done and self._error is None:
            self._fail(aiohttp.ClientConnectionError("Connection closed"))

    release = close

    # ---- fed by the connection
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._held += len(data)
        if self._held >= _HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.head: asyncio.Future[Response] | None = None
        self.head_size = 0  # bytes received while the head is incomplete
        self.header_bytes = 0  # the head's header names and values
        self.idle_since = 0.0
        self.lost = False
        self.paused = False

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: not a server to keep talking to
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(BadResponse("it switched protocols"))
            return
        except httptools.HttpParserError as error:
            self._broken(BadResponse(str(error) or type(error).__name__))
            return
        if self.head is not None:
            self.head_size += len(data)
            if self.head_size > _HEAD_LIMIT:
                self._broken(BadResponse(f"a response head over {_HEAD_LIMIT} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.forget(self)
        response, self.response = self.response, None
        if self.head is not None and not self.head.done():
            self.head.set_exception(aiohttp.ServerDisconnectedError())
        elif response is not None and not response._done:
            if self.parser.should_keep_alive() or _framed(response):
                response._fail(aiohttp.ClientPayloadError("Response payload is not completed"))
            else:  # a body that runs to the connection's end: this is its end
                response._end()

    def pause_writing(self) -> None:  # a request body is one write; the kernel takes it or the backend is gone
        pass

    # ---- httptools callbacks
    def on_status(self, status: bytes) -> None:
        if self.response is not None:
            self.response.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.response is not None:
            self.response._raw.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        response, head = self.response, self.head
        if response is None or head is None:
            return
        if self.header_bytes > _HEAD_LIMIT:
            self._broken(BadResponse(f"a response head over {_HEAD_LIMIT} bytes"))
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            response._raw.clear()
            return
        response.status = status
        length = next((v for k, v in response._raw if k.lower() == "content-length"), None)
        if length is not None and length.isdigit():
            response.content_length = int(length)
        self.head = None
        head.set_result(response)
        if response._head_only:  # no body follows a HEAD's head, whatever its Content-Length says
            self.response = None
            response._end()
            self.abort()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.status == 0:  # the end of an interim answer: the real one follows
            return
        self.response = None
        response._end()
        if self.parser.should_keep_alive() and not self.lost:
            self.pool.put(self)
        else:
            self.abort()

    # ---- used by the pool and the response
    def start(self, request: bytes, method: str) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.response = Response(self, method)
        self.head = asyncio.get_running_loop().create_future()
        self.head_size = self.header_bytes = 0
        self.transport.write(request)
        return self.head

    def pause(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows, and tells whoever waits

    def _broken(self, error: BaseException) -> None:
        response, head = self.response, self.head
        self.response = self.head = None
        if head is not None and not head.done():
            head.set_exception(error)
        elif response is not None:
            response._fail(error)
        self.abort()


def _framed(response: Response) -> bool:
    return response.content_length is not None or any(
        k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in response._raw
    )


class Pool:
    """Kept-alive connections to one backend, at most `limit` open at once (0: no limit)."""

    def __init__(self, host: str, port: int, *, limit: int, connect_timeout: float) -> None:
        self.host, self.port = host, port
        name = f"[{host}]" if ":" in host else host  # an IPv6 address is bracketed in a Host header
        self.authority = name if port == 80 else f"{name}:{port}"
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.idle: deque[_Connection] = deque()
        self.open = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        """The response once its head arrived. A request is sent once: a connection closed before the answer is
        the backend's failure (as with aiohttp, which does not send a POST again either), for the relay's failover
        to deal with."""
        head = "".join([f"\r\n{name}: {value}" for name, value in headers])
        length = f"\r\nContent-Length: {len(body)}" if body or method in ("POST", "PUT", "PATCH") else ""
        request = b"".join(
            (
                f"{method} {target} HTTP/1.1\r\nHost: {self.authority}{head}{length}\r\n\r\n".encode(
                    "utf-8", "surrogateescape"
                ),
                body,
            )
        )
        conn = await self._take()
        try:
            return await conn.start(request, method)
        except BaseException:
            conn.abort()
            raise

    async def _take(self) -> _Connection:
        while True:
            now = time.monotonic()
            while self.idle:
                conn = self.idle.pop()  # the most recent: the least likely to have been closed by the backend
                if not conn.lost and now - conn.idle_since < _KEEP_IDLE_S:
                    return conn
                conn.abort()
            if not self.limit or self.open < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._next()  # woken and gone: the turn passes on
                raise
        self.open += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(self), self.host, self.port
                )
        except TimeoutError:
            self._gave_up()
            raise ConnectTimeout(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as error:
            self._gave_up()
            raise ConnectFailed(error) from None
        except BaseException:
            self._gave_up()
            raise
        return conn

    def _gave_up(self) -> None:
        self.open -= 1
        self._next()

    def put(self, conn: _Connection) -> None:
        if self.closed:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._next()

    def forget(self, conn: _Connection) -> None:
        """A connection closed: one more may open."""
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        self._next()

    def _next(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()
