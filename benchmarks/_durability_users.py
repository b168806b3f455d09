"""The durability benchmark's users: each holds one conversation on the chat WebSocket, misbehaves as
durability.py's docstring says (drops before the ack, drops mid-reply, resumes), and records what it saw."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from _durability_check import FINAL

_QUIET = 45.0  # seconds without any event (heartbeats come every 15 s) before a socket counts as dead
_MAX_EVENT_BYTES = 64 * 1024 * 1024  # reply.done carries the whole reply
T0 = time.monotonic()


# ---- what the clients saw -----------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Counters over all users; `Counter`s are keyed by a code or cause."""

    turns_started: int = 0
    acknowledged: int = 0
    duplicate_acks: int = 0  # a resent send answered with the first one's message: idempotency at work
    send_drops: int = 0  # sockets dropped right after a send, before its ack
    resends: int = 0
    drops: int = 0  # sockets dropped in the middle of a reply
    resumes: int = 0
    reconnects: int = 0
    quiet_reconnects: int = 0  # nothing, not even a heartbeat, for _QUIET seconds
    repeats: int = 0  # replayed events at or below the last seq: dropped
    gaps: int = 0  # events above last seq + 1: a bug
    snapshots: int = 0
    stored_done: int = 0  # replies that ended for their client with a stored reply.done (seq null)
    nonfinal_done: int = 0  # a reply.done whose row is still waiting/thinking/writing: a protocol violation
    send_errors: Counter[str] = field(default_factory=Counter)
    resume_errors: Counter[str] = field(default_factory=Counter)
    reply_errors: Counter[str] = field(default_factory=Counter)  # reply.error codes seen live
    finals: Counter[str] = field(default_factory=Counter)  # how each reply ended, as its client learned it
    stuck: int = 0  # turns that ran past --turn-timeout
    in_flight_at_kill: int = 0


@dataclass
class Reply:
    """One reply as its client reassembles it from numbered events."""

    id: str
    last_seq: int = 0
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None  # the row reply.done carried
    numbered_done: bool = False  # the whole stream was seen (a seq'd reply.done), so the text must match exactly
    gap: bool = False  # a gap is being repaired: counted once
    resumed: bool = False  # its events came over more than one connection
    retry: bool = False  # the resume was answered 503: asked again after a moment
    snapshot_mismatch: int = 0


@dataclass
class Turn:
    user: int
    conversation_id: str
    client_id: str
    message_id: str | None = None
    reply: Reply | None = None
    in_flight: bool = False
    duplicate: bool = False  # acknowledged as a duplicate of an earlier send of the same client_id
    sent_at: list[float] = field(default_factory=list)  # each (re)send, seconds into the run, for diagnosis

    def describe(self) -> str:
        reply = self.reply
        seen = "none" if reply is None or reply.final is None else reply.final.get("status")
        how = "numbered" if reply is not None and reply.numbered_done else "stored/other"
        sends = ", ".join(f"{t:.1f}" for t in self.sent_at)
        return (
            f"{self.client_id} (message {self.message_id}, reply {reply and reply.id}; client saw {seen} via {how}; "
            f"duplicate ack {self.duplicate}; sent at {sends} s)"
        )


class Front(Protocol):
    """Where the clients connect: the gateway (its url changes if it comes back on another port), or nginx."""

    @property
    def url(self) -> str: ...


class Lost(Exception):
    """The socket closed (our own drop, the gateway's crash, or silence)."""


class Link:
    """A user's WebSocket, opened again (to wherever the gateway now listens) when it was lost."""

    def __init__(self, session: aiohttp.ClientSession, gateway: Front, address: str, stats: Stats) -> None:
        self.session, self.gateway, self.stats = session, gateway, stats
        self.headers = {"X-Forwarded-For": address}
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.refs = itertools.count(1)
        self.opened = 0

    async def ensure(self, deadline: float) -> None:
        while self.ws is None or self.ws.closed:
            try:
                self.ws = await self.session.ws_connect(
                    f"{self.gateway.url}/chat/api/ws", headers=self.headers, max_msg_size=_MAX_EVENT_BYTES
                )
                self.stats.reconnects += self.opened > 0
                self.opened += 1
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(random.uniform(0.2, 0.5))  # the gateway is restarting

    async def command(self, body: dict[str, Any]) -> int:
        assert self.ws is not None
        ref = next(self.refs)
        try:
            await self.ws.send_str(orjson.dumps({**body, "ref": ref}).decode())
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as error:
            await self.drop()
            raise Lost from error
        return ref

    async def next(self) -> dict[str, Any]:
        """The next event; Lost when the socket is gone or silent."""
        assert self.ws is not None
        try:
            message = await self.ws.receive(timeout=_QUIET)
        except TimeoutError:
            self.stats.quiet_reconnects += 1
            await self.drop()
            raise Lost from None
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            event: dict[str, Any] = orjson.loads(message.data)
            return event
        await self.drop()
        raise Lost

    async def drop(self) -> None:
        """Lose the connection at once, without a closing handshake, as a network failure would."""
        ws, self.ws = self.ws, None
        if ws is not None and not ws.closed:
            transport = ws.get_extra_info("socket")
            if transport is not None:
                with contextlib.suppress(OSError):
                    transport.shutdown(2)  # SHUT_RDWR: the gateway sees the connection end, not a close frame
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1)


@dataclass
class Options:
    turns: int
    think_time: float
    drop: float
    send_drop: float
    turn_timeout: float


