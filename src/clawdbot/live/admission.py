"""Admission shared by every gateway process of a deployment (--redis-url): backends/admission.py's `Admission`, with
each backend's slots, the fair queue, per-user caps and per-minute rates counted once for the whole deployment.

Every ticket is a record in Redis that one Lua script (admission.lua) changes: enter (rate, caps, a slot now, a
place in the queue, or 429/503), leave, reroute, renew. Each run ends by granting free slots to waiting tickets in
fair order (start-time fair: see the script) and telling each ticket's process on a channel of its own, where the
process resolves its local waiter. Routing stays with each ticket's process, which watches the backends for itself:
it sends the ticket's candidate places in its own view (tickets.py), and the script picks among those with a free
slot by routing.choose's rule, against the deployment's counts; `wake` sends them again when the view changes.

A process renews its tickets' leases every RENEW_S; LEASE_S after a process dies the next run anywhere takes its
slots back. Redis unavailable: a new generation gets RedisUnavailable (503), those running go on, their releases
reach Redis once it is back; tickets Redis lost meanwhile (it restarted, or their leases ran out) are registered
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from ..backends.admission import Ticket
from ..backends.routing import Place
from ..errors import RedisUnavailable
from ..logs import LOG
from .connection import GONE, Live
from .scripted import Args, Run, Sender
from .tickets import Mine, candidates, read_queue, record, refusal, retry_after

LEASE_S = 5.0  # a ticket whose process stopped renewing it this long is taken back
RENEW_S = 1.0
CALLS = 32  # script runs awaited at once (the client's connections are bounded)
POSITIONS_S = 0.2  # queue positions are read again at most this often, however often the queue changes
_SCRIPT = resources.files(__package__).joinpath("admission.lua").read_text(encoding="utf-8")
_KEYS = [  # admission.lua's KEYS, in order, under one hash tag: its runs touch them all
    *("tickets", "queue", "leases", "running", "running:user", "waiting:user", "tag:user", "waiting:place"),
    *("meta", "idle", "background", "slots"),
]


class RedisAdmission:
    def __init__(
        self,
        live: Live,
        places: Sequence[Place],
        *,
        max_queue: int,
        max_queue_per_user: int,
        policy: str = "affinity",
    ) -> None:
        self.live = live
        self.places = list(places)
        self.by_name = {p.name: p for p in self.places}
        self.policy = policy
        self.max_queue, self.max_queue_per_user = max_queue, max_queue_per_user
        self.keys = [live.key("admission", name) for name in _KEYS]
        self.channel = live.channel("node:" + live.node, "admission")  # grants for this process's tickets
        self.queue_channel = live.channel("admission", "queue")  # the queue changed
        self.script = live.script(_SCRIPT)
        self.mine: dict[str, Mine] = {}
        self.of: dict[Ticket, Mine] = {}
        self.running = 0  # slots this process's tickets hold
        self.average_s = 10.0  # moving average of a generation's time in a slot, for Retry-After
        self.rejected: dict[str, int] = {"user_queue_full": 0, "queue_full": 0, "rate_limited": 0}
        self.queued_all = 0  # the deployment's queue, as last read
        self.waiting: dict[str, int] = {}  # waiting_for(), the deployment's, as last read
        self.sender = Sender(live, self.script, self.keys, self._framed)  # changes sent in order
        self._renewal: Run | None = None  # the renewal queued, if one is (only one at a time)
        self._recand_queued = False
        self._positions: asyncio.TimerHandle | None = None
        self._reading = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._calls = asyncio.Semaphore(CALLS)  # a burst of requests waits here, not for a connection that fails

    # ---- lifetime ----------------------------------------------------------------------------------------------
    async def open(self) -> None:
        self.live.on(self.channel, self._told)
        self.live.on(self.queue_channel, self._queue_changed)
        self._spawn(self.sender.run())
        self._spawn(self._renew())
        self._renewal = self._queue_renewal()  # now: it tells the script this process's places
        if self.live.up:  # a grant before the subscription would wait for the next renewal to be noticed
            with contextlib.suppress(RedisUnavailable):
                await self.live.listening(self.channel)

    async def close(self) -> None:
        """Give back what this process still holds, in one last try."""
        self.live.off(self.channel, self._told)
        self.live.off(self.queue_channel, self._queue_changed)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        ids = [*self.mine, *self.sender.leaving()]
        if ids:
            with contextlib.suppress(*GONE):  # TimeoutError is an OSError
                await asyncio.wait_for(self._call(["leave", *ids]), 2.0)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- what the gauges and /readyz read ------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return sum(p.slots for p in self.places if p.in_rotation)

    @property
    def queued(self) -> int:
        """This process's tickets waiting (the deployment's sum up across processes, as Prometheus adds them)."""
        return sum(1 for m in self.mine.values() if not m.ticket.running and not m.ticket.background)

    def waiting_for(self) -> dict[str, int]:
        """Generations waiting in the whole deployment that each place could serve, as last read."""
        return self.waiting

    # ---- the interface -------------------------------------------------------------------------------------------
    async def enter(
        self,
        user: str,
        moved: Callable[[int], None] | None = None,
        *,
        max_running: int | None = None,
        per_minute: int | None = None,
        model: str | None = None,
        prefer: str | None = None,
        barred: frozenset[str] = frozenset(),
    ) -> Ticket:
        ticket = Ticket(user, moved, limit=max_running or 0, model=model, prefer=prefer, barred=barred)
        mine = self._track(ticket)  # before the script runs: a grant message may come before its answer
        args: Args = ["enter", mine.id, self._record(mine), self.max_queue, self.max_queue_per_user, per_minute or 0]
        try:
            reply = await self._call(args, self.live.key("admission", "rate", user))
        except GONE as error:
            self._forget(mine, leave=True)  # the script may have run before the answer was lost
            self.live.failed(error)
            raise RedisUnavailable("Redis is unavailable: cannot queue a generation now, try again shortly") from error
        except BaseException:
            self._forget(mine, leave=True)
            raise
        mine.entering = False
        kind = _text(reply[0])
        if kind == "r":
            self._granted(mine, _text(reply[1]), int(reply[2]))
        elif kind == "w":
            if not ticket.running:
                mine.member = _text(reply[1])
            self.queued_all = int(reply[2])
        else:
            self._forget(mine)
            raise self._refusal(kind, int(reply[1]), per_minute or 0)
        return ticket

    def enter_background(self, user: str, model: str | None = None) -> Ticket:
        ticket = Ticket(user, background=True, model=model)
        if not self.live.up:  # work no one waits for need not wait for Redis: it finds itself not running
            ticket.granted.set_result(None)
            return ticket
        mine = self._track(ticket)
        self.sender.push(
            lambda: ["background", mine.id, self._record(mine)], lambda reply: self._apply(mine, _text(reply))
        )
        return ticket

    def watch(self, ticket: Ticket, moved: Callable[[int], None]) -> None:
        ticket.moved = moved
        if not ticket.running:
            ticket.position = 0
            self._positions_soon()

    async def wait(self, ticket: Ticket) -> None:
        if ticket.running:
            return
        try:
            await asyncio.shield(ticket.granted)
        except asyncio.CancelledError:
            self.release(ticket)
            raise

    def release(self, ticket: Ticket, seconds: float | None = None) -> None:
        if ticket.running:
            self._free_here(ticket)
            if seconds is not None and not ticket.background:
                self.average_s += (seconds - self.average_s) * 0.1
        mine = self.of.get(ticket)
        if mine is not None:
            self._forget(mine, leave=True)

    def reroute(self, ticket: Ticket) -> None:
        if ticket.running and ticket.place is not None:
            ticket.avoid |= {ticket.place.name}
            self._free_here(ticket)
        ticket.granted = asyncio.get_running_loop().create_future()
        mine = self.of.get(ticket)
        if mine is None:  # Redis took it back meanwhile: it queues again
            mine = self._track(ticket)
            self._rejoin([mine])
            return
        mine.epoch += 1
        mine.member = None
        places = json.dumps(candidates(self.places, ticket, self.policy))
        self.sender.push(lambda: ["reroute", mine.id, places], lambda reply: self._apply(mine, _text(reply)))

    def wake(self) -> None:
        """The places changed in this process's view: its waiting tickets' candidates are sent again."""
        if not self._recand_queued:
            self._recand_queued = True
            self.sender.push(self._recand_args, lambda _: self._positions_soon())

    # ---- local state ---------------------------------------------------------------------------------------------
    def _track(self, ticket: Ticket) -> Mine:
        mine = Mine(secrets.token_hex(8), ticket)
        self.mine[mine.id] = self.of[ticket] = mine
        return mine

    def _forget(self, mine: Mine, *, leave: bool = False) -> None:
        mine.epoch += 1
        self.mine.pop(mine.id, None)
        self.of.pop(mine.ticket, None)
        if leave:
            self.sender.leave(mine.id)

    def _granted(self, mine: Mine, name: str, grants: int) -> None:
        if grants <= mine.grants or mine.id not in self.mine:
            return
        mine.grants, mine.member = grants, None
        ticket = mine.ticket
        if ticket.running:
            self._free_here(ticket)
        place = self.by_name.get(name)
        ticket.running, ticket.position, ticket.place = True, 0, place
        ticket.affinity = None if ticket.prefer is None else name == ticket.prefer
        if place is not None:
            place.running += 1
        self.running += 1
        if not ticket.granted.done():
            ticket.granted.set_result(None)

    def _free_here(self, ticket: Ticket) -> None:
        ticket.running = False
        self.running -= 1
        if ticket.place is not None:
            ticket.place.running -= 1

    def _taken_back(self, mine: Mine) -> None:
        """Background work's slot, given to a request: its work is told to stop (or finds itself not running)."""
        ticket = mine.ticket
        if ticket.running:
            self._free_here(ticket)
        ticket.preempted = True
        self._forget(mine)
        if not ticket.granted.done():
            ticket.granted.set_result(None)
        if ticket.preempt is not None:
            ticket.preempt()

    def _apply(self, mine: Mine, state: str) -> None:
        """A ticket's state in Redis ("state|place|grants|member", '' when Redis has it no more)."""
        mine.entering = False
        if mine.id not in self.mine:
            return
        if not state:
            self._rejoin([mine])
            return
        kind, place, grants, member = state.split("|", 3)
        if kind == "r":
            self._granted(mine, place, int(grants))
        elif kind == "w" and not mine.ticket.running:
            mine.member = member
            self._positions_soon()

    def _record(self, mine: Mine) -> str:
        return record(mine, self.channel.decode(), self.places, self.policy)

    def _refusal(self, kind: str, value: int, per_minute: int) -> Exception:
        self.rejected[{"rate": "rate_limited", "user_full": "user_queue_full"}.get(kind, "queue_full")] += 1
        if kind != "rate":
            self.queued_all = value
        retry = retry_after(self.queued_all, self.slots, self.average_s)
        return refusal(kind, value, per_minute=per_minute, per_user=self.max_queue_per_user, retry=retry)

    # ---- messages ------------------------------------------------------------------------------------------------
    def _told(self, data: bytes) -> None:
        try:
            told = json.loads(data)
            for ticket_id, place, grants in told.get("g") or ():
                if (mine := self.mine.get(ticket_id)) is not None:
                    self._granted(mine, place, int(grants))
            for ticket_id in told.get("p") or ():
                if (mine := self.mine.get(ticket_id)) is not None:
                    self._taken_back(mine)
        except (ValueError, TypeError, AttributeError):
            LOG.warning("unreadable admission message")

    def _queue_changed(self, data: bytes) -> None:
        self._positions_soon()

    def _positions_soon(self) -> None:
        if self._positions is None:
            self._positions = asyncio.get_running_loop().call_later(POSITIONS_S, self._read_positions)

    def _read_positions(self) -> None:
        self._positions = None
        if self._reading:  # one read at a time; the one running reads again when it ends
            self._positions_soon()
            return
        self._reading = True
        self._spawn(self._positions_now())

    async def _positions_now(self) -> None:
        """The deployment's queue length and waiting per place, and this process's watched tickets' positions."""
        waiting = [m for m in self.mine.values() if m.member and m.ticket.moved and not m.ticket.running]
        try:
            read = await read_queue(self.live, self.keys[1], self.keys[7], [m.member or "" for m in waiting])
        except GONE as error:
            self.live.failed(error)
            return
        finally:
            self._reading = False
        self.queued_all, self.waiting, ranks = read
        for mine, rank in zip(waiting, ranks, strict=True):
            ticket = mine.ticket
            if rank is not None and not ticket.running and ticket.moved is not None and ticket.position != rank + 1:
                ticket.position = rank + 1
                ticket.moved(rank + 1)

    # ---- script runs ----------------------------------------------------------------------------------------------
    async def _call(self, args: Args, rate_key: str | None = None) -> Any:
        keys = [*self.keys, rate_key] if rate_key else self.keys
        async with self._calls:
            return await self.script(keys=keys, args=self._framed(args))

    def _framed(self, args: Args) -> Args:
        return [args[0], self.queue_channel.decode(), int(LEASE_S * 1000), *args[1:]]

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            if self._renewal is None or self._renewal not in self.sender.runs:
                self._renewal = self._queue_renewal()
            if any(m.member for m in self.mine.values()):
                self._positions_soon()  # a queue change this process missed, while it was cut off

    def _queue_renewal(self) -> Run:
        sent: list[tuple[Mine, int]] = []  # the tickets renewed, as they were when the renewal was sent

        def args() -> Args:
            sent[:] = [(m, m.epoch) for m in self.mine.values() if not m.entering]
            slots = json.dumps({p.name: p.slots for p in self.places})
            return ["renew", slots, *(m.id for m, _ in sent)]

        return self.sender.push(args, lambda states: self._renewed(sent, states))

    def _renewed(self, sent: list[tuple[Mine, int]], states: list[bytes]) -> None:
        lost = []
        for (mine, epoch), state in zip(sent, states, strict=True):
            if mine.epoch != epoch:  # changed here since: this answer is about an older state
                continue
            if state:
                self._apply(mine, _text(state))  # a grant whose message was missed
            elif mine.id in self.mine:
                lost.append(mine)
        if lost:
            LOG.warning("admission tickets lost by Redis are registered again", extra={"count": len(lost)})
            self._rejoin(lost)

    def _rejoin(self, lost: list[Mine]) -> None:
        for mine in lost:
            mine.epoch += 1
            mine.entering = True

        def args() -> Args:
            return ["rejoin", *itertools.chain.from_iterable((m.id, self._record(m)) for m in lost)]

        def done(states: list[bytes]) -> None:
            for mine, state in zip(lost, states, strict=True):
                self._apply(mine, _text(state))

        self.sender.push(args, done)

    def _recand_args(self) -> Args:
        self._recand_queued = False
        waiting = [m for m in self.mine.values() if not m.ticket.running]
        pairs = ((m.id, json.dumps(candidates(self.places, m.ticket, self.policy))) for m in waiting)
        return ["recand", *itertools.chain.from_iterable(pairs)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
