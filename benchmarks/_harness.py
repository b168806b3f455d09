"""What the durability and fairness benchmarks share: a gateway that can be killed and started again on its port,
its memory and metrics, the simulated model loaded up front, and a throwaway PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
from _procs import CLAWDBOT

_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
_METRIC = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
MODEL = "qwen3:32b"


# ---- processes ----------------------------------------------------------------------------------------------------
class Gateway:
    """One `clawdbot serve` on a fixed data dir (and database); killed and started again on the same port."""

    def __init__(self, args: list[str], log: Path) -> None:
        # Without accounts unless asked for (it listens on 127.0.0.1 only): what is measured is not the key check.
        self.args = args if "--auth" in args or "--no-auth" in args else [*args, "--no-auth"]
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.url, self.port, self.starts = "", 0, 0

    def start(self) -> None:
        """Start it on the port it had (0 the first time: any free one); a port taken meanwhile means a new one."""
        for port in dict.fromkeys([self.port, 0]):
            with self.log.open("a") as err:
                proc = subprocess.Popen(
                    [*CLAWDBOT, "serve", "--port", str(port), *self.args],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            assert proc.stdout is not None
            match = _URL.search(proc.stdout.readline())
            if match:
                self.proc, self.port, self.url = proc, int(match.group(1)), match.group(0)
                self.starts += 1
                return
            proc.kill()
            proc.wait()
        raise SystemExit(f"could not start the gateway: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def memory_mib(pid: int) -> dict[str, float]:
    """VmHWM (the peak resident set) and VmRSS of a process, in MiB."""
    out = {"VmHWM": 0.0, "VmRSS": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0]) / 1024
    return out


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text → {metric name: {label string: value}} (label string '' for none)."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and not line.startswith("#"):
            out.setdefault(match.group(1), {})[match.group(2) or ""] = float(match.group(3))
    return out


def by_label(metrics: dict[str, dict[str, float]], name: str) -> Counter[str]:
    """A labelled counter as {label value: count}, e.g. clawdbot_chat_reply_failures_total by cause."""
    counts: Counter[str] = Counter()
    for labels, value in metrics.get(name, {}).items():
        counts[labels.partition('="')[2].rstrip('"')] += int(value)
    return counts


def merged(scrapes: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Several processes' metrics added up (counters and gauges alike: replicas each count their own)."""
    out: dict[str, dict[str, float]] = {}
    for metrics in scrapes:
        for name, values in metrics.items():
            for labels, value in values.items():
                out.setdefault(name, {})[labels] = out.get(name, {}).get(labels, 0.0) + value
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]]:
    async with session.get(f"{url}/metrics") as response:
        return parse_metrics(await response.text())


class Gauges:
    """Samples the gauges worth watching once a second: peak event-log bytes and queue length."""

    def __init__(self) -> None:
        self.peak_log_bytes = 0.0
        self.peak_queued = 0.0

    async def watch(self, session: aiohttp.ClientSession, urls: Callable[[], list[str]]) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                metrics = merged([await scrape(session, url) for url in urls()])
                self.peak_log_bytes = max(self.peak_log_bytes, metrics["clawdbot_reply_log_bytes"][""])
                self.peak_queued = max(self.peak_queued, metrics["clawdbot_generations_queued"][""])


async def load_model(sim_url: str) -> None:
    """Load the simulated model once, before anything is measured (a cold load takes ~9 s)."""
    async with aiohttp.ClientSession() as session:
        body = {"model": MODEL, "messages": [], "keep_alive": -1}
        async with session.post(f"{sim_url}/api/chat", json=body) as response:
            await response.read()


# ---- PostgreSQL: a database of our own, dropped at the end ---------------------------------------------------------
async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(admin_url: str, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{secrets.token_hex(4)}"
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin_url: str, name: str) -> None:
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stop_on_sigterm() -> None:
    """`timeout` and CI send SIGTERM: unwind like Ctrl-C, so the simulator and gateway are stopped, not orphaned."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
