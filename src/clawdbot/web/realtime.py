"""Live events for the chat page: one WebSocket per tab, or Server-Sent Events where WebSockets are blocked (sse.py).

Both carry the same JSON events (reply.start, reply.status, reply.delta, reply.done, …) plus a heartbeat every
few seconds, so no proxy closes a connection while the model thinks silently. Each client has a bounded outbox
drained by its own task: a slow client never holds up a reply, and one that falls too far behind is
disconnected (the page reconnects and gets a snapshot).
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from .. import __version__
from ..auth.state import Ended
from ..chat.eventlog import Before, GenerationLog
from ..chat.service import Chat
from ..errors import BadRequest, ClawdbotError, Conflict, Forbidden, Overloaded
from ..identity import Actor
from ..store.records import Message
from ..timing import RECEIVED
from .authenticate import AUTH, current
from .chatapi import CHAT, EditedMessage, NewMessage, ShownVersion
from .http import checked
from .monitor import WATCHED
from .outbox import Outbox, Write
from .shapes import plain, stopping, turn
from .urls import conflict_details

_TEXT_ONLY = "commands are JSON in text frames; this binary frame was ignored"
_RESTARTING = (1001, b"the server is restarting; reconnect and resume")
_BACKLOG = 1 << 16  # bytes a client's socket may hold unsent before frames go through aiohttp's writer, which waits
_LEN16, _LEN64 = struct.Struct("!BBH").pack, struct.Struct("!BBQ").pack  # a frame's head, by payload size
OUTBOXES: web.AppKey[set[Outbox]] = web.AppKey("outboxes")
# Replies' events and conversations' subscriptions: the one fan-out both transports listen to.
EVENTS: web.AppKey[GenerationLog] = web.AppKey("events")


def routes(app: web.Application) -> None:
    app[OUTBOXES] = set()
    app.on_startup.append(_close_on_sign_out)
    app.on_shutdown.append(_close_all)
    app.router.add_get("/chat/api/ws", websocket, allow_head=False)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[CHAT].settings
    actor = current(request)  # the upgrade was authenticated (and its Origin checked) like any request
    # No permessage-deflate: a frame is mostly one token, which zlib makes no smaller, at a few µs of CPU each.
    ws = web.WebSocketResponse(max_msg_size=settings.max_command_bytes, compress=False)
    await ws.prepare(request)
    # Text frames: a browser hands a binary frame to the page as a Blob, which JSON.parse cannot read.
    outbox = Outbox(lambda data: ws.send_frame(data, WSMsgType.TEXT), actor, _frames(ws, request.transport))
    subscribed: set[str] = set()
    log = request.app[EVENTS]
    tasks = [
        asyncio.create_task(outbox.drain()),
        asyncio.create_task(outbox.beat(settings.heartbeat)),
        asyncio.create_task(_close_when_told(outbox, ws)),
    ]
    if actor.expires_at is not None:
        tasks.append(asyncio.create_task(close_at_expiry(outbox, actor.expires_at)))
    request.app[OUTBOXES].add(outbox)
    outbox.event({"type": "hello", "version": __version__, "heartbeat": settings.heartbeat})
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await _command(request, outbox, subscribed, message.data, actor)
            elif message.type == WSMsgType.BINARY:
                outbox.event(
                    {"type": "error", "ref": None, "code": "bad_request", "status": 400, "message": _TEXT_ONLY}
                )
            elif message.type == WSMsgType.ERROR:
                break
    finally:
        request.app[OUTBOXES].discard(outbox)
        request.app[WATCHED].unwatch(outbox)
        for conversation_id in subscribed:
            log.unsubscribe(conversation_id, outbox)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ws


def _frames(ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> Write | None:
    """The outbox's plain write of a text frame: the header and the event in one transport write, with none of the
    two coroutines per frame of `send_frame` (a server's frames are not masked, and none is compressed here). It
    leaves to `send_frame` a socket that is closing or holds more than _BACKLOG bytes: that one waits for the
    client."""
    if transport is None:
        return None

    def write(data: bytes) -> bool:
        if ws.closed or transport.is_closing() or transport.get_write_buffer_size() > _BACKLOG:
            return False
        size = len(data)
        if size < 126:
            head = bytes((0x81, size))
        elif size < 65536:
            head = _LEN16(0x81, 126, size)
        else:
            head = _LEN64(0x81, 127, size)
        transport.write(head + data)
        return True

    return write


async def _close_when_told(outbox: Outbox, ws: web.WebSocketResponse) -> None:
    await outbox.closing.wait()
    code, reason = outbox.why
    await ws.close(code=code, message=reason)


async def close_at_expiry(outbox: Outbox, expires_at: int) -> None:
    """A socket lives no longer than the session that opened it."""
    await asyncio.sleep(max(0.0, expires_at / 1000 - time.time()))
    outbox.close((1008, b"signed out: the session has expired"))


async def _close_on_sign_out(app: web.Application) -> None:
    outboxes: set[Outbox] = app[OUTBOXES]

    def close(user_id: str, ended: Ended, why: tuple[int, bytes]) -> None:
        for outbox in list(outboxes):
            if outbox.actor.id == user_id and ended.matches(outbox.actor):
                outbox.close(why)

    app[AUTH].closing.append(close)


async def _close_all(app: web.Application) -> None:
    """At shutdown, end every WebSocket and event stream: aiohttp would wait for them (a minute) before the
    gateway could store the replies in flight. Clients reconnect to the next process and resume."""
    open_now: set[Outbox] = app[OUTBOXES]
    for outbox in list(open_now):
        outbox.close(_RESTARTING)


async def _command(request: web.Request, outbox: Outbox, subscribed: set[str], raw: str, actor: Actor) -> None:
    """Run one client command; its answer (or a clear error) goes back on the same socket."""
    RECEIVED.set(time.perf_counter())  # a reply this command starts is timed from here (timing.py)
    chat, log = request.app[CHAT], request.app[EVENTS]
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
        if kind == "monitor":
            result = _monitor(request, outbox, command, actor)
        elif kind == "resume":
            result = await _resume(chat, log, outbox, subscribed, command, actor.id)
        else:
            if not isinstance(conversation_id, str):
                raise BadRequest("conversation_id is required")
            if kind == "unsubscribe":
                log.unsubscribe(conversation_id, outbox)
                subscribed.discard(conversation_id)
            elif conversation_id not in subscribed:  # listen first, so no event of what the command starts is missed
                await chat.conversation(conversation_id, actor.id)
                await _listen(log, outbox, subscribed, conversation_id, lambda: snapshot_of(chat, conversation_id))
            result = await _run(chat, kind, conversation_id, command, actor)
        outbox.event({"type": "ack", "ref": reference, "command": kind, **result})
    except orjson.JSONDecodeError:
        outbox.event(
            {"type": "error", "ref": None, "code": "bad_request", "status": 400, "message": "a command must be JSON"}
        )
    except ClawdbotError as error:
        details: dict[str, Any] = conflict_details(error) if isinstance(error, Conflict) else {}
        if isinstance(error, Overloaded):
            details["retry_after"] = error.retry_after
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


def _monitor(request: web.Request, outbox: Outbox, command: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """`monitor`: the live operations view (docs/monitoring.md) pushed to this socket as `monitor` events, now and
    every 2 s, with `hours` (1, 3 or 6) of history; `hours` 0 stops it. Admins only."""
    if not actor.admin:
        raise Forbidden("only an admin may see the operations view")
    watched, hours = request.app[WATCHED], command.get("hours", 1)
    if hours == 0 and not isinstance(hours, bool):
        watched.unwatch(outbox)
        return {"hours": 0}
    return {"hours": watched.watch(outbox, hours)}


async def _listen(
    log: GenerationLog, outbox: Outbox, subscribed: set[str], conversation_id: str, before: Before | None = None
) -> None:
    """Subscribe the socket to the conversation (if it is not yet), `before` first (a snapshot, a replay)."""
    if conversation_id not in subscribed or before is not None:
        subscribed.add(conversation_id)  # first: the socket's end unsubscribes it even if this fails
        await log.subscribe(conversation_id, outbox, before)


async def snapshot_of(chat: Chat, conversation_id: str) -> list[bytes]:
    """The reply being written in the conversation, as a `reply.snapshot` event, if one is."""
    snapshot = await chat.snapshot(conversation_id)
    return [] if snapshot is None else [orjson.dumps(snapshot)]


async def _replay(log: GenerationLog, reply_id: str, start: int) -> list[bytes]:
    return await log.replay(reply_id, start) or []


async def _resume(
    chat: Chat, log: GenerationLog, outbox: Outbox, subscribed: set[str], command: dict[str, Any], owner: str
) -> dict[str, Any]:
    """`resume`: a reply's events from seq `from` on, then (still running) the live ones, never a second
    generation. A reply that ended a while ago is answered from the database with its final row."""
    reply_id, start = command.get("reply_id"), command.get("from", 1)
    if not isinstance(reply_id, str) or not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise BadRequest("resume needs reply_id (a string) and from (a sequence number, 1 for all)")
    job = await chat.job(reply_id, owner)
    if job is not None:
        # The replay is read once the subscription is in place: the live events of the reply follow it at once,
        # those it holds already are not sent twice.
        await _listen(log, outbox, subscribed, job.conversation_id, lambda: _replay(log, reply_id, start))
        return {"reply_id": reply_id, "conversation_id": job.conversation_id, "seq": job.seq, "live": not job.finished}
    row = await chat.reply(reply_id, owner)
    await _listen(log, outbox, subscribed, row.conversation_id)
    outbox.event(stored_reply(row))
    return {"reply_id": reply_id, "conversation_id": row.conversation_id, "seq": None, "live": False}


def stored_reply(row: Message) -> dict[str, Any]:
    """A finished reply that is no longer in the event log: its final row, as a reply.done without a seq."""
    return {
        "type": "reply.done",
        "conversation_id": row.conversation_id,
        "id": row.id,
        "seq": None,
        "stored": True,
        "message": row,
    }


async def _run(chat: Chat, kind: str, conversation_id: str, command: dict[str, Any], actor: Actor) -> dict[str, Any]:
    if kind in ("subscribe", "unsubscribe"):
        return {"conversation_id": conversation_id}
    if kind == "send":
        message = checked(NewMessage, {"content": command.get("content"), "client_id": command.get("client_id")})
        return turn(await chat.send(conversation_id, message.content, message.client_id, actor=actor))
    if kind == "edit":
        edited = checked(EditedMessage, {"content": command.get("content"), "message_id": command.get("message_id")})
        return turn(await chat.edit(conversation_id, edited.content, edited.message_id, actor=actor))
    if kind == "switch":
        version = checked(ShownVersion, {"message_id": command.get("message_id")})
        return plain(await chat.switch(conversation_id, version.message_id, actor=actor))
    if kind == "regenerate":
        return turn(await chat.regenerate(conversation_id, actor=actor))
    if kind == "continue":
        return turn(await chat.continue_reply(conversation_id, actor=actor))
    if kind == "stop":
        return stopping(await chat.stop(conversation_id, actor.id))
    raise BadRequest(
        f"unknown command {kind!r}; use subscribe, unsubscribe, resume, send, edit, regenerate, continue, switch, "
        "stop, monitor or ping"
    )
