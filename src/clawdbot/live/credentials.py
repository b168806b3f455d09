"""The credential cache of several gateway processes: each keeps its own short cache of who is behind a key, a
session or a trusted name, and a change to a user (a revoked key, an ended session, a disabled user, new limits)
reaches every one of them before the request that made it is answered.

`forget` drops the answers kept here and tells this process's listeners (which close the user's open WebSockets and
event streams), then publishes the change on one channel of the deployment. Every process, this one included, does
the same on receipt and acknowledges on the sender's own channel; the sender waits for as many acknowledgements as
PUBLISH says processes got the message (a few milliseconds; at most ACK_WAIT), so a request to any process right
after the change was answered sees it.

A process that may have missed a message keeps nothing: while Redis is down or the channel not yet (again)
subscribed, every request is looked up in the database, and the cache starts empty after each outage. A change
made while Redis is down takes effect here at once, everywhere else within the cache's few seconds (they keep
nothing either once they see the outage), and is published again when Redis is back, so that the other processes'
open connections close then. Messages carry user ids, key ids and session ids (digests), never a secret.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Any

import orjson

from ..auth.state import Changed, Ended, Lookup, MemoryCredentialCache
from ..errors import RedisUnavailable
from ..identity import Actor
from ..logs import LOG
from .connection import Live

# Seconds `forget` waits for the other processes to acknowledge a change before it returns anyway.
ACK_WAIT = 3.0
# Changes kept to publish once Redis is back; beyond that the oldest go (their cache entries expire meanwhile).
PENDING = 1000
# Seconds between tries to publish them.
RETRY_EVERY = 0.5


class RedisCredentialCache:
    def __init__(self, live: Live, size: int = 10_000) -> None:
        self.live = live
        self.memory = MemoryCredentialCache(size)
        self.changed: list[Changed] = self.memory.changed
        self.channel = live.channel("auth", "changed")
        self.acks = live.channel("node:" + live.node, "auth-acks")
        self._outages = live.outages
        self._waiting: dict[str, _Acks] = {}
        self._pending: deque[bytes] = deque(maxlen=PENDING)
        self._retrying: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        live.on(self.channel, self._received)
        live.on(self.acks, self._acknowledged)

    async def get(self, key: str, lookup: Lookup) -> Actor | None:
        if not self._trusted():
            found, _ = await lookup()
            return found
        return await self.memory.get(key, lookup)

    def _trusted(self) -> bool:
        """Whether every change since the cache was last emptied has reached this process; empties it if not."""
        live = self.live
        if live.up and live.subscribed(self.channel) and live.outages == self._outages:
            return True
        self._outages = live.outages
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
            acks.expected = await self.live.publish(self.channel, notice)
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

    def _received(self, data: bytes) -> None:
        try:
            notice = orjson.loads(data)
            sender, notice_id, user_id = str(notice["from"]), str(notice["id"]), str(notice["user"])
            ended = Ended(**notice["ended"]) if notice["ended"] is not None else None
        except (ValueError, TypeError, KeyError):
            LOG.warning("ignored a malformed credential change from redis")
            return
        if sender == self.live.node:  # done before it was sent
            self._acknowledged(notice_id.encode())
            return
        self.memory.drop(user_id, ended)
        reply = self.live.channel("node:" + sender, "auth-acks")
        self._spawn(self.live.publish(reply, notice_id.encode()))

    def _acknowledged(self, data: bytes) -> None:
        acks = self._waiting.get(data.decode(errors="replace"))
        if acks is not None:
            acks.count += 1
            acks.check()

    def _keep(self, notice: bytes) -> None:
        """Publish `notice` once Redis is back (the processes that missed it close the user's connections then)."""
        if not self._pending:
            LOG.warning("redis is unavailable: a credential change reaches the other gateway processes later")
        self._pending.append(notice)
        if self._retrying is None or self._retrying.done():
            self._retrying = self._spawn(self._retry())

    async def _retry(self) -> None:
        while self._pending:
            await asyncio.sleep(RETRY_EVERY)
            if not self.live.up or not self.live.subscribed(self.channel):
                continue
            try:
                while self._pending:
                    await self.live.publish(self.channel, self._pending[0])
                    self._pending.popleft()
            except RedisUnavailable:
                continue
            LOG.info("credential changes made while redis was unavailable are published")

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        # An acknowledgement Redis did not take is logged by Live, and its sender stops waiting at ACK_WAIT.
        if error is not None and not isinstance(error, RedisUnavailable):
            LOG.error("unexpected error in a credential change", extra={"error": type(error).__name__})

    async def close(self) -> None:
        self.live.off(self.channel, self._received)
        self.live.off(self.acks, self._acknowledged)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Acks:
    """Acknowledgements of one change: as many as processes got it (known once PUBLISH answers)."""

    def __init__(self) -> None:
        self.count, self.expected = 0, -1
        self.done = asyncio.Event()

    def check(self) -> None:
        if 0 <= self.expected <= self.count:
            self.done.set()
