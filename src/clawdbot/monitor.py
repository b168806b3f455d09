"""The live operations view's figures (docs/monitoring.md), kept in this process's memory.

Every finished reply and raw generation of the last hour is kept as one small record (`Finished`), from which the
seed's table is computed for the last 1, 5, 15 and 60 minutes when someone looks: how many, how many failed and
why, time to first token (mean, p50, p99), full-reply time (mean, p99), tokens per second; chat and raw apart and
together. Every second a `Sample` of the gateway's state (connections, replies running and waiting, tokens so far,
its CPU and memory) goes into a ring of the last hours: the peak and mean connections of each window, and the
history charts. Nothing here is on the streaming path but a counter: the work is done by whoever reads.
"""

from __future__ import annotations

import math
import os
import resource
import time
from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

WINDOWS = {"1m": 60, "5m": 300, "15m": 900, "60m": 3600}
SOURCES = ("chat", "raw")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(slots=True)
class Finished:
    at: float  # time.time() when it ended
    source: str  # chat | raw
    ttft: float | None  # seconds; None: no first token
    duration: float
    failed: bool
    cause: str | None  # why it failed (BackendError.kind)
    tokens: int


@dataclass(slots=True)
class Sample:
    at: float
    connections: int  # WebSocket, event streams and raw requests open
    running: int  # generations holding a slot
    waiting: int  # generations in the queue
    tokens: int  # output tokens so far (this process)
    cpu: float  # this process's CPU seconds so far
    rss: int  # bytes


class Monitor:
    def __init__(self, *, history_s: float = 6 * 3600, max_finished: int = 200_000) -> None:
        self.finished: deque[Finished] = deque(maxlen=max_finished)
        self.samples: deque[Sample] = deque(maxlen=int(history_s))
        self.tokens = 0

    def ended(
        self, source: str, *, ttft: float | None, duration: float, failed: bool, cause: str | None, tokens: int
    ) -> None:
        self.finished.append(Finished(time.time(), source, ttft, duration, failed, cause, tokens))
        self.tokens += tokens

    def sample(self, *, connections: int, running: int, waiting: int) -> Sample:
        """Take this second's sample (a task calls it once a second)."""
        taken = Sample(time.time(), connections, running, waiting, self.tokens, time.process_time(), _rss())
        self.samples.append(taken)
        return taken

    def now(self) -> dict[str, Any]:
        """The latest sample, with the CPU and token rates over the last five seconds."""
        if not self.samples:
            empty = Sample(time.time(), 0, 0, 0, self.tokens, time.process_time(), _rss())
            return _point(empty, empty, with_time=False)
        return _point(self.samples[max(0, len(self.samples) - 6)], self.samples[-1], with_time=False)


def combined(series: list[list[Sample]]) -> list[Sample]:
    """Several processes' samples (--workers) as the instance's: on the seconds of the one that has run longest,
    each field summed with every other's latest sample at or before it. Tokens and CPU are each process's running
    totals, so theirs always count (their sums stay running totals; one that died stops adding); connections,
    running, waiting and memory count only from a sample of the two seconds before (the process ran then)."""
    series = [s for s in series if s]
    if len(series) < 2:
        return series[0] if series else []
    base = min(series, key=lambda s: s[0].at)
    others = [(other, [x.at for x in other]) for other in series if other is not base]
    out = []
    for sample in base:
        connections, running, waiting, rss = sample.connections, sample.running, sample.waiting, sample.rss
        tokens, cpu = sample.tokens, sample.cpu
        for other, times in others:
            found = bisect_right(times, sample.at) - 1
            if found < 0:
                continue
            x = other[found]
            tokens, cpu = tokens + x.tokens, cpu + x.cpu
            if x.at >= sample.at - 2:
                connections, running, waiting, rss = (
                    connections + x.connections,
                    running + x.running,
                    waiting + x.waiting,
                    rss + x.rss,
                )
        out.append(Sample(sample.at, connections, running, waiting, tokens, cpu, rss))
    return out


def windows(finished: list[Finished], samples: list[Sample], now: float) -> dict[str, dict[str, Any]]:
    """The seed's table for each window: per source and together, and the connections' peak and mean."""
    out: dict[str, dict[str, Any]] = {}
    for name, seconds in WINDOWS.items():
        since = now - seconds
        done = [f for f in finished if f.at >= since]
        kept = [s.connections for s in samples if s.at >= since]
        out[name] = {
            "seconds": seconds,
            "connections": {"peak": max(kept, default=0), "mean": round(sum(kept) / len(kept), 1) if kept else 0.0},
            **{source: _table([f for f in done if f.source == source], seconds) for source in SOURCES},
            "all": _table(done, seconds),
        }
    return out


def history(samples: list[Sample], since: float, step: int = 10) -> list[dict[str, Any]]:
    """Every `step`-th second's sample since `since`, with the rates between it and the one before."""
    kept = [s for s in samples if s.at >= since - step]
    return [_point(before, after) for before, after in zip(kept[::step], kept[step::step], strict=False)]


def _point(before: Sample, after: Sample, *, with_time: bool = True) -> dict[str, Any]:
    """`after`'s state, with the token and CPU rates since `before` (none between a sample and itself)."""
    span = after.at - before.at
    rate = (lambda change: round(max(change, 0) / span, 1)) if after is not before and span > 0 else (lambda _: 0.0)
    point = {"at": round(after.at * 1000)} if with_time else {}
    return point | {
        "connections": after.connections,
        "running": after.running,
        "waiting": after.waiting,
        "tokens_per_s": rate(after.tokens - before.tokens),
        "cpu_percent": rate(100 * (after.cpu - before.cpu)),
        "rss_bytes": after.rss,
    }


def _table(done: list[Finished], seconds: float) -> dict[str, Any]:
    ttfts = sorted(f.ttft for f in done if f.ttft is not None)
    durations = sorted(f.duration for f in done)
    failed = [f for f in done if f.failed]
    return {
        "requests": len(done),
        "failures": len(failed),
        "causes": dict(Counter(f.cause or "unknown" for f in failed).most_common()),
        "ttft_ms": {"mean": _mean(ttfts), "p50": _quantile(ttfts, 0.5), "p99": _quantile(ttfts, 0.99)},
        "duration_ms": {"mean": _mean(durations), "p99": _quantile(durations, 0.99)},
        "tokens_per_s": round(sum(f.tokens for f in done) / seconds, 1),
    }


def _mean(values: list[float]) -> float | None:
    return round(1000 * sum(values) / len(values), 1) if values else None


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile (the value below which a share `q` of them lie), in ms."""
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return round(1000 * ordered[rank], 1)


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak, where /proc is not there
