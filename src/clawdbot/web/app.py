"""The platform's HTTP application: `create_app(settings)` and `run(settings)`.

Shared things (the backend session, health checks, the stall watchdog, logging) are opened in a cleanup context
at startup and closed at shutdown; nothing happens at import time. With --demo, cli.py starts the simulator and
hands it over as a `StandIn`: the server itself never imports the simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from .. import __version__
from ..auth.accounts import Accounts
from ..auth.service import Auth
from ..auth.state import MemoryCredentialCache, MemoryThrottle
from ..backends.admission import Admission, MemoryAdmission
from ..backends.fleet import Member
from ..backends.fleetmetrics import families, register_metrics
from ..backends.setup import build_fleet
from ..chat.eventlog import MemoryLog
from ..chat.generation import Generation
from ..chat.generations import Generations
from ..chat.service import Chat
from ..chat.state import MemoryRunningReplies, MemorySendResults
from ..chat.titles import Titles
from ..gateway.relay import Relay
from ..live.admission import RedisAdmission
from ..live.chat import SharedChat
from ..live.connection import Live
from ..live.credentials import RedisCredentialCache
from ..live.eventlog import RedisLog
from ..live.signins import RedisThrottle
from ..logs import LOG, AccessLog, LineWriter
from ..logs import setup as setup_logging
from ..metrics import Metrics, merge
from ..monitor import Monitor
from ..settings import Settings
from ..store.conversations import Store, default_url
from ..store.limits import Limits
from ..store.records import Message
from ..store.usage import Usage
from . import admin, authapi, chatapi, monitor, pages, realtime, sse, usage
from .admin import FLEET, LIMITS
from .authenticate import AUTH, GATE, PUBLIC, Gate, Public, authenticate, current
from .chatapi import CHAT
from .http import SETTINGS
from .http import json as json_response  # one JSON responder, lone surrogates included
from .middleware import ACCESS, access_log, json_errors, request_ids, stamp_headers
from .workers import Worker

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)
ADMISSION: web.AppKey[Admission] = web.AppKey("admission")
LOG_WRITER: web.AppKey[LineWriter] = web.AppKey("log-writer", LineWriter)
# The deployment's Redis (--redis-url), or None: this process alone, its live state in memory.
LIVE: web.AppKey[Live | None] = web.AppKey("live")
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class StandIn:
    """A model server started with the gateway (--demo's simulator): where it listens, how many generations it runs
    at once (0: no limit), and how to load a model ahead of the first chat."""

    url: str
    slots: int
    preload: Callable[[int], Coroutine[Any, Any, None]]


STAND_IN: web.AppKey[StandIn | None] = web.AppKey("stand-in", StandIn)
# This process's place among --workers siblings, or None: the only process on its port.
WORKER: web.AppKey[Worker | None] = web.AppKey("worker")


def create_app(settings: Settings, stand_in: StandIn | None = None, worker: Worker | None = None) -> web.Application:
    app = web.Application(
        middlewares=[request_ids, access_log, json_errors, authenticate],
        client_max_size=settings.max_request_bytes,
        handler_args={"max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[STAND_IN] = stand_in
    app[WORKER] = worker
    app[METRICS] = Metrics()
    app[LIMITS] = Limits(settings)  # the command line's defaults until the database is open
    app.cleanup_ctx.extend([_logging, _live, _backend, _chat])
    app.on_response_prepare.append(stamp_headers)
    app[PUBLIC] = Public()
    app[PUBLIC].paths.update(["/healthz", "/readyz", "/metrics", "/openapi.json"])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)
    app.router.add_route("*", "/api/{tail:.*}", proxy)
    app.router.add_route("*", "/v1/{tail:.*}", proxy)
    chatapi.routes(app)
    authapi.routes(app)
    admin.routes(app)
    usage.routes(app)
    monitor.routes(app)
    realtime.routes(app)
    sse.routes(app)
    pages.routes(app)
    return app


async def _logging(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]

    def dropped() -> None:
        metrics.log_lines_dropped += 1

    writer = setup_logging(app[SETTINGS].log_level, dropped)
    app[LOG_WRITER] = writer
    try:
        yield
    finally:
        writer.stop()


async def _live(app: web.Application) -> AsyncIterator[None]:
    """The link to Redis, when the live state is shared (--redis-url); it may come up after the gateway does."""
    settings = app[SETTINGS]
    live = app[LIVE] = Live(settings.redis_url, settings.redis_prefix) if settings.redis_url else None
    if live is None:
        yield
        return
    await live.open()
    try:
        yield
    finally:
        await live.close()


async def _backend(app: web.Application) -> AsyncIterator[None]:
    """The backends (or, with --demo, the stand-in cli.py started), their health checks and the relay."""
    settings, metrics, stand_in = app[SETTINGS], app[METRICS], app[STAND_IN]
    preload: asyncio.Task[None] | None = None
    if stand_in is not None:  # the first chat need not wait for a model load
        preload = asyncio.create_task(stand_in.preload(settings.num_ctx))
    fleet = app[FLEET] = build_fleet(settings, *((stand_in.url, stand_in.slots) if stand_in else ()))
    live = app[LIVE]
    queue, per_user = settings.max_queue, settings.max_queue_per_user
    admission: MemoryAdmission | RedisAdmission
    if live is None:
        admission = MemoryAdmission(fleet.places, max_queue=queue, max_queue_per_user=per_user, policy=settings.routing)
    else:  # the slots and the queue of the whole deployment
        admission = RedisAdmission(
            live, fleet.places, max_queue=queue, max_queue_per_user=per_user, policy=settings.routing
        )
        await admission.open()
    app[ADMISSION] = admission
    register_metrics(admission, metrics)
    fleet.wake = admission.wake
    metrics.families.append(lambda: families(fleet, admission.waiting_for()))
    access = app[ACCESS] = AccessLog(app[LOG_WRITER] if settings.access_log else None)
    relay = Relay(
        fleet,
        metrics,
        idle_timeout=settings.idle_timeout,
        first_byte_timeout=settings.first_byte_timeout,
        access=access,
        admission=admission,
        limits=app[LIMITS],
        identity_header=settings.sso_header,
    )
    app[RELAY] = relay
    await asyncio.gather(*(fleet.check(member) for member in fleet.members))
    metrics.backend_up = int(fleet.status.reachable)
    app[LIMITS].own_of = fleet.own  # a model's Modelfile parameters win over the defaults
    fleet.on_change = lambda member: _backend_changed(app, member)
    tasks = [asyncio.create_task(fleet.watch()), asyncio.create_task(relay.watchdog())]
    try:
        yield
    finally:
        for task in [*tasks, *([preload] if preload else [])]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if isinstance(admission, RedisAdmission):
            await admission.close()
        await fleet.close()


async def _chat(app: web.Application) -> AsyncIterator[None]:
    """Conversations: the database (migrated at start), replies in flight, and the service both transports use."""
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.database_url or default_url(settings.data_dir))
    await store.open()
    counted = app[usage.USAGE] = Usage(store.db, retention_days=settings.usage_retention_days)
    counted.start()
    app[RELAY].usage = counted
    limits = app[LIMITS]
    await limits.open(store.db)
    accounts = app[authapi.ACCOUNTS] = Accounts(store.db)
    live = app[LIVE]
    auth = app[AUTH] = Auth(
        accounts,
        settings,
        cache=RedisCredentialCache(live) if live else MemoryCredentialCache(),
        by_account=RedisThrottle(live, "account", 5) if live else MemoryThrottle(5),
        by_address=RedisThrottle(live, "address", 20) if live else MemoryThrottle(20),
    )
    app[GATE] = Gate(auth, settings)
    app[METRICS].labelled["clawdbot_sign_ins"] = (
        "Sign-ins with a password, by outcome.",
        "outcome",
        lambda: auth.sign_ins,
    )
    app[METRICS].labelled["clawdbot_requests_refused"] = (
        "Requests refused for who sent them (401/403), by code: unauthenticated, csrf, bad_origin, forbidden, ….",
        "code",
        lambda: auth.refused,
    )
    # Several processes on one database (Redis): only replies whose writer is gone are ended, by the sweep.
    live = app[LIVE]
    shared = SharedChat(live, store) if live is not None else None
    if shared is None and (interrupted := await store.interrupt_unfinished()):
        LOG.warning("replies left unfinished by a previous run are marked interrupted", extra={"count": interrupted})
    caps = {"max_events": settings.reply_log_events, "max_bytes": settings.reply_log_bytes}
    log = MemoryLog(**caps) if live is None else RedisLog(live, metrics=app[METRICS], **caps)
    app[METRICS].gauges["clawdbot_reply_log_bytes"] = (
        "Bytes of reply events kept for resuming clients, all replies together.",
        log.held_bytes,
    )
    app[realtime.EVENTS] = log
    admission = app[ADMISSION]
    generations = Generations(
        store,
        app[FLEET],
        log,
        admission,
        shared.running if shared is not None else MemoryRunningReplies(),
        app[METRICS],
        checkpoint_interval=settings.checkpoint_interval,
    )
    results = shared.results if shared is not None else MemorySendResults()
    chat = app[CHAT] = Chat(
        store, generations, app[FLEET], settings, limits, log=log, admission=admission, results=results
    )
    chat.usage = counted
    if shared is not None:
        assert isinstance(log, RedisLog)
        shared.take_over_orphans(chat, log)
        shared.open()
    titles = Titles(store, generations, app[FLEET], limits, admission, log, app[METRICS])
    access = app[ACCESS]
    generations.finished.append(lambda generation: access.write(_reply_line(generation.reply), "reply"))
    generations.finished.append(lambda generation: _count(counted, generation))
    watched = app[monitor.WATCHED] = monitor.Watched(
        Monitor(), app[FLEET], admission, app[RELAY], app[realtime.OUTBOXES], generations.active.here, app[WORKER]
    )
    app[RELAY].monitor = watched.monitor
    generations.finished.append(lambda generation: _watch(watched.monitor, generation.reply))
    sampling = asyncio.create_task(watched.sampling())
    feeding = asyncio.create_task(watched.feeding())
    watching = asyncio.create_task(limits.watch(settings.health_interval))
    try:
        yield
    finally:
        watching.cancel()
        sampling.cancel()
        feeding.cancel()
        await titles.close()
        await chat.finish_turns()
        # Shared state: a rolling restart hands the replies in flight over to the processes that live on.
        handed = await generations.shutdown(hand_over=shared is not None and live is not None and live.up)
        if isinstance(log, RedisLog):  # after the last replies' final events
            await log.close()
        if shared is not None:
            await shared.hand_over(handed)  # once their every event is in Redis
            await shared.close()
        await app[AUTH].close()
        app[RELAY].usage = None
        await counted.close()
        await store.close()


def _backend_changed(app: web.Application, member: Member) -> None:
    app[METRICS].backend_up = int(app[FLEET].status.reachable)
    extra = {"backend": member.name, "url": member.url, "state": member.state}
    if member.state == "out":
        LOG.warning("backend is out of rotation", extra={**extra, "reason": member.last_error})
    else:
        LOG.info("backend state", extra={**extra, "models": member.backend.status.model_names()})


async def proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[RELAY].handle(request, current(request))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    status = fleet.status
    live = request.app[LIVE]
    ready = status.reachable and (live is None or live.up)
    body = {
        "status": "ready" if ready else "not ready",
        "backend": {  # all backends as one, as before there were several
            "url": fleet.url,
            "simulated": fleet.simulated,
            "reachable": status.reachable,
            "version": status.version,
            "models": status.model_names(),
            "error": status.error,
            "checked_at": status.checked_at,
        },
        "backends": fleet.report(request.app[ADMISSION].waiting_for()),
        # What a request that sets no num_ctx gets, per model: raw API and chat page alike.
        "context": request.app[LIMITS].in_effect(status.model_names(), status.loaded),
    }
    if live is not None:
        body["redis"] = live.report()
    if fleet.simulated:
        body["note"] = "demo mode: the model is simulated by clawdbot, not a real Ollama"
    return json_response(body, 200 if ready else 503)


async def openapi(request: web.Request) -> web.Response:
    body = resources.files("clawdbot").joinpath("openapi.json").read_bytes()
    return web.Response(body=body, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """The instance's figures: this process's, plus its --workers siblings' added in."""
    body = request.app[METRICS].render()
    worker = request.app[WORKER]
    if worker is not None:
        body = merge([body, *await worker.from_siblings("/metrics")])
    return web.Response(body=body, headers={"Content-Type": _METRICS_TYPE})


def own_metrics_app(app: web.Application) -> web.Application:
    """What a worker serves its siblings on its Unix socket: its own figures (/metrics, the monitor's), nothing
    else."""

    async def own(request: web.Request) -> web.Response:
        return web.Response(body=app[METRICS].render(), headers={"Content-Type": _METRICS_TYPE})

    served = web.Application()
    served.router.add_get("/metrics", own)
    served.router.add_get("/monitor", monitor.own_state)
    served[monitor.WATCHED] = app[monitor.WATCHED]
    return served


def _reply_line(reply: Message) -> dict[str, Any]:
    """The access log's line for a chat reply once it is stored: how it ended and where its time went (no text)."""
    return {
        "reply_id": reply.id,
        "conversation_id": reply.conversation_id,
        "model": reply.model,
        "backend": reply.backend,
        "status": reply.status,
        "error_kind": reply.error_kind,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.output_tokens,
        "ttft_ms": reply.ttft_ms,
        "duration_ms": reply.total_ms,
        "timing": reply.timing,
    }


def _count(counted: Usage, generation: Generation) -> None:
    """A stored chat reply into the usage rollups: where it ended (its last backend), its counts."""
    reply = generation.reply
    counted.count(
        user_id=generation.owner,
        key_id=generation.key,
        model=reply.model,
        backend=generation.backends[-1] if generation.backends else None,
        source="chat",
        failed=reply.status == "failed",
        prompt_tokens=reply.prompt_tokens,
        output_tokens=reply.output_tokens,
    )


def _watch(watched: Monitor, reply: Message) -> None:
    """A stored chat reply into the live view's records."""
    watched.ended(
        "chat",
        ttft=reply.ttft_ms / 1000 if reply.ttft_ms is not None else None,
        duration=(reply.total_ms or 0) / 1000,
        failed=reply.status == "failed",
        cause=reply.error_kind,
        tokens=reply.output_tokens or 0,
    )
