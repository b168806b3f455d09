"""Passwords: Argon2id hashes (RFC 9106's second recommended profile, argon2-cffi's defaults: 64 MiB, t=3), made
and checked in threads, a few at once, so the event loop keeps relaying while someone signs in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


def hashing_slots() -> int:
    """Password hashes at once. Each runs its 4 lanes in 4 threads outside the GIL and holds 64 MiB for ~100 ms:
    their threads get the cores but one, which the event loop needs to relay every stream. On 2 cores (1 slot), a
    storm of sign-ins adds +4/+14 ms TTFT p50/p99 to 100 streams where 2 slots added +12/+39 ms, for 10% fewer
    sign-ins a second (BENCHMARKS.md §6)."""
    return min(4, max(1, (len(os.sched_getaffinity(0)) - 1) // 4))


class Passwords:
    def __init__(self, slots: int | None = None) -> None:
        self.hasher = PasswordHasher()
        self._slots = asyncio.Semaphore(slots or hashing_slots())
        self._dummy: str | None = None  # checked for unknown names, so they take as long as known ones

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def check(self, stored: str | None, password: str) -> bool:
        """Whether `password` is the one `stored` was made from; None (no such user) spends the same time, so a
        name's existence does not show."""
        async with self._slots:
            if stored is None:
                if self._dummy is None:
                    self._dummy = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(16))
                with contextlib.suppress(VerificationError, InvalidHashError):
                    await asyncio.to_thread(self.hasher.verify, self._dummy, password)
                return False
            try:
                return await asyncio.to_thread(self.hasher.verify, stored, password)
            except (VerificationError, InvalidHashError):
                return False
