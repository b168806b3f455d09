"""One client connection's queue of events (a WebSocket or an event stream): bounded, written in order, and written at
once when nothing is ahead of the event. Until its drain task starts, events wait (a stream's first bytes may have
to wait for a subscription).

Every token's event passes through here. An event that finds the queue empty is written straight away, in the
pusher's own step: handing it to the connection's drain task instead cost a task switch per token, a third of the
chat path's CPU per token over the raw relay's (BENCHMARKS.md §12). Where the connection has a `Write` (the
WebSocket's), that is a plain call; else the async `Send` is stepped by hand up to its first wait. Only a client
that does not keep up makes events queue; the drain task writes those, in order, and one that falls too far behind
is disconnected.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import orjson

from ..identity import Actor

_OUTBOX = 4096  # events a client may lag behind before it is disconnected
BEHIND = (1013, b"too far behind; reconnect and resume")

Send = Callable[[bytes], Coroutine[Any, Any, Any]]
# Writes the event at once and says True, or says False when the connection would have to wait (then `Send`).
Write = Callable[[bytes], bool]


class Outbox:
    """`closing` is set when the connection must end: the client fell too far behind, its connection failed, or
    the server is shutting down (`why` is the WebSocket close code and reason)."""

    def __init__(self, send: Send, actor: Actor, write: Write | None = None) -> None:
        self.send = send
        self.write = write
        self.actor = actor  # whose connection it is: signing out or disabling them closes it
        self.kind = "websocket"  # or "sse": what the live view counts it as
        self.pending: deque[bytes] = deque()
        self.idle: asyncio.Future[None] | None = None  # the drain task's wait while `pending` is empty
        self.writing: asyncio.Future[None] | None = None  # a write begun at once that had to wait for the client
        self.sending = False  # the drain task is writing an event taken from `pending`
        self.flushed: asyncio.Future[None] | None = None  # flush()'s wait for `pending` to be written
        self.closing = asyncio.Event()
        self.why = BEHIND
        self.tasks: list[asyncio.Task[None]] = []

    def push(self, data: bytes) -> None:
        if self.closing.is_set():
            return
        if self.idle is not None and self.writing is None:  # the drain task waits with nothing queued: write now
            if self.write is None or not self.write(data):
                self._write_now(data)
            return
        if len(self.pending) >= _OUTBOX:
            self.closing.set()
            return
        self.pending.append(data)
        self._wake()

    def close(self, why: tuple[int, bytes]) -> None:
        self.why = why
        self.closing.set()

    def event(self, body: dict[str, Any]) -> None:
        self.push(orjson.dumps(body))

    def _write_now(self, data: bytes) -> None:
        """Run the write up to its first wait. Most writes have none (the socket takes the bytes); one that must
        wait for the client to read goes on as a task, and everything after it queues behind it."""
        coro = self.send(data)
        try:
            waited = coro.send(None)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - the connection is gone: it closes, as a failed drain would
            self.closing.set()
            return
        self.writing = writing = asyncio.ensure_future(self._finish(coro, waited))
        writing.add_done_callback(lambda _: self._written(coro))

    async def _finish(self, coro: Coroutine[Any, Any, Any], waited: Any) -> None:
        try:
            while True:
                await _Yielded(waited)
                try:
                    waited = coro.send(None)
                except StopIteration:
                    return
        except Exception:  # noqa: BLE001 - as in _write_now
            self.closing.set()

    def _written(self, coro: Coroutine[Any, Any, Any]) -> None:
        coro.close()  # a no-op once it returned; cut off (the connection is closing), it stops where it waited
        self.writing = None
        self._wake()

    def _wake(self) -> None:
        idle = self.idle
        if idle is not None:
            self.idle = None
            if not idle.done():
                idle.set_result(None)

    async def drain(self) -> None:
        pending, loop = self.pending, asyncio.get_running_loop()
        while True:
            if self.writing is not None:
                await asyncio.shield(self.writing)
            while pending:
                self.sending = True
                await self.send(pending.popleft())
            self.sending = False
            if self.flushed is not None:
                if not self.flushed.done():
                    self.flushed.set_result(None)
                self.flushed = None
            self.idle = loop.create_future()
            await self.idle

    async def flush(self) -> None:
        """Until everything queued so far has been sent."""
        if self.writing is not None:
            await asyncio.shield(self.writing)
        if not self.pending and not self.sending:
            return
        if self.flushed is None:
            self.flushed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self.flushed)

    async def beat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.event({"type": "heartbeat"})


class _Yielded:
    """What a coroutine stepped by hand yielded (an asyncio future, or None for a bare yield), awaited in its place
    by the task that goes on with it."""

    __slots__ = ("waited",)

    def __init__(self, waited: Any) -> None:
        self.waited = waited

    def __await__(self) -> Generator[Any, None, None]:
        yield self.waited
