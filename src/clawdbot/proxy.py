"""The relay: /api/* and /v1/* go to the backend unchanged, and its bytes come back the moment they arrive.

Nothing is buffered or re-serialised. The only look inside a stream is at its tail, once it ends, to read
the backend's own token counts and to notice a stream that stopped short: then, and only for generation
routes, one error line (NDJSON) or event (SSE) is appended so the client's library raises instead of
returning a truncated reply as if it were whole.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .admission import Admission, Overloaded, Ticket
from .auth import MODEL_LISTS, check_raw, current, visible_models
from .backends import Backend
from .errors import BackendError, Forbidden
from .framing import GENERATION, STREAMS, error_frame, framing_of, read_counts
from .logs import AccessLog
from .metrics import Metrics

# Request headers that describe this hop, the browser, or our own credentials: never sent to the backend.
_DROP_REQUEST = frozenset(
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
_PASS_RESPONSE = (
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
_TAIL_LIMIT = 1 << 20  # /api/generate's final line carries every token id; keep enough to read it
# ClientConnectionError covers "Connection closed", raised when the watchdog closes a silent stream.
_PAYLOAD_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)


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
    chunks: int = 0
    bytes: int = 0
    stalled: bool = False
    writing: bool = False
    upstream: aiohttp.ClientResponse | None = None

    def fail(self, outcome: str, kind: str | None) -> None:
        if self.outcome == "ok":
            self.outcome, self.error_kind = outcome, kind


class Relay:
    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        *,
        first_byte_timeout: float,
        idle_timeout: float,
        access: AccessLog,
        admission: Admission,
        identity_header: str | None = None,
    ) -> None:
        self.admission = admission
        # The header an auth proxy names users in is ours too: the backend learns no one's identity from us.
        self.drop = _DROP_REQUEST | ({identity_header.lower()} if identity_header else set())
        self.backend = backend
        self.metrics = metrics
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.access = access
        self.active: set[Exchange] = set()
        self.clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ex = Exchange(request["request_id"], request.method, route_label(request.path), self.clock())
        self.active.add(ex)
        self.metrics.active_streams += 1
        ticket: Ticket | None = None
        try:
            body = await request.read()
            actor = current(request)
            check_raw(actor, request.path, _models_of(request.path, body) if actor.models is not None else [])
            if request.method == "POST" and request.path in GENERATION:
                # The same slots and fair queue as the chat page: a script cannot jump the line.
                ticket = self.admission.enter(
                    actor.queue, max_running=actor.max_running, per_minute=actor.requests_per_minute
                )
                if not ticket.running:
                    waited = self.clock()
                    await self.admission.wait(ticket)
                    ex.queued = self.clock() - waited
                self.metrics.queue_wait.labels("raw").observe(ex.queued)
            upstream = await self._forward(request, body, ex)
            try:
                if actor.models is not None and request.path in MODEL_LISTS and upstream.status == 200:
                    listed = visible_models(await upstream.read(), actor)  # a short list: read whole, shown filtered
                    return web.Response(body=listed, content_type="application/json")
                return await self._relay(request, upstream, ex)
            finally:
                upstream.close()  # a no-op once fully read; otherwise the backend sees the disconnect
        except BackendError as error:
            ex.status = error.status
            ex.fail("backend_error", error.kind)
            raise
        except (web.HTTPException, Overloaded, Forbidden) as error:  # refused before forwarding (a body too big…)
            ex.status = error.status
            ex.fail("rejected", None)
            raise
        except asyncio.CancelledError:
            ex.fail("client_closed", None)
            raise
        finally:
            if ticket is not None:
                self.admission.release(ticket, self.clock() - ex.forwarded if ex.forwarded else None)
            self._finish(ex)

    async def _forward(self, request: web.Request, body: bytes, ex: Exchange) -> aiohttp.ClientResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in self.drop)
        headers["X-Request-ID"] = ex.request_id
        url = URL(self.backend.url + request.raw_path, encoded=True)
        ex.forwarded = self.clock()
        try:
            async with asyncio.timeout(self.first_byte_timeout):
                upstream = await self.backend.session.request(
                    request.method, url, data=body, headers=headers, allow_redirects=False
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise self.backend.classify(error, started=False) from None
        ex.headers_at = ex.last_byte = self.clock()
        ex.upstream = upstream
        ex.status = upstream.status
        if upstream.status >= 400:
            ex.fail(f"http_{upstream.status // 100}xx", None)
        return upstream

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse, ex: Exchange) -> web.StreamResponse:
        framing = framing_of(ex.route, upstream)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name in _PASS_RESPONSE:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        elif framing in STREAMS:
            response.headers["X-Accel-Buffering"] = "no"  # tell nginx not to hold the stream
        await response.prepare(request)
        tail: deque[bytes] = deque()
        tail_size = 0
        gap = self.metrics.gap.labels(ex.route)
        clock = self.clock
        last = ex.headers_at
        failure: BackendError | None = None
        content = upstream.content
        while True:
            try:
                data = await content.readany()
            except _PAYLOAD_ERRORS as error:
                failure = self.backend.classify(error, started=True)
                break
            if not data:
                break
            now = clock()
            if ex.chunks:
                gap.observe(now - last)
            last = ex.last_byte = now
            ex.chunks += 1
            ex.bytes += len(data)
            tail.append(data)
            tail_size += len(data)
            while tail_size - len(tail[0]) >= _TAIL_LIMIT:
                tail_size -= len(tail.popleft())
            ex.writing = True  # time spent on a slow client is not backend silence
            try:
                await response.write(data)
            except ConnectionResetError:
                ex.fail("client_closed", None)
                return response
            ex.writing = False
            if not ex.first_write:
                self._first_write(ex)
        if ex.stalled:
            failure = BackendError(
                f"backend {self.backend.url} sent nothing for {self.idle_timeout:g} s; the "
                "gateway gave up on this reply",
                backend=self.backend.url,
                kind="idle_timeout",
            )
        try:
            if framing:
                failure = await self._conclude(response, ex, framing, b"".join(tail), failure)
            if failure is not None:
                ex.fail("backend_error", failure.kind)
                _cut(request)
                return response
            await response.write_eof()
        except ConnectionResetError:
            ex.fail("client_closed", None)
        return response

    def _first_write(self, ex: Exchange) -> None:
        ex.first_write = self.clock()
        self.metrics.ttft.labels(ex.route).observe(ex.first_write - ex.received)
        self.metrics.overhead.observe((ex.forwarded - ex.received - ex.queued) + (ex.first_write - ex.headers_at))

    async def _conclude(
        self,
        response: web.StreamResponse,
        ex: Exchange,
        framing: str,
        tail: bytes,
        failure: BackendError | None,
    ) -> BackendError | None:
        """Read the backend's counts from the reply's end, or tell a stream's client it was cut short.

        Returns the failure when it could not be told inside the body (a whole JSON reply)."""
        complete = read_counts(ex, framing, tail)
        if failure is None and complete:
            return None
        if framing not in STREAMS or response.content_length is not None:
            return failure  # no frame to append an error to
        if failure is None and framing == "ndjson" and tail.rstrip().rsplit(b"\n", 1)[-1].startswith(b'{"error"'):
            ex.fail("backend_error", "error_line")  # Ollama reported its own failure; the client has it
            return None
        if failure is None:
            failure = BackendError(
                f"backend {self.backend.url} ended the stream before the reply was complete",
                backend=self.backend.url,
                kind="incomplete_stream",
            )
        ex.fail("backend_error", failure.kind)
        await response.write(error_frame(framing, failure.message))
        return None

    def _finish(self, ex: Exchange) -> None:
        if ex.outcome == "client_closed" and not ex.status:
            ex.status = 499  # nginx's code for a client that left before the response began
        m = self.metrics
        self.active.discard(ex)
        m.active_streams -= 1
        m.requests[(ex.route, ex.outcome)] += 1
        m.relayed_chunks += ex.chunks
        m.relayed_bytes += ex.bytes
        end = self.clock()
        m.duration.labels(ex.route).observe(end - ex.received)
        if ex.error_kind:
            m.upstream_errors[ex.error_kind] += 1
        if ex.model:
            m.prompt_tokens[ex.model] += ex.prompt_tokens
            m.completion_tokens[ex.model] += ex.completion_tokens
        self.access.write(
            {
                "request_id": ex.request_id,
                "method": ex.method,
                "route": ex.route,
                "status": ex.status,
                "outcome": ex.outcome,
                "error_kind": ex.error_kind,
                "model": ex.model,
                "ttft_ms": round((ex.first_write - ex.received) * 1000, 2) if ex.first_write else None,
                "duration_ms": round((end - ex.received) * 1000, 2),
                "prompt_tokens": ex.prompt_tokens,
                "completion_tokens": ex.completion_tokens,
                "bytes": ex.bytes,
            }
        )

    async def watchdog(self) -> None:
        """Close backend streams that went silent; one sweep a second instead of a timer per chunk."""
        while True:
            await asyncio.sleep(1.0)
            deadline = self.clock() - self.idle_timeout
            for ex in list(self.active):
                if ex.writing:
                    ex.last_byte = self.clock()  # the silence clock restarts once the client has taken the chunk
                elif ex.upstream is not None and ex.last_byte and ex.last_byte < deadline and not ex.stalled:
                    ex.stalled = True
                    ex.upstream.close()


def _cut(request: web.Request) -> None:
    """Close the client's connection mid-body, as the backend closed ours. Finishing the response instead would
    leave a client waiting for a Content-Length never reached, or hand it a short chunked body that looks whole."""
    if request.transport is not None:
        request.transport.close()  # flushes what was relayed; aiohttp then cannot write the end of the body


def _models_of(path: str, body: bytes) -> list[str]:
    """The models a raw request names (Ollama's and OpenAI's field alike), for users limited to some models. Ollama
    reads JSON with Go's encoding/json, which takes "Model" or "MODEL" for "model" too: every spelling counts."""
    if path.startswith("/v1/models/"):
        return [path.removeprefix("/v1/models/")]
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return []
    if not isinstance(parsed, dict):
        return []
    return [v for k, v in parsed.items() if k.lower() in ("model", "name") and isinstance(v, str) and v]
