"""Drive one load level: closed-loop virtual users or open-loop arrivals, in this process or in several.

As docs/load-testing.md §3–4 describe: uvloop, one session with no connection cap, gc frozen after setup,
an event-loop-lag probe that tells when the client itself is the bottleneck, and worker processes whose
records are merged afterwards (perf_counter is CLOCK_MONOTONIC, shared by all processes on Linux).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import multiprocessing
import random
import resource
import time
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

import aiohttp

from .chat import ChatUser
from .client import HttpUser, Record, RequestShape, User
from .workload import Conversation

STARTED, FINISHED, FAILED, IN_FLIGHT = range(4)
_COUNTERS = 4


@dataclass(frozen=True, slots=True)
class Plan:
    """One worker's share of one level."""

    mode: str  # "users" | "rate"
    amount: float  # users, or conversations per second, for this worker
    requests: int | None
    duration: float | None
    conversations: int | None  # closed loop: conversations each user holds before leaving (None: no limit)
    turns: int
    think_time: float
    ramp_up: float
    seed: int
    worker: int
    shape: RequestShape
    openings: tuple[str, ...]
    system: str | None


@dataclass(slots=True)
class WorkerResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)  # seconds late, one sample per 10 ms
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class Counters:
    """started / finished / failed / in flight, in a shared array slice so the parent can draw progress."""

    def __init__(self, array: MutableSequence[float], worker: int) -> None:
        self.array = array
        self.base = worker * _COUNTERS

    def add(self, index: int, delta: float = 1) -> None:
        self.array[self.base + index] += delta


class _Tickets:
    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def run_plan(plan: Plan, counters: Counters) -> WorkerResult:
    _raise_open_files_limit()
    result = WorkerResult()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=plan.shape.idle_timeout)
    lag_task = asyncio.create_task(_probe_lag(result.loop_lag))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    headers = plan.shape.session_headers()  # the API key: on every request, the WebSocket's handshake included
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, headers=headers
    ) as session:
        gc.collect()
        gc.freeze()  # setup garbage stays out of the collector's way during the run
        level = _Level(plan, session, counters, result)
        await (level.users() if plan.mode == "users" else level.arrivals())
    lag_task.cancel()
    result.cpu_seconds = time.process_time() - cpu0
    result.wall_seconds = time.perf_counter() - wall0
    return result


