"""Helpers for the chat tests: a recording pass-through in front of the simulator, a small client of the chat
API, a WebSocket client, and throwaway PostgreSQL databases.

The simulator keeps no record of request bodies, and the gateway's chat requests carry no X-Request-ID, so the
`Spy` sits between them and keeps, for every request, the JSON the gateway sent and the bytes that came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from aiohttp import web

FINAL = ("done", "stopped", "failed", "interrupted")
PG_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1:5432")


# ---- the spy ------------------------------------------------------------------------------------------------------
@dataclass
class Exchange:
    method: str
    path: str
    body: dict[str, Any]
    raw: bytes = b""  # the body's bytes as the gateway sent them
    response: bytearray = field(default_factory=bytearray)
    seen: object = None  # what the spy's hook found when the request arrived
    finished: threading.Event = field(default_factory=threading.Event)

    def chunks(self) -> list[dict[str, Any]]:
        """The JSON lines of the response, up to a broken one (as the `malformed` fault sends)."""
        chunks = []
        for line in self.response.splitlines():
            try:
                chunks.append(json.loads(line))
            except ValueError:
                break
        return chunks

    def final(self) -> dict[str, Any]:
        """Ollama's last chunk, with its counts."""
        last = self.chunks()[-1]
        assert last["done"] is True, last
        return last

    def text(self, kind: str = "content") -> str:
        return "".join(str(c.get("message", {}).get(kind) or "") for c in self.chunks())


class Spy:
    """Forwards every request to `upstream` and records it; a gateway pointed here talks to the simulator."""

    def __init__(self, upstream: str, on_chat: Callable[[], object] | None = None) -> None:
        self.upstream = upstream
        self.on_chat = on_chat
        self.exchanges: list[Exchange] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._serve, name="spy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the spy did not start")

    def chats(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.path == "/api/chat"]

    def last_chat(self, timeout: float = 5.0) -> Exchange:
        """The newest /api/chat exchange once its response has ended."""
        deadline = time.monotonic() + timeout
        while not self.chats() and time.monotonic() < deadline:
            time.sleep(0.01)
        exchange = self.chats()[-1]
        assert exchange.finished.wait(max(deadline - time.monotonic(), 0.1)), "the backend request never ended"
        return exchange

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            self._started.set()
            await self._stopping.wait()
            await runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        exchange = Exchange(request.method, request.path, json.loads(raw) if raw else {}, raw)
        if request.path == "/api/chat" and self.on_chat is not None:
            exchange.seen = self.on_chat()
        self.exchanges.append(exchange)
        try:
            return await self._relay(request, raw, exchange)
        finally:
            exchange.finished.set()

    async def _relay(self, request: web.Request, raw: bytes, exchange: Exchange) -> web.StreamResponse:
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        assert self._session is not None
        try:
            upstream = await self._session.request(
                request.method, self.upstream + request.path_qs, data=raw, headers=headers
            )
        except aiohttp.ClientError:
            assert request.transport is not None
            request.transport.close()  # the backend is not there: neither is the spy
            return web.Response(status=502)
        async with upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            async for data in upstream.content.iter_any():
                exchange.response += data
                await response.write(data)
            await response.write_eof()
            return response


