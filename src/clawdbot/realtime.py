"""Live events for the chat page: one WebSocket per tab, or Server-Sent Events where WebSockets are blocked.

Both carry the same JSON events (reply.start, reply.status, reply.delta, reply.done, …) plus a heartbeat every
few seconds, so no proxy closes a connection while the model thinks silently. Each client has a bounded outbox
drained by its own task: a slow client never holds up a reply, and one that falls too far behind is
disconnected (the page reconnects and gets a snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from . import __version__
from .chatapi import CHAT, EditedMessage, NewMessage, checked
from .errors import BadRequest, ClawdbotError, Conflict

_OUTBOX = 4096  # events a client may lag behind before it is disconnected


class Outbox:
    def __init__(self, send: Callable[[bytes], Awaitable[Any]]) -> None:
        self.send = send
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(_OUTBOX)
        self.overflowed = asyncio.Event()

    def push(self, data: bytes) -> None:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.overflowed.set()

    def event(self, body: dict[str, Any]) -> None:
        self.push(orjson.dumps(body))

    async def drain(self) -> None:
        while True:
            await self.send(await self.queue.get())

    async def beat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.event({"type": "heartbeat"})


def routes(app: web.Application) -> None:
    app.router.add_get("/chat/api/ws", websocket, allow_head=False)
    app.router.add_get("/chat/api/conversations/{id}/events", events, allow_head=False)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[CHAT].settings
    ws = web.WebSocketResponse(max_msg_size=settings.max_message_chars * 4 + 65536)
    await ws.prepare(request)
    # Text frames: a browser hands a binary frame to the page as a Blob, which JSON.parse cannot read.
    outbox = Outbox(lambda data: ws.send_frame(data, WSMsgType.TEXT))
    subscribed: set[str] = set()
    hub = request.app[CHAT].generations.hub
    tasks = [
        asyncio.create_task(outbox.drain()),
        asyncio.create_task(outbox.beat(settings.heartbeat)),
        asyncio.create_task(_close_on_overflow(outbox, ws)),
    ]
    outbox.event({"type": "hello", "version": __version__, "heartbeat": settings.heartbeat})
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await _command(request, outbox, subscribed, message.data)
            elif message.type == WSMsgType.ERROR:
                break
    finally:
        for conversation_id in subscribed:
            hub.unsubscribe(conversation_id, outbox)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ws


async def _close_on_overflow(outbox: Outbox, ws: web.WebSocketResponse) -> None:
    await outbox.overflowed.wait()
    await ws.close(code=1013, message=b"too far behind; reconnect to get the current state")


async def _command(request: web.Request, outbox: Outbox, subscribed: set[str], raw: str) -> None:
    """Run one client command; its answer (or a clear error) goes back on the same socket."""
    chat = request.app[CHAT]
    hub = chat.generations.hub
    reference = None
    try:
        command = orjson.loads(raw)
        reference = command.get("ref") if isinstance(command, dict) else None
        if not isinstance(command, dict) or not isinstance(command.get("type"), str):
            raise BadRequest('a command is a JSON object with a "type"')
        kind, conversation_id = command["type"], command.get("conversation_id")
        if kind == "ping":
            outbox.event({"type": "pong", "ref": reference})
            return
        if not isinstance(conversation_id, str):
            raise BadRequest("conversation_id is required")
        if kind == "unsubscribe":
            hub.unsubscribe(conversation_id, outbox)
            subscribed.discard(conversation_id)
        elif conversation_id not in subscribed:  # listen first, so no event of what the command starts is missed
            await chat.conversation(conversation_id)
            hub.subscribe(conversation_id, outbox)
            subscribed.add(conversation_id)
            active = chat.generations.active.get(conversation_id)
            if active is not None:
                outbox.event(active.snapshot())
        result = await _run(chat, kind, conversation_id, command)
        outbox.event({"type": "ack", "ref": reference, "command": kind, **result})
    except orjson.JSONDecodeError:
        outbox.event(
            {"type": "error", "ref": None, "code": "bad_request", "status": 400, "message": "a command must be JSON"}
        )
    except ClawdbotError as error:
        details = error.details if isinstance(error, Conflict) else {}
        outbox.event(
            {
                "type": "error",
                "ref": reference,
                "code": error.code,
                "status": error.status,
                "message": error.message,
                **details,
            }
        )


async def _run(chat: Any, kind: str, conversation_id: str, command: dict[str, Any]) -> dict[str, Any]:
    if kind in ("subscribe", "unsubscribe"):
        return {"conversation_id": conversation_id}
    if kind == "send":
        message = checked(NewMessage, {"content": command.get("content"), "client_id": command.get("client_id")})
        return dict(await chat.send(conversation_id, message.content, message.client_id))
    if kind == "edit":
        edited = checked(EditedMessage, {"content": command.get("content")})
        return dict(await chat.edit(conversation_id, edited.content))
    if kind == "regenerate":
        return dict(await chat.regenerate(conversation_id))
    if kind == "stop":
        return dict(await chat.stop(conversation_id))
    raise BadRequest(f"unknown command {kind!r}; use subscribe, unsubscribe, send, edit, regenerate, stop or ping")


async def events(request: web.Request) -> web.StreamResponse:
    """The SSE fallback: one conversation's events; the page sends its commands with plain POSTs."""
    chat = request.app[CHAT]
    settings = chat.settings
    conversation_id = request.match_info["id"]
    await chat.conversation(conversation_id)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)

    async def send(data: bytes) -> None:
        await response.write(b"data: " + data + b"\n\n")

    outbox = Outbox(send)
    outbox.event({"type": "hello", "version": __version__, "heartbeat": settings.heartbeat})
    active = chat.generations.active.get(conversation_id)
    if active is not None:
        outbox.event(active.snapshot())
    chat.generations.hub.subscribe(conversation_id, outbox)
    tasks = [asyncio.create_task(outbox.drain()), asyncio.create_task(outbox.beat(settings.heartbeat))]
    try:
        await outbox.overflowed.wait()  # otherwise runs until the client leaves and the handler is cancelled
    finally:
        chat.generations.hub.unsubscribe(conversation_id, outbox)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
    return response
