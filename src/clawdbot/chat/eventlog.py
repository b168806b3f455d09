"""Replies' events, numbered and kept until the reply is stored: what lets a client resume at any point.

Every event of a reply (start, status, thinking and answer text, stats, error, done) gets the next sequence number
of that reply, starting at 1, and is kept in the reply's log. A client that lost its connection asks for the
events from the number it needs on and gets them with no gap and no duplicate, then the live ones.

The log is also the one fan-out of live events: a reply's followers get its events, and a conversation's
subscribers get the events of every reply in it plus the conversation's own (a new message, a title, a queue
position, other versions), each serialised once.

`GenerationLog` is the whole interface the rest of the gateway uses, registry and subscriptions included.
`MemoryLog` keeps it in this process; `live/eventlog.py` mirrors it to Redis (a stream and a hash per reply, a
channel per conversation), so a client can resume on a gateway process other than the one generating. What may
have to ask Redis is async: finding a reply, replaying it, following it, subscribing.

Subscribing can bring a listener up to date first (`before`: a replay, a snapshot) with nothing missed and nothing
out of order: live events wait while those are read, and then only the newer ones of that reply pass.

Bounds (docs/chat-protocol.md): a reply's log keeps at most `max_events` events and `max_bytes` bytes of them.
Beyond that its oldest events are folded into a base (the text so far), and a resume from before the base gets a
`reply.snapshot` of it and then the events after. A finished reply's log is kept `retain` seconds, and at most
`max_finished` of them, for clients that resume just after the end; after that the stored row answers.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..store.records import Message


class Listener(Protocol):
    def push(self, data: bytes) -> None:
        """Queue one serialised event; must not block (a listener that cannot keep up drops itself)."""


@dataclass(slots=True, eq=False)
class Job:
    """A reply in the registry: whose it is, where it is, and the state its snapshot needs."""

    id: str
    conversation_id: str
    owner: str  # the user whose conversation it is: only they may follow it
    message: Message
    status: str = "waiting"
    seq: int = 0
    queue_position: int | None = None
    finished: bool = False
    finished_at: float = 0.0
    # Events folded out of the log by its caps: their text and the last seq among them.
    base_seq: int = 0
    base_content: list[str] = field(default_factory=list)
    base_thinking: list[str] = field(default_factory=list)
    base_status: str = "waiting"
    events: deque[tuple[int, dict[str, Any], bytes]] = field(default_factory=deque)
    size: int = 0
    followers: set[Listener] = field(default_factory=set)

    def snapshot(self, upto: int | None = None) -> dict[str, Any]:
        """The reply as of seq `upto` (default: now), from the base and the events kept after it."""
        upto = self.seq if upto is None else upto
        content, thinking, status = list(self.base_content), list(self.base_thinking), self.base_status
        for seq, event, _ in self.events:
            if seq > upto:
                break
            status = fold(event, content, thinking, status)
        return {
            "type": "reply.snapshot",
            "conversation_id": self.conversation_id,
            "id": self.id,
            "seq": upto,
            "status": status,
            "content": "".join(content),
            "thinking": "".join(thinking),
            "queue_position": self.queue_position,
            "message": self.message,
        }


def replayed(job: Job, start: int) -> list[bytes]:
    """The job's events from seq `start` on, a snapshot of the base first if `start` is at or before it."""
    start = max(start, 1)
    out: list[bytes] = []
    if start <= job.base_seq:
        out.append(orjson.dumps(job.snapshot(job.base_seq)))
    out.extend(data for seq, _, data in job.events if seq >= start)
    return out


def fold(event: dict[str, Any], content: list[str], thinking: list[str], status: str) -> str:
    kind = event["type"]
    if kind == "reply.delta":
        if "content" in event:
            content.append(event["content"])
        if "thinking" in event:
            thinking.append(event["thinking"])
    elif kind == "reply.status":
        return str(event["status"])
    elif kind == "reply.done":
        return str(event["message"].status)
    elif kind == "reply.start":
        message = event["message"]
        content[:] = [message.content] if message.content else []
        thinking[:] = [message.thinking] if message.thinking else []
    return status