class _Level:
    def __init__(self, plan: Plan, session: aiohttp.ClientSession, counters: Counters, result: WorkerResult) -> None:
        self.plan = plan
        self.session = session
        self.counters = counters
        self.result = result
        self.tickets = _Tickets(plan.requests)
        self.began = time.perf_counter()

    def _time_left(self) -> bool:
        duration = self.plan.duration
        return duration is None or time.perf_counter() - self.began < duration

    async def users(self) -> None:
        count = int(self.plan.amount)
        await asyncio.gather(*(self._user(uid, uid * self.plan.ramp_up / max(count, 1)) for uid in range(count)))

    async def _user(self, uid: int, delay: float) -> None:
        await asyncio.sleep(delay)
        rng = random.Random(f"{self.plan.seed}:{self.plan.worker}:{uid}")
        user = open_user(self.plan.shape, self.session)
        try:
            for _ in itertools.count() if self.plan.conversations is None else range(self.plan.conversations):
                if not await self._conversation(uid, user, rng):
                    return
        finally:
            await user.close()

    async def _conversation(self, uid: int, user: User, rng: random.Random) -> bool:
        """One conversation of a closed-loop user; False when the level's budget or time has run out."""
        conversation = Conversation(rng, list(self.plan.openings), self.plan.system)
        for turn in range(self.plan.turns):
            if not self._time_left() or not self.tickets.take():
                return False
            record = await self._request(uid, turn, user, conversation, time.perf_counter())
            if record.failure:
                await asyncio.sleep(0.1)  # a dead server must not become a hot loop
                return True
            if self.plan.think_time:
                await asyncio.sleep(self.plan.think_time * rng.uniform(0.5, 1.5))
        return True

    async def arrivals(self) -> None:
        """Poisson arrivals from a precomputed schedule; each arrival is a conversation of --turns turns."""
        rng = random.Random(f"{self.plan.seed}:{self.plan.worker}:arrivals")
        loop = asyncio.get_running_loop()
        sessions: list[asyncio.Task[None]] = []
        due = time.perf_counter()
        uid = 0
        while True:
            due += rng.expovariate(self.plan.amount)
            if self.plan.duration is not None and due - self.began >= self.plan.duration:
                break
            if not self.tickets.take():
                break
            await _sleep_until(due)
            sessions.append(loop.create_task(self._session(uid, due, rng.random())))
            uid += 1
        await asyncio.gather(*sessions)

    async def _session(self, uid: int, due: float, seed: float) -> None:
        rng = random.Random(seed)
        conversation = Conversation(rng, list(self.plan.openings), self.plan.system)
        user = open_user(self.plan.shape, self.session)
        scheduled = due
        try:
            for turn in range(self.plan.turns):
                if turn and not self.tickets.take():
                    return
                record = await self._request(uid, turn, user, conversation, scheduled)
                if record.failure:
                    return
                pause = self.plan.think_time * rng.uniform(0.5, 1.5) if self.plan.think_time else 0.0
                scheduled = time.perf_counter() + pause
                await asyncio.sleep(pause)
        finally:
            await user.close()

    async def _request(self, uid: int, turn: int, user: User, conversation: Conversation, scheduled: float) -> Record:
        counters = self.counters
        counters.add(STARTED)
        counters.add(IN_FLIGHT)
        record = Record(uid, turn, scheduled)
        try:
            await user.turn(conversation, record)
        finally:
            counters.add(IN_FLIGHT, -1)
        counters.add(FAILED if record.failure else FINISHED)
        if not record.failure:
            conversation.answered(record.reply)
        row = record.as_row()
        row["worker"] = self.plan.worker
        self.result.records.append(row)
        return record


def open_user(shape: RequestShape, session: aiohttp.ClientSession) -> User:
    return ChatUser(session, shape) if shape.target == "chat" else HttpUser(session, shape)


async def _sleep_until(due: float) -> None:
    """asyncio.sleep may wake up to a millisecond early under uvloop; an arrival must never start early."""
    while (delay := due - time.perf_counter()) > 0:  # noqa: ASYNC110 - a deadline, not a condition to wait for
        await asyncio.sleep(delay)


async def _probe_lag(samples: list[float]) -> None:
    interval = 0.01
    while True:
        before = time.perf_counter()
        await asyncio.sleep(interval)
        samples.append(max(0.0, time.perf_counter() - before - interval))


def _raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _worker_main(plan: Plan, array: Any, queue: Any) -> None:
    import uvloop

    result = uvloop.run(run_plan(plan, Counters(array, plan.worker)))
    queue.put(result)


def run_in_processes(plans: list[Plan], on_tick: Any) -> list[WorkerResult]:
    """Run one plan per process; `on_tick(counters)` is called about 4× a second with the summed counters."""
    context = multiprocessing.get_context("spawn")
    array = context.Array("d", _COUNTERS * len(plans), lock=False)
    queue = context.Queue()
    processes = [context.Process(target=_worker_main, args=(plan, array, queue), daemon=True) for plan in plans]
    for process in processes:
        process.start()
    results: list[WorkerResult] = []
    while len(results) < len(plans):
        on_tick(sum_counters(array, len(plans)))
        try:
            results.append(queue.get(timeout=0.25))
        except Empty:
            if not any(p.is_alive() for p in processes) and queue.empty():
                raise RuntimeError("a bench worker process died; see its error above") from None
    for process in processes:
        process.join()
    on_tick(sum_counters(array, len(plans)))
    return results


def sum_counters(array: MutableSequence[float], workers: int) -> list[float]:
    return [sum(array[w * _COUNTERS + i] for w in range(workers)) for i in range(_COUNTERS)]
