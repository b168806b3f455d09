"""The model server behind the gateway: its shared HTTP session, its health, and how its failures are named.

One aiohttp session is opened at startup with explicit limits and timeouts and closed at shutdown.
`classify()` is the single place where client exceptions become the gateway's BackendError kinds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .errors import BackendError, BackendTimeout, BackendUnreachable
from .settings import Settings


@dataclass(slots=True)
class BackendStatus:
    reachable: bool = False
    version: str | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = "not checked yet"
    checked_at: float = 0.0

    def model_names(self) -> list[str]:
        return [str(m.get("name")) for m in self.models]


class Backend:
    def __init__(self, settings: Settings, url: str, *, simulated: bool = False) -> None:
        self.url = url
        self.simulated = simulated
        self.settings = settings
        self.status = BackendStatus()
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_max_connections, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60
        )
        # No total timeout: streams are long. Connect is bounded here; the first byte and the gaps between
        # chunks are bounded by the proxy, which can tell them apart.
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=settings.connect_timeout)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            raise_for_status=False,
            read_bufsize=2**16,
        )

    async def close(self) -> None:
        await self.session.close()

    def classify(self, error: BaseException, *, started: bool) -> BackendError:
        """Name a failure talking to the backend; `started` is whether response bytes had arrived."""
        where = f"backend {self.url}"
        if isinstance(error, aiohttp.ClientConnectorError):
            cause = error.os_error.strerror or str(error.os_error)
            return BackendUnreachable(
                f"{where} refused the connection or could not be reached ({cause})",
                backend=self.url,
                kind="connect_refused",
            )
        if isinstance(error, aiohttp.ConnectionTimeoutError | aiohttp.ServerTimeoutError) and not started:
            return BackendTimeout(
                f"{where} did not accept a connection within {self.settings.connect_timeout:g} s",
                backend=self.url,
                kind="connect_timeout",
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

    async def probe(self) -> BackendStatus:
        """Ask the backend for its version and models; never raises."""
        status = BackendStatus(checked_at=time.time())
        try:
            async with asyncio.timeout(min(self.settings.connect_timeout + 5, 15)):
                status.version = str((await self._get_json("/api/version")).get("version"))
                status.models = list((await self._get_json("/api/tags")).get("models") or [])
            status.reachable, status.error = True, None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            status.error = (
                self.classify(error, started=False).message
                if not isinstance(error, ValueError)
                else f"backend {self.url} answered with something that is not Ollama's API ({error})"
            )
        self.status = status
        return status

    async def _get_json(self, path: str) -> dict[str, Any]:
        async with self.session.get(self.url + path) as response:
            body = await response.read()
            if response.status != 200:
                raise ValueError(f"GET {path} answered {response.status}")
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError(f"GET {path} did not return an object")
            return data

    async def watch(self, on_change: Any = None) -> None:
        """Re-check forever: often while the backend is down, at the configured interval once it is up."""
        while True:
            was = self.status.reachable
            status = await self.probe()
            if on_change is not None and status.reachable != was:
                on_change(status)
            await asyncio.sleep(
                self.settings.health_interval if status.reachable else min(2.0, self.settings.health_interval)
            )


@dataclass(slots=True)
class Delta:
    """A piece of the reply: thinking or answer text."""

    thinking: str = ""
    content: str = ""


@dataclass(slots=True)
class Final:
    """The backend's own account of the finished reply (Ollama's final chunk)."""

    done_reason: str
    prompt_tokens: int
    output_tokens: int
    total_ns: int
    load_ns: int
    prompt_eval_ns: int
    eval_ns: int


async def chat(backend: Backend, body: dict[str, Any]) -> AsyncIterator[Delta | Final]:
    """Stream one /api/chat reply as typed events; every failure becomes a BackendError naming its cause."""
    settings = backend.settings
    started = False
    try:
        async with asyncio.timeout(settings.first_byte_timeout) as deadline:
            async with backend.session.post(
                backend.url + "/api/chat", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
            ) as response:
                if response.status != 200:
                    raise _http_error(backend, response.status, await response.read())
                pending = b""
                clock = asyncio.get_running_loop().time
                moved = -1.0
                while data := await response.content.readany():
                    started = True
                    now = clock()
                    if now - moved >= 1.0:  # a new timer per chunk is waste: the deadline moves once a second
                        deadline.reschedule(now + settings.idle_timeout + 1.0)
                        moved = now
                    *lines, pending = (pending + data).split(b"\n")
                    # The lines that arrived together become one delta: when the gateway is busy, it does less.
                    merged: Delta | None = None
                    for line in lines:
                        if not line.strip():
                            continue
                        event = _event(backend, line)
                        if isinstance(event, Final):
                            if merged is not None:
                                yield merged
                            yield event
                            return
                        if merged is None:
                            merged = event
                        elif event.thinking and merged.content:  # keep the order: answer text came first
                            yield merged
                            merged = event
                        else:
                            merged.thinking += event.thinking
                            merged.content += event.content
                    if merged is not None:
                        yield merged
                if pending.strip():
                    event = _event(backend, pending)
                    yield event
                    if isinstance(event, Final):
                        return
    except BackendError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        if isinstance(error, TimeoutError) and started:
            raise BackendTimeout(
                f"backend {backend.url} sent nothing for {settings.idle_timeout:g} s in the middle of the reply",
                backend=backend.url,
                kind="idle_timeout",
            ) from None
        raise backend.classify(error, started=started) from None
    raise BackendError(
        f"backend {backend.url} ended the reply before it was complete", backend=backend.url, kind="incomplete_stream"
    )


def _event(backend: Backend, line: bytes) -> Delta | Final:
    try:
        chunk = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BackendError(
            f"backend {backend.url} sent a line that is not JSON", backend=backend.url, kind="malformed"
        ) from None
    if not isinstance(chunk, dict):
        raise BackendError(
            f"backend {backend.url} sent JSON that is not an object", backend=backend.url, kind="malformed"
        )
    if "error" in chunk:
        raise BackendError(f"the model failed: {chunk['error']}", backend=backend.url, kind="error_line")
    if chunk.get("done"):
        return Final(
            done_reason=str(chunk.get("done_reason") or "stop"),
            prompt_tokens=int(chunk.get("prompt_eval_count") or 0),
            output_tokens=int(chunk.get("eval_count") or 0),
            total_ns=int(chunk.get("total_duration") or 0),
            load_ns=int(chunk.get("load_duration") or 0),
            prompt_eval_ns=int(chunk.get("prompt_eval_duration") or 0),
            eval_ns=int(chunk.get("eval_duration") or 0),
        )
    message = chunk.get("message") or {}
    return Delta(thinking=str(message.get("thinking") or ""), content=str(message.get("content") or ""))


def _http_error(backend: Backend, status: int, body: bytes) -> BackendError:
    try:
        detail = orjson.loads(body).get("error") or body.decode()
    except (orjson.JSONDecodeError, AttributeError, UnicodeDecodeError):
        detail = body[:200].decode("utf-8", "replace")
    error = BackendError(
        f"backend {backend.url} answered {status}: {detail}", backend=backend.url, kind=f"http_{status}"
    )
    if status == 503:
        error.status = 503
    return error
