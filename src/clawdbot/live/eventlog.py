"""Replies' event logs shared through Redis: follow or resume a reply on any gateway process, whichever writes it.

The process writing a reply keeps its log in memory, as `MemoryLog` does (the hot path never waits for Redis),
and `mirror.py` copies it to Redis in batches. Any process can then find, replay and follow it:

- `{reply}:log`, a stream: one entry per event, the seq as its id (`<seq>-0`), field `d` the event as clients get
  it. Trimmed (MINID) up to the base the caps folded away, which the hash holds.
- `{reply}:job`, a hash: `conversation`, `owner` (user id), `node` (the writer, `Live.node`), `message` (the
  reply's row as JSON: as it started, then as stored), `status`, `seq`, `queue` (position, empty once it runs),
  `finished` (1), and `base_seq`, `base_content`, `base_thinking`, `base_status` once the caps folded events.
  Both expire `retain` seconds after the reply finishes (an hour without a refresh while it runs: a dead writer's).
- `{conversation}:ch:log`, a channel: every event of the conversation, its replies' and its own (a new message, a
  title, a queue position), for the processes where someone listens. A message is the writer's node on the first
  line, then one line per event: `<reply id or -> <seq or 0> <event>`. A process ignores its own messages (its
  listeners got those events directly) and, per reply, any seq it has passed on already.

A process listens on a conversation's channel while it has a subscriber of that conversation or a follower of
one of its replies. Gap-free: subscribe first, then read the stream, then pass on only the live events with a seq
above what was read (`chat.eventlog.Catching`).

Without Redis, replies written here still stream to clients here; a reply written elsewhere cannot be found,
replayed or followed (RedisUnavailable, 503; `Chat.job` answers a finished one from its stored row), and
mirroring catches up when Redis is back (mirror.py says what other processes miss meanwhile).
"""

from __future__ import annotations

import re
from collections import deque
from functools import partial
from typing import Any

import orjson

from ..chat.eventlog import Catching, Job, Listener, MemoryLog, bring_up, replayed
from ..errors import RedisUnavailable
from ..logs import LOG
from ..metrics import Metrics
from ..store.records import Message
from .connection import GONE, Handler, Live
from .mirror import GAP, Mirror, channel, entry_id, keys

_CANNOT_READ = "Redis is unavailable: a reply written by another gateway process cannot be read now; try again shortly"
_REPLY_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what may go into a key name from a client's request


