"""Leases: keys this process holds in Redis only for as long as it lives, renewed together once a second.

A lease is a key whose value names its holder (`Live.node` and what it holds) and which expires `LEASE_MS` after
its last renewal: a process that dies (kill -9, a lost machine) lets go of all of them within seconds, with
nobody's help. One loop renews every lease of the process in one pipeline, whatever their number.

A lease that vanished while its holder lives (Redis restarted empty, or the holder was cut off from Redis for
longer than the lease) is re-asserted by the next renewal, unless someone else has taken the key meanwhile: then
the holder logs that it lost it, and goes on (a reply being written is not thrown away for it).

Replies also have a place in one sorted set of the deployment, `{replies}:leases`, scored with their lease's
deadline in Redis's own clock (no skew between machines): live/sweep.py finds the replies whose writer stopped
renewing there, without scanning the database.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ..logs import LOG
from .connection import GONE, Live

# Milliseconds a lease outlives its last renewal, and seconds between renewals: several renewals may fail (a slow
# Redis, a busy event loop) before a live holder loses anything.
LEASE_MS = 5000
RENEW_EVERY = 1.0

# Renew a lease held by ARGV[1]: 1 renewed, 0 missing or someone else's (nothing is written).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# Take a vanished lease back: 1 taken, 0 someone else holds it now.
_REASSERT = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
# Let go of a lease if it is still ARGV[1]'s; then PUBLISH ARGV[3] on channel ARGV[2] if one is given.
_RELEASE = """
local mine = redis.call('GET', KEYS[1]) == ARGV[1]
if mine then redis.call('DEL', KEYS[1]) end
if ARGV[2] then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return mine and 1 or 0
"""
# Push the deadlines of the members ARGV[2…] to Redis's now + ARGV[1] ms (never back: GT).
_DEADLINES = """
local now = redis.call('TIME')
local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', deadline, ARGV[i]) end
return deadline
"""


@dataclass(slots=True)
class Lease:
    key: str
    value: str
    member: str | None  # its place in the replies' sorted set, for a reply's lease
    lost: bool = False  # someone else holds the key now (logged once)


class Leases:
    """The leases this process holds, and the loop that renews them."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.held: dict[str, Lease] = {}
        self.replies = live.key("replies", "leases")  # the sorted set of replies' deadlines
        self._renew, self._reassert = live.script(_RENEW), live.script(_REASSERT)
        self._release, self._deadlines = live.script(_RELEASE), live.script(_DEADLINES)
        self._missing: set[str] = set()  # keys a renewal found gone: re-asserted by the next round
        self._reasserting = asyncio.Lock()  # a re-assertion never races the release of the same key
        self._loop: asyncio.Task[None] | None = None

    def open(self) -> None:
        self._loop = asyncio.get_running_loop().create_task(self._renewing())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    async def hold(self, key: str, value: str, member: str | None = None) -> None:
        """Hold `key`, already set to `value` by the caller (atomically with whatever it checked); a reply's
        `member` gets its deadline in the replies' set."""
        self.held[key] = Lease(key, value, member)
        if member is not None:
            await self.mark(member)

    async def take(self, key: str, value: str, member: str | None = None) -> None:
        """Set `key` to `value` and hold it. Never raises: without Redis now, the next renewal that reaches it
        asserts the lease."""
        self.held[key] = Lease(key, value, member)
        try:
            async with self.live.client.pipeline(transaction=False) as pipe:
                pipe.set(key, value, px=LEASE_MS)
                if member is not None:
                    await self._deadlines(keys=[self.replies], args=[LEASE_MS, member], client=pipe)
                await pipe.execute()
        except GONE as error:
            self.live.failed(error)
            self._missing.add(key)

    async def mark(self, *members: str, lease_ms: int = LEASE_MS) -> None:
        """Give replies a deadline in the set (a later one is kept)."""
        await self._deadlines(keys=[self.replies], args=[lease_ms, *members])

    async def release(self, key: str, *, channel: bytes | None = None, message: bytes = b"") -> None:
        """Let go of `key` (if it is still ours), and tell `channel`; never raises: a lease that cannot be
        released now expires on its own."""
        lease = self.held.pop(key, None)
        if lease is None:
            return
        self._missing.discard(key)
        try:
            await self.let_go(key, lease.value, lease.member, channel=channel, message=message)
        except GONE as error:
            self.live.failed(error)

    async def let_go(
        self, key: str, value: str, member: str | None, *, channel: bytes | None = None, message: bytes = b""
    ) -> None:
        """Delete `key` if it still holds `value` (ours, or a dead holder's), and drop `member` from the set."""
        args: list[str | bytes] = [value] if channel is None else [value, channel, message]
        async with self._reasserting:
            await self._release(keys=[key], args=args)
        if member is not None:
            await self.live.client.zrem(self.replies, member)

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await self.renew()
            except GONE as error:
                self.live.failed(error)
            except Exception:  # noqa: BLE001 - a bug here must not end the renewals of every lease
                LOG.exception("could not renew leases")

    async def renew(self) -> None:
        """One round: every lease renewed, and every reply's deadline pushed on, in one pipeline; a lease that
        vanished is re-asserted by the next round (by then a release in flight has finished)."""
        if self._missing:
            await self._take_back()
        leases = list(self.held.values())
        if not leases:
            return
        started = time.monotonic()
        async with self.live.client.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._renew(keys=[lease.key], args=[lease.value, LEASE_MS], client=pipe)
            members = [lease.member for lease in leases if lease.member is not None]
            if members:
                await self._deadlines(keys=[self.replies], args=[LEASE_MS, *members], client=pipe)
            renewed = await pipe.execute()
        self.live.recovered()
        for lease, ok in zip(leases, renewed, strict=False):
            if not ok and self.held.get(lease.key) is lease:
                self._missing.add(lease.key)
        if time.monotonic() - started > LEASE_MS / 2000:
            LOG.warning("renewing leases took long", extra={"count": len(leases)})

    async def _take_back(self) -> None:
        async with self._reasserting:
            leases = [self.held[key] for key in self._missing if key in self.held]
            self._missing.clear()
            async with self.live.client.pipeline(transaction=False) as pipe:
                for lease in leases:
                    await self._reassert(keys=[lease.key], args=[lease.value, LEASE_MS], client=pipe)
                taken = await pipe.execute()
        for lease, ok in zip(leases, taken, strict=False):
            if ok:
                if lease.lost:
                    LOG.info("lease taken back", extra={"key": lease.key})
                lease.lost = False
            elif not lease.lost:
                lease.lost = True
                LOG.warning("lease lost to another holder; going on", extra={"key": lease.key})
