"""Where a generation runs: each backend's slots as a `Place`, and the choice among places with a free slot.

The rule, in order (docs/backends.md explains why):
1. only places that are in rotation, serve the model and have a free slot; a place the request already failed on
   is avoided while another serves the model;
2. conversation affinity: the place that served the conversation's previous turn, while it has a free slot — its
   prompt is in that server's cache. When it has none and another place has one, the turn goes there at once (an
   affinity miss) rather than wait: a slot's wait is a whole reply (seconds), a cache miss one prefill;
3. else a place where the model is already loaded (no load time), then the most free slots relative to the place's
   size, then the order the backends were configured in.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..modelnames import model_key


@dataclass(slots=True, eq=False)
class Place:
    """One backend's slots as admission counts them. `up` is false while the backend is out of rotation; `trial`
    while it is half-open (one generation at a time until one succeeds); `draining` while an admin drains it."""

    name: str
    slots: int
    models: frozenset[str] | None = None  # the models it may serve (model_key), None: any
    listed: frozenset[str] | None = None  # the models it lists, once a health check has read them
    loaded: frozenset[str] = frozenset()  # the models in its memory now
    running: int = 0
    up: bool = True
    trial: bool = False
    draining: bool = False

    @property
    def free(self) -> int:
        if not self.up or self.draining:
            return 0
        return max(0, (1 if self.trial else self.slots) - self.running)

    @property
    def room(self) -> int:
        """Free slots whether in rotation or not: for the last try when no backend is (see `serving`)."""
        return 0 if self.draining else max(0, self.slots - self.running)

    @property
    def in_rotation(self) -> bool:
        return self.up and not self.draining

    def may_serve(self, model: str | None) -> bool:
        """Whether the model is allowed here by configuration."""
        return model is None or self.models is None or model_key(model) in self.models

    def lists(self, model: str | None) -> bool:
        return model is None or (self.listed is not None and model_key(model) in self.listed)


@dataclass(frozen=True, slots=True)
class Choice:
    place: Place
    affinity: bool | None  # True: the preferred place; False: another, though one was preferred; None: no preference


def serving(places: Iterable[Place], model: str | None) -> tuple[list[Place], bool]:
    """The places a request for `model` may go to, and whether they are in rotation. In rotation: those that list
    it, or, when none lists it (a model not pulled yet, a name with a typo), every one that may serve it, so the
    backend answers for itself. When no place that may serve it is in rotation, those out of it (not drained): the
    request is tried there and fails with that backend's own error, or finds it back, rather than wait for ever."""
    allowed = [p for p in places if p.may_serve(model) and not p.draining]
    live = [p for p in allowed if p.up]
    if not live:
        return allowed, False
    listing = [p for p in live if p.lists(model)]
    return listing or live, True


def choose(
    places: Sequence[Place],
    model: str | None,
    prefer: str | None = None,
    avoid: frozenset[str] = frozenset(),
    policy: str = "affinity",
) -> Choice | None:
    """The place a generation takes a slot on now, or None when every place that could serve it is full. `policy`
    least_busy leaves out affinity and loaded models, random picks any free place (Open WebUI's way): both only to
    compare against (--routing)."""
    candidates, live = serving(places, model)
    others = [p for p in candidates if p.name not in avoid]
    free = [p for p in (others or candidates) if (p.free if live else p.room) > 0]
    if not free:
        return None
    if policy == "random":
        picked = random.choice(free)
        return Choice(picked, None if prefer is None else picked.name == prefer)
    if policy == "least_busy":
        best = max(free, key=lambda p: p.room / p.slots)
        return Choice(best, None if prefer is None else best.name == prefer)
    if prefer is not None:
        for place in free:
            if place.name == prefer:
                return Choice(place, True)
    key = model_key(model) if model else None
    best = min(
        enumerate(free),
        key=lambda item: (key is not None and key not in item[1].loaded, -item[1].room / item[1].slots, item[0]),
    )[1]
    return Choice(best, None if prefer is None else False)


@dataclass(slots=True)
class Affinity:
    """Which place served each conversation (or raw-API prefix) last, for its next turn: a bounded LRU map."""

    limit: int = 100_000
    last: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def get(self, key: str | None) -> str | None:
        if key is None:
            return None
        name = self.last.get(key)
        if name is not None:
            self.last.move_to_end(key)
        return name

    def set(self, key: str | None, name: str) -> None:
        if key is None:
            return
        self.last[key] = name
        self.last.move_to_end(key)
        if len(self.last) > self.limit:
            self.last.popitem(last=False)
