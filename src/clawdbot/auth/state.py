"""Sign-in throttles and the credential cache: the live state of who is asking.

`Throttle` counts failed sign-ins per key (an account, an address) and says how long the next attempt waits;
`CredentialCache` keeps the user behind a key, a session or a trusted name for a few seconds, and `forget`
makes a change to a user (revoked, disabled, new limits) count at once. The `Memory…` classes keep both in one
process; a later issue shares them between gateway replicas (counters with expiry; an invalidation that reaches
every replica's cache) behind the same interfaces.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..identity import Actor

# A lookup's answer: the user (None: no one) and until when it may be reused (time.time()).
Lookup = Callable[[], Awaitable[tuple[Actor | None, float]]]


class Throttle(Protocol):
    def wait(self, key: str, now: float) -> float:
        """Seconds the next attempt under `key` must wait (0: none)."""

    def failed(self, key: str, now: float) -> None: ...

    def succeeded(self, key: str) -> None: ...


class MemoryThrottle:
    """After `free` failures within `window` seconds, the next attempt waits 1 s after the last failure, and each
    further failure doubles the wait, up to `cap` seconds. Bounded: the oldest keys go."""

    def __init__(self, free: int, *, window: float = 900.0, cap: float = 900.0, size: int = 100_000) -> None:
        self.free, self.window, self.cap, self.size = free, window, cap, size
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (count, last failure)

    def wait(self, key: str, now: float) -> float:
        count, last = self.failures.get(key, (0, 0.0))
        if count < self.free or now - last > self.window:
            return 0.0
        return max(0.0, last + min(self.cap, 2.0 ** (count - self.free)) - now)

    def failed(self, key: str, now: float) -> None:
        count, last = self.failures.pop(key, (0, 0.0))
        self.failures[key] = (1 if now - last > self.window else count + 1, now)
        while len(self.failures) > self.size:
            self.failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)


class CredentialCache(Protocol):
    async def get(self, key: str, lookup: Lookup) -> Actor | None:
        """The user behind `key`, from `lookup` when no answer is kept or it is past its time. A lookup that
        `forget` overtook answers its own request but is not kept."""

    def forget(self, user_id: str) -> None:
        """The user changed: no answer kept before now is used again."""


class MemoryCredentialCache:
    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.kept: OrderedDict[str, tuple[float, Actor | None]] = OrderedDict()  # key -> (valid until, user)
        self._epoch = 0  # bumped by forget(): a lookup that started before it is not kept

    async def get(self, key: str, lookup: Lookup) -> Actor | None:
        hit = self.kept.get(key)
        if hit is not None and time.time() < hit[0]:
            return hit[1]
        epoch = self._epoch
        found, until = await lookup()
        if epoch == self._epoch:
            self._remember(key, until, found)
        return found

    def _remember(self, key: str, until: float, found: Actor | None) -> None:
        self.kept[key] = (until, found)
        self.kept.move_to_end(key)
        while len(self.kept) > self.size:
            self.kept.popitem(last=False)

    def forget(self, user_id: str) -> None:
        # Keys are digests, not user ids: everything goes, which is what a change to any user costs anyway.
        self.kept.clear()
        self._epoch += 1