# What a subscriber gets before the live events: one reply's events (a replay) or its snapshot, read once the
# subscription is in place.
Before = Callable[[], Awaitable[list[bytes]]]


class Catching:
    """A subscriber being brought up to date (`held`: the live events that came meanwhile) and, per reply, the last
    seq it has, below which a live event is a repeat (one that was already in the replay or the snapshot)."""

    __slots__ = ("floors", "held")

    def __init__(self) -> None:
        self.held: list[tuple[str | None, int, bytes]] | None = []
        self.floors: dict[str, int] = {}

    def offer(self, listener: Listener, data: bytes, job_id: str | None, seq: int) -> None:
        if self.held is not None:
            self.held.append((job_id, seq, data))
        elif not (seq and job_id is not None and seq <= self.floors.get(job_id, 0)):
            listener.push(data)

    def caught_up(self, listener: Listener, first: list[bytes]) -> None:
        """Push what `before` read, then what was held that is newer."""
        for data in first:
            listener.push(data)
        if first:
            last = orjson.loads(first[-1])
            if isinstance(last.get("id"), str) and isinstance(last.get("seq"), int):
                self.floors[last["id"]] = max(self.floors.get(last["id"], 0), last["seq"])
        held, self.held = self.held or [], None
        for job_id, seq, data in held:
            self.offer(listener, data, job_id, seq)


async def bring_up(catching: Catching, listener: Listener, before: Before) -> None:
    try:
        first = await before()
    except BaseException:
        catching.caught_up(listener, [])  # what was held still goes out, in order
        raise
    catching.caught_up(listener, first)


class GenerationLog(Protocol):
    def register(self, job: Job) -> None:
        """Add a reply to the registry, with an empty log (or, going on from `job.seq`, numbering after it)."""

    async def job(self, job_id: str) -> Job | None:
        """The reply if it is running or finished only moments ago, else None (the database has it)."""

    def append(self, job_id: str, event: dict[str, Any]) -> bytes:
        """Number the event (its `seq` is set here), keep it, hand it to the reply's followers and then to its
        conversation's subscribers; returns it serialised."""

    def queued(self, job_id: str, position: int | None) -> None:
        """Where the reply waits for a slot (None: it has one); its conversation's subscribers are told each new
        position as a `reply.queue` event, which is not numbered or kept."""

    async def replay(self, job_id: str, start: int) -> list[bytes] | None:
        """The events from seq `start` on, a snapshot first where the caps folded some away; None if unknown."""

    async def follow(self, job_id: str, start: int, listener: Listener) -> bool:
        """Replay from `start`, then push each new event as it comes, with nothing missed in between."""

    def unfollow(self, job_id: str, listener: Listener) -> None: ...

    def finish(self, job_id: str) -> None:
        """No more events will come; the log is kept a while for clients that resume just after the end."""

    async def subscribe(self, conversation_id: str, listener: Listener, before: Before | None = None) -> None:
        """Push the conversation's events to `listener` from now on: its replies' and its own. With `before`, what
        it returns (one reply's replay or snapshot, read after the subscription is in place) goes first, and of
        that reply only newer events follow. Subscribing twice is once (the second may bring `before`)."""

    def unsubscribe(self, conversation_id: str, listener: Listener) -> None: ...

    def publish(self, conversation_id: str, event: dict[str, Any]) -> None:
        """Hand an event of the conversation that belongs to no reply's log to its subscribers (serialised once,
        and only if anyone listens)."""


