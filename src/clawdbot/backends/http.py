"""What every HTTP model server's `Backend` shares, whatever API it speaks (ollama.py, openai.py): the one aiohttp
session, the raw passthrough, `classify()` (the single place where client exceptions become the gateway's
BackendError kinds), an HTTP error status told in the server's own words, and the health-check loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import hdrs
from multidict import CIMultiDict
from yarl import URL

from ..errors import BackendError, BackendTimeout, BackendUnreachable
from ..settings import Settings
from . import h1
from .base import BackendStatus, Upstream

_POSTED = [("Content-Type", "application/json")]
# What aiohttp must not add to a request of ours: a client's request goes on with its own headers only.
_NOT_OURS: CIMultiDict[None] = CIMultiDict((name, None) for name in ("Accept-Encoding", "Content-Type", "User-Agent"))


class _AsSent(aiohttp.ClientRequest):
    """aiohttp's request with the session's skip_auto_headers built once, not again for every request (it copies
    the headers and sorts the list each time)."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _NOT_OURS
        if hdrs.ACCEPT not in self.headers:  # the one default left: aiohttp's Accept, as before
            self.headers[hdrs.ACCEPT] = "*/*"


class HttpBackend:
    """The HTTP plumbing of a model server; a subclass adds its API: `chat()`, `probe()` and `how_to_fix()`.

    `auth` holds headers that go with every request (an API key): set once, never logged, never in a message."""

    simulated = False

    def __init__(self, settings: Settings, url: str, *, auth: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.settings = settings
        self.status = BackendStatus()
        self.reported_slots: int | None = None  # what the server says it runs at once; None: it does not say
        self.auth = dict(auth or {})
        self.auth_names = {name.lower() for name in self.auth}
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_max_connections, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60
        )
        # No total timeout: streams are long. Connect is bounded here; the first byte and the gaps between
        # chunks are bounded by the proxy, which can tell them apart.
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=settings.connect_timeout)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers=self.auth,
            auto_decompress=False,
            request_class=_AsSent,
            raise_for_status=False,
            read_bufsize=2**16,
        )
        # The raw passthrough to a plain-http server goes through the lean client (h1.py); https through aiohttp.
        parsed = URL(url)
        self.pool: h1.Pool | None = None
        if parsed.scheme == "http" and parsed.host:
            self.pool = h1.Pool(
                parsed.host,
                parsed.port or 80,
                limit=settings.upstream_max_connections,
                connect_timeout=settings.connect_timeout,
            )
            self.prefix = parsed.raw_path.rstrip("/")

    async def residency(self, max_age: float) -> dict[str, dict[str, int]]:
        return self.status.resident  # a server that does not say what it holds in memory

    async def probe(self) -> BackendStatus:
        raise NotImplementedError

    async def send(self, method: str, target: str, body: bytes, headers: list[tuple[str, str]]) -> Upstream:
        """The raw passthrough: the response once its headers arrived, its body left for the caller to read. The
        caller bounds the wait (the relay's watchdog keeps --first-byte-timeout for all its requests at once: a
        timer per request would cost more than the rest of the request's own work here)."""
        if self.pool is not None:
            if self.auth:  # ours, whatever the client sent (the relay drops a client's own credentials anyway)
                headers = [(k, v) for k, v in headers if k.lower() not in self.auth_names] + list(self.auth.items())
            if not any(k.lower() == "accept" for k, _ in headers):  # what aiohttp adds, so what backends saw from us
                headers = [*headers, ("Accept", "*/*")]
            try:
                return await self.pool.request(method, self.prefix + target, headers, body)
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                raise self.classify(error, started=False) from None
        sent = CIMultiDict(headers)
        sent.update(self.auth)
        try:
            return await self.session.request(
                method, URL(self.url + target, encoded=True), data=body, headers=sent, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise self.classify(error, started=False) from None

    @contextlib.asynccontextmanager
    async def posted(self, path: str, data: bytes) -> AsyncIterator[Upstream]:
        """POST JSON to `path` through `send` (the lean client on plain http): the response, released on the way
        out (one read to its end leaves its connection to the next request)."""
        response = await self.send("POST", path, data, _POSTED)
        try:
            yield response
        finally:
            response.release()

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        await self.session.close()

    def classify(self, error: BaseException, *, started: bool) -> BackendError:
        """Name a failure talking to the backend; `started` is whether response bytes had arrived."""
        where = f"backend {self.url}"
        if isinstance(error, h1.BadResponse):
            return BackendError(
                f"{where} sent an answer that is not HTTP/1.1 ({error})", backend=self.url, kind="bad_response"
            )
        if isinstance(error, aiohttp.ClientConnectorError | h1.ConnectFailed):  # aiohttp's client, or the lean one
            cause = error.os_error.strerror or str(error.os_error)
            return BackendUnreachable(
                f"{where} refused the connection or could not be reached ({cause})",
                backend=self.url,
                kind="connect_refused",
            )
        if isinstance(error, h1.ConnectTimeout) or (
            isinstance(error, aiohttp.ConnectionTimeoutError | aiohttp.ServerTimeoutError) and not started
        ):
            return BackendTimeout(
                f"{where} did not accept a connection within {self.settings.connect_timeout:g} s",
                backend=self.url,
                kind="connect_timeout",
            )
        if isinstance(error, TimeoutError) and started:
            return BackendTimeout(
                f"{where} sent nothing for {self.settings.idle_timeout:g} s in the middle of the reply",
                backend=self.url,
                kind="idle_timeout",
            )
        if isinstance(error, TimeoutError):
            return BackendTimeout(
                f"{where} sent nothing within {self.settings.first_byte_timeout:g} s",
                backend=self.url,
                kind="first_byte_timeout",
            )
        # ClientConnectionError also covers a plain "Connection closed" from aiohttp's reader.
        if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError | ConnectionResetError):
            kind = "reset_mid_stream" if started else "reset"
            phase = "in the middle of the reply" if started else "before answering"
            return BackendError(f"{where} closed the connection {phase}", backend=self.url, kind=kind)
        return BackendError(f"{where} failed: {type(error).__name__}", backend=self.url, kind="other")

    def http_error(self, status: int, body: bytes) -> BackendError:
        """An error status, with the server's own message: Ollama's {"error": "…"}, OpenAI's and llama.cpp's
        {"error": {"message": "…"}}, older vLLM's {"message": "…"}, or else the body's text."""
        try:
            parsed = orjson.loads(body)
            if not isinstance(parsed, dict):
                raise TypeError
            detail = _message(parsed) or body.decode()
        except (orjson.JSONDecodeError, TypeError, UnicodeDecodeError):
            detail = body[:200].decode("utf-8", "replace")
        error = BackendError(
            self.redact(f"backend {self.url} answered {status}: {detail}"), backend=self.url, kind=f"http_{status}"
        )
        if status == 503:
            error.status = 503
        return error

    def redact(self, text: str) -> str:
        """`text` without the credentials of `auth` (a server may quote the key it refused)."""
        for value in self.auth.values():
            secret = value.removeprefix("Bearer ")
            if secret:
                text = text.replace(secret, "***")
        return text

    async def _get_json(self, path: str) -> dict[str, Any]:
        async with self.session.get(self.url + path) as response:
            body = await response.read()
            if response.status != 200:
                raise ValueError(f"GET {path} answered {response.status}")
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError(f"GET {path} did not return an object")
            return data

    async def watch(self, on_change: Callable[[BackendStatus], object] | None = None) -> None:
        """Re-check forever: often while the backend is down, at the configured interval once it is up."""
        while True:
            was = self.status.reachable
            status = await self.probe()
            if on_change is not None and status.reachable != was:
                on_change(status)
            await asyncio.sleep(
                self.settings.health_interval if status.reachable else min(2.0, self.settings.health_interval)
            )


def _message(parsed: dict[str, Any]) -> str:
    error = parsed.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or "")
    if error:
        return str(error)
    return str(parsed.get("message") or "")