class User:
    """One browser tab: a conversation, its WebSocket, and --turns turns with pauses between them."""

    def __init__(self, index: int, link: Link, stats: Stats, options: Options, run: str) -> None:
        self.index, self.link, self.stats, self.options, self.run = index, link, stats, options, run
        self.turns: list[Turn] = []
        self.current: Turn | None = None

    async def run_turns(self, conversation_id: str, acknowledged: Callable[[], None]) -> None:
        for number in range(self.options.turns):
            turn = Turn(self.index, conversation_id, f"{self.run}-u{self.index}-t{number}")
            self.turns.append(turn)
            self.current = turn
            self.stats.turns_started += 1
            try:
                await asyncio.wait_for(self.one_turn(turn, number, acknowledged), self.options.turn_timeout)
            except TimeoutError:
                self.stats.stuck += 1
            turn.in_flight = False
            await asyncio.sleep(self.options.think_time * random.uniform(0.5, 1.5))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.link.drop(), 2)

    async def one_turn(self, turn: Turn, number: int, acknowledged: Callable[[], None]) -> None:
        content = f"User {self.index}, turn {number}: {random.choice(_TOPICS)} ({secrets.token_hex(3)})"
        turn.in_flight = True
        ack, early = await self.send(turn, content)
        if ack is None:
            return
        turn.message_id, reply = ack["message"]["id"], Reply(ack["reply"]["id"])
        turn.reply = reply
        self.stats.acknowledged += 1
        acknowledged()
        resume = turn.duplicate = bool(ack.get("duplicate"))  # its earlier events went to a socket now gone
        for event in early:
            self.apply(reply, event)
        await self.follow(reply, resume)

    async def send(self, turn: Turn, content: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Send until acknowledged, always with the same client_id; the events that came before the ack."""
        deadline = time.monotonic() + self.options.turn_timeout
        first = True
        while True:
            early: list[dict[str, Any]] = []
            try:
                await self.connect(deadline)
                if not first:
                    self.stats.resends += 1
                first = False
                body = {"type": "send", "conversation_id": turn.conversation_id, "content": content}
                turn.sent_at.append(time.monotonic() - T0)
                ref = await self.link.command({**body, "client_id": turn.client_id})
                if random.random() < self.options.send_drop:
                    # Lost before the ack is read. A socket dropped at once loses the frame too (the gateway never
                    # handles it), so wait a moment: mostly the send is stored and the resend must be a duplicate.
                    await asyncio.sleep(random.uniform(0, 0.05))
                    self.stats.send_drops += 1
                    await self.link.drop()
                    continue
                while True:
                    event = await self.link.next()
                    if event.get("ref") != ref or event["type"] not in ("ack", "error"):
                        early.append(event)
                    elif event["type"] == "ack":
                        self.stats.duplicate_acks += bool(event.get("duplicate"))
                        return event, early
                    else:
                        self.stats.send_errors[event["code"]] += 1
                        # 503 redis_unavailable (replicas, Redis restarting): a person sends again after a moment.
                        if event["code"] not in ("overloaded", "too_many_waiting", "conflict", "redis_unavailable"):
                            return None, early
                        await asyncio.sleep(float(event.get("retry_after") or 1))
                        break
            except Lost:
                continue

    async def connect(self, deadline: float) -> None:
        if self.link.ws is None or self.link.ws.closed:
            await self.link.ensure(deadline)

    async def follow(self, reply: Reply, resume: bool) -> None:
        """Read the reply's events to its end, dropping the socket once at a random event (--drop)."""
        drop_at = random.randint(1, 250) if random.random() < self.options.drop else None
        deadline = time.monotonic() + self.options.turn_timeout
        while reply.final is None:
            try:
                if self.link.ws is None or self.link.ws.closed:
                    await self.connect(deadline)
                    resume = True
                if reply.retry:
                    reply.retry, resume = False, True
                    await asyncio.sleep(random.uniform(0.5, 1.0))
                if resume or reply.gap:
                    resume, reply.resumed = False, True
                    self.stats.resumes += 1
                    await self.link.command({"type": "resume", "reply_id": reply.id, "from": reply.last_seq + 1})
                event = await self.link.next()
                self.apply(reply, event)
                if drop_at is not None and reply.last_seq >= drop_at and reply.final is None:
                    drop_at = None
                    self.stats.drops += 1
                    await self.link.drop()
                    await asyncio.sleep(random.uniform(0, 1.0))  # a phone leaving a tunnel
            except Lost:
                continue
        self.stats.finals[reply.final["status"]] += 1

    def apply(self, reply: Reply, event: dict[str, Any]) -> None:
        """Fold one event into the reply, by seq: repeats dropped, gaps counted (and repaired by a resume)."""
        kind = event["type"]
        if kind == "error":  # to a resume: the reply is unknown; the database check says what became of it
            code = event.get("code", "?")
            self.stats.resume_errors[code] += 1
            if code == "redis_unavailable":  # its events cannot be read now (Redis, or its writer, catching up)
                reply.retry = True
            else:
                reply.final = {"status": f"resume_error:{code}", "content": ""}
            return
        if event.get("id") != reply.id:
            return  # hello, heartbeat, acks, message.new, and anything of an earlier reply
        seq = event.get("seq")
        if kind == "reply.done" and seq is None:  # the stored row: the reply ended while we were away
            self.stats.stored_done += 1
            reply.final = event["message"]
            self.stats.nonfinal_done += reply.final["status"] not in FINAL
            return
        if kind == "reply.snapshot":
            self.snapshot(reply, event)
            return
        if not isinstance(seq, int):
            return  # reply.queue is not numbered
        if seq <= reply.last_seq:
            self.stats.repeats += 1
            return
        if seq > reply.last_seq + 1:
            if not reply.gap:
                self.stats.gaps += 1
                reply.gap = True  # follow() resumes from last_seq + 1
            return
        reply.gap = False
        reply.last_seq = seq
        if kind == "reply.delta":
            if "content" in event:
                reply.content.append(event["content"])
            if "thinking" in event:
                reply.thinking.append(event["thinking"])
        elif kind == "reply.error":
            self.stats.reply_errors[event.get("code") or "?"] += 1
        elif kind == "reply.done":
            reply.final, reply.numbered_done = event["message"], True
            self.stats.nonfinal_done += reply.final["status"] not in FINAL

    def snapshot(self, reply: Reply, event: dict[str, Any]) -> None:
        """A snapshot (on subscribing while the reply runs, or of a folded log) replaces what we had up to its seq."""
        self.stats.snapshots += 1
        if event["seq"] <= reply.last_seq:
            return
        content = "".join(reply.content)
        if not event["content"].startswith(content):
            reply.snapshot_mismatch += 1
        reply.content, reply.thinking = [event["content"]], [event["thinking"]]
        reply.last_seq = event["seq"]


_TOPICS = [
    "how do I keep a long conversation within num_ctx?",
    "explain asyncio.gather versus create_task",
    "what should nginx do with WebSocket upgrades?",
    "写一段关于雨夜古寺的短文",
    "how many parallel slots fit in 24 GB of VRAM?",
    "为什么首字延迟会随着排队变长？",
    "give me a checklist for deploying a local LLM",
    "compare SQLite and PostgreSQL for a chat history",
]