class MemoryLog:
    def __init__(
        self,
        *,
        max_events: int = 10_000,
        max_bytes: int = 1 << 20,
        retain: float = 60.0,
        max_finished: int = 2_000,
    ) -> None:
        self.max_events, self.max_bytes = max_events, max_bytes
        self.retain, self.max_finished = retain, max_finished
        self.jobs: dict[str, Job] = {}
        self.finished: OrderedDict[str, Job] = OrderedDict()  # oldest first, for forgetting
        # By conversation; a listener's Catching while it is being brought up to date, or has been (else None).
        self.listeners: defaultdict[str, dict[Listener, Catching | None]] = defaultdict(dict)

    def register(self, job: Job) -> None:
        self.jobs[job.id] = job

    async def job(self, job_id: str) -> Job | None:
        return self.here(job_id)

    def here(self, job_id: str) -> Job | None:
        """The reply, if this process has it."""
        self._forget_old()
        return self.jobs.get(job_id)

    def append(self, job_id: str, event: dict[str, Any]) -> bytes:
        job, data = self._keep(job_id, event)
        self._deliver(job, data)
        return data

    def _keep(self, job_id: str, event: dict[str, Any]) -> tuple[Job, bytes]:
        """Number the event and keep it in the reply's log (folding the oldest past the caps)."""
        job = self.jobs[job_id]
        job.seq += 1
        event["seq"] = job.seq
        # A copy: orjson's own result sits in an allocation of at least 4 KiB, whatever its length; kept for a
        # whole reply, one per event, that was 20 times the log's real size (BENCHMARKS.md §5).
        data = memoryview(orjson.dumps(event)).tobytes()
        job.events.append((job.seq, event, data))
        job.size += len(data)
        while len(job.events) > self.max_events or (job.size > self.max_bytes and len(job.events) > 1):
            seq, old, raw = job.events.popleft()
            job.size -= len(raw)
            job.base_status = fold(old, job.base_content, job.base_thinking, job.base_status)
            job.base_seq = seq
        return job, data

    def _deliver(self, job: Job, data: bytes, seq: int | None = None) -> None:
        """Hand an event of the reply to its followers and its conversation's subscribers."""
        for listener in list(job.followers):
            listener.push(data)
        self._push(job.conversation_id, data, job.id, job.seq if seq is None else seq)

    def queued(self, job_id: str, position: int | None) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        job.queue_position = position
        if position is not None:
            conversation_id = job.conversation_id
            event = {
                "type": "reply.queue",
                "conversation_id": conversation_id,
                "id": job_id,
                "queue_position": position,
            }
            self.publish(conversation_id, event)

    async def replay(self, job_id: str, start: int) -> list[bytes] | None:
        job = self.here(job_id)
        return None if job is None else replayed(job, start)

    async def follow(self, job_id: str, start: int, listener: Listener) -> bool:
        job = self.here(job_id)
        if job is None:
            return False
        replayed_now = replayed(job, start)  # and added as a follower in the same step: nothing in between
        for data in replayed_now:
            listener.push(data)
        job.followers.add(listener)
        return True

    def unfollow(self, job_id: str, listener: Listener) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.followers.discard(listener)

    def finish(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            return
        job.finished, job.finished_at = True, time.monotonic()
        self.finished[job_id] = job
        self._forget_old()

    async def subscribe(self, conversation_id: str, listener: Listener, before: Before | None = None) -> None:
        listeners = self.listeners[conversation_id]
        if before is None:
            listeners.setdefault(listener, None)
            await self._listening(conversation_id)
            return
        catching = listeners.get(listener) or Catching()
        catching.held = []
        listeners[listener] = catching
        await self._listening(conversation_id)
        await bring_up(catching, listener, before)

    async def _listening(self, conversation_id: str) -> None:
        """Once this returns, events of the conversation from anywhere reach its listeners (here: at once)."""

    def unsubscribe(self, conversation_id: str, listener: Listener) -> None:
        listeners = self.listeners.get(conversation_id)
        if listeners is not None:
            listeners.pop(listener, None)
            if not listeners:
                del self.listeners[conversation_id]

    def publish(self, conversation_id: str, event: dict[str, Any]) -> None:
        if self.listeners.get(conversation_id):
            self._push(conversation_id, orjson.dumps(event))

    def _push(self, conversation_id: str, data: bytes, job_id: str | None = None, seq: int = 0) -> None:
        listeners = self.listeners.get(conversation_id)
        if listeners:
            for listener, catching in list(listeners.items()):
                if catching is None:
                    listener.push(data)
                else:
                    catching.offer(listener, data, job_id, seq)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - self.retain
        while self.finished:
            job_id, job = next(iter(self.finished.items()))
            if job.finished_at > horizon and len(self.finished) <= self.max_finished:
                break
            del self.finished[job_id]
            self.jobs.pop(job_id, None)

    def held_bytes(self) -> int:
        """Serialised events kept now, over all replies (a gauge in /metrics)."""
        return sum(job.size for job in self.jobs.values())
