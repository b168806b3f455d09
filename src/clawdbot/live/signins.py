"""The sign-in throttles of several gateway processes: failed sign-ins counted once for the whole deployment, so
an attacker gains nothing by spreading guesses over the replicas behind a balancer.

One hash per throttled key (`{signin:<digest>}:<kind>`: a count and the last failure's time in ms), changed only
by Lua scripts that read Redis's own clock, so the count is atomic and the processes' clocks do not matter; it
expires a window after the last failure, which is when MemoryThrottle forgets it too. The name or address is
hashed into the key name: people type passwords into the name field.

Without Redis, sign-in goes on, throttled by this process alone (a MemoryThrottle); what it counted meanwhile
still applies here after Redis is back.
"""

from __future__ import annotations

import hashlib

from ..auth.state import MemoryThrottle
from ..logs import LOG
from .connection import GONE, Live

# KEYS[1]: the hash; ARGV: free failures, the cap in ms. The wait in ms (0: none).
_WAIT = """
local got = redis.call('HMGET', KEYS[1], 'n', 'last')
local n, free = tonumber(got[1]), tonumber(ARGV[1])
if not n or n < free then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = tonumber(got[2]) + math.min(tonumber(ARGV[2]), 1000 * 2 ^ (n - free)) - now
if wait < 0 then return 0 end
return math.ceil(wait)
"""
# KEYS[1]: the hash; ARGV: the window in ms. The new count.
_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'last', now)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
"""


class RedisThrottle:
    """MemoryThrottle's rule (after `free` failures within `window` seconds, a wait of 1 s that doubles with each
    further failure, up to `cap`), counted in Redis. `kind` names the throttle: account, address."""

    def __init__(self, live: Live, kind: str, free: int, *, window: float = 900.0, cap: float = 900.0) -> None:
        self.live, self.kind, self.free = live, kind, free
        self.window_ms, self.cap_ms = int(window * 1000), int(cap * 1000)
        self.local = MemoryThrottle(free, window=window, cap=cap)  # while Redis is unavailable
        self._wait = live.script(_WAIT)
        self._failed = live.script(_FAILED)
        self._alone = False  # counting here only (logged once per outage)

    def _key(self, key: str) -> str:
        hashed = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.live.key("signin:" + hashed, self.kind)

    async def wait(self, key: str) -> float:
        local = self.local.waiting(key)
        if self.live.up:
            try:
                shared: int = await self._wait(keys=[self._key(key)], args=[self.free, self.cap_ms])
            except GONE as error:
                self._unavailable(error)
            else:
                self._alone = False
                return max(local, shared / 1000)
        return local

    async def failed(self, key: str) -> None:
        if self.live.up:
            try:
                await self._failed(keys=[self._key(key)], args=[self.window_ms])
            except GONE as error:
                self._unavailable(error)
            else:
                return
        self._alone_now()
        self.local.fail(key)

    async def succeeded(self, key: str) -> None:
        self.local.failures.pop(key, None)
        if self.live.up:
            try:
                await self.live.client.delete(self._key(key))
            except GONE as error:
                self._unavailable(error)

    def _unavailable(self, error: BaseException) -> None:
        self.live.failed(error)
        self._alone_now()

    def _alone_now(self) -> None:
        if not self._alone:
            self._alone = True
            LOG.warning("redis is unavailable: failed sign-ins are counted by this process alone meanwhile")
