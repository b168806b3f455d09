"""Who is asking, over HTTP: one middleware resolves each request to an Actor before any handler runs, so no route
can forget to, and a route is public only by being listed here. Cookie-authenticated changes need the session's
CSRF token, and a request whose Origin is another site's is refused whatever it carries (docs/accounts.md).
"""

from __future__ import annotations

import secrets
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from ..auth.accounts import KEY_PREFIX
from ..auth.service import Auth
from ..errors import Forbidden, Unauthenticated
from ..identity import Actor, nobody_needed
from ..logs import LOG
from ..settings import Settings, loopback
from .forwarded import Proxies

SESSION_COOKIE = "clawdbot_session"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


class Public:
    """What anyone may reach without signing in, declared by the module that adds each route (pages, health, the
    sign-in routes): a route is public only by being declared here, so a new one cannot forget to be protected."""

    def __init__(self) -> None:
        self.paths: set[str] = set()  # any method
        self.routes: set[tuple[str, str]] = set()  # (method, path)
        self.prefixes: tuple[str, ...] = ()

    def __contains__(self, request: web.Request) -> bool:
        path = request.path
        return path in self.paths or path.startswith(self.prefixes) or (request.method, path) in self.routes


PUBLIC: web.AppKey[Public] = web.AppKey("public", Public)


class Gate:
    """What a request's headers say about who sent it, and from where; the users behind them are Auth's."""

    def __init__(self, auth: Auth, settings: Settings) -> None:
        self.auth, self.settings = auth, settings
        self.proxies = Proxies(settings.trusted_proxies, settings.client_address_header)
        self.sso_proxies = Proxies(settings.sso_proxies)
        public = [str(URL(settings.public_url).origin())] if settings.public_url else []
        self.origins = frozenset([*settings.allowed_origins, *public])  # besides the host a request was sent to
        # Worked out once per Host header and per client address, not on every request (a few µs each).
        self._local_hosts: dict[str, bool] = {}
        self._owners: dict[str, Actor] = {}

    async def identify(self, request: web.Request) -> Actor | None:
        """The request's user by key, trusted header or session cookie; None if it names none. A key or cookie
        that is wrong is Unauthenticated, not ignored: the caller meant to be someone."""
        if not self.auth.enabled:
            address = self.proxies.client(request)
            actor_ = self._owners.get(address)
            if actor_ is None:
                actor_ = _remember(self._owners, address, nobody_needed(address))
            return actor_
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, secret = header.partition(" ")
            secret = secret.strip()
            if scheme.lower() == "bearer" and secret.startswith(KEY_PREFIX):
                return await self.auth.by_key(secret)
            if not (self.settings.open_api and _raw(request.path)):  # an SDK's placeholder key, on the open API
                raise Unauthenticated("Authorization must be Bearer and a clawdbot API key (cbk_…)")
        if self.settings.sso_header and (name := request.headers.get(self.settings.sso_header)):
            if self.sso_proxies.trusted(request.remote or ""):
                return await self.auth.by_sso(name.strip().lower())
            LOG.warning("single sign-on header from an untrusted address ignored", extra={"address": request.remote})
        token = request.cookies.get(SESSION_COOKIE)
        if token and request.path.startswith("/chat/"):
            return await self.auth.by_session(token)
        return None

    def check_origin(self, request: web.Request) -> None:
        """A browser names the page that sent a request in Origin; another site's page may not change anything
        or open a WebSocket here (the cookie would go with it)."""
        if request.method in SAFE and request.headers.get("Upgrade", "").lower() != "websocket":
            return
        origin = request.headers.get("Origin")
        if origin is None or origin in self.origins:
            return
        sent_to = _host_of(request, self.proxies)
        try:
            parsed = URL(origin)
            same = parsed.host is not None and parsed.host.lower() == sent_to.host
            same = same and (sent_to.port is None or parsed.port == sent_to.port)
        except ValueError:
            same = False
        if not same:
            raise Forbidden(f"requests from {origin!r} may not change anything here", "bad_origin")

    def check_host(self, request: web.Request) -> None:
        """Without accounts the gateway serves only its own machine: a page on another site that renamed itself
        to 127.0.0.1 (DNS rebinding) still sends its own name in Host."""
        given = request.headers.get("Host", "")
        local = self._local_hosts.get(given)
        if local is None:
            local = _remember(self._local_hosts, given, loopback(_host_of(request, None).host))
        if not local:
            raise Forbidden("without accounts (--no-auth) the gateway answers only to localhost", "bad_host")


AUTH: web.AppKey[Auth] = web.AppKey("auth", Auth)
GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)


class _Host:
    def __init__(self, host: str, port: int | None) -> None:
        self.host, self.port = host, port


def _host_of(request: web.Request, proxies: Proxies | None) -> _Host:
    """The host (and port, when named) the client sent the request to; a trusted proxy's X-Forwarded-Host wins."""
    given = request.headers.get("Host", "")
    if "X-Forwarded-Host" in request.headers and proxies is not None and proxies.trusted(request.remote or ""):
        given = request.headers["X-Forwarded-Host"].split(",")[0].strip()
    try:
        url = URL("http://" + given)
        return _Host((url.host or "").lower(), url.explicit_port)
    except ValueError:
        return _Host("", None)


_T = TypeVar("_T")
_REMEMBERED = 1024  # entries of a per-request lookup cache; a client making up Host headers only empties it


def _remember(cache: dict[str, _T], key: str, value: _T) -> _T:
    if len(cache) >= _REMEMBERED:
        cache.clear()
    cache[key] = value
    return value


def _raw(path: str) -> bool:
    return path.startswith(("/api/", "/v1/"))


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    gate = request.app[GATE]
    try:
        return await _authenticated(gate, request, handler)
    except (Unauthenticated, Forbidden) as refusal:
        gate.auth.refused[refusal.code] = gate.auth.refused.get(refusal.code, 0) + 1
        raise


async def _authenticated(gate: Gate, request: web.Request, handler: Handler) -> web.StreamResponse:
    if not gate.auth.enabled:
        gate.check_host(request)
    public = request in request.app[PUBLIC]
    try:
        actor_ = await gate.identify(request)
    except (Unauthenticated, Forbidden) as error:
        if not public or error.code not in ("unauthenticated", "disabled"):
            raise
        actor_, request["disabled"] = None, error.code == "disabled"  # signing in as someone else still works
    if actor_ is None and _raw(request.path) and gate.settings.open_api:
        actor_ = Actor("anonymous", "anonymous", "user", "none", queue=gate.proxies.client(request))
    if actor_ is None or actor_.via != "key":
        # Credentials a browser adds by itself (a cookie, an auth proxy's session, being on localhost) are what
        # another site could ride; a key it must be given.
        gate.check_origin(request)
    if actor_ is None and not public:
        raise Unauthenticated(
            "sign in first, or send an API key (Authorization: Bearer cbk_…)"
            if not _raw(request.path)
            else "this API needs a key: Authorization: Bearer cbk_… (create one on the chat page)"
        )
    if actor_ is not None and actor_.via == "session" and request.method not in SAFE and not public:
        given = request.headers.get("X-CSRF-Token", "")
        if not (actor_.csrf_token and secrets.compare_digest(given, actor_.csrf_token)):
            raise Forbidden("a change made with the session cookie needs its X-CSRF-Token header", "csrf")
    request["actor"] = actor_
    return await handler(request)


def current(request: web.Request) -> Actor:
    """The request's user (the middleware has made sure there is one on every route that is not public)."""
    found: Actor | None = request.get("actor")
    if found is None:
        raise Unauthenticated("sign in first")
    return found
