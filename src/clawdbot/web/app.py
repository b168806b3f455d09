"""The platform's HTTP application: `create_app(settings)` and `run(settings)`.

Shared things (the backend session, health checks, the stall watchdog, logging) are opened in a cleanup context
at startup and closed at shutdown; nothing happens at import time. With --demo, cli.py starts the simulator and
hands it over as a `StandIn`: the server itself never imports the simulator.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .. import __version__
from ..auth.accounts import Accounts
from ..auth.service import Auth
from ..auth.state import MemoryCredentialCache, MemoryThrottle
from ..backends.admission import Admission, MemoryAdmission
from ..backends.fleet import Member
from ..backends.fleetmetrics import families
from ..backends.setup import build_fleet
from ..chat.eventlog import MemoryLog
from ..chat.generations import Generations
from ..chat.service import Chat
from ..chat.state import MemoryRunningReplies, MemorySendResults
from ..chat.titles import Titles
from ..errors import BackendError, ClawdbotError, Conflict, NotFound, Overloaded, PayloadTooLarge, openai_error
from ..gateway.relay import Relay
from ..live.connection import Live
from ..logs import LOG, AccessLog, LineWriter
from ..logs import setup as setup_logging
from ..metrics import Metrics
from ..settings import Settings
from ..store.conversations import Store, default_url
from ..store.limits import Limits
from . import admin, authapi, chatapi, pages, realtime, sse
from .admin import FLEET, LIMITS
from .authenticate import AUTH, GATE, PUBLIC, Gate, Public, authenticate, current
from .chatapi import CHAT
from .http import SETTINGS
from .http import json as json_response  # one JSON responder, lone surrogates included
from .urls import conflict_details

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)
ADMISSION: web.AppKey[Admission] = web.AppKey("admission")
LOG_WRITER: web.AppKey[LineWriter] = web.AppKey("log-writer", LineWriter)
ACCESS: web.AppKey[AccessLog] = web.AppKey("access-log", AccessLog)
# The deployment's Redis (--redis-url), or None: this process alone, its live state in memory.
LIVE: web.AppKey[Live | None] = web.AppKey("live")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class StandIn:
    """A model server started with the gateway (--demo's simulator): where it listens, how many generations it runs
    at once (0: no limit), and how to load a model ahead of the first chat."""

    url: str
    slots: int
    preload: Callable[[int], Coroutine[Any, Any, None]]


STAND_IN: web.AppKey[StandIn | None] = web.AppKey("stand-in", StandIn)


def create_app(settings: Settings, stand_in: StandIn | None = None) -> web.Application:
    app = web.Application(
        middlewares=[request_ids, access_log, json_errors, authenticate],
        client_max_size=settings.max_request_bytes,
        handler_args={"max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[STAND_IN] = stand_in
    app[METRICS] = Metrics()
    app[LIMITS] = Limits(settings)  # the command line's defaults until the database is open
    app.cleanup_ctx.extend([_logging, _live, _backend, _chat])
    app.on_response_prepare.append(_stamp_headers)
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
    admission = MemoryAdmission(
        fleet.places,
        max_queue=settings.max_queue,
        max_queue_per_user=settings.max_queue_per_user,
        policy=settings.routing,
    )
    app[ADMISSION] = admission
    admission.register(metrics)
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
        await fleet.close()


async def _chat(app: web.Application) -> AsyncIterator[None]:
    """Conversations: the database (migrated at start), replies in flight, and the service both transports use."""
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.database_url or default_url(settings.data_dir))
    await store.open()
    limits = app[LIMITS]
    await limits.open(store.db)
    accounts = app[authapi.ACCOUNTS] = Accounts(store.db)
    auth = app[AUTH] = Auth(
        accounts,
        settings,
        cache=MemoryCredentialCache(),
        by_account=MemoryThrottle(5),
        by_address=MemoryThrottle(20),
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
    interrupted = await store.interrupt_unfinished()
    if interrupted:
        LOG.warning("replies left unfinished by a previous run are marked interrupted", extra={"count": interrupted})
    log = MemoryLog(max_events=settings.reply_log_events, max_bytes=settings.reply_log_bytes)
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
        MemoryRunningReplies(),
        app[METRICS],
        checkpoint_interval=settings.checkpoint_interval,
    )
    chat = app[CHAT] = Chat(
        store, generations, app[FLEET], settings, limits, log=log, admission=admission, results=MemorySendResults()
    )
    titles = Titles(store, generations, app[FLEET], limits, admission, log, app[METRICS])
    watching = asyncio.create_task(limits.watch(settings.health_interval))
    try:
        yield
    finally:
        watching.cancel()
        await titles.close()
        await chat.finish_turns()
        await generations.shutdown()
        await app[AUTH].close()
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
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Accept the caller's X-Request-ID when it is sane, or make one; it is returned and logged."""
    given = request.headers.get("X-Request-ID", "")
    request["request_id"] = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(16)  # uuid4's cost / 4
    return await handler(request)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line for every request the relay does not log itself (the chat API, its WebSocket, the page, health)."""
    path = request.path
    if path.startswith(("/api/", "/v1/")):
        return await handler(request)
    received, status = time.perf_counter(), 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as answer:  # a redirect (/ → /chat) or an error aiohttp renders: its own status
        status = answer.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client left first (every WebSocket and event stream ends so): nginx's code for it
        raise
    finally:
        route = request.match_info.route.resource
        request.app[ACCESS].write(
            {
                "request_id": request.get("request_id"),
                "method": request.method,
                "route": route.canonical if route is not None else None,
                "status": status,
                "duration_ms": round((time.perf_counter() - received) * 1000, 2),
            }
        )


# On every response the gateway sends, pages or not.
_SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["X-Request-ID"] = request.get("request_id", "")
    headers.pop("Server", None)
    # Whatever a response holds (a backend's bytes too), no browser may run it, frame it, or sniff it into HTML.
    headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'; sandbox")
    headers.update(_SECURITY)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as JSON: OpenAI's shape under /v1, Ollama's {"error": …} elsewhere. No tracebacks."""
    try:
        return await handler(request)
    except ClawdbotError as error:
        if isinstance(error, BackendError):
            LOG.warning(
                "backend failure",
                extra={
                    "request_id": request.get("request_id"),
                    "kind": error.kind,
                    "backend": error.backend,
                    "reason": error.message,
                },
            )
        return _error(request, error)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_request_bytes
        return _error(
            request,
            PayloadTooLarge(f"request body is larger than the {limit}-byte limit (--max-request-bytes)"),
        )
    except web.HTTPNotFound:
        return _error(request, NotFound(f"no route for {request.method} {request.path}"))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        generic = ClawdbotError(error.reason)
        generic.status, generic.code = error.status, error.reason.lower().replace(" ", "_")
        return _error(request, generic)
    except Exception as error:  # noqa: BLE001 - a bug: logged by type and place (not its text: it may quote input)
        frame = error.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{frame.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.tb_lineno}" if frame else "?"
        found = {"request_id": request.get("request_id"), "error": type(error).__name__, "at": where}
        LOG.error("unexpected error", extra=found)
        return _error(request, ClawdbotError(f"internal error; the log has request id {request.get('request_id')}"))


def _error(request: web.Request, error: ClawdbotError) -> web.Response:
    body: dict[str, object]
    if request.path.startswith("/v1/"):
        body = openai_error(error.message, status=error.status, code=error.code)
    else:
        body = {"error": error.message, "code": error.code}
        if isinstance(error, BackendError):
            body["backend"] = error.backend
        if isinstance(error, Conflict):
            body.update(conflict_details(error))
        if isinstance(error, Overloaded):
            body["retry_after"] = error.retry_after
    response = json_response(body, error.status)
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after)
    return response
