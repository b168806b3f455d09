"""Prometheus metrics kept without locks on the hot path.

prometheus_client guards every observation with a threading lock; the gateway records from one event loop,
so plain counters and bucket arrays suffice. A custom collector turns them into Prometheus families on scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Family:
    """Histograms keyed by label values."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.children: dict[tuple[str, ...], Histogram] = {}

    def labels(self, *values: str) -> Histogram:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Histogram(self.bounds)
        return child


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (route, outcome)
        self.upstream_errors: defaultdict[str, int] = defaultdict(int)  # kind
        self.prompt_tokens: defaultdict[str, int] = defaultdict(int)  # model
        self.completion_tokens: defaultdict[str, int] = defaultdict(int)
        self.ttft = Family(LATENCY_BUCKETS)  # route
        self.gap = Family(GAP_BUCKETS)  # route
        self.duration = Family(LATENCY_BUCKETS)  # route
        self.overhead = Histogram(OVERHEAD_BUCKETS)
        self.queue_wait = Family(LATENCY_BUCKETS)  # api: chat or raw; from arrival to a backend slot
        self.active_streams = 0
        self.relayed_chunks = 0
        self.relayed_bytes = 0
        self.backend_up = 0
        self.log_lines_dropped = 0
        self.replies: defaultdict[str, int] = defaultdict(int)  # final status
        self.reply_failures: defaultdict[str, int] = defaultdict(int)  # cause (BackendError.kind)
        self.reply_retries: defaultdict[str, int] = defaultdict(int)  # cause of the failure retried unseen
        self.reply_failovers: defaultdict[str, int] = defaultdict(int)  # cause of a failure after text: moved on
        self.reply_cuts: defaultdict[str, int] = defaultdict(int)  # done_reason: length or time_limit
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}  # name: (help, read at scrape time)
        self.labelled: dict[str, tuple[str, str, Callable[[], dict[str, int]]]] = {}  # name: (help, label, read)
        self.families: list[Callable[[], Iterable[Metric]]] = []  # more families, made at scrape time
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter(
            "clawdbot_requests",
            "Proxied requests by route and outcome.",
            ["route", "outcome"],
            {k: v for k, v in m.requests.items()},
        )
        yield _counter(
            "clawdbot_upstream_errors",
            "Backend failures by kind.",
            ["kind"],
            {(k,): v for k, v in m.upstream_errors.items()},
        )
        yield _counter(
            "clawdbot_prompt_tokens",
            "Prompt tokens, from the backend's own counts.",
            ["model"],
            {(k,): v for k, v in m.prompt_tokens.items()},
        )
        yield _counter(
            "clawdbot_completion_tokens",
            "Generated tokens, from the backend's own counts.",
            ["model"],
            {(k,): v for k, v in m.completion_tokens.items()},
        )
        yield _counter(
            "clawdbot_relayed_chunks",
            "Body reads relayed from the backend to clients.",
            [],
            {(): m.relayed_chunks},
        )
        yield _counter(
            "clawdbot_relayed_bytes",
            "Body bytes relayed from the backend to clients.",
            [],
            {(): m.relayed_bytes},
        )
        yield _counter(
            "clawdbot_log_lines_dropped",
            "Log lines dropped because the log queue was full.",
            [],
            {(): m.log_lines_dropped},
        )
        yield _histograms(
            "clawdbot_time_to_first_token_seconds",
            "From request received to the backend's first body byte relayed.",
            "route",
            m.ttft,
        )
        yield _histograms(
            "clawdbot_chunk_gap_seconds", "Gap between consecutive chunks from the backend.", "route", m.gap
        )
        yield _histograms(
            "clawdbot_request_duration_seconds",
            "From request received to the last byte relayed.",
            "route",
            m.duration,
        )
        yield _histograms(
            "clawdbot_queue_wait_seconds",
            "Time a generation waited in the gateway's queue for a backend slot (--max-running).",
            "api",
            m.queue_wait,
        )
        overhead = HistogramMetricFamily(
            "clawdbot_gateway_overhead_seconds",
            "Latency the gateway adds to the first byte: before forwarding the request plus relaying the first chunk.",
        )
        overhead.add_metric([], m.overhead.buckets(), m.overhead.total)
        yield overhead
        yield _counter(
            "clawdbot_chat_replies",
            "Chat replies by how they ended.",
            ["status"],
            {(k,): v for k, v in m.replies.items()},
        )
        yield _counter(
            "clawdbot_chat_reply_failures",
            "Chat replies that failed, by cause.",
            ["cause"],
            {(k,): v for k, v in m.reply_failures.items()},
        )
        yield _counter(
            "clawdbot_chat_reply_retries",
            "Backend failures before the first token that were retried (on another backend where there is one), "
            "unseen by the user, by cause.",
            ["cause"],
            {(k,): v for k, v in m.reply_retries.items()},
        )
        yield _counter(
            "clawdbot_chat_reply_failovers",
            "Chat replies that went on on another backend after theirs failed mid-reply, by cause.",
            ["cause"],
            {(k,): v for k, v in m.reply_failovers.items()},
        )
        yield _counter(
            "clawdbot_chat_replies_cut",
            "Chat replies the gateway cut off at its limits (max_num_predict, max_reply_seconds), by done_reason.",
            ["reason"],
            {(k,): v for k, v in m.reply_cuts.items()},
        )
        for name, (doc, label, counts) in m.labelled.items():
            yield _counter(name, doc, [label], {(k,): v for k, v in counts().items()})
        for families in m.families:
            yield from families()
        for name, (doc, gauge) in m.gauges.items():
            yield GaugeMetricFamily(name, doc, value=gauge())
        yield GaugeMetricFamily("clawdbot_active_streams", "Requests being relayed now.", value=m.active_streams)
        yield GaugeMetricFamily(
            "clawdbot_backend_up", "1 when the last health check reached the backend.", value=m.backend_up
        )


def _counter(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def counter(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], int]) -> CounterMetricFamily:
    return _counter(name, doc, labels, values)


def _histograms(name: str, doc: str, label: str, family: Family) -> HistogramMetricFamily:
    out = HistogramMetricFamily(name, doc, labels=[label])
    for key, hist in sorted(family.children.items()):
        out.add_metric(list(key), hist.buckets(), hist.total)
    return out


# Gauges each --workers process reports alike (its own view of the same fleet): the instance has that one value,
# not N times it. And when the instance started: its first worker's start.
SAME_IN_EVERY_WORKER = frozenset(
    {"clawdbot_backend_up", "clawdbot_backend_state", "clawdbot_backend_slots", "process_max_fds"}
)
EARLIEST = frozenset({"process_start_time_seconds"})


def merge(texts: list[bytes]) -> bytes:
    """Several processes' /metrics as one instance's: counters, histograms and most gauges add up (requests,
    streams, CPU seconds, memory); the gauges in SAME_IN_EVERY_WORKER take their largest value."""
    shells: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in shells:
                shells[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            kept = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                old = kept.get(key)
                if old is None:
                    kept[key] = sample.value
                elif family.name in SAME_IN_EVERY_WORKER:
                    kept[key] = max(old, sample.value)
                elif family.name in EARLIEST:
                    kept[key] = min(old, sample.value)
                else:
                    kept[key] = old + sample.value
    for name, shell in shells.items():
        for (sample_name, labels), value in values[name].items():
            shell.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(shells.values())))
    return generate_latest(registry)


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
