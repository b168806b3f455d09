"""The live operations view as JSON, `/chat/api/admin/monitor` (admins only; docs/monitoring.md): what `clawdbot top`
and the page's Monitor view show. Now (connections, replies running and waiting per backend and model, tokens/s,
the gateway's CPU and memory), the seed's table for the last 1, 5, 15 and 60 minutes (monitor.py), each backend
(health, slots, the models it holds in memory against how much of them sits in GPU memory) and the GPU and the model
server's memory where this machine can see them, and the history of the last hours."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ..backends.admission import Admission
from ..backends.fleet import Fleet
from ..chat.generation import Generation
from ..errors import BadRequest, Forbidden
from ..gateway.framing import GENERATION
from ..gateway.relay import Relay
from ..logs import LOG
from ..monitor import Finished, Monitor, Sample, combined, history, windows
from .authenticate import current
from .http import json
from .outbox import Outbox
from .workers import Worker

FEED_EVERY_S = 2.0  # how often the view is pushed to those watching it
_RESIDENT_AGE_S = 1.0  # under the feed's 2-s tick, so each view sees /api/ps as it is now
_LOCAL = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0")


@dataclass(slots=True)
class Watched:
    """What the view reads: the monitor's records, and the live objects the gateway runs on."""

    monitor: Monitor
    fleet: Fleet
    admission: Admission
    relay: Relay
    outboxes: set[Outbox]
    replies: Callable[[], Iterable[Generation]]  # the chat replies this process is writing
    worker: Worker | None = None  # with --workers: the view adds in the siblings' figures
    watchers: dict[Outbox, int] = field(default_factory=dict)  # connections the view is pushed to, and their hours
    _woken: asyncio.Event = field(default_factory=asyncio.Event)

    def watch(self, outbox: Outbox, hours: object) -> int:
        """Push the view to `outbox` (an admin's WebSocket or event stream) now and every 2 s until `unwatch`."""
        self.watchers[outbox] = history_hours(hours)
        self._woken.set()
        return self.watchers[outbox]

    def unwatch(self, outbox: Outbox) -> None:
        self.watchers.pop(outbox, None)

    async def feeding(self) -> None:
        """While anyone watches: the view built once per tick for each history length asked, pushed to each."""
        while True:
            await self._woken.wait()
            self._woken.clear()
            while self.watchers:
                for hours in sorted(set(self.watchers.values())):
                    try:
                        event = orjson.dumps({"type": "monitor", "hours": hours, "view": await build(self, hours)})
                    except Exception:  # noqa: BLE001 - the feed outlives one bad tick; the next one tries again
                        LOG.exception("the live view could not be built")
                        continue
                    for outbox, wanted in list(self.watchers.items()):
                        if wanted == hours:
                            outbox.push(event)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FEED_EVERY_S):
                        await self._woken.wait()  # a new watcher gets the view at once
                self._woken.clear()

    async def sampling(self) -> None:
        """Once a second, this process's state into the monitor's history."""
        while True:
            await asyncio.sleep(1.0)
            running = sum(m.place.running for m in self.fleet.members)
            waiting = sum(self.admission.waiting_for().values())
            connections = len(self.outboxes) + len(self.relay.active)
            self.monitor.sample(connections=connections, running=running, waiting=waiting)


WATCHED: web.AppKey[Watched] = web.AppKey("watched", Watched)


def routes(app: web.Application) -> None:
    app.router.add_get("/chat/api/admin/monitor", monitor, allow_head=False)


async def monitor(request: web.Request) -> web.Response:
    if not current(request).admin:
        raise Forbidden("only an admin may see the operations view")
    return json(await build(request.app[WATCHED], history_hours(request.query.get("hours", "1"))))


async def build(watched: Watched, hours: int) -> dict[str, Any]:
    """The view, with `hours` of history: what GET /chat/api/admin/monitor answers and the feed pushes."""
    members = watched.fleet.members
    # What the model servers hold in memory, and the --workers siblings' own figures, asked first: the rest is
    # copied in one go after them.
    residents, theirs = await asyncio.gather(
        asyncio.gather(*(m.backend.residency(_RESIDENT_AGE_S) for m in members)),
        watched.worker.from_siblings(f"/monitor?hours={hours}") if watched.worker is not None else _nothing(),
    )
    mine = _own(watched)
    reports = watched.fleet.report(watched.admission.waiting_for())

    def rest() -> dict[str, Any]:
        now = time.time()
        states = [mine, *(_state(orjson.loads(body)) for body in theirs)]
        finished = [f for state in states for f in state.finished]
        samples = combined([state.samples for state in states])
        for report in reports:  # each process counts the slots its own replies hold; the queue is already shared
            report["running"] = sum(state.placed.get(report["name"], 0) for state in states)
        return {
            "at": round(now * 1000),
            "process": {"pid": os.getpid(), "workers": len(states)},
            "now": _summed([state.now for state in states]),
            "windows": windows(finished, samples, now),
            "backends": [_backend(report, dict(resident)) for report, resident in zip(reports, residents, strict=True)],
            "gpu": _gpu(),
            "history": history(samples, now - hours * 3600),
        }

    return await asyncio.get_running_loop().run_in_executor(None, rest)


