"""Admission control: at most K generations on each backend at once, the rest in one bounded queue fair across users.

The queue is round-robin between users: each user has their own line, and a freed slot goes to the user at the
head of the ring, who then moves to its back. One user with fifty requests waiting holds up another user's one
request by at most one turn, not fifty. A request that would overflow the queue is refused at once, before it
changes anything: 429 when that user alone has too many waiting, 503 when the whole queue is full, each with a
Retry-After estimated from how long generations have been taking.

A user may also have limits of their own (set by an admin): at most `max_running` of their generations hold
slots at once (the rest wait in their line, which is skipped while they are at it), and at most `per_minute`
generations started per minute (beyond it, 429 rate_limited).

Background work that no one waits for (a title the model writes) comes last: it gets a slot only while one is free
and nothing waits in the queue, and a request that finds every slot taken takes one back from it at once.

The slots are counted per backend (a routing.Place each): a ticket names its model and, for conversation affinity,
the place it would rather have, and is granted a slot on the place routing.choose() picks. A head of line whose
model no free place serves lets the next user's request by, as one at their own cap does.

`Admission` is the interface the chat service and the relay use; `MemoryAdmission` keeps the slots and the queue in
this process, and counts the per-minute limits through `RateLimits` (`MemoryRateLimits` here). A later issue shares
both between gateway replicas behind the same interfaces.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import Overloaded
from .routing import Choice, Place, choose, serving


@dataclass(slots=True, eq=False)
class Ticket:
    user: str
    moved: Callable[[int], None] | None = None  # told the ticket's new queue position (1 = next)
    limit: int = 0  # the user's own cap on generations running at once; 0: none
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    position: int = 0
    running: bool = False
    background: bool = False
    preempt: Callable[[], object] | None = None  # how background work gives its slot back (closes its request)
    preempted: bool = False
    model: str | None = None
    prefer: str | None = None  # the place that served this conversation last (affinity)
    avoid: frozenset[str] = frozenset()  # places this generation failed on: others first, while there are any
    barred: frozenset[str] = frozenset()  # places it may never use (they do not speak its API)
    place: Place | None = None  # where it holds its slot, while running
    affinity: bool | None = None  # whether it got the place it preferred (None: it preferred none)


class Admission(Protocol):
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
        """Take a slot now or a place in the queue; raises Overloaded (changing nothing) when there is no room
        or the user is over their rate. `model` picks the backends that may serve it; `prefer` names the one
        that served the conversation last."""

    def enter_background(self, user: str, model: str | None = None) -> Ticket:
        """A place for background work: a slot now if one is free and no one waits, else a wait until then.
        When a request takes the slot back, the ticket's `preempt` is called."""

    def watch(self, ticket: Ticket, moved: Callable[[int], None]) -> None:
        """Tell `moved` the ticket's position from now on, starting with the current one."""

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket holds a slot. Cancelled (Stop, shutdown) while waiting, it leaves the queue."""

    def release(self, ticket: Ticket, seconds: float | None = None) -> None:
        """Give the slot back (once); `seconds` it was held feeds the Retry-After estimate."""

    def reroute(self, ticket: Ticket) -> None:
        """A generation that failed on its place: give that slot back and take one elsewhere, avoiding the places
        it failed on while another serves the model, now or first in the queue. Wait for it with `wait`."""

    def wake(self) -> None:
        """Places changed (a backend came back, was drained, lists new models): grant what now fits."""

    def waiting_for(self) -> dict[str, int]:
        """Generations waiting that each place could serve (one may count for several): for /readyz, /metrics."""


class RateLimits(Protocol):
    """Generations each user started in the last minute, for their per-minute limit."""

    def wait(self, user: str, per_minute: int) -> float:
        """Seconds until the user may start another generation (0: now)."""

    def started(self, user: str) -> None:
        """Count a generation the user starts now."""


class MemoryRateLimits:
    def __init__(self) -> None:
        self.starts: dict[str, deque[float]] = {}  # users with a rate limit: when their last generations started
        self.clock = time.monotonic

    def wait(self, user: str, per_minute: int) -> float:
        now = self.clock()
        recent = self.starts.setdefault(user, deque())
        while recent and now - recent[0] >= 60.0:
            recent.popleft()
        return 60.0 - (now - recent[0]) if len(recent) >= per_minute else 0.0

    def started(self, user: str) -> None:
        self.starts.setdefault(user, deque()).append(self.clock())


class MemoryAdmission:
    def __init__(
        self,
        places: int | Sequence[Place],
        *,
        max_queue: int,
        max_queue_per_user: int,
        rates: RateLimits | None = None,
        policy: str = "affinity",
    ) -> None:
        self.places = [Place("backend", places)] if isinstance(places, int) else list(places)
        self.policy = policy  # routing.choose's: affinity, or least_busy or random to compare against
        self.max_queue, self.max_queue_per_user = max_queue, max_queue_per_user
        self.running = 0
        self.lines: OrderedDict[str, deque[Ticket]] = OrderedDict()  # the ring: the head user is served next
        self.queued = 0
        self.average_s = 10.0  # moving average of a generation's time in a slot, for Retry-After
        self.rejected: dict[str, int] = {"user_queue_full": 0, "queue_full": 0, "rate_limited": 0}
        self.running_by_user: dict[str, int] = {}
        self.rates = rates if rates is not None else MemoryRateLimits()
        self.idle: deque[Ticket] = deque()  # background work waiting for the backend to be idle
        self.background: set[Ticket] = set()  # background work holding a slot
        self._renumber: asyncio.Handle | None = None

    @property
    def slots(self) -> int:
        """Slots of the places in rotation, all together."""
        return sum(p.slots for p in self.places if p.in_rotation)

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
        if per_minute is not None:
            self._check_rate(user, per_minute)
        ticket = self._enter(Ticket(user, moved, limit=max_running or 0, model=model, prefer=prefer, barred=barred))
        if per_minute is not None:
            self.rates.started(user)
        return ticket

    def enter_background(self, user: str, model: str | None = None) -> Ticket:
        """A place for background work: a slot now if one is free and no one waits, else a wait until then.
        The caller bounds how much it asks for. When a request takes the slot back, `preempt` is called (work
        that had not started yet finds its ticket no longer `running`)."""
        ticket = Ticket(user, background=True, model=model)
        choice = None if self.lines else self._choose(ticket)
        if choice is not None:
            self._grant(ticket, choice)
        else:
            self.idle.append(ticket)
        return ticket

    def _enter(self, ticket: Ticket) -> Ticket:
        user = ticket.user
        # Anyone still waiting while a slot is free is at their own cap or waits for another model (every change
        # ends in _admit), so a request that may run takes the slot without queueing behind them.
        if self._may_run(ticket):
            choice = self._choose(ticket)
            if choice is None and self._take_back_for(ticket):  # every slot taken, one of them by background work
                choice = self._choose(ticket)
            if choice is not None:
                self._grant(ticket, choice)
                return ticket
        line = self.lines.get(user)
        if line is not None and len(line) >= self.max_queue_per_user:
            self.rejected["user_queue_full"] += 1
            raise Overloaded(
                f"you already have {len(line)} replies waiting for the model; retry in {self.retry_after()} s",
                retry_after=self.retry_after(),
                status=429,
                code="too_many_waiting",
            )
        if self.queued >= self.max_queue:
            self.rejected["queue_full"] += 1
            raise Overloaded(
                f"the model is busy and {self.queued} replies are waiting; retry in {self.retry_after()} s",
                retry_after=self.retry_after(),
            )
        if line is None:
            line = self.lines[user] = deque()
        line.append(ticket)
        self.queued += 1
        self._positions_changed()
        return ticket

    def watch(self, ticket: Ticket, moved: Callable[[int], None]) -> None:
        """Tell `moved` the ticket's position from now on, starting with the current one."""
        ticket.moved = moved
        if not ticket.running:
            ticket.position = 0  # not yet told: the next renumbering tells it
            self._positions_changed()

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket holds a slot. Cancelled (Stop, shutdown) while waiting, it leaves the queue."""
        if ticket.running:
            return
        try:
            await asyncio.shield(ticket.granted)
        except asyncio.CancelledError:
            if ticket.running:
                self.release(ticket)
            else:
                self._withdraw(ticket)
            raise

    def release(self, ticket: Ticket, seconds: float | None = None) -> None:
        """Give the slot back (once); `seconds` it was held feeds the Retry-After estimate."""
        if not ticket.running:
            self._withdraw(ticket)
            return
        self._free(ticket)
        if seconds is not None and not ticket.background:
            self.average_s += (seconds - self.average_s) * 0.1
        self._admit()

    def reroute(self, ticket: Ticket) -> None:
        if ticket.running and ticket.place is not None:
            ticket.avoid |= {ticket.place.name}
            self._free(ticket)
        else:
            self._withdraw(ticket)
        ticket.granted = asyncio.get_running_loop().create_future()
        choice = self._choose(ticket)
        if choice is not None:
            self._grant(ticket, choice)
        else:  # it was admitted once already: first in its user's line, its user first in the ring
            line = self.lines.setdefault(ticket.user, deque())
            line.appendleft(ticket)
            self.lines.move_to_end(ticket.user, last=False)
            self.queued += 1
        self._admit()

    def wake(self) -> None:
        self._admit()

    def waiting_for(self) -> dict[str, int]:
        """Generations waiting that each place could serve (one may count for several): for /readyz, /metrics."""
        waiting = (ticket for line in self.lines.values() for ticket in line)
        return dict(Counter(p.name for t in waiting for p in serving(self._open_to(t), t.model)[0]))

    def _choose(self, ticket: Ticket) -> Choice | None:
        return choose(self._open_to(ticket), ticket.model, ticket.prefer, ticket.avoid, self.policy)

    def _open_to(self, ticket: Ticket) -> list[Place]:
        return [p for p in self.places if p.name not in ticket.barred] if ticket.barred else self.places

    def _free(self, ticket: Ticket) -> None:
        ticket.running = False
        self.background.discard(ticket)
        self.running -= 1
        if ticket.place is not None:
            ticket.place.running -= 1
        left = self.running_by_user[ticket.user] - 1
        if left:
            self.running_by_user[ticket.user] = left
        else:
            del self.running_by_user[ticket.user]

    def _take_back_for(self, ticket: Ticket) -> bool:
        """Free a slot background work holds on a place that could serve `ticket`; whether there was one."""
        places, _ = serving(self._open_to(ticket), ticket.model)
        for held in self.background:
            if held.place in places:
                self._take_back(held)
                return True
        return False

    def _take_back(self, ticket: Ticket) -> None:
        """A background ticket's slot, freed for a request: its work is told to stop (it may ask again later)."""
        self._free(ticket)
        ticket.preempted = True
        if ticket.preempt is not None:
            ticket.preempt()

    def retry_after(self) -> int:
        turns = (self.queued + 1) / max(self.slots, 1)
        return max(1, min(600, math.ceil(turns * self.average_s)))

    def _may_run(self, ticket: Ticket) -> bool:
        return not ticket.limit or self.running_by_user.get(ticket.user, 0) < ticket.limit

    def _check_rate(self, user: str, per_minute: int) -> None:
        seconds = self.rates.wait(user, per_minute)
        if seconds > 0:
            self.rejected["rate_limited"] += 1
            wait = max(1, math.ceil(seconds))
            raise Overloaded(
                f"you may start {per_minute} replies a minute; retry in {wait} s",
                retry_after=wait,
                status=429,
                code="rate_limited",
            )

    def _grant(self, ticket: Ticket, choice: Choice) -> None:
        self.running += 1
        choice.place.running += 1
        self.running_by_user[ticket.user] = self.running_by_user.get(ticket.user, 0) + 1
        ticket.running, ticket.position = True, 0
        ticket.place, ticket.affinity = choice.place, choice.affinity
        if ticket.background:
            self.background.add(ticket)
        if not ticket.granted.done():
            ticket.granted.set_result(None)

    def _admit(self) -> None:
        while self.lines and any(p.room for p in self.places):
            found = self._next_in_ring()
            if found is None:
                break
            user, line, choice = found
            ticket = line.popleft()
            self.queued -= 1
            if line:
                self.lines.move_to_end(user)
            else:
                del self.lines[user]
            self._grant(ticket, choice)
        while not self.lines and self.idle:
            spare = self._choose(self.idle[0])
            if spare is None:
                break
            self._grant(self.idle.popleft(), spare)
        self._positions_changed()

    def _next_in_ring(self) -> tuple[str, deque[Ticket], Choice] | None:
        """The first user in the ring whose next request may run and fits a free place; O(users), and users are
        few next to requests."""
        for user, line in self.lines.items():
            if self._may_run(line[0]):
                choice = self._choose(line[0])
                if choice is not None:
                    return user, line, choice
        return None

    def _withdraw(self, ticket: Ticket) -> None:
        if ticket.background:
            if ticket in self.idle:
                self.idle.remove(ticket)
            return
        line = self.lines.get(ticket.user)
        if line is None or ticket not in line:
            return
        line.remove(ticket)
        self.queued -= 1
        if not line:
            del self.lines[ticket.user]
        self._positions_changed()

    def _positions_changed(self) -> None:
        # Renumbered once per loop turn however many tickets moved: with many waiting, each change is O(queue).
        if self._renumber is None and self.lines:
            self._renumber = asyncio.get_running_loop().call_soon(self._tell_positions)

    def order(self) -> list[Ticket]:
        """Waiting tickets in the order they will be served: round by round, in ring order."""
        lines = [list(line) for line in self.lines.values()]
        served: list[Ticket] = []
        depth = 0
        while lines:
            served.extend(line[depth] for line in lines)
            depth += 1
            lines = [line for line in lines if len(line) > depth]
        return served

    def _tell_positions(self) -> None:
        self._renumber = None
        for position, ticket in enumerate(self.order(), 1):
            if ticket.position != position:
                ticket.position = position
                if ticket.moved is not None:
                    ticket.moved(position)
