"""The platform's HTTP application: `create_app(settings)` and `run(settings)`.

Shared things (the backend session, the demo simulator, health checks, the stall watchdog, logging) are
opened in a cleanup context at startup and closed at shutdown; nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy.engine import make_url

from . import __version__, authapi, chatapi, pages, realtime
from .accounts import Accounts
from .admission import Admission, Overloaded
from .auth import AUTH, Auth, authenticate
from .backends import Backend, BackendStatus
from .chat import Chat
from .chatapi import CHAT
from .chatapi import json as json_response  # one JSON responder, lone surrogates included
from .errors import BackendError, ClawdbotError, Conflict, NotFound, PayloadTooLarge
from .eventlog import MemoryLog
from .generations import Generations, Hub
from .logs import LOG, AccessLog, LineWriter
from .logs import setup as setup_logging
from .metrics import Metrics
from .proxy import Relay
from .settings import Settings, SimulatorSettings
from .signals import until_signalled
from .store import Store, default_url

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)
RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)
ADMISSION: web.AppKey[Admission] = web.AppKey("admission", Admission)
LOG_WRITER: web.AppKey[LineWriter] = web.AppKey("log-writer", LineWriter)
ACCESS: web.AppKey[AccessLog] = web.AppKey("access-log", AccessLog)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_ids, access_log, json_errors, authenticate],
        client_max_size=settings.max_request_bytes,
        handler_args={"max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.extend([_logging, _backend, _chat])
    app.on_response_prepare.append(_stamp_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)
    app.router.add_route("*", "/api/{tail:.*}", proxy)
    app.router.add_route("*", "/v1/{tail:.*}", proxy)
    chatapi.routes(app)
    authapi.routes(app)
    realtime.routes(app)
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


async def _backend(app: web.Application) -> AsyncIterator[None]:
    """The backend (or, with --demo, an in-process simulator), its health checks and the relay."""
    settings, metrics = app[SETTINGS], app[METRICS]
    simulator = None
    preload: asyncio.Task[None] | None = None
    url = settings.ollama_url
    if settings.demo:
        from .simulator.server import Simulator

        simulator = Simulator(SimulatorSettings(port=0, profile=settings.demo_profile))
        await simulator.start()
        url = simulator.url
        preload = asyncio.create_task(
            simulator.preload(settings.num_ctx)
        )  # the first chat need not wait for a model load
    backend = Backend(settings, url, simulated=simulator is not None)
    app[BACKEND] = backend
    admission = app[ADMISSION] = _admission(settings, metrics, simulator.settings.num_parallel if simulator else None)
    access = app[ACCESS] = AccessLog(app[LOG_WRITER] if settings.access_log else None)
    relay = Relay(
        backend,
        metrics,
        first_byte_timeout=settings.first_byte_timeout,
        idle_timeout=settings.idle_timeout,
        access=access,
        admission=admission,
        identity_header=settings.sso_header,
    )
    app[RELAY] = relay
    await backend.probe()
    metrics.backend_up = int(backend.status.reachable)
    tasks = [
        asyncio.create_task(backend.watch(lambda status: _backend_changed(app, status))),
        asyncio.create_task(relay.watchdog()),
    ]
    try:
        yield
    finally:
        for task in [*tasks, *([preload] if preload else [])]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await backend.close()
        if simulator is not None:
            await simulator.stop()


async def _chat(app: web.Application) -> AsyncIterator[None]:
    """Conversations: the database (migrated at start), replies in flight, and the service both transports use."""
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.database_url or default_url(settings.data_dir))
    await store.open()
    accounts = app[authapi.ACCOUNTS] = Accounts(store.db)
    auth = app[AUTH] = Auth(accounts, settings)
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
    generations = Generations(
        store,
        app[BACKEND],
        Hub(),
        log,
        app[ADMISSION],
        app[METRICS],
        checkpoint_interval=settings.checkpoint_interval,
    )
    chat = app[CHAT] = Chat(store, generations, app[BACKEND], settings)
    try:
        yield
    finally:
        await chat.finish_turns()
        await generations.shutdown()
        await app[AUTH].close()
        await store.close()


def _admission(settings: Settings, metrics: Metrics, simulated_slots: int | None) -> Admission:
    """K slots for the backend: as configured, else its parallelism as far as the gateway can know it."""
    slots = settings.max_running
    if slots is None and simulated_slots is not None:
        slots = simulated_slots or 64  # the demo simulator's 0 means unlimited
    if slots is None:
        parallel = os.environ.get("OLLAMA_NUM_PARALLEL", "")
        slots = int(parallel) if parallel.isdigit() and int(parallel) > 0 else 1
    admission = Admission(slots, max_queue=settings.max_queue, max_queue_per_user=settings.max_queue_per_user)
    metrics.gauges.update(
        clawdbot_generation_slots=("Generations the backend may run at once (--max-running).", lambda: admission.slots),
        clawdbot_generations_running=("Generations holding a backend slot now.", lambda: admission.running),
        clawdbot_generations_queued=("Generations waiting for a backend slot.", lambda: admission.queued),
    )
    metrics.labelled["clawdbot_generations_rejected"] = (
        "Generations refused because the queue was full (429 per user, 503 in all), by reason.",
        "reason",
        lambda: admission.rejected,
    )
    return admission


def _backend_changed(app: web.Application, status: BackendStatus) -> None:
    app[METRICS].backend_up = int(status.reachable)
    if status.reachable:
        LOG.info("backend is reachable", extra={"backend": app[BACKEND].url, "models": status.model_names()})
    else:
        LOG.warning("backend is unreachable", extra={"backend": app[BACKEND].url, "reason": status.error})


async def proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[RELAY].handle(request)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    status = backend.status
    body = {
        "status": "ready" if status.reachable else "not ready",
        "backend": {
            "url": backend.url,
            "simulated": backend.simulated,
            "reachable": status.reachable,
            "version": status.version,
            "models": status.model_names(),
            "error": status.error,
            "checked_at": status.checked_at,
        },
    }
    if backend.simulated:
        body["note"] = "demo mode: the model is simulated by clawdbot, not a real Ollama"
    return json_response(body, 200 if status.reachable else 503)


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
    request["request_id"] = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
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
        body = {
            "error": {
                "message": error.message,
                "type": "api_error" if error.status >= 500 else "invalid_request_error",
                "param": None,
                "code": error.code,
            }
        }
    else:
        body = {"error": error.message, "code": error.code}
        if isinstance(error, BackendError):
            body["backend"] = error.backend
        if isinstance(error, Conflict):
            body.update(error.details)
        if isinstance(error, Overloaded):
            body["retry_after"] = error.retry_after
    response = json_response(body, error.status)
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


async def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; print one line saying where, to what, and whether the backend answered."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096, reuse_address=True)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        print(f"clawdbot: cannot listen on {settings.host}:{settings.port}: {error.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    port = runner.addresses[0][1]
    print(startup_line(settings, port, app[BACKEND]), flush=True)
    token = await app[AUTH].setup_link_token()
    if token is not None:  # stdout, not the log: the link is for the person who started the gateway
        print(
            f"clawdbot: no admin yet — create one at http://{settings.host}:{port}/chat/setup#token={token} "
            "(or: clawdbot user add NAME --admin)",
            flush=True,
        )
    try:
        await until_signalled()
    finally:
        await runner.cleanup()


def startup_line(settings: Settings, port: int, backend: Backend) -> str:
    status = backend.status
    kind = "simulated Ollama (--demo; no real model)" if backend.simulated else "Ollama"
    if status.reachable:
        models = ", ".join(status.model_names()) or "no models pulled"
        health = f"answering (version {status.version}; models: {models})"
    else:
        health = f"NOT answering — {status.error}; /readyz reports it until it comes back"
    database = make_url(settings.database_url or default_url(settings.data_dir))
    where = database.database if database.get_backend_name() == "sqlite" else database.render_as_string()
    return (
        f"clawdbot {__version__} on http://{settings.host}:{port} — backend {backend.url} "
        f"[{kind}] {health} — chat page http://{settings.host}:{port}/chat, conversations in "
        f"{where} — {time.strftime('%H:%M:%S')}"
    )
