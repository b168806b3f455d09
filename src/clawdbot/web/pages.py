"""The chat page and its assets, all under /chat so a proxy that forwards only /chat serves everything.

The files come from src/clawdbot/static, which the install command builds from frontend/ (never committed).
Asset names carry a content hash, so they are cached for a year; the page itself is never cached.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from .authenticate import PUBLIC

STATIC = Path(__file__).parent.parent / "static"
_ASSET = re.compile(r"[A-Za-z0-9._-]+")
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".json": "application/json",
}
# Model output is untrusted: no inline script, no foreign hosts, no framing, no images from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY = {"Content-Security-Policy": CSP}  # the rest of the security headers: web/app.py, on every response


def routes(app: web.Application) -> None:
    # What the pages show comes from the API, which is not public.
    app[PUBLIC].paths.update(["/", "/chat", "/chat/", "/chat/login", "/chat/setup", "/chat/admin"])
    app[PUBLIC].prefixes += ("/chat/assets/",)
    app.router.add_get("/", home)
    app.router.add_get("/chat", page)
    app.router.add_get("/chat/", page)
    for view in ("login", "setup", "admin"):  # the page shows these views itself; it asks the API what it may
        app.router.add_get(f"/chat/{view}", page)
    app.router.add_get("/chat/assets/{name}", asset)


async def home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/chat")


async def page(request: web.Request) -> web.Response:
    index = STATIC / "index.html"
    if not index.is_file():
        return web.Response(
            status=503,
            text="The chat page has not been built. Install clawdbot with its install "
            "command (uv sync, or pip install), which builds frontend/.",
            headers=SECURITY,
        )
    return web.Response(
        body=index.read_bytes(),
        content_type="text/html",
        charset="utf-8",
        headers={**SECURITY, "Cache-Control": "no-cache"},
    )


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = STATIC / "assets" / name
    if not _ASSET.fullmatch(name) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(
        path,
        headers={
            **SECURITY,
            "Content-Type": _TYPES.get(path.suffix, "application/octet-stream"),
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )
