"""One proxied request as the relay tracks it (`Exchange`), the routes it counts by, and the headers that cross."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..backends.base import Upstream
from ..backends.fleet import Fleet, Member
from ..errors import BackendError
from ..monitor import Monitor
from ..store.usage import Usage
from ..timing import Clocks
from .framing import GENERATION

# Request headers that describe this hop, the browser, or our own credentials: never sent to the backend.
DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "origin",
        "referer",
        "cookie",
        "authorization",
        "content-length",
        "expect",
        "x-request-id",
    }
)
PASS_RESPONSE = (
    "Content-Type",
    "Content-Encoding",
    "Retry-After",
    "Cache-Control",
    "Content-Disposition",
    "Location",
)
ROUTES = frozenset(
    {
        *GENERATION,
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/version",
        "/api/pull",
        "/api/embed",
        "/api/embeddings",
        "/v1/models",
        "/v1/embeddings",
    }
)


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "/api/other" if path.startswith("/api/") else "/v1/other"


@dataclass(slots=True, eq=False)
class Exchange:
    """One proxied request, from arrival to last byte: what the metrics and the access log report."""

    request_id: str
    method: str
    route: str
    received: float
    queued: float = 0.0  # seconds waiting for a backend slot: the model's queue, not the gateway's overhead
    forwarded: float = 0.0
    headers_at: float = 0.0
    first_write: float = 0.0
    last_byte: float = 0.0
    status: int = 0
    outcome: str = "ok"
    error_kind: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    load_ns: int | None = None
    prompt_ns: int | None = None
    first_byte: float = 0.0  # the first chunk of the body came from the backend
    chunks: int = 0
    bytes: int = 0
    stalled: bool = False
    writing: bool = False
    upstream: Upstream | None = None
    deadline: float = 0.0  # when a generation has had its time (--max-reply-seconds); 0: no limit
    overtime: bool = False
    sending: float = 0.0  # while waiting for a backend's response headers: since when (0: not waiting)
    late: str | None = None  # why the watchdog cancelled that wait: "first_byte" or "limit"
    task: asyncio.Task[Any] | None = None  # the request's handler, which the watchdog cancels
    member: Member | None = None  # the backend it went to
    user_id: str = ""  # who sent it, and with which API key (None: a session): what usage is counted by
    key_id: str | None = None
    # The model the request named: what it is counted under until the backend's last line names it. Never logged:
    # a client may put anything there.
    asked: str | None = None

    def timing(self, ended: float) -> dict[str, float | None]:
        """Where the request's time went (timing.py), once it `ended`."""
        clocks = Clocks(self.received, self.queued, self.forwarded, self.first_byte, self.first_write, self.last_byte)
        return clocks.breakdown(ended, self.load_ns, self.prompt_ns)

    def counted(self, ended: float, usage: Usage | None, monitor: Monitor | None) -> None:
        """A generation that reached a backend, into the usage rollups and the live view; one the backend refused
        (4xx: no such model, a bad request) is no usage."""
        failed = self.outcome == "backend_error"
        if usage is not None and not 400 <= self.status < 500:
            backend = self.member.name if self.member is not None else None
            usage.count(
                user_id=self.user_id,
                key_id=self.key_id,
                model=self.model or self.asked,
                backend=backend,
                source="raw",
                failed=failed,
                prompt_tokens=self.prompt_tokens,
                output_tokens=self.completion_tokens,
            )
        if monitor is not None:
            ttft = self.first_write - self.received if self.first_write else None
            tokens = self.completion_tokens
            monitor.ended(
                "raw", ttft=ttft, duration=ended - self.received, failed=failed, cause=self.error_kind, tokens=tokens
            )

    def fail(self, outcome: str, kind: str | None) -> None:
        if self.outcome == "ok":
            self.outcome, self.error_kind = outcome, kind


def account(fleet: Fleet, ex: Exchange) -> None:
    """The request's share of its backend's counters, and a passive health signal: a stream cut short by the
    backend counts against it (its kind), an answer that came whole for it."""
    member = ex.member
    assert member is not None
    member.prompt_tokens += ex.prompt_tokens
    member.output_tokens += ex.completion_tokens
    if ex.first_write and ex.headers_at:
        member.ttft.observe(ex.first_write - ex.forwarded - ex.queued)
    if ex.outcome == "backend_error" and ex.error_kind:
        fleet.failed(member, BackendError("the stream failed", backend=member.url, kind=ex.error_kind))
    elif ex.outcome == "ok" and ex.status < 500:
        fleet.succeeded(member, ex.model)
