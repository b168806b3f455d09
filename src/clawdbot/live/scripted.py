"""Runs of one Lua script that a process sends in order, in batches, and again and again while Redis is unavailable:
the changes that must reach Redis though nobody waits for them (a slot given back), and those whose answers must
be applied in the order they were sent.

A run's arguments are made when it is sent (again after a failure), so they say what holds then. The queue holds
at most a few runs per thing the process keeps in Redis (a ticket), so it stays bounded; consecutive releases
become one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from ..logs import LOG
from .connection import GONE, Live

Args = list[str | int]
BATCH = 64  # runs sent in one round trip


@dataclass(slots=True, eq=False)
class Run:
    make: Callable[[], Args]  # the arguments, made when sent (`frame` adds what every run of the script takes)
    done: Callable[[Any], None] | None = None  # told the script's answer
    leaving: list[str] | None = None  # a release's ids, more added until it is sent


class Sender:
    def __init__(
        self, live: Live, script: AsyncScript, keys: list[str], frame: Callable[[Args], Args], leave: str = "leave"
    ) -> None:
        self.live, self.script, self.keys, self.frame, self.leave_op = live, script, keys, frame, leave
        self.runs: deque[Run] = deque()
        self._ready = asyncio.Event()
        self._leaving: list[str] | None = None  # the ids of the release not sent yet, to add to

    def push(self, make: Callable[[], Args], done: Callable[[Any], None] | None = None) -> Run:
        run = Run(make, done)
        self.runs.append(run)
        self._ready.set()
        return run

    def leave(self, key: str) -> None:
        """Queue `key` for the script's release operation (`leave`, with the ids as its arguments)."""
        if self._leaving is None:
            ids = self._leaving = []
            self.runs.append(Run(lambda: [self.leave_op, *ids], leaving=ids))
            self._ready.set()
        self._leaving.append(key)

    def leaving(self) -> list[str]:
        """Ids of the releases not sent yet."""
        return list(itertools.chain.from_iterable(run.leaving or () for run in self.runs))

    async def run(self) -> None:
        pause = 0.05
        while True:
            if not self.runs:
                self._ready.clear()
                await self._ready.wait()
                continue
            batch = list(itertools.islice(self.runs, BATCH))
            try:
                pipe = self.live.client.pipeline(transaction=False)
                for run in batch:
                    pipe.evalsha(self.script.sha, len(self.keys), *self.keys, *self.frame(run.make()))
                self._leaving = None  # made: later releases make a run of their own
                replies = await pipe.execute(raise_on_error=False)
            except GONE as error:
                self.live.failed(error)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            pause = 0.05
            for run, reply in zip(batch, replies, strict=True):
                if isinstance(reply, NoScriptError):  # Redis restarted empty: load the script, send the rest again
                    with contextlib.suppress(*GONE):
                        self.script.sha = await self.live.client.script_load(self.script.script)
                    break
                self.runs.popleft()
                if isinstance(reply, Exception):
                    LOG.error("a live-state script failed", extra={"error": type(reply).__name__})
                elif run.done is not None:
                    run.done(reply)
