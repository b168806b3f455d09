"""`clawdbot top [URL]`: the live operations view in a terminal, for someone on the server over SSH, as one would
use htop. It reads `/chat/api/admin/monitor` (an admin's API key, or a gateway without accounts) every few seconds
and redraws; `--once` prints one view and exits (for scripts and logs). Standard library only: a program of its
own, sharing nothing with the server but the JSON."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click

_CLEAR = "\x1b[H\x1b[2J"


def fetch(url: str, key: str | None, timeout: float = 10.0) -> dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + "/chat/api/admin/monitor")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        body: dict[str, Any] = json.loads(answer.read())
    return body


def render(view: dict[str, Any], url: str) -> str:
    now = view["now"]
    opened = now["open"]
    lines = [
        f"clawdbot top — {url} — {time.strftime('%H:%M:%S', time.localtime(view['at'] / 1000))}",
        f"open: {opened['websocket']} WebSocket, {opened['sse']} event streams, {opened['raw']} raw  ·  "
        f"replies running {now['running']}, waiting {now['waiting']}  ·  {now['tokens_per_s']:.1f} tokens/s  ·  "
        f"gateway CPU {now['cpu_percent']:.0f} %, memory {_bytes(now['rss_bytes'])}",
    ]
    if models := _by_model(now["running_by_model"], now["waiting_by_model"]):
        lines.append("by model: " + models)
    lines += [
        "",
        _row("window", "conn peak/mean", "source", "done", "failed", "TTFT mean/p50/p99", "total mean/p99", "tok/s"),
    ]
    for name, window in view["windows"].items():
        connections = f"{window['connections']['peak']}/{window['connections']['mean']:g}"
        for source in ("chat", "raw", "all"):
            t = window[source]
            ttft, total = t["ttft_ms"], t["duration_ms"]
            failed = f"{t['failures']}/{t['requests']}"
            lines.append(
                _row(
                    name if source == "chat" else "",
                    connections if source == "chat" else "",
                    source,
                    str(t["requests"]),
                    failed,
                    "/".join(_ms(ttft[k]) for k in ("mean", "p50", "p99")),
                    "/".join(_ms(total[k]) for k in ("mean", "p99")),
                    f"{t['tokens_per_s']:.1f}",
                )
            )
            if t["causes"]:
                lines.append("      failures: " + ", ".join(f"{cause} {n}" for cause, n in t["causes"].items()))
    lines += ["", "backends:"]
    for backend in view["backends"]:
        memory = backend["server_memory"]
        seen = f"server memory {_bytes(memory['rss_bytes'])}" if memory["visible"] else memory["why"]
        lines.append(
            f"  {backend['name']:<24} {backend['state']:<10} slots {backend['running']}/{backend['slots']}, "
            f"queued {backend['queued']}  ·  {seen}"
        )
        for model in backend["resident"]:
            spilled = "  ! partly on the CPU" if model["spilled"] else ""
            lines.append(
                f"      {model['name']}: {_bytes(model['size'])}, {_bytes(model['size_vram'])} in GPU memory{spilled}"
            )
    gpu = view["gpu"]
    if gpu["visible"]:
        for device in gpu["devices"]:
            used, total = _bytes(device["memory_used"]), _bytes(device["memory_total"])
            lines.append(
                f"GPU {device['index']} {device['name']}: {device['utilisation_percent']} %, {used} of {total}"
            )
    else:
        lines.append(f"GPU: {gpu['why']}")
    return "\n".join(lines)


def _row(*cells: str) -> str:
    widths = (7, 15, 7, 6, 8, 22, 17, 8)
    return " ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _bytes(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


@click.command()
@click.argument("url", default="http://127.0.0.1:18789")
@click.option(
    "--key", envvar="CLAWDBOT_API_KEY", help="An admin's API key (cbk_…); none for a gateway without accounts."
)
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print the view once and exit.")
def top(url: str, key: str | None, interval: float, once: bool) -> None:
    """The live operations view in the terminal: connections, replies, TTFT and failures per window, backends."""
    while True:
        try:
            text = render(fetch(url, key), url)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise click.ClickException(f"{url} answered {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise click.ClickException(f"cannot reach {url}: {error}") from None
        if once:
            click.echo(text)
            return
        sys.stdout.write(_CLEAR + text + "\n")
        sys.stdout.flush()
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


def _by_model(running: dict[str, int], waiting: dict[str, int]) -> str:
    """Each model's replies running and waiting: "qwen3:32b 3 running, 2 waiting · llama3 1 running"."""
    return " · ".join(
        f"{model or '?'} {running.get(model, 0)} running, {waiting.get(model, 0)} waiting"
        for model in sorted({*running, *waiting})
    )
