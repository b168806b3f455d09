"""`clawdbot bench --report FILE.html`: one run as a page that stands alone — no script, and no stylesheet, font or
image from anywhere else — so it opens offline and can be mailed or attached. The charts are SVG drawn here: the
per-level table, TTFT and full-reply distributions per level (cumulative: the share of requests done by then), and
output tokens/s and requests in flight over each level's time.

Everything a run or a server put into a record (level labels, the URL, failure kinds) is escaped: a report is
shared, and a backend's error text is not ours.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from html import escape
from itertools import accumulate
from typing import Any

from .report import percentile

_COLOURS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
_W, _H = 640, 260  # a chart's box; the plot sits inside the margins
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 16, 14, 40
_CDF_POINTS = 200  # a distribution's line is drawn through at most this many quantiles
_BUCKETS = 80  # a level's time is cut into this many steps for the over-time charts

Series = tuple[str, list[tuple[float, float]]]


def render(summaries: list[dict[str, Any]], config: dict[str, Any], environment: dict[str, Any]) -> str:
    """The page for a run: `summaries` as report.summarise() made them, each with its "records"."""
    labels = [str(s["level"]) for s in summaries]
    ttft = [(str(s["level"]), _cdf([r["ttft"] for r in _ok(s) if r["ttft"] is not None])) for s in summaries]
    e2e = [(str(s["level"]), _cdf([r["end"] for r in _ok(s) if r["end"] is not None])) for s in summaries]
    over_time = [timeline(s["records"]) for s in summaries]
    tokens = [(label, t["tokens_per_s"]) for label, t in zip(labels, over_time, strict=True)]
    flight = [(label, t["in_flight"]) for label, t in zip(labels, over_time, strict=True)]
    charts = [
        _chart("Time to first token", "share of requests", ttft, "s", percent=True),
        _chart("Full reply", "share of requests", e2e, "s", percent=True),
        _chart("Output tokens per second", "tokens/s", tokens, "s since the level began"),
        _chart("Requests in flight", "requests", flight, "s since the level began"),
    ]
    setup = ", ".join(f"{key} {_text(value)}" for key, value in config.items() if value is not None)
    title = f"clawdbot bench: {config.get('target', '')} at {config.get('url', '')}"
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f'<p class="meta" data-testid="setup">{escape(setup)}</p>',
            f'<p class="meta">{escape(str(environment.get("command", "")))}</p>',
            f'<p class="meta">{escape(_machine(environment))}</p>',
            _table(summaries),
            _legend(labels),
            '<div class="charts">',
            *charts,
            "</div>",
            _failures(summaries),
            "</body></html>",
        ]
    )


def timeline(records: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Output tokens per second and requests in flight over one level, in steps from its first request's start.

    A reply's tokens are spread over the chunks it arrived in (the first at TTFT, the next ones after each gap),
    evenly: Ollama sends a token a chunk, and the count a reply reports is the only one there is. A step's tokens/s
    is its tokens over its length; its in-flight figure is the time-weighted mean over the step."""
    spans = [(r["start"], r["start"] + r["end"]) for r in records if r["end"] is not None]
    if not spans:
        return {"tokens_per_s": [], "in_flight": []}
    began = min(start for start, _ in spans)
    finished = max(end for _, end in spans)
    width = _nice(finished - began) / _BUCKETS
    steps = max(1, math.ceil((finished - began) / width))
    tokens = [0.0] * steps
    for r in records:
        if r["failure"] or r["ttft"] is None or not r["output_tokens"]:
            continue
        arrivals = [r["start"] + r["ttft"] + gap for gap in accumulate(r["gaps"], initial=0.0)]
        share = r["output_tokens"] / len(arrivals)
        for when in arrivals:
            tokens[min(int((when - began) / width), steps - 1)] += share
    busy = [0.0] * steps  # request-seconds inside each step
    for start, end in spans:
        first, last = int((start - began) / width), min(int((end - began) / width), steps - 1)
        for step in range(first, last + 1):
            low, high = began + step * width, began + (step + 1) * width
            busy[step] += max(0.0, min(end, high) - max(start, low))
    middle = [(step + 0.5) * width for step in range(steps)]
    return {
        "tokens_per_s": list(zip(middle, [t / width for t in tokens], strict=True)),
        "in_flight": list(zip(middle, [b / width for b in busy], strict=True)),
    }


def _ok(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in summary["records"] if not r["failure"]]


def _cdf(values: list[float]) -> list[tuple[float, float]]:
    """The share of requests (0–1) done by each time, through evenly spaced quantiles."""
    if not values:
        return []
    points = min(len(values), _CDF_POINTS)
    shares = [i / (points - 1) if points > 1 else 1.0 for i in range(points)]
    return [(percentile(values, 100 * share) or 0.0, share) for share in shares]


def _chart(title: str, y_name: str, series: Sequence[Series], x_name: str, *, percent: bool = False) -> str:
    """A line chart of several series on shared axes that start at zero."""
    points = [p for _, line in series for p in line]
    if not points:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="meta">no requests finished</p></figure>'
    x_top = _nice(max(x for x, _ in points))
    y_top = 1.0 if percent else _nice(max(y for _, y in points))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def at(x: float, y: float) -> str:
        return f"{_LEFT + plot_w * x / x_top:.1f},{_TOP + plot_h * (1 - y / y_top):.1f}"

    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" data-chart="{escape(title)}">',
        *_grid(x_top, y_top, plot_w, plot_h, percent=percent),
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 4}" class="axis-name">{escape(x_name)}</text>',
    ]
    for index, (label, line) in enumerate(series):
        if line:
            path = " ".join(at(x, y) for x, y in line)
            colour = _COLOURS[index % len(_COLOURS)]
            parts.append(
                f'<polyline points="{path}" stroke="{colour}" data-level="{escape(label)}">'
                f"<title>{escape(label)}</title></polyline>"
            )
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)} <span>({escape(y_name)})</span></figcaption>{''.join(parts)}</figure>"


