"""The Server-Sent Events fallback of realtime.py, for networks that block WebSockets: a conversation's events (the
page sends its commands as plain POSTs) and one reply's events (curl, scripts). The same outboxes and events as the
WebSocket; a reconnecting EventSource resumes from Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from .. import __version__
from ..errors import BadRequest, Forbidden
from ..identity import Actor
from .authenticate import current
from .chatapi import CHAT
from .monitor import WATCHED, history_hours
from .outbox import Outbox
from .realtime import EVENTS, OUTBOXES, close_at_expiry, snapshot_of, stored_reply


def routes(app: web.Application) -> None:
    app.router.add_get("/chat/api/conversations/{id}/events", events, allow_head=False)
    app.router.add_get("/chat/api/generations/{id}/events", generation_events, allow_head=False)
    app.router.add_get("/chat/api/admin/monitor/events", monitor_events, allow_head=False)


async def events(request: web.Request) -> web.StreamResponse:
    """The SSE fallback: one conversation's events; the page sends its commands with plain POSTs. A reply's
    events carry `id: <reply id>:<seq>`, so a reconnecting EventSource (Last-Event-ID) gets what it missed."""
    chat, log, actor = request.app[CHAT], request.app[EVENTS], current(request)
    conversation_id = request.match_info["id"]
    await chat.conversation(conversation_id, actor.id)
    resume = _last_event(request)
    reply_id, _, seq = resume.partition(":")
    job = await chat.job(reply_id, actor.id) if reply_id else None
    start = int(seq) + 1 if job is not None and job.conversation_id == conversation_id and seq.isdigit() else None

    async def before() -> list[bytes]:  # the rest of the reply it had, or a snapshot of the one being written
        if start is None:
            return await snapshot_of(chat, conversation_id)
        return await log.replay(reply_id, start) or []

    # The hello goes out once the subscription is in place (with several processes that is a round trip to
    # Redis): a client that acts on the hello misses nothing of what it starts.
    response, outbox = await _event_stream(request, actor, reply_stream=False, sending=False)
    try:
        await log.subscribe(conversation_id, outbox, before)
        _send(outbox, request, actor)
        await outbox.closing.wait()  # otherwise runs until the client leaves and the handler is cancelled
    finally:
        log.unsubscribe(conversation_id, outbox)
        await _stop(request, outbox)
    return response


async def generation_events(request: web.Request) -> web.StreamResponse:
    """One reply's events as SSE (`id: <seq>`), from `?from=N` or after `Last-Event-ID`, then live until it
    ends. A reply that ended a while ago gets its stored row; an unknown id a 404, and nothing is started."""
    chat, log, actor = request.app[CHAT], request.app[EVENTS], current(request)
    reply_id = request.match_info["id"]
    start = _start(request)
    # NotFound if there is none, or it is another user's
    job = await chat.job(reply_id, actor.id)
    row = None if job is not None else await chat.reply(reply_id, actor.id)
    response, outbox = await _event_stream(request, actor, reply_stream=True)
    ended = asyncio.Event()
    finished = _Finisher(outbox, ended)
    try:
        if row is not None or not await log.follow(reply_id, start, finished):  # ended while the stream opened
            outbox.event(stored_reply(row or await chat.reply(reply_id, actor.id)))
            ended.set()
        elif not ended.is_set() and job is not None and job.finished:
            # it ended before `start`: nothing more will come, so end as a reply that ended a while ago does
            outbox.event(stored_reply(await chat.reply(reply_id, actor.id)))
            ended.set()
        waits = [asyncio.ensure_future(ended.wait()), asyncio.ensure_future(outbox.closing.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):  # the last events out before the stream ends; a stuck client gives up
                await outbox.flush()
    finally:
        log.unfollow(reply_id, finished)
        await _stop(request, outbox)
    return response


class _Finisher:
    """Passes a reply's events to the outbox and notices the last one."""

    def __init__(self, outbox: Outbox, ended: asyncio.Event) -> None:
        self.outbox, self.ended = outbox, ended

    def push(self, data: bytes) -> None:
        self.outbox.push(data)
        if data.startswith(b'{"type":"reply.done"'):
            self.ended.set()


async def monitor_events(request: web.Request) -> web.StreamResponse:
    """The live operations view as it changes (admins only): a `monitor` event now and every 2 s, with `?hours=`
    (1, 3 or 6) of history; the page's Monitor view reads it, and so can curl."""
    actor = current(request)
    if not actor.admin:
        raise Forbidden("only an admin may see the operations view")
    watched = request.app[WATCHED]
    hours = history_hours(request.query.get("hours", "1"))
    response, outbox = await _event_stream(request, actor, reply_stream=False)
    watched.watch(outbox, hours)
    try:
        await outbox.closing.wait()
    finally:
        watched.unwatch(outbox)
        await _stop(request, outbox)
    return response


def _last_event(request: web.Request) -> str:
    return request.headers.get("Last-Event-ID") or request.query.get("last_event_id", "")


def _start(request: web.Request) -> int:
    """The first seq wanted: `?from=N`, or one after `Last-Event-ID`; 1 (everything) by default."""
    raw, after = request.query.get("from"), _last_event(request)
    try:
        if raw is not None:
            start = int(raw)
        elif after:
            start = int(after.rpartition(":")[2]) + 1
        else:
            start = 1
    except ValueError:
        raise BadRequest("from (and Last-Event-ID) must be a whole number") from None
    if start < 0:
        raise BadRequest("from must not be negative")
    return start


async def _event_stream(
    request: web.Request, actor: Actor, *, reply_stream: bool, sending: bool = True
) -> tuple[web.StreamResponse, Outbox]:
    """The response, begun, and its outbox with the hello first (sent from now on, or from `_send`)."""
    settings = request.app[CHAT].settings
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)

    async def send(data: bytes) -> None:
        await response.write(_sse(data, reply_stream))

    outbox = Outbox(send, actor)
    outbox.event({"type": "hello", "version": __version__, "heartbeat": settings.heartbeat})
    outbox.kind = "sse"
    request.app[OUTBOXES].add(outbox)
    if sending:
        _send(outbox, request, actor)
    return response, outbox


def _send(outbox: Outbox, request: web.Request, actor: Actor) -> None:
    outbox.tasks = [
        asyncio.create_task(outbox.drain()),
        asyncio.create_task(outbox.beat(request.app[CHAT].settings.heartbeat)),
    ]
    if actor.expires_at is not None:
        outbox.tasks.append(asyncio.create_task(close_at_expiry(outbox, actor.expires_at)))


def _sse(data: bytes, reply_stream: bool) -> bytes:
    """One SSE event. Numbered reply events get an id: the seq on a reply's stream, reply:seq on a
    conversation's (where several replies follow each other)."""
    if b'"seq":' in data:
        event = orjson.loads(data)
        seq = event.get("seq")
        if isinstance(seq, int):
            ident = str(seq) if reply_stream else f"{event['id']}:{seq}"
            return b"id: " + ident.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


async def _stop(request: web.Request, outbox: Outbox) -> None:
    request.app[OUTBOXES].discard(outbox)
    for task in outbox.tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*outbox.tasks, return_exceptions=True)
