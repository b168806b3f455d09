"""`clawdbot serve`: run the application until a signal, and say in one line where it is and what it found.

The lines it prints go to stdout, not to the log: they are for the person who started the gateway (the setup link
is a secret that must not sit in a log collector).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time

from aiohttp import web
from sqlalchemy.engine import make_url

from .. import __version__
from ..backends.fleet import Fleet, Member
from ..common.signals import until_signalled
from ..settings import Settings
from ..store.conversations import default_url
from .admin import FLEET
from .app import StandIn, create_app, own_metrics_app
from .authenticate import AUTH
from .workers import Supervisor, Worker


async def run(settings: Settings, stand_in: StandIn | None = None) -> None:
    """Serve until SIGINT/SIGTERM; print one line saying where, to what, and whether the backend answered. With
    --workers above 1 this process supervises that many workers instead (workers.py)."""
    if settings.workers > 1:
        await Supervisor(settings, sys.argv[1:] if sys.argv[1:2] != ["serve"] else sys.argv[2:]).run()
        return
    worker = Worker.from_env()
    app = create_app(settings, stand_in, worker)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host, settings.port, backlog=4096, reuse_address=True, reuse_port=worker is not None
    )
    own = web.AppRunner(own_metrics_app(app), access_log=None)
    await own.setup()
    try:
        await site.start()
        if worker is not None:  # its own figures, for the sibling asked for the instance's /metrics
            await web.UnixSite(own, str(worker.socket)).start()
    except OSError as error:
        await own.cleanup()
        await runner.cleanup()
        reason = os.strerror(error.errno) if error.errno else str(error)  # uvloop's strerror repeats the address
        print(f"clawdbot: cannot listen on {settings.host}:{settings.port}: {reason.lower()}", file=sys.stderr)
        raise SystemExit(2) from None
    port = runner.addresses[0][1]
    _collect_less()
    print(startup_line(settings, port, app[FLEET]), flush=True)
    token = await app[AUTH].setup_link_token() if worker is None or worker.index == 0 else None
    if token is not None:  # stdout, not the log: the link is for the person who started the gateway
        print(
            f"clawdbot: no admin yet — create one at {page_url(settings, port)}/setup#token={token} "
            "(or: clawdbot user add NAME --admin)",
            flush=True,
        )
    signalled = asyncio.ensure_future(until_signalled())
    waits = [signalled, *([asyncio.ensure_future(worker.orphaned())] if worker is not None else [])]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await own.cleanup()
        await runner.cleanup()


def _collect_less() -> None:
    """The cycle collector, tuned for a server: what startup built (modules, the app, SQLAlchemy's tables, pydantic's
    models) is frozen out of it, and the youngest generation is collected every 50,000 allocations rather than 700.
    Streaming makes many short-lived objects that refcounting frees; with the defaults the collector still took
    about a quarter of the event loop's CPU per token (perf), and ~2 µs per token on the chat path, as much as with
    it switched off (BENCHMARKS.md §12). Cyclic garbage waits a little longer: a few MB at most."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def page_url(settings: Settings, port: int) -> str:
    """Where people open the chat page: the public URL behind a proxy, else where the gateway listens."""
    if settings.public_url:
        return settings.public_url + "/chat"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{port}/chat"


def startup_line(settings: Settings, port: int, fleet: Fleet) -> str:
    database = make_url(settings.database_url or default_url(settings.data_dir))
    where = database.database if database.get_backend_name() == "sqlite" else database.render_as_string()
    backends = " — ".join(_health(member) for member in fleet.members)
    return (
        f"clawdbot {__version__} on http://{settings.host}:{port} — {backends} — chat page "
        f"{page_url(settings, port)}, conversations in {where} — {time.strftime('%H:%M:%S')}"
    )


def _health(member: Member) -> str:
    backend, status = member.backend, member.backend.status
    kind = {"openai": "OpenAI-compatible", "ollama": "Ollama"}[member.kind]
    if backend.simulated:
        kind = "simulated Ollama (--demo; no real model)"
    if status.reachable:
        models = ", ".join(status.model_names()) or "no models pulled"
        health = f"answering (version {status.version}; models: {models})"
    else:
        health = f"NOT answering — {status.error}; {backend.how_to_fix()}. /readyz reports it until it comes back"
    slots = member.place.slots
    named = backend.url if backend.url.endswith("://" + member.name) else f"{member.name} {backend.url}"
    return f"backend {named} [{kind}, {slots} slot{'' if slots == 1 else 's'}] {health}"