class RedisLog(MemoryLog):
    def __init__(
        self,
        live: Live,
        *,
        max_events: int = 10_000,
        max_bytes: int = 1 << 20,
        retain: float = 60.0,
        max_finished: int = 2_000,
        gap: float = GAP,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(max_events=max_events, max_bytes=max_bytes, retain=retain, max_finished=max_finished)
        self.live = live
        self.mirror = Mirror(live, retain=retain, gap=gap)
        if metrics is not None:
            metrics.labelled["clawdbot_reply_log_mirror"] = (
                "The reply logs' copy in Redis: round_trips, events (stream entries), frames (events to other "
                "processes), frames_dropped, unheard (channel messages not sent: no other process listened), "
                "failures, rewritten (replies whose keys Redis lost, written again whole).",
                "what",
                self.mirror.counts.as_dict,
            )
        # Followers here of replies written elsewhere: by conversation, then reply.
        self.remote: dict[str, dict[str, dict[Listener, Catching]]] = {}
        self.followed: dict[str, str] = {}  # reply followed here: its conversation
        self.seen: dict[str, dict[str, int]] = {}  # by conversation: each reply's last seq passed on here
        self.handlers: dict[str, Handler] = {}  # the channels this process listens on, by conversation
        live.resubscribed.append(self._resync)

    async def close(self) -> None:
        if self._resync in self.live.resubscribed:
            self.live.resubscribed.remove(self._resync)
        await self.mirror.close()
        for conversation_id, handler in list(self.handlers.items()):
            self.live.off(channel(self.live, conversation_id), handler)
        self.handlers.clear()

    # ---- writing: in memory, then mirrored ----------------------------------------------------------------------
    def register(self, job: Job) -> None:
        super().register(job)
        self.mirror.register(job)

    def append(self, job_id: str, event: dict[str, Any]) -> bytes:
        """Keep the event; clients here get it once it is in Redis (the flush in flight, or the next one), so a
        process that takes the reply over after this one died goes on from exactly the last event any client saw.
        While Redis is away they get it at once."""
        job, data = self._keep(job_id, event)
        deliver = partial(self._deliver, job, data, job.seq)
        if not self.mirror.appended(job_id, job.seq, data, deliver):
            deliver()
        return data

    def queued(self, job_id: str, position: int | None) -> None:
        super().queued(job_id, position)  # the position goes out through publish
        self.mirror.touch(job_id)

    def finish(self, job_id: str) -> None:
        super().finish(job_id)
        self.mirror.touch(job_id)

    def publish(self, conversation_id: str, event: dict[str, Any]) -> None:
        data = orjson.dumps(event)
        self._push(conversation_id, data)
        self.mirror.send(channel(self.live, conversation_id), b"-", 0, data)

    # ---- reading: here if written here, else from Redis -----------------------------------------------------------
    async def job(self, job_id: str) -> Job | None:
        local = self.here(job_id)
        if local is not None:
            return local
        return await self._remote(job_id, 1)

    async def replay(self, job_id: str, start: int) -> list[bytes] | None:
        local = self.here(job_id)
        if local is not None:
            return replayed(local, start)
        job = await self._remote(job_id, start)
        return None if job is None else replayed(job, start)

    async def state(self, job_id: str) -> dict[str, Any] | None:
        """The reply as Redis has it, whichever process writes it (None if Redis has no such reply): its
        `reply.snapshot` (content, thinking, status, seq, queue_position, message) plus `node` (the process that
        writes it), `owner` and `finished`. For taking over a reply whose writer died: go on from `seq`."""
        fields, entries = await self._read(job_id, 1)
        if fields is None:
            return None
        job = remote_job(job_id, fields, entries)
        return {
            **job.snapshot(),
            "node": fields.get(b"node", b"").decode(),
            "owner": job.owner,
            "finished": job.finished,
        }

    async def follow(self, job_id: str, start: int, listener: Listener) -> bool:
        if self.here(job_id) is not None:
            return await super().follow(job_id, start, listener)
        conversation_id = await self._conversation(job_id)
        if conversation_id is None:
            return False
        catching = Catching()
        self.remote.setdefault(conversation_id, {}).setdefault(job_id, {})[listener] = catching
        self.followed[job_id] = conversation_id
        found = True

        async def before() -> list[bytes]:  # read again: the first read came before the channel was listened to
            nonlocal found
            events = await self.replay(job_id, start)
            found = events is not None
            return events or []

        try:
            await self._listen(conversation_id, required=True)
            await bring_up(catching, listener, before)
        except BaseException:
            self.unfollow(job_id, listener)
            raise
        if not found:
            self.unfollow(job_id, listener)
        return found

    def unfollow(self, job_id: str, listener: Listener) -> None:
        super().unfollow(job_id, listener)
        conversation_id = self.followed.get(job_id)
        if conversation_id is None:
            return
        by_reply = self.remote.get(conversation_id, {})
        followers = by_reply.get(job_id)
        if followers is not None:
            followers.pop(listener, None)
            if not followers:
                del by_reply[job_id]
                del self.followed[job_id]
            if not by_reply:
                self.remote.pop(conversation_id, None)
        self._quiet(conversation_id)

    # ---- the conversations' channels ----------------------------------------------------------------------------
    def _resync(self) -> None:
        """After a gap in this process's channels: every client here of a conversation is told to read it again.
        A reply's events show a gap by their seq, but a conversation's own (a new message, a title, another
        version, a reply that ended meanwhile) would be missing until a reload."""
        told = 0
        for conversation_id in {*self.listeners, *self.remote}:
            listeners = set(self.listeners.get(conversation_id, ()))
            for followers in self.remote.get(conversation_id, {}).values():
                listeners.update(followers)
            data = orjson.dumps({"type": "conversation.resync", "conversation_id": conversation_id})
            for listener in listeners:
                listener.push(data)
            told += len(listeners)
        if told:
            LOG.info("clients told to read their conversations again after a pub/sub gap", extra={"count": told})

    async def _listening(self, conversation_id: str) -> None:
        await self._listen(conversation_id, required=False)

    async def _listen(self, conversation_id: str, *, required: bool) -> None:
        """Listen on the conversation's channel (if not yet) and wait until messages arrive. Without Redis a
        subscriber still gets the events written here; following a reply written elsewhere (`required`) fails."""
        to = channel(self.live, conversation_id)
        if conversation_id not in self.handlers:
            self.handlers[conversation_id] = handler = partial(self._received, conversation_id)
            self.live.on(to, handler)
        if not self.live.up and not required:
            return
        try:
            await self.live.listening(to)
        except RedisUnavailable:
            if required:
                raise
            LOG.warning("subscribed without redis: events written elsewhere come once it is back")

    def unsubscribe(self, conversation_id: str, listener: Listener) -> None:
        super().unsubscribe(conversation_id, listener)
        self._quiet(conversation_id)

    def _quiet(self, conversation_id: str) -> None:
        """Stop listening on the conversation's channel once nobody here wants its events."""
        if self.listeners.get(conversation_id) or self.remote.get(conversation_id):
            return
        handler = self.handlers.pop(conversation_id, None)
        if handler is not None:
            self.live.off(channel(self.live, conversation_id), handler)
        self.seen.pop(conversation_id, None)

    def _received(self, conversation_id: str, message: bytes) -> None:
        """A message on the conversation's channel: its events to the listeners here, each once and in order."""
        node, _, body = message.partition(b"\n")
        if node == self.mirror.node:
            return  # written here: the listeners here have it
        seen = self.seen.setdefault(conversation_id, {})
        followers = self.remote.get(conversation_id)
        for line in body.split(b"\n"):
            try:
                rid, number, data = line.split(b" ", 2)
                seq = int(number)
            except ValueError:
                LOG.warning("a malformed message on a conversation's channel was ignored")
                continue
            job_id = None if rid == b"-" else rid.decode()
            if seq and job_id is not None:
                if seq <= seen.get(job_id, 0):
                    continue  # sent again after a failed round trip
                seen[job_id] = seq
                if followers and job_id in followers:
                    for listener, catching in list(followers[job_id].items()):
                        catching.offer(listener, data, job_id, seq)
            self._push(conversation_id, data, job_id, seq)

    # ---- Redis ----------------------------------------------------------------------------------------------------
    async def _remote(self, job_id: str, start: int) -> Job | None:
        fields, entries = await self._read(job_id, start)
        return None if fields is None else remote_job(job_id, fields, entries)

    async def _conversation(self, job_id: str) -> str | None:
        if not _REPLY_ID.fullmatch(job_id):
            return None
        self._check()
        try:
            found = await self.live.client.hget(keys(self.live, job_id)[1], "conversation")
        except GONE as error:
            raise self._unavailable(error) from error
        return found.decode() if isinstance(found, bytes) else found

    async def _read(self, job_id: str, start: int) -> tuple[dict[bytes, bytes] | None, list[Any]]:
        """The reply's hash and its stream from `start` on, read at one instant."""
        if not _REPLY_ID.fullmatch(job_id):
            return None, []
        self._check()
        stream, registry = keys(self.live, job_id)
        try:
            async with self.live.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(registry)
                pipe.xrange(stream, entry_id(max(start, 1)), "+")
                fields, entries = await pipe.execute()
        except GONE as error:
            raise self._unavailable(error) from error
        if not fields or b"message" not in fields:
            return None, []
        return fields, entries

    def _check(self) -> None:
        """Fail at once while Redis is known to be down, rather than after a connection timeout per request."""
        if not self.live.up:
            raise RedisUnavailable(_CANNOT_READ)

    def _unavailable(self, error: BaseException) -> RedisUnavailable:
        self.live.failed(error)
        return RedisUnavailable(_CANNOT_READ)


def remote_job(job_id: str, fields: dict[bytes, bytes], entries: list[Any]) -> Job:
    """A reply as Redis has it, as a Job (its events from where the read started; the base before them)."""
    base_seq = int(fields.get(b"base_seq", 0))
    events: deque[tuple[int, dict[str, Any], bytes]] = deque()
    for ident, values in entries:
        seq = int(ident.split(b"-", 1)[0])
        if seq <= base_seq:
            continue  # trimming is approximate: these are in the base already
        data = values[b"d"]
        events.append((seq, _event(data), data))
    queue = fields.get(b"queue", b"")
    return Job(
        job_id,
        fields[b"conversation"].decode(),
        fields[b"owner"].decode(),
        _message(orjson.loads(fields[b"message"])),
        status=fields.get(b"status", b"waiting").decode(),
        seq=max(int(fields.get(b"seq", 0)), events[-1][0] if events else 0),
        queue_position=int(queue) if queue else None,
        finished=fields.get(b"finished") == b"1",
        base_seq=base_seq,
        base_content=[fields.get(b"base_content", b"").decode()],
        base_thinking=[fields.get(b"base_thinking", b"").decode()],
        base_status=fields.get(b"base_status", b"waiting").decode(),
        events=events,
    )


def _event(data: bytes) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(data)
    if isinstance(event.get("message"), dict):  # reply.start, reply.done: the row, as a snapshot folds it
        event["message"] = _message(event["message"])
    return event


def _message(fields: dict[str, Any]) -> Message:
    return Message(**fields)
