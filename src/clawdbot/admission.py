"""Admission control: at most K generations on a backend at once, the rest in a bounded queue fair across users.

The queue is round-robin between users: each user has their own line, and a freed slot goes to the user at the
head of the ring, who then moves to its back. One user with fifty requests waiting holds up another user's one
request by at most one turn, not fifty. A request that would overflow the queue is refused at once, before it
changes anything: 429 when that user alone has too many waiting, 503 when the whole queue is full, each with a
Retry-After estimated from how long generations have been taking.

A user may also have limits of their own (set by an admin): at most `max_running` of their generations hold
slots at once (the rest wait in their line, which is skipped while they are at it), and at most `per_minute`
generations started per minute (beyond it, 429 rate_limited).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from aiohttp import web

from .errors import ClawdbotError


class Overloaded(ClawdbotError):
    """No room in the queue; `retry_after` is the advice in seconds (also sent as the Retry-After header)."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int, status: int = 503, code: str = "overloaded") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status, self.code = status, code


@dataclass(slots=True, eq=False)
class Ticket:
    user: str
    moved: Callable[[int], None] | None = None  # told the ticket's new queue position (1 = next)
    limit: int = 0  # the user's own cap on generations running at once; 0: none
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    position: int = 0
    running: bool = False


class Admission:
    def __init__(self, slots: int, *, max_queue: int, max_queue_per_user: int) -> None:
        self.slots = slots
        self.max_queue, self.max_queue_per_user = max_queue, max_queue_per_user
        self.running = 0
        self.lines: OrderedDict[str, deque[Ticket]] = OrderedDict()  # the ring: the head user is served next
        self.queued = 0
        self.average_s = 10.0  # moving average of a generation's time in a slot, for Retry-After
        self.rejected: dict[str, int] = {"user_queue_full": 0, "queue_full": 0, "rate_limited": 0}
        self.running_by_user: dict[str, int] = {}
        self.started: dict[str, deque[float]] = {}  # users with a rate limit: when their last generations started
        self._renumber: asyncio.Handle | None = None
        self.clock = time.monotonic

    def enter(
        self,
        user: str,
        moved: Callable[[int], None] | None = None,
        *,
        max_running: int | None = None,
        per_minute: int | None = None,
    ) -> Ticket:
        """Take a slot now or a place in the queue; raises Overloaded (changing nothing) when there is no room
        or the user is over their rate."""
        if per_minute is not None:
            self._check_rate(user, per_minute)
        ticket = self._enter(Ticket(user, moved, limit=max_running or 0))
        if per_minute is not None:
            self.started[user].append(self.clock())
        return ticket

    def _enter(self, ticket: Ticket) -> Ticket:
        user = ticket.user
        # Anyone still waiting while a slot is free is at their own cap (every change ends in _admit), so a
        # request that may run takes the slot without queueing behind them or being refused for their sake.
        if self.running < self.slots and self._may_run(ticket):
            self._grant(ticket)
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
        ticket.running = False
        self.running -= 1
        left = self.running_by_user[ticket.user] - 1
        if left:
            self.running_by_user[ticket.user] = left
        else:
            del self.running_by_user[ticket.user]
        if seconds is not None:
            self.average_s += (seconds - self.average_s) * 0.1
        self._admit()

    def retry_after(self) -> int:
        turns = (self.queued + 1) / max(self.slots, 1)
        return max(1, min(600, math.ceil(turns * self.average_s)))

    def _may_run(self, ticket: Ticket) -> bool:
        return not ticket.limit or self.running_by_user.get(ticket.user, 0) < ticket.limit

    def _check_rate(self, user: str, per_minute: int) -> None:
        now = self.clock()
        recent = self.started.setdefault(user, deque())
        while recent and now - recent[0] >= 60.0:
            recent.popleft()
        if len(recent) >= per_minute:
            self.rejected["rate_limited"] += 1
            wait = max(1, math.ceil(60.0 - (now - recent[0])))
            raise Overloaded(
                f"you may start {per_minute} replies a minute; retry in {wait} s",
                retry_after=wait,
                status=429,
                code="rate_limited",
            )

    def _grant(self, ticket: Ticket) -> None:
        self.running += 1
        self.running_by_user[ticket.user] = self.running_by_user.get(ticket.user, 0) + 1
        ticket.running, ticket.position = True, 0
        if not ticket.granted.done():
            ticket.granted.set_result(None)

    def _admit(self) -> None:
        while self.running < self.slots and self.lines:
            # The first user in the ring not at their own limit; O(users), and users are few next to requests.
            user, line = next(((u, line) for u, line in self.lines.items() if self._may_run(line[0])), ("", None))
            if line is None:
                break
            ticket = line.popleft()
            self.queued -= 1
            if line:
                self.lines.move_to_end(user)
            else:
                del self.lines[user]
            self._grant(ticket)
        self._positions_changed()

    def _withdraw(self, ticket: Ticket) -> None:
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


def user_of(request: web.Request, trusted: tuple[str, ...]) -> str:
    """Who a request is for fairness: the peer's address, or behind a trusted proxy the client it names."""
    peer = request.remote or ""
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and trusted_peer(peer, trusted):
        # The last address is the one our trusted proxy saw; earlier ones are whatever the client claimed.
        return forwarded.rsplit(",", 1)[-1].strip() or peer
    return peer


def trusted_peer(peer: str, trusted: tuple[str, ...]) -> bool:
    """Whether the connection comes from one of our reverse proxies (whose forwarded headers are believed)."""
    try:
        address = ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in _networks(trusted))


@functools.cache
def _networks(trusted: tuple[str, ...]) -> tuple[IPv4Network | IPv6Network, ...]:
    """Parsed once per setting, not on every request."""
    return tuple(ip_network(net, strict=False) for net in trusted)
