"""Who is asking: sessions, API keys, single sign-on, and the checks every request passes (docs/accounts.md).

One middleware resolves each request to an Actor before any handler runs, so no route can forget to: a route
is public only by being listed here. Cookie-authenticated changes need the session's CSRF token, and a request
whose Origin is another site's is refused whatever it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from yarl import URL

from .accounts import KEY_PREFIX, Accounts, Row, actor, digest
from .admission import Overloaded, trusted_peer, user_of
from .errors import Forbidden, Unauthenticated
from .identity import Actor, nobody_needed
from .logs import LOG
from .settings import Settings, loopback

SESSION_COOKIE = "clawdbot_session"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/chat", "/chat/", "/chat/login"})
PUBLIC_PATHS |= {"/chat/setup", "/chat/admin"}  # pages: what they show comes from the API, which is not public
PUBLIC_ROUTES = frozenset({("GET", "/chat/api/session"), ("POST", "/chat/api/session"), ("POST", "/chat/api/setup")})
# Ollama's model management: it changes the server everyone shares, so only an admin's key may.
ADMIN_ONLY = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/")
_CACHE_S = 5.0  # how long a key's or a session's lookup is reused; a revocation here clears it at once
_CACHE_SIZE = 10_000


class Throttle:
    """Failed sign-ins per key (an account, an address): after `free` failures within `window` seconds, each
    further attempt must wait twice as long as the last, up to `cap` seconds. Bounded: the oldest keys go."""

    def __init__(self, free: int, *, window: float = 900.0, cap: float = 900.0, size: int = 100_000) -> None:
        self.free, self.window, self.cap, self.size = free, window, cap, size
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (count, last failure)

    def wait(self, key: str, now: float) -> float:
        count, last = self.failures.get(key, (0, 0.0))
        if count <= self.free or now - last > self.window:
            return 0.0
        return max(0.0, last + min(self.cap, 2.0 ** (count - self.free)) - now)

    def failed(self, key: str, now: float) -> None:
        count, last = self.failures.pop(key, (0, 0.0))
        self.failures[key] = (1 if now - last > self.window else count + 1, now)
        while len(self.failures) > self.size:
            self.failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self.failures.pop(key, None)


def hashing_slots() -> int:
    """Password hashes at once. Each runs its 4 lanes in 4 threads outside the GIL and holds 64 MiB for ~100 ms:
    their threads get the cores but one, which the event loop needs to relay every stream. On 2 cores (1 slot), a
    storm of sign-ins adds +4/+14 ms TTFT p50/p99 to 100 streams where 2 slots added +12/+39 ms, for 10% fewer
    sign-ins a second (BENCHMARKS.md §6)."""
    return min(4, max(1, (len(os.sched_getaffinity(0)) - 1) // 4))


def disabled() -> Forbidden:
    return Forbidden("this account is disabled; ask an admin", "disabled")


class Auth:
    def __init__(self, accounts: Accounts, settings: Settings) -> None:
        self.accounts, self.settings = accounts, settings
        self.enabled = settings.accounts
        self.hasher = PasswordHasher()  # Argon2id, RFC 9106's second recommended profile (64 MiB, t=3)
        self._hashing = asyncio.Semaphore(hashing_slots())
        self._dummy: str | None = None  # checked for unknown names, so they take as long as known ones
        self.setup_digest: str | None = None
        self.by_account, self.by_address = Throttle(5), Throttle(20)
        # For /metrics: sign-ins by outcome, and requests refused by why (brute force and probing show here).
        self.sign_ins: dict[str, int] = {"ok": 0, "bad_credentials": 0, "throttled": 0, "disabled": 0}
        self.refused: dict[str, int] = {}
        self._cache: OrderedDict[str, tuple[float, Actor | None]] = OrderedDict()  # key -> (valid until, user)
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Told when a user's open connections must end: (user id, which of them, the close code and reason).
        self.closing: list[Callable[[str, Callable[[Actor], bool], tuple[int, bytes]], None]] = []
        self.trusted = tuple(settings.trusted_proxies)
        self.sso_proxies = tuple(settings.sso_proxies)
        self._epoch = 0  # bumped by forget(): a lookup that started before it is not cached

    async def close(self) -> None:
        """Before the database closes: let the last key-use notes finish."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def setup_link_token(self) -> str | None:
        """With accounts on and no admin yet, a new one-time setup token (only its digest is kept)."""
        if not self.enabled or await self.accounts.has_admin():
            return None
        token = secrets.token_urlsafe(32)
        self.setup_digest = digest(token)
        return token

    # ---- passwords -----------------------------------------------------------------------------------------
    async def hash_password(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def check_password(self, stored: str | None, password: str) -> bool:
        async with self._hashing:
            if stored is None:  # no such user: spend the same time, so a name's existence does not show
                if self._dummy is None:
                    self._dummy = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(16))
                with contextlib.suppress(VerificationError, InvalidHashError):
                    await asyncio.to_thread(self.hasher.verify, self._dummy, password)
                return False
            try:
                return await asyncio.to_thread(self.hasher.verify, stored, password)
            except (VerificationError, InvalidHashError):
                return False

    async def sign_in(self, name: str, password: str, address: str) -> tuple[str, Row, Row]:
        """Check a name and password; the new session's token, its row and the user. Failures are throttled per
        account and per address, before the password is even looked at."""
        now = time.monotonic()
        wait = max(self.by_account.wait(name, now), self.by_address.wait(address, now))
        if wait > 0:
            self.sign_ins["throttled"] += 1
            raise Overloaded(
                f"too many failed sign-ins; try again in {int(wait) + 1} s",
                retry_after=int(wait) + 1,
                status=429,
                code="too_many_attempts",
            )
        user = await self.accounts.user_by_name(name)
        if not await self.check_password(user["password_hash"] if user else None, password) or user is None:
            self.sign_ins["bad_credentials"] += 1
            self.by_account.failed(name, now)
            self.by_address.failed(address, now)
            LOG.warning("failed sign-in", extra={"account": name if user else None, "address": address})
            wrong = Unauthenticated("wrong name or password")
            wrong.code = "bad_credentials"
            raise wrong
        if user["disabled"]:
            self.sign_ins["disabled"] += 1
            raise disabled()
        self.sign_ins["ok"] += 1
        self.by_account.succeeded(name)
        self.by_address.succeeded(address)
        token, session = await self.accounts.start_session(user["id"], self.settings.session_hours * 3600)
        return token, session, user

    def take_setup_token(self, token: str) -> None:
        """Use up the setup token: it works once."""
        if self.setup_digest is None:
            raise Forbidden("this gateway is already set up; sign in", "setup_closed")
        if not secrets.compare_digest(digest(token), self.setup_digest):
            raise Forbidden("the setup link is not valid; use the one clawdbot printed at its last start", "bad_token")
        self.setup_digest = None

    # ---- who is asking -------------------------------------------------------------------------------------
    async def identify(self, request: web.Request) -> Actor | None:
        """The request's user by key, trusted header or session cookie; None if it names none. A key or cookie
        that is wrong is Unauthenticated, not ignored: the caller meant to be someone."""
        if not self.enabled:
            return nobody_needed(user_of(request, self.trusted))
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, secret = header.partition(" ")
            secret = secret.strip()
            if scheme.lower() == "bearer" and secret.startswith(KEY_PREFIX):
                return await self._by_key(secret)
            if not (self.settings.open_api and _raw(request.path)):  # an SDK's placeholder key, on the open API
                raise Unauthenticated("Authorization must be Bearer and a clawdbot API key (cbk_…)")
        if self.settings.sso_header and (name := request.headers.get(self.settings.sso_header)):
            if trusted_peer(request.remote or "", self.sso_proxies):
                return await self._by_sso(name.strip().lower())
            LOG.warning("single sign-on header from an untrusted address ignored", extra={"address": request.remote})
        token = request.cookies.get(SESSION_COOKIE)
        if token and request.path.startswith("/chat/"):
            return await self._by_session(token)
        return None

    async def _by_key(self, secret: str) -> Actor:
        key_hash = digest(secret)
        found = await self._cached(key_hash, lambda: self._key_actor(key_hash))
        if found is None:
            raise Unauthenticated("this API key is not valid: revoked, mistyped, or its user disabled")
        return found

    async def _by_session(self, token: str) -> Actor:
        session_hash = digest(token)
        found = await self._cached(session_hash, lambda: self._session_actor(session_hash))
        if found is None:
            raise Unauthenticated("the session has ended; sign in again")
        return found

    async def _by_sso(self, name: str) -> Actor:
        found = await self._cached("sso:" + name, lambda: self._sso_actor(name))
        assert found is not None  # a trusted proxy's name always is someone (made on first sight)
        return found

    async def _key_actor(self, key_hash: str) -> tuple[Actor | None, float]:
        pair = await self.accounts.key_user(key_hash)
        if pair is None:
            return None, time.time() + _CACHE_S
        record, user = pair
        self._touch_key(record["id"], time.monotonic())
        return actor(user, "key", key=record["id"]), time.time() + _CACHE_S

    async def _session_actor(self, session_hash: str) -> tuple[Actor | None, float]:
        pair = await self.accounts.session(session_hash)
        if pair is None:
            return None, time.time() + _CACHE_S
        record, user = pair
        if user["disabled"]:  # not cached: an admin enabling them again ends this session anyway
            raise disabled()
        return actor(user, "session", session=record), min(time.time() + _CACHE_S, record["expires_at"] / 1000)

    async def _sso_actor(self, name: str) -> tuple[Actor | None, float]:
        user = await self.accounts.sso_user(name[:64])
        if user["disabled"]:
            raise disabled()
        return actor(user, "sso"), time.time() + _CACHE_S

    async def _cached(self, key: str, lookup: Callable[[], Awaitable[tuple[Actor | None, float]]]) -> Actor | None:
        """A key's, a session's or a trusted name's user, looked up at most every _CACHE_S seconds (a session's
        never past its expiry). A lookup that forget() overtook answers its own request but is not kept."""
        hit = self._cache.get(key)
        if hit is not None and time.time() < hit[0]:
            return hit[1]
        epoch = self._epoch
        found, until = await lookup()
        if epoch == self._epoch:
            self._remember(key, until, found)
        return found

    def _remember(self, key: str, until: float, found: Actor | None) -> None:
        self._cache[key] = (until, found)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _touch_key(self, key_id: str, now: float) -> None:
        """Note a key's use at most once a minute, without making its request wait for the write."""
        if now - self._touched.get(key_id, -60.0) < 60.0:
            return
        self._touched[key_id] = now
        task = asyncio.create_task(self.accounts.touch_key(key_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, user_id: str, ended: Callable[[Actor], bool] | None = None) -> None:
        """A user changed: drop what was cached. Their open connections that `ended` names (signed out, disabled,
        revoked) close with 1008; without `ended`, all of them close with 1012 and reconnect as the user is now
        (new limits apply to sockets too)."""
        self._cache.clear()
        self._epoch += 1
        why = (1008, b"signed out") if ended is not None else (1012, b"your account changed; reconnect")
        for listener in self.closing:
            listener(user_id, ended or (lambda _: True), why)

    # ---- what every request passes -------------------------------------------------------------------------
    def check_origin(self, request: web.Request) -> None:
        """A browser names the page that sent a request in Origin; another site's page may not change anything
        or open a WebSocket here (the cookie would go with it)."""
        if request.method in SAFE and request.headers.get("Upgrade", "").lower() != "websocket":
            return
        origin = request.headers.get("Origin")
        if origin is None or origin in self.settings.allowed_origins:
            return
        sent_to = _host_of(request, self.trusted)
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
        if not loopback(_host_of(request, ()).host):
            raise Forbidden("without accounts (--no-auth) the gateway answers only to localhost", "bad_host")


class _Host:
    def __init__(self, host: str, port: int | None) -> None:
        self.host, self.port = host, port


def _host_of(request: web.Request, trusted: tuple[str, ...]) -> _Host:
    """The host (and port, when named) the client sent the request to."""
    given = request.headers.get("Host", "")
    if "X-Forwarded-Host" in request.headers and trusted_peer(request.remote or "", trusted):
        given = request.headers["X-Forwarded-Host"].split(",")[0].strip()
    try:
        url = URL("http://" + given)
        return _Host((url.host or "").lower(), url.explicit_port)
    except ValueError:
        return _Host("", None)


def _raw(path: str) -> bool:
    return path.startswith(("/api/", "/v1/"))


def _public(request: web.Request) -> bool:
    path = request.path
    return path in PUBLIC_PATHS or path.startswith("/chat/assets/") or (request.method, path) in PUBLIC_ROUTES


AUTH: web.AppKey[Auth] = web.AppKey("auth", Auth)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    try:
        return await _authenticated(auth, request, handler)
    except (Unauthenticated, Forbidden) as refusal:
        auth.refused[refusal.code] = auth.refused.get(refusal.code, 0) + 1
        raise


async def _authenticated(auth: Auth, request: web.Request, handler: Handler) -> web.StreamResponse:
    if not auth.enabled:
        auth.check_host(request)
    public = _public(request)
    try:
        actor_ = await auth.identify(request)
    except (Unauthenticated, Forbidden) as error:
        if not public or error.code not in ("unauthenticated", "disabled"):
            raise
        actor_, request["disabled"] = None, error.code == "disabled"  # signing in as someone else still works
    if actor_ is None and _raw(request.path) and auth.settings.open_api:
        actor_ = Actor("anonymous", "anonymous", "user", "none", queue=user_of(request, auth.trusted))
    if actor_ is None or actor_.via != "key":
        # Credentials a browser adds by itself (a cookie, an auth proxy's session, being on localhost) are what
        # another site could ride; a key it must be given.
        auth.check_origin(request)
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


MODEL_LISTS = frozenset({"/api/tags", "/api/ps", "/v1/models"})


def visible_models(body: bytes, actor_: Actor) -> bytes:
    """A model list (Ollama's `models` or OpenAI's `data`) with only the models this user may use."""
    try:
        listed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return b'{"models":[]}'  # an unreadable list shows nothing rather than everything
    if not isinstance(listed, dict):
        return b'{"models":[]}'
    for field, name in (("models", "name"), ("data", "id")):
        if isinstance(listed.get(field), list):
            listed[field] = [m for m in listed[field] if isinstance(m, dict) and actor_.may_use(m.get(name))]
    return orjson.dumps(listed)


def check_raw(actor_: Actor, path: str, models: list[str]) -> None:
    """What a key may do on /api and /v1: no model management unless an admin's, only its user's models."""
    if path.startswith(ADMIN_ONLY) and not actor_.admin:
        raise Forbidden(f"{path} changes the models everyone shares; only an admin's key may use it")
    for model in models:
        actor_.check_model(model)
