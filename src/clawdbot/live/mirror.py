"""The writer's side of the reply logs on Redis: this process's replies copied to Redis in batches, off the hot path.

`append` only notes that a reply has new events and queues them for its conversation's channel; a task of its own
then sends everything pending in one script run (atomic, one round trip), at once or, busy, `GAP` after the last
one began, and what comes meanwhile in the next: the new events of every reply (XADD, the seq as the entry id),
each reply's registry hash (seq, status, queue position, the message as stored, its writer), the trimming of what
the caps folded away, the expiry of finished replies, and the events for other processes, one PUBLISH per
conversation with all of its events of the flush in order. The writer's own clients get an event once its flush
is through (eventlog.py says why).

What is mirrored is read from the reply's log in memory, so nothing is lost while the round trip runs, while
Redis is down or while the channel queue is full: the next flush sends whatever the stream lacks (and if the caps
folded some of it away meanwhile, the folded base instead). Only live delivery to other processes can miss
events: the channel queue holds `max_frames` events and drops past that (counted, logged once per episode); a
client there sees the gap in seq and resumes from the stream. After an outage the queued events still go out,
late but in order (a receiver drops what it has).

Redis Cluster: each reply's keys share a hash tag (its id), so a reply's part of a flush is one script run on the
node of its slot; there the flush is one run per reply, sent side by side, and then the channels' run on the node
where every process listens (connection.HUB says why).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from ..chat.eventlog import Job
from ..logs import LOG
from ..store.records import Message
from .connection import GONE, Live
from .flush import FLUSH, Ops

# Redis was not reached (try the batch again), as against a batch it refused (a bug: dropped, logged).
_UNREACHED = (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError)
# Seconds a reply's keys live while it runs and its writer no longer refreshes them (the writer died).
ORPHAN_TTL = 3600
# Seconds between checks, in a flush, that Redis still has a reply's hash: Redis restarted empty (or evicted it)
# leaves the writer adding to keys that lack the start of the reply, its owner and its row, which nobody could
# resume from or take over. Noticed, the keys are written again whole from the log in memory.
CHECK_EVERY = 1.0
# Seconds between the starts of two flushes at least. A flush costs the gateway ~150 µs of CPU whatever it
# carries (redis-py's command, the script run's reply); flushing as soon as the last one was through made it one
# round trip per ~5 events under load, ~8 µs of CPU per token. An idle writer still flushes at once; a busy one
# holds its clients' events up to this long (BENCHMARKS.md §12).
GAP = 0.005


def keys(live: Live, job_id: str) -> tuple[str, str]:
    """The reply's stream and registry hash: one hash tag, the reply's id."""
    return live.key(job_id, "log"), live.key(job_id, "job")


def channel(live: Live, conversation_id: str) -> bytes:
    """Where the conversation's events go to the other processes."""
    return live.channel(conversation_id, "log")


def entry_id(seq: int) -> str:
    return f"{seq}-0"


def message_json(message: Message) -> bytes:
    return orjson.dumps(message)


@dataclass(slots=True, eq=False)
class Mirrored:
    """How far a reply's keys are behind its log in memory."""

    job: Job
    channel: bytes
    rid: bytes
    seq: int  # the last seq the stream has
    base_seq: int  # the base the hash has (the stream may have been trimmed up to it)
    message: Message | None = None  # as the hash has it
    queue: int | None = None
    status: str = ""
    registered: bool = False
    refreshed: float | None = None  # when the keys' expiry was last set
    checked: float = 0.0  # when the flush last checked that Redis still has the hash
    lost: bool = False  # Redis lost the keys: the next flush deletes what is left of them and writes them whole


@dataclass(slots=True)
class Counts:
    round_trips: int = 0
    events: int = 0  # stream entries added
    frames: int = 0  # events handed to the channels
    frames_dropped: int = 0
    unheard: int = 0  # channel messages not sent: no other process listened
    failures: int = 0
    rewritten: int = 0  # replies whose keys Redis lost while they were written here, written again whole

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class _Sent:
    """A reply's state as one flush sent it: the mirror's once the flush has gone through."""

    mirrored: Mirrored
    seq: int
    base_seq: int
    message: Message
    queue: int | None
    status: str
    finished: bool
    refreshed: float | None