def _grid(x_top: float, y_top: float, plot_w: int, plot_h: int, *, percent: bool) -> list[str]:
    """Grid lines and y ticks at round steps (quarters for a share), x ticks below."""
    y_text: Callable[[float], str] = (lambda v: f"{100 * v:g} %") if percent else _short
    lines = []
    rows = 4 if percent else _divisions(y_top)
    for i in range(rows + 1):
        y = _TOP + plot_h * (1 - i / rows)
        lines.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        lines.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" class="tick y">{y_text(y_top * i / rows)}</text>')
    columns = _divisions(x_top)
    for i in range(columns + 1):
        x = _LEFT + plot_w * i / columns
        lines.append(f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" class="tick x">{_short(x_top * i / columns)}</text>')
    return lines


def _divisions(top: float) -> int:
    """Ticks at round steps: 2 → 0.5 each, 2.5 → 0.5, 1, 5 and 10 → a fifth."""
    mantissa = top / 10.0 ** math.floor(math.log10(top))
    return 4 if math.isclose(mantissa, 2) else 5


def _nice(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 or 10 times a power of ten that is at least `value` (an axis's end)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    steps = (1, 2, 2.5, 5, 10)
    return power * steps[min(bisect_right(steps, value / power - 1e-9), len(steps) - 1)]


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


def _table(summaries: list[dict[str, Any]]) -> str:
    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value * 1000:,.0f} ms"

    def s(value: float | None) -> str:
        return "–" if value is None else f"{value:,.2f} s"

    rows: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
        ("ttft-avg", "avg time to first token", lambda x: ms(x["ttft"]["avg"])),
        ("ttft-p50", "p50 time to first token", lambda x: ms(x["ttft"]["p50"])),
        ("ttft-p99", "p99 time to first token", lambda x: ms(x["ttft"]["p99"])),
        ("e2e-avg", "avg full reply", lambda x: s(x["e2e"]["avg"])),
        ("e2e-p99", "p99 full reply", lambda x: s(x["e2e"]["p99"])),
        ("failures", "failures", lambda x: f"{x['failures']}/{x['requests']}"),
        ("tokens", "output tokens/s", lambda x: f"{x['output_tokens_per_second']:,.0f}"),
        ("flight", "peak / mean in flight", lambda x: f"{x['peak_in_flight']} / {x['mean_in_flight']:.1f}"),
        ("lag", "client loop lag p99", lambda x: f"{x['client']['loop_lag_p99_ms']:.1f} ms"),
    ]
    head = "".join(f"<th>{escape(str(x['level']))}</th>" for x in summaries)
    body = "".join(
        f'<tr data-row="{key}"><th>{name}</th>' + "".join(f"<td>{escape(fn(x))}</td>" for x in summaries) + "</tr>"
        for key, name, fn in rows
    )
    return f'<table data-testid="levels"><thead><tr><th>metric</th>{head}</tr></thead><tbody>{body}</tbody></table>'


def _legend(labels: list[str]) -> str:
    keys = "".join(
        f'<li><span class="swatch" style="background:{_COLOURS[i % len(_COLOURS)]}"></span>{escape(label)}</li>'
        for i, label in enumerate(labels)
    )
    return f'<ul class="legend">{keys}</ul>'


def _failures(summaries: list[dict[str, Any]]) -> str:
    found = [(str(s["level"]), kind, n) for s in summaries for kind, n in sorted(s["failure_kinds"].items())]
    if not found:
        return '<p class="meta">No request failed.</p>'
    items = "".join(f"<li>{escape(level)}: {escape(str(kind))} × {n}</li>" for level, kind, n in found)
    return f"<h2>Failures</h2><ul>{items}</ul>"


def _machine(environment: dict[str, Any]) -> str:
    keys = ("time", "python", "machine", "cpus")
    return " · ".join(f"{key} {environment[key]}" for key in keys if environment.get(key) is not None)


def _text(value: object) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1340px;padding:0 16px;color:#111827}
h1{font-size:20px;margin:0 0 6px}h2{font-size:16px}.meta{color:#4b5563;margin:2px 0;word-break:break-all}
table{border-collapse:collapse;margin:16px 0}th,td{padding:4px 12px;border-bottom:1px solid #e5e7eb;text-align:right}
th:first-child{text-align:left;font-weight:500}thead th{font-weight:600}
.legend{list-style:none;padding:0;display:flex;gap:18px}.swatch{display:inline-block;width:12px;height:12px;
border-radius:2px;margin-right:6px;vertical-align:-1px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
figure{margin:0}figcaption{font-weight:600;margin-bottom:4px}figcaption span{font-weight:400;color:#4b5563}
svg{width:100%;height:auto;background:#fff}polyline{fill:none;stroke-width:1.8}
.grid{stroke:#e5e7eb}.tick{font-size:11px;fill:#4b5563}.tick.y{text-anchor:end}.tick.x{text-anchor:middle}
.axis-name{font-size:11px;fill:#4b5563;text-anchor:middle}
"""