async def own_state(request: web.Request) -> web.Response:
    """What a --workers process gives a sibling that was asked for the view (on its private Unix socket): its
    replies of the last hour, its samples of the hours asked and its state now."""
    hours, watched = history_hours(request.query.get("hours", "1")), request.app[WATCHED]
    mine = _own(watched)

    def encoded() -> bytes:
        since, cutoff = time.time() - hours * 3600 - 10, time.time() - 3600
        return orjson.dumps(
            {
                "now": mine.now,
                "finished": [_row(f) for f in mine.finished if f.at >= cutoff],
                "samples": [_row(s) for s in mine.samples if s.at >= since],
                "placed": mine.placed,
            }
        )

    body = await asyncio.get_running_loop().run_in_executor(None, encoded)
    return web.Response(body=body, content_type="application/json")


@dataclass(slots=True)
class _State:
    now: dict[str, Any]
    finished: list[Finished]
    samples: list[Sample]
    placed: dict[str, int]  # slots this process's generations hold, by backend


def _own(watched: Watched) -> _State:
    """This process's figures, copied on the event loop (what changes under it); the sums run off it."""
    kinds = Counter(outbox.kind for outbox in watched.outboxes)
    running: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    for generation in watched.replies():
        (running if generation.ticket.running else waiting)[str(generation.body.get("model") or "")] += 1
    for ex in watched.relay.active:
        model = ex.model or ex.asked
        if model and ex.route in GENERATION:  # a raw generation has no backend until admission gives it a slot
            if ex.member is None:
                waiting[model] += 1
            elif ex.status in (0, 200):  # sent, its answer not begun yet (a model loading), or streaming
                running[model] += 1
    now = {
        **watched.monitor.now(),
        "open": {"websocket": kinds["websocket"], "sse": kinds["sse"], "raw": len(watched.relay.active)},
        "running_by_model": dict(running),
        "waiting_by_model": dict(waiting),
    }
    placed = {m.name: m.place.running for m in watched.fleet.members}
    return _State(now, list(watched.monitor.finished), list(watched.monitor.samples), placed)


def _state(data: dict[str, Any]) -> _State:
    finished, samples = [Finished(*row) for row in data["finished"]], [Sample(*row) for row in data["samples"]]
    return _State(data["now"], finished, samples, data["placed"])


def _row(record: Finished | Sample) -> list[Any]:
    return [getattr(record, name) for name in record.__slots__]


def _summed(nows: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' states now, added up: the instance's."""
    total: dict[str, Any] = {key: value for key, value in nows[0].items() if not isinstance(value, dict)}
    for now in nows[1:]:
        for key, value in now.items():
            if not isinstance(value, dict):
                total[key] = round(total[key] + value, 1)
    opened: Counter[str] = Counter()
    running: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    for now in nows:
        opened.update(now["open"])
        running.update(now["running_by_model"])
        waiting.update(now["waiting_by_model"])
    return {
        **total,
        "open": {kind: opened[kind] for kind in ("websocket", "sse", "raw")},
        "running_by_model": dict(running.most_common()),
        "waiting_by_model": dict(waiting.most_common()),
    }


def history_hours(hours: object) -> int:
    """`hours` of history (a query's text, or a WebSocket command's number): 1, 3 or 6."""
    if str(hours) not in ("1", "3", "6") or isinstance(hours, bool):
        raise BadRequest("hours: 1, 3 or 6 (how much history)")
    return int(str(hours))


async def _nothing() -> list[bytes]:
    return []


def _backend(report: dict[str, Any], resident: dict[str, dict[str, int]]) -> dict[str, Any]:
    models = [
        {**sizes, "name": name, "spilled": sizes["size_vram"] < sizes["size"]}
        for name, sizes in sorted(resident.items())
    ]
    keep = ("name", "kind", "url", "state", "reachable", "slots", "running", "queued", "last_error", "checked_at")
    return {**{k: report[k] for k in keep}, "resident": models, "server_memory": _server_memory(report["url"])}


def _gpu() -> dict[str, Any]:
    """The GPUs' memory and utilisation through NVML, where this machine has an NVIDIA driver."""
    try:
        import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py ships no types

        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 - no library, no driver, no GPU: all "not visible"
        return {"visible": False, "why": f"not visible from here ({type(error).__name__})", "devices": []}
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory, rates = pynvml.nvmlDeviceGetMemoryInfo(handle), pynvml.nvmlDeviceGetUtilizationRates(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            devices.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_used": int(memory.used),
                    "memory_total": int(memory.total),
                    "utilisation_percent": int(rates.gpu),
                }
            )
        return {"visible": True, "why": None, "devices": devices}
    finally:
        pynvml.nvmlShutdown()


def _server_memory(url: str) -> dict[str, Any]:
    """The resident memory of the process listening on a backend's port, when it runs on this machine and /proc
    shows it (the same user, or root)."""
    host_port = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if host not in _LOCAL or not port.isdigit():
        return {"visible": False, "why": "not visible from here (another machine)"}
    inodes = _listening(int(port))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            status = Path(f"/proc/{pid}/status").read_text()
            rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            return {"visible": True, "why": None, "pid": int(pid), "rss_bytes": rss}
    return {"visible": False, "why": "not visible from here (no process of this user listens on its port)"}


def _listening(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(fields[9])
    return found
