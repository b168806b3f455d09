"""The credential cache of several gateway processes: each keeps its own short cache of who is behind a key, a
session or a trusted name, and a change to a user (a revoked key, an ended session, a disabled user, new limits)
reaches every one of them before the request that made it is answered.

`forget` drops the answers kept here and tells this process's listeners (which close the user's open WebSockets and
event streams), then, in one script, appends the change to a short stream and publishes it on one channel of the
deployment. Every process, this one included, does the same on receipt and acknowledges on the sender's own
channel; the sender waits for as many acknowledgements as PUBLISH says processes got the message (milliseconds; at
most ACK_WAIT), so a request to any process right after the change was answered sees it.

A process that may have missed a message keeps nothing: while Redis is down or the channel not (yet, again)
subscribed, every request is looked up in the database, and after each outage the cache starts empty once the
process has read the stream's changes it missed (closing the connections they end). A change made while Redis is
down takes effect here at once, elsewhere within the cache's few seconds (the others keep nothing either once they
see the outage), and is published when Redis is back. Messages carry user ids, key ids and session ids (digests),
never a secret.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Any, cast

import orjson

from ..auth.state import Changed, Ended, Lookup, MemoryCredentialCache
from ..errors import RedisUnavailable
from ..identity import Actor
from ..logs import LOG
from .connection import GONE, HUB, Live

# Seconds `forget` waits for the other processes to acknowledge a change before it returns anyway.
ACK_WAIT = 3.0
# Changes kept in the stream for processes coming back from an outage, and kept here to publish once Redis is back.
KEPT = 1000
# Seconds between looks at whether an outage ended (only then is Redis asked anything).
WATCH_EVERY = 0.2

# KEYS[1]: the stream; ARGV: the notice, the stream's length, the channel. The entry's id and how many got it.
_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', ARGV[1])
return {id, redis.call('PUBLISH', ARGV[3], id .. ' ' .. ARGV[1])}
"""
# A stream's entries as the client (bytes in and out) gives them: (id, fields).
_Entries = list[tuple[bytes, dict[bytes, bytes]]]