@dataclass(slots=True)
class _Batch:
    sent: list[_Sent] = field(default_factory=list)
    events: int = 0
    checks: list[tuple[int, Mirrored]] = field(default_factory=list)  # (index of the HEXISTS in the batch, reply)


class Mirror:
    def __init__(self, live: Live, *, retain: float, gap: float = GAP, max_frames: int = 20_000) -> None:
        self.live, self.retain, self.gap, self.max_frames = live, retain, gap, max_frames
        self.node = live.node.encode()
        self.jobs: dict[str, Mirrored] = {}  # this process's replies until their last state is in Redis
        self.dirty: set[str] = set()
        self.frames: deque[tuple[bytes, bytes, int, bytes]] = deque()  # (channel, reply id or b"-", seq, event)
        self.held: deque[Callable[[], None]] = deque()  # deliveries to clients here, waiting for their flush
        self.flying = 0  # deliveries waiting for the flush on its way now
        self.counts = Counts()
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # A new reply goes to Redis without waiting out the gap: until its registry is there, a writer that dies
        # leaves a reply nobody can take over (it ends interrupted).
        self.urgent = False
        self._gap: asyncio.Future[None] | None = None  # the writer task's wait for the gap to pass
        self._dropping = False
        self._script = live.script(FLUSH)

    async def close(self) -> None:
        """Stop, sending what is pending once more (replies stored at shutdown end with reply.done)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            async with asyncio.timeout(3):
                await self.flush()
        except GONE as error:  # TimeoutError is an OSError
            LOG.warning("reply events not sent to redis at shutdown", extra={"reason": type(error).__name__})

    # ---- from the log (never waits) ----------------------------------------------------------------------------
    def register(self, job: Job) -> None:
        # A reply taken over from another process goes on from the seq it had: the stream has those events.
        self.jobs[job.id] = Mirrored(
            job, channel(self.live, job.conversation_id), job.id.encode(), seq=job.seq, base_seq=job.base_seq
        )
        self.urgent = True
        if self._gap is not None and not self._gap.done():
            self._gap.set_result(None)
        self.touch(job.id)

    def appended(self, job_id: str, seq: int, data: bytes, deliver: Callable[[], None] | None = None) -> bool:
        """A new event of the reply; `deliver` (its delivery to clients here) is called once the event is in
        Redis, or when Redis could not take it. False when the event is not this mirror's to hold (the caller
        delivers it now)."""
        mirrored = self.jobs.get(job_id)
        if mirrored is None:
            return False
        self.dirty.add(job_id)
        self.send(mirrored.channel, mirrored.rid, seq, data)
        if deliver is None or not (self.live.up or self.held or self.flying):  # Redis away: at once, unless that
            # would overtake events still held
            return False
        if len(self.held) >= self.max_frames:  # Redis far behind: clients here are not held up with it
            self.held.popleft()()
        self.held.append(deliver)
        return True

    def touch(self, job_id: str) -> None:
        """The reply's registry changed (queue position, finished)."""
        if job_id in self.jobs:
            self.dirty.add(job_id)
            self._wake()

    def send(self, to: bytes, rid: bytes, seq: int, data: bytes) -> None:
        """Queue an event for the other processes listening on `to`."""
        if len(self.frames) >= self.max_frames:
            self.counts.frames_dropped += 1
            if not self._dropping:
                self._dropping = True
                LOG.warning("redis is behind: live events to other gateway processes are dropped (they resume)")
            return
        self._dropping = False
        self.frames.append((to, rid, seq, data))
        self._wake()

    def _wake(self) -> None:
        if self._task is None:  # started by the first event, on the loop that serves
            self._task = asyncio.get_running_loop().create_task(self._run())
        self.wake.set()

    # ---- the writer task -----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        pause = 0.05
        loop = asyncio.get_running_loop()
        began = -self.gap
        while True:
            await self.wake.wait()
            # At once if the last flush began `gap` ago or more (or a new reply waits), else when it is that long:
            # what comes meanwhile goes in the same round trip (and what comes while a flush is on its way, in the
            # next: group commit).
            if not self.urgent and (wait := began + self.gap - loop.time()) > 0:
                self._gap = gap = loop.create_future()
                timer = loop.call_later(wait, _passed, gap)
                try:
                    await gap
                finally:
                    timer.cancel()
                    self._gap = None
            began, self.urgent = loop.time(), False
            self.wake.clear()
            try:
                await self.flush()
                pause = 0.05
            except _UNREACHED as error:
                self.counts.failures += 1
                self.live.failed(error)
                self.wake.set()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
            except Exception:  # noqa: BLE001 - a refused batch (a bug) must not end mirroring, nor be retried as is
                self.counts.failures += 1
                LOG.exception("could not mirror reply events to redis")
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Send everything pending in one transaction. If Redis cannot be reached all of it stays pending; if it
        refuses the batch, the replies' next flush sends their events again from where their stream is."""
        dirty, self.dirty = self.dirty, set()
        frames, self.frames = self.frames, deque()
        held, self.held = self.held, deque()
        self.flying = len(held)
        try:
            await self._flush(dirty, frames)
        finally:  # in Redis now, or Redis could not take them: clients here wait no longer either way
            self.flying = 0
            for deliver in held:
                deliver()

    async def _flush(self, dirty: set[str], frames: deque[tuple[bytes, bytes, int, bytes]]) -> None:
        pipe = Ops()
        parts: list[Ops] = []  # on a Redis Cluster: each reply's own run (its keys' slot); else all in `pipe`
        batch = _Batch()
        now = time.monotonic()
        for job_id in dirty:
            mirrored = self.jobs.get(job_id)
            if mirrored is not None:
                if not self.live.cluster:
                    self._mirror(pipe, mirrored, now, batch)
                    continue
                part, first = Ops(), len(batch.checks)
                self._mirror(part, mirrored, now, batch)
                # Its checks' answers come after those of the parts before it.
                batch.checks[first:] = [(index + first, m) for index, m in batch.checks[first:]]
                if len(part):
                    parts.append(part)
        grouped: dict[bytes, list[bytes]] = {}
        for to, rid, seq, data in frames:
            grouped.setdefault(to, [self.node]).append(b"%b %d %b" % (rid, seq, data))
        for to, pieces in grouped.items():
            pipe.publish(to, b"\n".join(pieces), self.live.subscribed(to))
        if not len(pipe) and not parts:
            return
        if self.live.cluster and len(pipe):
            pipe.route(self.live.hub)  # where every process listens (connection.HUB)
        try:
            refused, found, unheard = await self._send(pipe, parts)
        except (*_UNREACHED, asyncio.CancelledError):
            self.dirty |= dirty
            frames.extend(self.frames)
            self.frames = frames
            while len(self.frames) > self.max_frames:
                self.frames.pop()
                self.counts.frames_dropped += 1
            raise
        self.counts.round_trips += 1
        self.counts.events += batch.events
        self.counts.frames += len(frames)
        self.counts.unheard += unheard
        for reason in refused:  # not "equal or smaller": a retried flush whose first try got through adds nothing
            LOG.warning("redis refused a reply log command", extra={"reason": reason.decode(errors="replace")})
        for sent in batch.sent:
            mirrored = sent.mirrored
            mirrored.seq, mirrored.base_seq, mirrored.message = sent.seq, sent.base_seq, sent.message
            mirrored.queue, mirrored.status, mirrored.registered = sent.queue, sent.status, True
            mirrored.refreshed, mirrored.lost = sent.refreshed, False
            if sent.finished:
                self.jobs.pop(mirrored.job.id, None)
        lost = [m for index, m in batch.checks if found[index] == 0 and m.job.id in self.jobs]
        for mirrored in lost:
            mirrored.seq = mirrored.base_seq = 0
            mirrored.message, mirrored.queue, mirrored.status = None, None, ""
            mirrored.registered, mirrored.refreshed, mirrored.lost = False, None, True
            self.dirty.add(mirrored.job.id)
        if lost:
            self.counts.rewritten += len(lost)
            LOG.warning("redis lost replies being written here; they are written again", extra={"count": len(lost)})
            self.wake.set()

    async def _send(self, pipe: Ops, parts: list[Ops]) -> tuple[list[bytes], list[int], int]:
        """Run the flush: one script run; on a cluster one per reply, side by side, then the channels' on the hub
        (so that an event is in its stream before another process hears of it, as within one run)."""
        if not self.live.cluster:
            refused, found, unheard = await self._script(keys=pipe.keys, args=pipe.done())
            return list(refused), list(found), int(unheard)
        answers = list(await asyncio.gather(*(self._script(keys=part.keys, args=part.done()) for part in parts)))
        if len(pipe):
            answers.append(await self._script(keys=pipe.keys, args=pipe.done()))
        refused = [r for answer in answers for r in answer[0]]
        return refused, [f for answer in answers for f in answer[1]], sum(int(answer[2]) for answer in answers)

    def _mirror(self, pipe: Ops, mirrored: Mirrored, now: float, batch: _Batch) -> None:
        """Queue one reply's new events and registry changes on the transaction."""
        job = mirrored.job
        if job.finished and now - job.finished_at > self.retain:  # its keys would be gone at once
            self.jobs.pop(job.id, None)
            return
        stream, registry = keys(self.live, job.id)
        if mirrored.lost:  # what was added since Redis lost them, before that was noticed: written again whole
            pipe.delete(stream, registry)
        elif not mirrored.registered:
            mirrored.checked = now
        elif now - mirrored.checked >= CHECK_EVERY:
            mirrored.checked = now
            batch.checks.append((pipe.hexists(registry, "message"), mirrored))
        fields: dict[FieldT, EncodableT] = {}
        if not mirrored.registered:
            fields.update(conversation=job.conversation_id, owner=job.owner, node=self.live.node)
        # The local log folded events: move the base in Redis along when the stream lacks them (they were folded
        # before they were sent) or holds a quarter more than the log, so it stays bounded without a rewrite of
        # the base at every event.
        base_seq = mirrored.base_seq
        if job.base_seq > base_seq and (
            job.base_seq > mirrored.seq or job.base_seq - base_seq >= max(16, len(job.events) // 4)
        ):
            base_seq = job.base_seq
            fields.update(
                base_seq=base_seq,
                base_content="".join(job.base_content),
                base_thinking="".join(job.base_thinking),
                base_status=job.base_status,
            )
        status = mirrored.status or job.base_status
        fresh = []
        after = max(mirrored.seq, job.base_seq)
        for seq, event, data in reversed(job.events):
            if seq <= after:
                break
            fresh.append((seq, event, data))
        for seq, event, data in reversed(fresh):
            pipe.xadd(stream, data, entry_id(seq))
            status = _status(event, status)
        batch.events += len(fresh)
        if base_seq > mirrored.base_seq:
            pipe.xtrim(stream, entry_id(base_seq + 1))
        if job.message is not mirrored.message:
            fields["message"] = message_json(job.message)
        if job.queue_position != mirrored.queue or not mirrored.registered:
            fields["queue"] = "" if job.queue_position is None else job.queue_position
        if status != mirrored.status:
            fields["status"] = status
        if job.finished:
            fields["finished"] = 1
        if job.seq != mirrored.seq or not mirrored.registered:
            fields["seq"] = job.seq
        if fields:
            pipe.hset(registry, fields)
        refreshed = mirrored.refreshed
        if job.finished:
            pipe.expire(stream, round(self.retain))
            pipe.expire(registry, round(self.retain))
        elif fresh and (
            refreshed is None or now - refreshed > ORPHAN_TTL / 3
        ):  # the stream exists once it has an entry
            pipe.expire(stream, ORPHAN_TTL)
            pipe.expire(registry, ORPHAN_TTL)
            refreshed = now
        elif not mirrored.registered:
            pipe.expire(registry, ORPHAN_TTL)
        batch.sent.append(
            _Sent(mirrored, job.seq, base_seq, job.message, job.queue_position, status, job.finished, refreshed)
        )


def _passed(gap: asyncio.Future[None]) -> None:
    if not gap.done():
        gap.set_result(None)


def _status(event: dict[str, object], status: str) -> str:
    """The reply's status after an event (the registry's copy of what a snapshot shows)."""
    kind = event["type"]
    if kind == "reply.status":
        return str(event["status"])
    if kind in ("reply.start", "reply.done"):
        message = event["message"]
        return message.status if isinstance(message, Message) else status
    return status
