"""Turn per-request records into the numbers the seed's table reports, and print them.

Percentiles interpolate linearly between ranks (numpy's default) and always come with their sample count:
a p99 over 807 requests rests on about eight of them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from .runner import WorkerResult


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _dist(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "avg": _mean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def summarise(label: str, results: list[WorkerResult], lag_limit: float) -> dict[str, Any]:
    rows = [row for result in results for row in result.records]
    ok = [r for r in rows if not r["failure"]]
    failures = Counter(r["failure"] for r in rows if r["failure"])
    starts = [r["start"] for r in rows]
    ends = [r["start"] + r["end"] for r in rows if r["end"] is not None]
    window = (max(ends) - min(starts)) if rows and ends else 0.0
    output = sum(r["output_tokens"] for r in ok)
    tpot = [
        (r["end"] - r["ttft"]) / (r["output_tokens"] - 1)
        for r in ok
        if r["ttft"] is not None and r["output_tokens"] > 1
    ]
    lag = [s for result in results for s in result.loop_lag]
    cpu = sum(result.cpu_seconds for result in results)
    wall = max((result.wall_seconds for result in results), default=0.0)
    lag_p99 = percentile(lag, 99) or 0.0
    return {
        "level": label,
        "requests": len(rows),
        "failures": len(rows) - len(ok),
        "failure_kinds": dict(failures),
        "ttft": _dist([r["ttft"] for r in ok if r["ttft"] is not None]),
        "ttfo": _dist([r["ttfo"] for r in ok if r["ttfo"] is not None]),
        "e2e": _dist([r["end"] for r in ok if r["end"] is not None]),
        "itl": _dist([g for r in ok for g in r["gaps"]]),
        "tpot": _dist(tpot),
        "wait": _dist([r["start"] - r["scheduled"] for r in rows]),
        # chat target: the gateway's own TTFT (generation start → first token), stored with each reply
        "server_ttft": _dist(
            [r["server"]["ttft_ms"] / 1000 for r in ok if (r.get("server") or {}).get("ttft_ms") is not None]
        ),
        "output_tokens": output,
        "token_source": "server" if output else "none reported",
        "window_seconds": window,
        "output_tokens_per_second": output / window if window else 0.0,
        "requests_per_second": len(ok) / window if window else 0.0,
        "peak_in_flight": _peak(rows),
        "mean_in_flight": sum(r["end"] for r in rows if r["end"] is not None) / window if window else 0.0,
        "client": {
            "loop_lag_p50_ms": (percentile(lag, 50) or 0.0) * 1000,
            "loop_lag_p99_ms": lag_p99 * 1000,
            "loop_lag_max_ms": max(lag, default=0.0) * 1000,
            "cpu_cores": cpu / wall if wall else 0.0,
            "workers": len(results),
            "overloaded": lag_p99 * 1000 > lag_limit,
        },
    }


def _peak(rows: list[dict[str, Any]]) -> int:
    events = sorted(
        [(r["start"], 1) for r in rows if r["end"] is not None]
        + [(r["start"] + r["end"], -1) for r in rows if r["end"] is not None]
    )
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def _s(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.1f} ms"


def render_level(summary: dict[str, Any], header: str) -> str:
    s = summary
    n = s["requests"]
    share = f"{100 * s['failures'] / n:.2f}%" if n else "–"
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(s["failure_kinds"].items()))
    t, e, client = s["ttft"], s["e2e"], s["client"]
    verdict = (
        (
            "OVERLOADED — the client's own event loop lagged; these numbers measure the client, not the "
            "server (use --workers or fewer users)"
        )
        if client["overloaded"]
        else "ok"
    )
    lines = [
        header,
        f"  requests    {n}   failures {s['failures']}/{n} ({share}){': ' + kinds if kinds else ''}",
        f"  TTFT        avg {_s(t['avg'])} s   p50 {_s(t['p50'])}   p90 {_s(t['p90'])}   p99 {_s(t['p99'])}"
        f"   (n={t['n']})",
        f"  TTFO        p50 {_s(s['ttfo']['p50'])} s   p99 {_s(s['ttfo']['p99'])} s   (first answer token, "
        "after thinking)",
        f"  full reply  avg {_s(e['avg'])} s   p99 {_s(e['p99'])} s",
        f"  throughput  {s['output_tokens_per_second']:,.1f} output tok/s ({s['token_source']})   "
        f"{s['requests_per_second']:.2f} req/s   TPOT avg {_ms(s['tpot']['avg'])}   "
        f"gap between chunks p99 {_ms(s['itl']['p99'])}",
        f"  in flight   peak {s['peak_in_flight']}   mean {s['mean_in_flight']:.1f}   "
        f"wait from schedule p99 {_ms(s['wait']['p99'])}",
        f"  client      loop lag p99 {client['loop_lag_p99_ms']:.1f} ms   CPU {client['cpu_cores']:.2f} cores "
        f"({client['workers']} worker(s)) — {verdict}",
    ]
    if s["server_ttft"]["n"]:
        lines.insert(
            3,
            f"  stored TTFT p50 {_s(s['server_ttft']['p50'])} s   p99 {_s(s['server_ttft']['p99'])} s   (the "
            "gateway's own, from reply start; the rest is storing the turn)",
        )
    return "\n".join(lines)


def render_table(summaries: list[dict[str, Any]]) -> str:
    """The seed's table: one column per level."""
    head = "| metric | " + " | ".join(str(s["level"]) for s in summaries) + " |"
    rule = "|---|" + "---|" * len(summaries)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("avg time to first token", lambda s: _ms(s["ttft"]["avg"])),
        ("p99 time to first token", lambda s: _ms(s["ttft"]["p99"])),
        ("avg full reply", lambda s: f"{_s(s['e2e']['avg'], 2)} s"),
        ("p99 full reply", lambda s: f"{_s(s['e2e']['p99'], 2)} s"),
        ("failures", lambda s: f"{s['failures']}/{s['requests']}"),
        ("output tokens/s", lambda s: f"{s['output_tokens_per_second']:,.0f}"),
        ("peak in flight", lambda s: str(s["peak_in_flight"])),
    ]
    body = ["| " + name + " | " + " | ".join(fn(s) for s in summaries) + " |" for name, fn in rows]
    return "\n".join([head, rule, *body])
