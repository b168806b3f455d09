"""What a process tells the shared admission script (admission.lua) about one of its tickets (its record and its
candidate places, in this process's view of the backends), how it words the script's refusals, and what it reads
back of the queue."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.admission import Ticket
from ..backends.routing import Place, serving
from ..errors import Overloaded
from ..modelnames import model_key
from .connection import Live


@dataclass(slots=True, eq=False)
class Mine:
    """A ticket of this process, and what the process knows of its record in Redis."""

    id: str
    ticket: Ticket
    member: str | None = None  # its place in the queue, while it waits
    grants: int = 0  # grants applied: a message about an older one is stale
    epoch: int = 0  # bumped by each change made here, so that a renewal's answer about an older state is ignored
    entering: bool = True  # its first script run has not answered yet: nothing to renew


def candidates(places: Sequence[Place], ticket: Ticket, policy: str) -> list[list[str | int]]:
    """The places routing.choose would pick among for the ticket, with what it weighs: [name, free slots it may
    have (1 while half-open), slots, 1 if preferred, 1 if the model is loaded there]; the script picks among those
    with a free slot by choose's rule, against the whole deployment's counts."""
    open_to = [p for p in places if p.name not in ticket.barred]
    serve, live = serving(open_to, ticket.model)
    others = [p for p in serve if p.name not in ticket.avoid]
    key = model_key(ticket.model) if ticket.model else None
    found: list[list[str | int]] = [
        [
            p.name,
            (1 if p.trial else p.slots) if live else p.slots,
            p.slots,
            int(p.name == ticket.prefer),
            int(key is None or key in p.loaded),
        ]
        for p in others or serve
    ]
    if policy == "random":
        random.shuffle(found)  # the script takes the first with a free slot
    return found


def record(mine: Mine, channel: str, places: Sequence[Place], policy: str) -> str:
    """The ticket as the script keeps it (admission.lua's header names the fields)."""
    ticket = mine.ticket
    found: dict[str, Any] = {
        "u": ticket.user,
        "n": channel,
        "l": ticket.limit,
        "o": policy,
        "b": int(ticket.background),
        "c": candidates(places, ticket, policy),
        "g": mine.grants,
    }
    if ticket.running and ticket.place is not None:
        found.update(s="r", p=ticket.place.name)
    elif ticket.background:
        found["s"] = "i"
    return json.dumps(found)


def retry_after(queued: int, slots: int, average_s: float) -> int:
    turns = (queued + 1) / max(slots, 1)
    return max(1, min(600, math.ceil(turns * average_s)))


def refusal(kind: str, value: int, *, per_minute: int, per_user: int, retry: int) -> Overloaded:
    """The script's refusal as the user reads it: `rate` (value: ms until the user may start another), `user_full`
    or `full` (value: generations waiting in the deployment)."""
    if kind == "rate":
        wait = max(1, math.ceil(value / 1000))
        return Overloaded(
            f"you may start {per_minute} replies a minute; retry in {wait} s",
            retry_after=wait,
            status=429,
            code="rate_limited",
        )
    if kind == "user_full":
        return Overloaded(
            f"you already have {per_user} replies waiting for the model; retry in {retry} s",
            retry_after=retry,
            status=429,
            code="too_many_waiting",
        )
    return Overloaded(f"the model is busy and {value} replies are waiting; retry in {retry} s", retry_after=retry)


async def read_queue(
    live: Live, queue: str, by_place: str, members: list[str]
) -> tuple[int, dict[str, int], list[Any]]:
    """In one round trip: the queue's length, generations waiting per place, and each member's rank (None: gone)."""
    pipe = live.client.pipeline(transaction=False)
    pipe.zcard(queue)
    pipe.hgetall(by_place)
    for member in members:
        pipe.zrank(queue, member)
    replies = await pipe.execute()
    waiting = {name.decode(): int(count) for name, count in replies[1].items()}
    return int(replies[0]), waiting, replies[2:]
