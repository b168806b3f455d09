"""Sign-in throttles and the credential cache: the live state of who is asking.

`Throttle` counts failed sign-ins per key (an account, an address) and says how long the next attempt waits;
`CredentialCache` keeps the user behind a key, a session or a trusted name for a few seconds, and `forget`
makes a change to a user (revoked, disabled, new limits) count at once, and tells the `changed` listeners (which
close the user's open connections). The `Memory…` classes keep both in one process; live/ shares them between
gateway processes on Redis (counters with expiry; a change that reaches every process) behind the same interfaces.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..identity import Actor, Via

# A lookup's answer: the user (None: no one) and until when it may be reused (time.time()).
Lookup = Callable[[], Awaitable[tuple[Actor | None, float]]]


@dataclass(frozen=True, slots=True)
class Ended:
    """Which of a user's open connections a change ends, as data (it travels to the other gateway processes). Each
    field that is set narrows it; none set: all of them."""

    via: Via | None = None  # only connections signed in this way
    session: str | None = None  # only this session's (its id, a digest)
    key: str | None = None  # only this API key's (its id)
    but_session: str | None = None  # every session but this one (the one that changed the password)

    def matches(self, actor: Actor) -> bool:
        return (
            (self.via is None or actor.via == self.via)
            and (self.session is None or actor.session == self.session)
            and (self.key is None or actor.key == self.key)
            and (self.but_session is None or actor.session != self.but_session)
        )


# Told when a user changed, in every process: the user's id and which of their connections ended (None: none
# ended, but all should reconnect as the user is now).
Changed = Callable[[str, Ended | None], None]


class Throttle(Protocol):
    async def wait(self, key: str) -> float:
        """Seconds the next attempt under `key` must wait (0: none)."""

    async def failed(self, key: str) -> None: ...

    async def succeeded(self, key: str) -> None: ...


class MemoryThrottle:
    """After `free` failures within `window` seconds, the next attempt waits 1 s after the last failure, and each
    further failure doubles the wait, up to `cap` seconds. Bounded: the oldest keys go."""

    def __init__(
        self,
        free: int,
        *,
        window: float = 900.0,
        cap: float = 900.0,
        size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.window, self.cap, self.size, self.clock = free, window, cap, size, clock
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (count, last failure)

    async def wait(self, key: str) -> float:
        return self.waiting(key)

    async def failed(self, key: str) -> None:
        self.fail(key)

    async def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)

    # The same, for callers that cannot await (the Redis throttle's fallback).
    def waiting(self, key: str) -> float:
        now = self.clock()
        count, last = self.failures.get(key, (0, 0.0))
        if count < self.free or now - last > self.window:
            return 0.0
        return max(0.0, last + min(self.cap, 2.0 ** (count - self.free)) - now)

    def fail(self, key: str) -> None:
        now = self.clock()
        count, last = self.failures.pop(key, (0, 0.0))
        self.failures[key] = (1 if now - last > self.window else count + 1, now)
        while len(self.failures) > self.size:
            self.failures.popitem(last=False)


class CredentialCache(Protocol):
    changed: list[Changed]

    async def get(self, key: str, lookup: Lookup) -> Actor | None:
        """The user behind `key`, from `lookup` when no answer is kept or it is past its time. A lookup that
        `forget` overtook answers its own request but is not kept."""

    async def forget(self, user_id: str, ended: Ended | None) -> None:
        """The user changed: no answer kept before now is used again, and the `changed` listeners are told, in
        every process that shares this cache, before this returns."""

    async def close(self) -> None: ...


class MemoryCredentialCache:
    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.kept: OrderedDict[str, tuple[float, Actor | None]] = OrderedDict()  # key -> (valid until, user)
        self.changed: list[Changed] = []
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

    async def forget(self, user_id: str, ended: Ended | None) -> None:
        self.drop(user_id, ended)

    def drop(self, user_id: str, ended: Ended | None) -> None:
        """forget() in this process alone, without waiting."""
        self.clear()
        for listener in self.changed:
            listener(user_id, ended)

    def clear(self) -> None:
        # Keys are digests, not user ids: everything goes, which is what a change to any user costs anyway.
        self.kept.clear()
        self._epoch += 1

    async def close(self) -> None:
        pass
