"""The model server behind the gateway: its shared HTTP session, its health, and how its failures are named.

One aiohttp session is opened at startup with explicit limits and timeouts and closed at shutdown.
`classify()` is the single place where client exceptions become the gateway's BackendError kinds.
"""

from __future__ import annotations

import asyncio
import time
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
