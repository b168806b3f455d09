"""The fleet: every model server the gateway fronts, each a `Member` with its slots (a routing.Place), its health
and its counters.

Health is a circuit breaker per backend. Passive signals (a refused connection, a 5xx, a timeout, a stream cut
short) and failed health checks count failures in a row: a refused connection takes the backend out of rotation at
once (nothing listens), any other failure after `TRIP_AFTER` in a row. While out it is probed every
`_OUT_PROBE_S`; a probe that passes makes it half-open, where it runs one generation at a time, and the first
success puts it back in rotation (a failure takes it out again); when no generation comes to try it, TRIAL_PROBES
more passing probes do. An admin may drain a backend: no new work goes to
it, what runs there finishes. A 4xx is the request's fault, not the backend's, and counts for nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError
from ..logs import LOG
from ..metrics import LATENCY_BUCKETS, Histogram
from ..modelnames import model_key
from .base import Backend, BackendStatus
from .routing import Affinity, Place

TRIP_AFTER = 3  # failures in a row that take a backend out of rotation
_AT_ONCE = frozenset({"connect_refused"})  # nothing listens: out at the first one
_OUT_PROBE_S = 1.0  # how often a backend out of rotation (or half-open) is probed
TRIAL_PROBES = 3  # passing probes that close a half-open backend no generation came to try


@dataclass(slots=True, eq=False)
class Member:
    name: str
    kind: str  # "ollama" or "openai"
    backend: Backend
    place: Place
    configured_slots: int
    failures: int = 0  # in a row
    trial_probes: int = 0  # probes passed while half-open
    last_error: str | None = None
    out_since: float | None = None
    requests: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by cause (BackendError.kind)
    ttft: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    prompt_tokens: int = 0
    output_tokens: int = 0
    affinity: Counter[str] = field(default_factory=Counter)  # hit, miss
    failovers: int = 0  # generations that left this backend for another after it failed them
    known: list[dict[str, Any]] = field(default_factory=list)  # the models it listed when it last answered

    @property
    def state(self) -> str:
        place = self.place
        if not place.up:
            return "out"
        if place.trial:
            return "half_open"
        return "draining" if place.draining else "healthy"

    @property
    def url(self) -> str:
        return self.backend.url


class Fleet:
    def __init__(self, members: list[Member], health_interval: float, *, simulated: bool = False) -> None:
        if not members:
            raise ValueError("a fleet needs at least one backend")
        self.members = members
        self.by_name = {m.name: m for m in members}
        self.health_interval = health_interval
        self.simulated = simulated
        self.affinity = Affinity()
        self.wake: Callable[[], None] = lambda: None  # admission's: places changed, grant what now fits
        self.on_change: Callable[[Member], None] = lambda member: None

    @classmethod
    def of(cls, backend: Backend, slots: int = 1, *, name: str = "backend", kind: str = "ollama") -> Fleet:
        """A fleet of one backend."""
        member = Member(name, kind, backend, Place(name, slots), slots)
        return cls([member], health_interval=10.0, simulated=backend.simulated)

    @property
    def places(self) -> list[Place]:
        return [m.place for m in self.members]

    @property
    def primary(self) -> Member:
        return self.members[0]

    def member(self, place: Place | None) -> Member:
        return self.by_name[place.name] if place is not None else self.primary

    def placed(self, key: str | None, place: Place | None, prefer: str | None, affinity: bool | None) -> Member:
        """A generation got its slot: remember where for its conversation's next turn (`key`), and count whether
        it got the backend it preferred."""
        member = self.member(place)
        if affinity is not None:
            preferred = self.by_name.get(prefer or "", member)
            preferred.affinity["hit" if affinity else "miss"] += 1
        self.affinity.set(key, member.name)
        return member

    # ---- what the page, /readyz and the model lists read -------------------------------------------------------
    @property
    def status(self) -> BackendStatus:
        """All backends as one: reachable while one is in rotation, every model once, whichever serves it."""
        merged = BackendStatus(reachable=False, error=None)
        seen: set[str] = set()
        errors = []
        for member in self.members:
            status = member.backend.status
            if member.place.in_rotation and status.reachable:
                merged.reachable = True
                merged.version = merged.version or status.version
            elif member.last_error or status.error:
                errors.append(f"{member.name}: {member.last_error or status.error}")
            merged.checked_at = max(merged.checked_at, status.checked_at)
            if not status.reachable:
                continue
            for model in status.models:
                key = model_key(str(model.get("name")))
                if member.place.may_serve(key) and key not in seen:
                    seen.add(key)
                    merged.models.append(model)
            for key, size in status.loaded.items():
                merged.loaded.setdefault(key, size)
        merged.own = self.own()
        if not merged.reachable:
            merged.error = "; ".join(errors) or "not checked yet"
        return merged

    def own(self) -> dict[str, dict[str, int]]:
        """Each model's own num_ctx and num_predict (its Modelfile's), the first backend's that has it. Read for
        every raw request's defaults: a lone backend's map is handed over as it is, not rebuilt."""
        if len(self.members) == 1:
            return self.primary.backend.status.own
        merged: dict[str, dict[str, int]] = {}
        for member in self.members:
            for key, own in member.backend.status.own.items():
                merged.setdefault(key, own)
        return merged

    def where(self, model: str) -> list[str]:
        """The backends in rotation that list the model and may serve it."""
        return [
            m.name for m in self.members if m.place.in_rotation and m.place.may_serve(model) and m.place.lists(model)
        ]

    def catalog(self) -> list[tuple[dict[str, Any], list[str]]]:
        """Every model any backend lists or listed when it last answered, once, with the backends in rotation that
        serve it now (none: unavailable, still shown)."""
        found: dict[str, dict[str, Any]] = {}
        for member in self.members:
            for model in member.known:
                key = model_key(str(model.get("name")))
                if member.place.may_serve(key):
                    found.setdefault(key, model)
        return [(model, self.where(key)) for key, model in found.items()]

    def how_to_fix(self) -> str:
        down = [m for m in self.members if not m.place.up] or self.members
        return "; ".join(f"{m.name}: {m.backend.how_to_fix()}" for m in down)

    @property
    def url(self) -> str:
        return ", ".join(m.url for m in self.members)

    # ---- health ----------------------------------------------------------------------------------------------
    def succeeded(self, member: Member, model: str | None = None) -> None:
        """A generation ended well: the backend is healthy, and has the model in memory now."""
        member.failures = 0
        if model is not None and (key := model_key(model)) not in member.place.loaded:
            member.place.loaded |= {key}
        if member.place.trial:
            member.place.trial = False
            LOG.info("backend is back in rotation", extra={"backend": member.name})
            self._changed(member)

    def failed(self, member: Member, error: BackendError) -> None:
        member.failed[error.kind] += 1
        if error.kind.startswith("http_4") or error.kind in ("time_limit", "repeat_limit", "error_line"):
            return  # the request's or the model's doing, not the server's health
        member.failures += 1
        member.last_error = error.message
        if member.place.up and (member.place.trial or error.kind in _AT_ONCE or member.failures >= TRIP_AFTER):
            self._take_out(member, error.kind)

    def _take_out(self, member: Member, reason: str) -> None:
        member.place.up, member.place.trial = False, False
        member.out_since = time.monotonic()
        LOG.warning(
            "backend out of rotation", extra={"backend": member.name, "kind": reason, "failures": member.failures}
        )
        self._changed(member)

    def drain(self, name: str, draining: bool) -> Member:
        member = self.by_name[name]
        if member.place.draining != draining:
            member.place.draining = draining
            LOG.info("backend drained" if draining else "backend undrained", extra={"backend": name})
            self._changed(member)
        return member

    def _changed(self, member: Member) -> None:
        self.wake()
        self.on_change(member)

    def learned(self, member: Member) -> None:
        """Copy what a health check found into the member's place: models listed and loaded, reported slots."""
        status, place = member.backend.status, member.place
        if status.reachable:
            member.known = status.models
            place.listed = frozenset(model_key(name) for name in status.model_names())
            place.loaded = frozenset(model_key(name) for name in status.loaded)
            reported = member.backend.reported_slots
            place.slots = reported if reported else member.configured_slots

    async def check(self, member: Member) -> None:
        status = await member.backend.probe()
        self.learned(member)
        place = member.place
        if status.reachable:
            if not place.up:  # half-open: one generation at a time until one succeeds
                place.up, place.trial = True, True
                member.failures, member.trial_probes = 0, 0
                LOG.info("backend answers its health check again; trying it", extra={"backend": member.name})
                self._changed(member)
            elif place.trial and place.running == 0:  # an idle fleet sends it nothing to try: probes decide
                member.trial_probes += 1
                if member.trial_probes >= TRIAL_PROBES:
                    self.succeeded(member)
            else:
                self.wake()  # it may list a model it did not before
        elif place.up:
            member.failures += 1
            member.last_error = status.error
            if place.trial or member.failures >= TRIP_AFTER or "refused" in (status.error or ""):
                self._take_out(member, "health_check")

    async def watch(self) -> None:
        """Probe every backend: every --health-interval while in rotation, every second while out or half-open."""
        await asyncio.gather(*(self._watch(m) for m in self.members))

    async def _watch(self, member: Member) -> None:
        while True:
            steady = member.place.up and not member.place.trial
            await asyncio.sleep(self.health_interval if steady else _OUT_PROBE_S)
            await self.check(member)

    async def close(self) -> None:
        await asyncio.gather(*(m.backend.close() for m in self.members), return_exceptions=True)

    # ---- /readyz -------------------------------------------------------------------------------------------
    def report(self, queued: dict[str, int]) -> list[dict[str, Any]]:
        """Each backend for /readyz; `queued`: generations waiting that each could serve."""
        return [
            {
                "name": m.name,
                "kind": m.kind,
                "url": m.url,
                "state": m.state,
                "reachable": m.backend.status.reachable,
                "slots": m.place.slots,
                "slots_from": "server" if m.backend.reported_slots else "settings",
                "running": m.place.running,
                "queued": queued.get(m.name, 0),
                "models": m.backend.status.model_names(),
                "loaded": sorted(m.backend.status.loaded),
                "version": m.backend.status.version,
                "last_error": m.last_error or m.backend.status.error,
                "checked_at": m.backend.status.checked_at,
            }
            for m in self.members
        ]
