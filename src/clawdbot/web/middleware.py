"""What every request and response goes through: its request id, the access log, errors as JSON, and the headers
every response carries. `create_app` installs them (app.py)."""

from __future__ import annotations

import asyncio
import os
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import BackendError, ClawdbotError, Conflict, NotFound, Overloaded, PayloadTooLarge, openai_error
from ..logs import LOG, AccessLog
from ..timing import RECEIVED
from .http import SETTINGS
from .http import json as json_response
from .urls import conflict_details

ACCESS: web.AppKey[AccessLog] = web.AppKey("access-log", AccessLog)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_fresh_ids: list[str] = []


def _fresh_id() -> str:
    """128 random bits as hex: drawn from the OS 128 at a time, a system call per request being most of the cost."""
    if not _fresh_ids:
        drawn = os.urandom(2048).hex()
        _fresh_ids.extend(drawn[i : i + 32] for i in range(0, len(drawn), 32))
    return _fresh_ids.pop()


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Accept the caller's X-Request-ID when it is sane, or make one; it is returned and logged."""
    RECEIVED.set(time.perf_counter())  # where a reply's time starts (timing.py); this request's task only
    given = request.headers.get("X-Request-ID", "")
    request["request_id"] = given if _REQUEST_ID.fullmatch(given) else _fresh_id()
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


async def stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
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
