"""Per-backend series for /metrics, made from the fleet's members at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from ..metrics import Metrics, counter
from .fleet import Fleet

_STATES = ("healthy", "half_open", "draining", "out")


def families(fleet: Fleet, queued: dict[str, int]) -> Iterator[Metric]:
    members = fleet.members
    state = GaugeMetricFamily(
        "clawdbot_backend_state",
        "1 for each backend's state: healthy, half_open, draining or out.",
        labels=["backend", "state"],
    )
    for m in members:
        for name in _STATES:
            state.add_metric([m.name, name], 1.0 if m.state == name else 0.0)
    yield state
    for name, doc, read in (
        ("clawdbot_backend_slots", "Generations the backend may run at once.", lambda m: m.place.slots),
        ("clawdbot_backend_running", "Generations holding a slot on the backend now.", lambda m: m.place.running),
        (
            "clawdbot_backend_queued",
            "Generations waiting for a slot that this backend could serve (one may count for several).",
            lambda m: queued.get(m.name, 0),
        ),
    ):
        gauge = GaugeMetricFamily(name, doc, labels=["backend"])
        for m in members:
            gauge.add_metric([m.name], float(read(m)))
        yield gauge
    yield counter(
        "clawdbot_backend_requests",
        "Requests sent to the backend: generations (each try) and others.",
        ["backend"],
        {(m.name,): m.requests for m in members},
    )
    yield counter(
        "clawdbot_backend_failures",
        "Backend failures, by cause (BackendError kind).",
        ["backend", "cause"],
        {(m.name, cause): n for m in members for cause, n in m.failed.items()},
    )
    yield counter(
        "clawdbot_backend_tokens",
        "Tokens by backend and kind (prompt, output), from the backend's own counts.",
        ["backend", "kind"],
        {
            key: n
            for m in members
            for key, n in (((m.name, "prompt"), m.prompt_tokens), ((m.name, "output"), m.output_tokens))
        },
    )
    yield counter(
        "clawdbot_backend_affinity",
        "Turns that preferred a backend (the one that served the conversation last), by result: hit or miss.",
        ["backend", "result"],
        {(m.name, result): n for m in members for result, n in m.affinity.items()},
    )
    yield counter(
        "clawdbot_backend_failovers",
        "Generations moved off the backend to another after it failed them.",
        ["backend"],
        {(m.name,): m.failovers for m in members},
    )
    ttft = HistogramMetricFamily(
        "clawdbot_backend_time_to_first_token_seconds",
        "From a slot granted on the backend to its first token.",
        labels=["backend"],
    )
    for m in members:
        ttft.add_metric([m.name], m.ttft.buckets(), m.ttft.total)
    yield ttft


class Counted(Protocol):
    """What admission shows on /metrics, whichever process keeps the queue."""

    @property
    def slots(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def queued(self) -> int: ...

    rejected: dict[str, int]


def register_metrics(admission: Counted, metrics: Metrics) -> None:
    """The admission's gauges and refusal counts on /metrics (MemoryAdmission's and RedisAdmission's alike)."""
    metrics.gauges.update(
        clawdbot_generation_slots=(
            "Generations the backends in rotation may run at once, all together.",
            lambda: admission.slots,
        ),
        clawdbot_generations_running=("Generations holding a backend slot now.", lambda: admission.running),
        clawdbot_generations_queued=("Generations waiting for a backend slot.", lambda: admission.queued),
    )
    metrics.labelled["clawdbot_generations_rejected"] = (
        "Generations refused because the queue was full (429 per user, 503 in all), by reason.",
        "reason",
        lambda: admission.rejected,
    )
