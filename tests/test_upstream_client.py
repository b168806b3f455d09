"""The raw passthrough's HTTP/1.1 client (backends/h1.py, used by `HttpBackend.send` for http:// backends) against a
scripted server on a raw socket: every byte it sends and every way a server can answer, well or badly — kept-alive
connections, chunked, sized and close-delimited bodies, HEAD, interim 1xx answers, a connection limit, a slow reader,
a backend gone mid-body, and answers that are not HTTP at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import pytest_asyncio

from clawdbot.backends import h1
from clawdbot.backends.ollama import OllamaBackend
from clawdbot.errors import BackendError
from clawdbot.settings import Settings

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


@dataclass
class Wire:
    """A server on a raw socket: each request's head and body is handed to `answer`, which writes what it likes and
    says whether the connection stays open for the next request."""

    answer: Answer
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


@pytest_asyncio.fixture
async def wire() -> AsyncIterator[Wire]:
    async def ok(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    state = Wire(ok)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.open_now += 1
        state.most_open = max(state.most_open, state.open_now)
        try:
            while (request := await read_request(reader)) is not None:
                state.requests.append(request)
                keep = await state.answer(reader, writer, request)
                await writer.drain()
                if not keep:
                    break
        except ConnectionError:
            pass
        finally:
            state.open_now -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()


def backend(wire: Wire, **settings: object) -> OllamaBackend:
    return OllamaBackend(Settings(**settings), f"http://127.0.0.1:{wire.port}")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_the_request_goes_as_the_client_sent_it_and_connections_are_kept_alive(wire: Wire) -> None:
    ollama = backend(wire)
    try:
        for _ in range(3):
            response = await ollama.send("POST", "/api/chat?x=1", b'{"a":1}', [("Content-Type", "application/json")])
            assert (response.status, await response.read()) == (200, b"ok")
            response.close()
    finally:
        await ollama.close()
    assert wire.connections == 1  # one connection for all three
    head, _, body = wire.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/chat?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{wire.port}".encode() in lines
    assert b"Content-Type: application/json" in lines
    assert b"Content-Length: 7" in lines
    assert b"Accept: */*" in lines  # as aiohttp's client always sent
    assert body == b'{"a":1}'


@pytest.mark.asyncio
async def test_a_chunked_stream_comes_chunk_by_chunk_as_it_is_sent(wire: Wire) -> None:
    go = asyncio.Event()

    async def stream(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        w.write(b'6\r\n{"a"}\n\r\n')
        await w.drain()
        await go.wait()
        w.write(b'6\r\n{"b"}\n\r\n0\r\n\r\n')
        return True

    wire.answer = stream
    ollama = backend(wire)
    try:
        response = await ollama.send("POST", "/api/chat", b"{}", [])
        assert response.content_type == "application/x-ndjson"
        assert response.content_length is None
        assert await response.content.readany() == b'{"a"}\n'  # before the rest was even written
        go.set()
        assert await response.content.readany() == b'{"b"}\n'
        assert await response.content.readany() == b""
        response.close()
        again = await ollama.send("GET", "/api/tags", b"", [])  # the same connection, after a chunked body
        assert again.status == 200
    finally:
        await ollama.close()
    assert wire.connections == 1


@pytest.mark.asyncio
async def test_a_body_that_runs_to_the_connection_end_is_whole_and_the_connection_not_reused(wire: Wire) -> None:
    async def until_close(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        return False

    wire.answer = until_close
    ollama = backend(wire)
    try:
        for _ in range(2):
            response = await ollama.send("GET", "/", b"", [])
            assert await response.read() == b"all of it"
    finally:
        await ollama.close()
    assert wire.connections == 2


@pytest.mark.asyncio
async def test_head_has_no_body_and_interim_answers_are_skipped(wire: Wire) -> None:
    async def answer(_r: asyncio.StreamReader, w: asyncio.StreamWriter, request: bytes) -> bool:
        if request.startswith(b"HEAD"):
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            return False
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-Id: 7\r\nContent-Length: 1\r\n\r\n!")
        return True

    wire.answer = answer
    ollama = backend(wire)
    try:
        head = await ollama.send("HEAD", "/", b"", [])
        assert (head.status, head.content_length, await head.read()) == (200, 1000, b"")
        made = await ollama.send("POST", "/", b"x", [])
        assert (made.status, made.reason, made.headers["x-id"], await made.read()) == (201, "Created", "7", b"!")
    finally:
        await ollama.close()


@pytest.mark.asyncio
async def test_a_closed_idle_connection_is_not_used_again(wire: Wire) -> None:
    async def then_close(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # a keep-alive answer, and then the server closes the connection anyway

    wire.answer = then_close
    ollama = backend(wire)
    try:
        first = await ollama.send("GET", "/", b"", [])
        assert await first.read() == b"ok"
        await asyncio.sleep(0.1)  # the close reaches us
        second = await ollama.send("GET", "/", b"", [])
        assert await second.read() == b"ok"
    finally:
        await ollama.close()
    assert wire.connections == 2


@pytest.mark.asyncio
async def test_never_more_connections_than_the_limit(wire: Wire) -> None:
    async def slow(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        await asyncio.sleep(0.05)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    wire.answer = slow
    ollama = backend(wire, upstream_max_connections=3)

    async def one() -> bytes:
        response = await ollama.send("GET", "/", b"", [])
        try:
            return await response.read()
        finally:
            response.close()

    try:
        assert await asyncio.gather(*(one() for _ in range(12))) == [b"ok"] * 12
    finally:
        await ollama.close()
    assert wire.most_open == 3
    assert wire.connections == 3


@pytest.mark.asyncio
async def test_a_slow_reader_pauses_the_backend_instead_of_buffering_without_bound(wire: Wire) -> None:
    sent = 0
    piece = b"x" * 65536

    async def flood(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        nonlocal sent
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * 200))
        for _ in range(200):
            w.write(piece)
            await w.drain()
            sent += len(piece)
        return True

    wire.answer = flood
    ollama = backend(wire)
    try:
        response = await ollama.send("GET", "/", b"", [])
        await asyncio.sleep(0.5)  # nobody reads: the backend must be held back by TCP, not by our memory
        assert sent < 200 * len(piece)
        assert isinstance(response, h1.Response)
        assert response._held < 4 * 2**20  # the high-water mark and what the socket had in flight
        received = 0
        while data := await response.content.readany():
            received += len(data)
        assert received == 200 * len(piece)
    finally:
        await ollama.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (b"", "reset"),  # closed without a word
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "reset_mid_stream"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "reset_mid_stream"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "bad_response"),  # not an HTTP server at all
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", "bad_response"),  # a head no server sends
    ],
)
async def test_a_broken_answer_is_a_named_backend_failure(wire: Wire, answer: bytes, kind: str) -> None:
    async def broken(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(answer)
        return False

    wire.answer = broken
    ollama = backend(wire)
    try:
        response = await ollama.send("POST", "/api/chat", b"{}", [])
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)) as raised:
            await response.read()
        found = ollama.classify(raised.value, started=True).kind
    except BackendError as error:  # the head never came: send() names it
        found = error.kind
    finally:
        await ollama.close()
    assert found == kind


@pytest.mark.asyncio
async def test_refused_connection_and_closing_a_response_mid_body(wire: Wire) -> None:
    dead = OllamaBackend(Settings(), "http://127.0.0.1:1")
    with pytest.raises(BackendError) as refused:
        await dead.send("GET", "/", b"", [])
    assert refused.value.kind == "connect_refused"
    await dead.close()

    gone = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, w: asyncio.StreamWriter, _req: bytes) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await w.drain()
        await reader.read()  # until the client hangs up
        gone.set()
        return False

    wire.answer = endless
    ollama = backend(wire)
    try:
        response = await ollama.send("POST", "/api/chat", b"{}", [])
        assert await response.content.readany() == b"a"
        reading = asyncio.ensure_future(response.content.readany())
        await asyncio.sleep(0.05)
        response.close()  # what the relay's watchdog does to a silent stream
        with pytest.raises(aiohttp.ClientConnectionError):
            await reading
        await asyncio.wait_for(gone.wait(), 5)  # the backend saw the disconnect: its slot is free
    finally:
        await ollama.close()