class RedisCredentialCache:
    def __init__(self, live: Live, size: int = 10_000) -> None:
        self.live = live
        self.memory = MemoryCredentialCache(size)
        self.changed: list[Changed] = self.memory.changed
        self.channel = live.channel("auth", "changed")
        # In the pub/sub hub's slot: on a Redis Cluster the script's PUBLISH then counts every process (hub).
        self.stream = live.key(HUB, "auth", "changes")
        self.acks = live.channel("node:" + live.node, "auth-acks")
        self._script = live.script(_PUBLISH)
        self._synced = -1  # live.gaps when this process last read what it missed (-1: never)
        self._last: tuple[int, int] | None = None  # the newest change applied here (a stream id)
        self._waiting: dict[str, _Acks] = {}
        self._pending: deque[bytes] = deque(maxlen=KEPT)
        self._tasks: set[asyncio.Task[Any]] = set()
        live.on(self.channel, self._received)
        live.on(self.acks, self._acknowledged)
        self._watching = asyncio.create_task(self._watch())

    async def get(self, key: str, lookup: Lookup) -> Actor | None:
        if not self._trusted():
            found, _ = await lookup()
            return found
        return await self.memory.get(key, lookup)

    def _trusted(self) -> bool:
        """Whether every change since the cache was last emptied has reached this process; empties it if not."""
        live = self.live
        if live.up and live.subscribed(self.channel) and live.gaps == self._synced:
            return True
        if self.memory.kept:
            self.memory.clear()
        return False

    async def forget(self, user_id: str, ended: Ended | None) -> None:
        notice_id = secrets.token_hex(8)
        notice = orjson.dumps(
            {"id": notice_id, "from": self.live.node, "user": user_id, "ended": asdict(ended) if ended else None}
        )
        self.memory.drop(user_id, ended)
        if not self.live.up:
            self._keep(notice)
            return
        acks = self._waiting[notice_id] = _Acks()
        try:
            await self.live.listening(self.acks)
            acks.expected = await self._publish(notice)
            acks.check()
            await asyncio.wait_for(acks.done.wait(), ACK_WAIT)
        except RedisUnavailable:
            self._keep(notice)
        except TimeoutError:
            LOG.warning(
                "gateway processes did not confirm a credential change in time",
                extra={"expected": acks.expected, "confirmed": acks.count, "wait_s": ACK_WAIT},
            )
        finally:
            del self._waiting[notice_id]

    async def _publish(self, notice: bytes) -> int:
        """Append to the stream and publish, at once; how many processes got it."""
        try:
            _, count = await self._script(keys=[self.stream], args=[notice, KEPT, self.channel])
        except GONE as error:
            self.live.failed(error)
            raise RedisUnavailable("Redis is unavailable: the other gateway processes cannot be told") from error
        return int(count)

    def _received(self, data: bytes) -> None:
        entry, _, notice = data.partition(b" ")
        self._apply(entry, notice, acknowledge=True)

    def _apply(self, entry: bytes, data: bytes, *, acknowledge: bool) -> None:
        try:
            notice = orjson.loads(data)
            sender, notice_id, user_id = str(notice["from"]), str(notice["id"]), str(notice["user"])
            ended = Ended(**notice["ended"]) if notice["ended"] is not None else None
            number = _number(entry)
        except (ValueError, TypeError, KeyError):
            LOG.warning("ignored a malformed credential change from redis")
            return
        self._last = max(self._last or number, number)
        if sender == self.live.node:  # applied before it was sent
            if acknowledge:
                self._acknowledged(notice_id.encode())
            return
        self.memory.drop(user_id, ended)
        if acknowledge:
            self._spawn(self.live.publish(self.live.channel("node:" + sender, "auth-acks"), notice_id.encode()))

    def _acknowledged(self, data: bytes) -> None:
        acks = self._waiting.get(data.decode(errors="replace"))
        if acks is not None:
            acks.count += 1
            acks.check()

    def _keep(self, notice: bytes) -> None:
        if not self._pending:
            LOG.warning("redis is unavailable: a credential change reaches the other gateway processes later")
        self._pending.append(notice)

    async def _watch(self) -> None:
        """After an outage (and at start), read the changes missed meanwhile, then publish those made here."""
        live = self.live
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if not live.up or not live.subscribed(self.channel):
                continue
            try:
                if live.gaps != self._synced:
                    gaps = live.gaps
                    await self._catch_up()
                    self._synced = gaps
                while self._pending:
                    await self._publish(self._pending[0])
                    self._pending.popleft()
                    if not self._pending:
                        LOG.info("credential changes made while redis was unavailable are published")
            except RedisUnavailable:
                continue
            except GONE as error:
                live.failed(error)

    async def _catch_up(self) -> None:
        """Apply what the stream holds after the last change applied here (subscribed already: nothing falls
        between the two)."""
        client = self.live.client
        if self._last is None:  # starting: nothing is cached or open yet, so nothing was missed
            newest = cast(_Entries, await client.xrevrange(self.stream, count=1))
            self._last = _number(newest[0][0]) if newest else (0, 0)
            return
        missed = 0
        while True:
            after = "({}-{}".format(*self._last)
            entries = cast(_Entries, await client.xrange(self.stream, min=after, max="+", count=100))
            for entry, fields in entries:
                self._apply(entry, fields.get(b"n", b""), acknowledge=False)
            missed += len(entries)
            if len(entries) < 100:
                break
        if missed:
            LOG.info("applied credential changes missed while redis was unavailable", extra={"count": missed})

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        # An acknowledgement Redis did not take is logged by Live, and its sender stops waiting at ACK_WAIT.
        if error is not None and not isinstance(error, RedisUnavailable):
            LOG.error("unexpected error in a credential change", extra={"error": type(error).__name__})

    async def close(self) -> None:
        self.live.off(self.channel, self._received)
        self.live.off(self.acks, self._acknowledged)
        self._watching.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._watching, *self._tasks, return_exceptions=True)


def _number(entry: bytes | str) -> tuple[int, int]:
    """A stream id (`ms-seq`) as something ordered."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


class _Acks:
    """Acknowledgements of one change: as many as processes got it (known once PUBLISH answers)."""

    def __init__(self) -> None:
        self.count, self.expected = 0, -1
        self.done = asyncio.Event()

    def check(self) -> None:
        if 0 <= self.expected <= self.count:
            self.done.set()