# ---- the chat API -----------------------------------------------------------------------------------------------
class ChatApi:
    """The chat page's REST API, asserting the status of every call that must succeed."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=base + "/chat/api", timeout=15, headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ChatApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, **fields: object) -> dict[str, Any]:
        response = self.http.post("/conversations", json=fields)
        assert response.status_code == 201, response.text
        return response.json()["conversation"]  # type: ignore[no-any-return]

    def patch(self, conversation_id: str, **fields: object) -> dict[str, Any]:
        response = self.http.patch(f"/conversations/{conversation_id}", json=fields)
        assert response.status_code == 200, response.text
        return response.json()["conversation"]  # type: ignore[no-any-return]

    def view(self, conversation_id: str) -> dict[str, Any]:
        response = self.http.get(f"/conversations/{conversation_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def post(self, conversation_id: str, action: str, body: object = None) -> dict[str, Any]:
        response = self.http.post(f"/conversations/{conversation_id}/{action}", json=body)
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    def send(self, conversation_id: str, content: str, **extra: object) -> dict[str, Any]:
        return self.post(conversation_id, "messages", {"content": content, **extra})

    def wait_reply(self, conversation_id: str, reply_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The reply's stored row once it has finished."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.view(conversation_id)
            found = [m for m in view["messages"] if m["id"] == reply_id]
            if found and found[0]["status"] in FINAL and view["active"] is None:
                return dict(found[0])
            assert time.monotonic() < deadline, f"reply {reply_id} did not finish: {found}"
            time.sleep(0.02)

    def turn(self, conversation_id: str, content: str) -> dict[str, Any]:
        """Send a message and wait for its reply; the stored reply."""
        sent = self.send(conversation_id, content)
        return self.wait_reply(conversation_id, sent["reply"]["id"])

    def search(self, text: str) -> list[dict[str, Any]]:
        response = self.http.get("/search", params={"q": text})
        assert response.status_code == 200, response.text
        return response.json()["results"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def chat_api(base: str) -> Iterator[ChatApi]:
    api = ChatApi(base)
    try:
        yield api
    finally:
        api.close()


def sim_runner(sim_url: str) -> dict[str, Any]:
    """The simulator's state of its one model (slots, streams active, completed and cancelled counts)."""
    runners = httpx.get(f"{sim_url}/_sim/state").json()["runners"]
    return runners.get("qwen3:32b") or {"active": 0, "waiting": 0, "cancelled_total": 0, "completed_total": 0}


def wait_until(check: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---- WebSocket ------------------------------------------------------------------------------------------------
class Socket:
    """One chat WebSocket: commands get a `ref`; events are read in order, with a time limit on each wait.

    `until` and `command` set heartbeats aside (counted in `heartbeats`), so tests see the events that matter.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.heartbeats = 0
        self._refs = 0

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        message = await self.ws.receive(within)
        assert message.type == aiohttp.WSMsgType.TEXT, f"expected a JSON text frame, got {message!r}"
        event: dict[str, Any] = json.loads(message.data)
        return event

    async def until(self, done: Callable[[dict[str, Any]], bool], within: float = 10.0) -> list[dict[str, Any]]:
        """Every event but heartbeats up to and including the first for which `done` is true."""
        events: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + within
        while True:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"timed out; got {[e['type'] for e in events]}"
            try:
                event = await self.next(left)
            except TimeoutError:  # say what did come, which tells a slow server from a missing event
                raise AssertionError(f"timed out after {within} s; got {[e['type'] for e in events]}") from None
            if event["type"] == "heartbeat":
                self.heartbeats += 1
                continue
            self.seen.append(event)
            events.append(event)
            if done(event):
                return events

    async def command(self, kind: str, **fields: object) -> dict[str, Any]:
        """Send a command; its ack or error (the events before it stay in `seen`)."""
        self._refs += 1
        ref = f"r{self._refs}"
        await self.ws.send_str(json.dumps({"type": kind, "ref": ref, **fields}))
        events = await self.until(lambda e: e["type"] in ("ack", "error", "pong") and e.get("ref") == ref)
        return events[-1]


async def connect(session: aiohttp.ClientSession, url: str) -> Socket:
    """A chat WebSocket on the gateway at `url`, past its hello."""
    socket = Socket(await session.ws_connect(url + "/chat/api/ws"))
    assert (await socket.next())["type"] == "hello"
    return socket


def done_of(reply_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] == "reply.done" and event["message"]["id"] == reply_id


# ---- PostgreSQL -------------------------------------------------------------------------------------------------
async def _admin(statement: str) -> str:
    """Run one statement as the first superuser that trust auth lets in; the user's name."""
    problems = []
    for user in ("postgres", "root"):
        try:
            conn = await asyncpg.connect(f"postgresql://{user}@{PG_HOST}/test", timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            problems.append(f"{user}: {error}")
            continue
        try:
            await conn.execute(statement)
            return user
        finally:
            await conn.close()
    raise ConnectionError(f"PostgreSQL at {PG_HOST} is not reachable ({'; '.join(problems)})")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database for one test module, dropped afterwards; skipped without PostgreSQL (a failure in CI)."""
    name = f"clawdbot_test_{secrets.token_hex(4)}"
    try:
        user = asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except ConnectionError as error:
        pytest.skip(str(error))
    try:
        yield f"postgresql://{user}@{PG_HOST}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
