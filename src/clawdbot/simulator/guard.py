"""Ollama's request guards: the Host allow-list for loopback servers, and CORS with its built-in origins.

A proxy that forwards a browser's Origin or the public Host gets a bare 403 from a real Ollama; the
simulator does the same so tests catch it (docs/ollama-protocol.md §6).
"""

from __future__ import annotations

import ipaddress
import re
import socket

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

_ALLOWED_ORIGIN: web.RequestKey[str] = web.RequestKey("allowed_origin", str)
_ORIGIN = re.compile(
    r"(https?://(localhost|127\.0\.0\.1|0\.0\.0\.0)(:\d+)?|(app|file|tauri|vscode-webview|vscode-file)://.*)"
)
_ALLOW_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,"
    "x-stainless-arch,x-stainless-async,x-stainless-custom-poll-interval,x-stainless-helper-method,"
    "x-stainless-lang,x-stainless-os,x-stainless-package-version,x-stainless-poll-helper,"
    "x-stainless-retry-count,x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout"
)


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:11434
        return host[1:].split("]", 1)[0].lower()
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).lower()


def host_allowed(host: str) -> bool:
    name = _hostname(host)
    if name in ("localhost", socket.gethostname().lower()) or name.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


def origin_allowed(origin: str, host: str) -> bool:
    return bool(_ORIGIN.fullmatch(origin)) or origin in (f"http://{host}", f"https://{host}")


def make_guard(loopback: bool) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if loopback and not host_allowed(host):
            return web.Response(status=403)
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not origin_allowed(origin, host):
            return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Vary": "Origin",
                    "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD",
                    "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                    "Access-Control-Max-Age": "43200",
                },
            )
        request[_ALLOWED_ORIGIN] = origin
        return await handler(request)

    return guard


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: gin-contrib/cors sets these before the handler runs, so streams carry them too."""
    origin = request.get(_ALLOWED_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
