"""The live operations view as JSON, `/chat/api/admin/monitor` (admins only; docs/monitoring.md): what `clawdbot top`
and the page's Monitor view show. Now (connections, replies running and waiting per backend and model, tokens/s,
the gateway's CPU and memory), the seed's table for the last 1, 5, 15 and 60 minutes (monitor.py), each backend
(health, slots, the models it holds in memory against how much of them sits in GPU memory) and the GPU and the model
server's memory where this machine can see them, and the history of the last hours."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..backends.admission import Admission
from ..backends.fleet import Fleet
from ..chat.generation import Generation
from ..errors import BadRequest, Forbidden
from ..gateway.relay import Relay
from ..monitor import Monitor, history, windows
from .authenticate import current
from .http import json
from .outbox import Outbox

_RESIDENT_AGE_S = 1.0  # under the page's 2-s poll, so each poll sees /api/ps as it is now
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
    hours = request.query.get("hours", "1")
    if hours not in ("1", "3", "6"):
        raise BadRequest("hours: 1, 3 or 6 (how much history)")
    watched = request.app[WATCHED]
    members = watched.fleet.members
    # What the model servers hold in memory, asked first: the rest is copied in one go after it.
    residents = [dict(r) for r in await asyncio.gather(*(m.backend.residency(_RESIDENT_AGE_S) for m in members))]
    # What changes under the event loop is copied here; the sums, /proc and NVML run off it.
    finished, samples = list(watched.monitor.finished), list(watched.monitor.samples)
    kinds = Counter(outbox.kind for outbox in watched.outboxes)
    by_model: Counter[str] = Counter(str(g.body.get("model") or "") for g in watched.replies())
    raw = [ex.model or ex.asked for ex in watched.relay.active if ex.member is not None and ex.status == 200]
    by_model.update(model for model in raw if model)
    reports = watched.fleet.report(watched.admission.waiting_for())
    now_view = {
        **watched.monitor.now(),
        "open": {"websocket": kinds["websocket"], "sse": kinds["sse"], "raw": len(watched.relay.active)},
        "running_by_model": dict(by_model.most_common()),
    }

    def rest() -> dict[str, Any]:
        now = time.time()
        return {
            "at": round(now * 1000),
            "process": {"pid": os.getpid(), "workers": 1},
            "now": now_view,
            "windows": windows(finished, samples, now),
            "backends": [_backend(*each) for each in zip(reports, residents, strict=True)],
            "gpu": _gpu(),
            "history": history(samples, now - int(hours) * 3600),
        }

    return json(await asyncio.get_running_loop().run_in_executor(None, rest))


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
