"""The relay: /api/* and /v1/* go to a backend unchanged, and its bytes come back the moment they arrive.

Which backend: placement.py (a generation's slot through admission; X-Clawdbot-Backend on every answer names it).
A failure before the response's first byte (a refused connection, a 5xx) is retried on another backend that serves
the model, unseen by the client.

Nothing is buffered or re-serialised. The only look inside a stream is at its tail, once it ends, to read
the backend's own token counts and to notice a stream that stopped short: then, and only for generation
routes, one error line (NDJSON) or event (SSE) is appended so the client's library raises instead of
returning a truncated reply as if it were whole.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web

from ..backends.admission import Admission, Ticket
from ..backends.base import Upstream
from ..backends.fleet import Fleet, Member
from ..errors import BackendError, BackendTimeout, Forbidden, Overloaded, RedisUnavailable
from ..identity import Actor
from ..logs import AccessLog
from ..metrics import Metrics
from ..monitor import Monitor
from ..store.limits import Limits
from ..store.usage import Usage
from ..timing import received
from . import placement, rawdefaults
from .exchange import DROP_REQUEST, PASS_RESPONSE, Exchange, account, route_label
from .framing import GENERATION, STREAMS, error_frame, framing_of, read_counts, repeated
from .permissions import MODEL_LISTS, check_raw, visible_models

_TAIL_LIMIT = 1 << 20  # /api/generate's final line carries every token id; keep enough to read it
# ClientConnectionError covers "Connection closed", raised when the watchdog closes a silent stream.
_PAYLOAD_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)


class Relay:
    def __init__(
        self,
        fleet: Fleet,
        metrics: Metrics,
        *,
        idle_timeout: float,
        first_byte_timeout: float,
        access: AccessLog,
        admission: Admission,
        limits: Limits,
        identity_header: str | None = None,
    ) -> None:
        self.admission = admission
        self.limits = limits
        # The header an auth proxy names users in is ours too: the backend learns no one's identity from us.
        self.drop = DROP_REQUEST | ({identity_header.lower()} if identity_header else set())
        self.fleet = fleet
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.first_byte_timeout = first_byte_timeout
        self.access = access
        self.active: set[Exchange] = set()
        self.clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
        self.usage: Usage | None = None  # where generations are counted, once the database is open (web/app.py)
        self.monitor: Monitor | None = None

    async def handle(self, request: web.Request, actor: Actor) -> web.StreamResponse:
        ex = Exchange(request["request_id"], request.method, route_label(request.path), received())
        ex.user_id, ex.key_id = actor.id, actor.key
        self.active.add(ex)
        self.metrics.active_streams += 1
        ticket: Ticket | None = None
        try:
            body, parsed = await self._body(request, actor)
            model = ex.asked = placement.model_of(request.path, parsed)
            limit = None
            if request.method == "POST" and request.path in GENERATION:
                limit = self.limits.max_reply_seconds
                barred = placement.foreign(self.fleet, request.path, model)  # /api/*: Ollama's alone, or a 404 now
                # The same slots and fair queue as the chat page: a script cannot jump the line.
                # Which backend held this conversation's context last: a question only where there is a choice.
                key = placement.affinity_key(request, parsed) if len(self.fleet.members) > 1 else None
                if self.usage is not None:
                    await self.usage.check(actor)  # a user past their token quota: 429 before any queue
                ticket = await self.admission.enter(
                    actor.queue,
                    max_running=actor.max_running,
                    per_minute=actor.requests_per_minute,
                    model=model,
                    prefer=self.fleet.affinity.get(key),
                    barred=barred,
                )
                if not ticket.running:
                    waited = self.clock()
                    await self.admission.wait(ticket)
                    ex.queued = self.clock() - waited
                self.metrics.queue_wait.labels("raw").observe(ex.queued)
                self.fleet.placed(key, ticket.place, ticket.prefer, ticket.affinity)
            elif request.method == "GET" and (merged := await placement.merged_list(self.fleet, request.path)):
                listed = visible_models(merged, actor) if actor.models is not None else merged
                return web.Response(body=listed, content_type="application/json")
            upstream = await self._forward(request, body, ex, limit, ticket, model)
            try:
                if actor.models is not None and request.path in MODEL_LISTS and upstream.status == 200:
                    listed = visible_models(await upstream.read(), actor)  # a short list: read whole, shown filtered
                    return web.Response(body=listed, content_type="application/json", headers=_named(ex))
                return await self._relay(request, upstream, ex)
            finally:
                upstream.close()  # a no-op once fully read; otherwise the backend sees the disconnect
        except BackendError as error:
            ex.status = error.status
            ex.fail("backend_error", error.kind)
            raise
        except (web.HTTPException, Overloaded, Forbidden, RedisUnavailable) as error:  # refused before forwarding
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

    async def _body(self, request: web.Request, actor: Actor) -> tuple[bytes, dict[str, Any] | None]:
        """The body to forward, once the user may send it: as sent, or with the defaults it lacks (rawdefaults);
        and the body as JSON, where its model picks the backend."""
        body = await request.read()
        post = request.method == "POST"
        parsed = rawdefaults.parse(body) if post or actor.models is not None else None
        check_raw(actor, request.path, _models_of(request.path, parsed) if actor.models is not None else [])
        return (rawdefaults.with_defaults(request.path, body, parsed, self.limits) if post else body), parsed

    async def _forward(
        self,
        request: web.Request,
        body: bytes,
        ex: Exchange,
        limit: float | None,
        ticket: Ticket | None,
        model: str | None,
    ) -> Upstream:
        """The backend's response headers; `limit` is the seconds a generation may take from here on. A failure
        before them, or a 5xx, is tried again on another backend that serves the model, while there is one."""
        drop = self.drop
        headers = [(name, value) for name, value in request.headers.items() if name.lower() not in drop]
        headers.append(("X-Request-ID", ex.request_id))
        ex.forwarded = self.clock()
        ex.deadline = ex.forwarded + limit if limit else 0.0
        ex.task = asyncio.current_task()
        tried = set(ticket.barred) if ticket else set()  # a failover may not reach a backend of the other API
        while True:
            member = self.fleet.member(ticket.place) if ticket else placement.target(self.fleet, request, model)
            ex.member = member
            tried.add(member.name)
            member.requests += 1
            try:
                upstream = await self._send(member, request, body, headers, ex)
            except TimeoutError:  # the request's own limit ran out before the backend answered
                raise self._overtime(limit or 0.0) from None
            except BackendError as error:
                self.fleet.failed(member, error)
                if not await self._elsewhere(ticket, model, tried, error.kind):
                    raise
                member.failovers += 1
                continue
            if upstream.status >= 500 and await self._elsewhere(ticket, model, tried, f"http_{upstream.status}"):
                self.fleet.failed(member, BackendError(f"HTTP {upstream.status}", backend=member.url, kind="http_5xx"))
                upstream.close()
                member.failovers += 1
                continue
            break
        ex.headers_at = ex.last_byte = self.clock()
        ex.upstream = upstream
        ex.status = upstream.status
        if upstream.status >= 400:
            ex.fail(f"http_{upstream.status // 100}xx", None)
        return upstream

    async def _send(
        self, member: Member, request: web.Request, body: bytes, headers: list[tuple[str, str]], ex: Exchange
    ) -> Upstream:
        """The backend's response headers. The watchdog's sweep bounds the wait (--first-byte-timeout, and the
        request's own limit), to within its second: cancelled by it, the wait ends in the error a timer would have
        raised; cancelled for any other reason (the client left), it stays cancelled."""
        ex.sending = self.clock()
        try:
            return await member.backend.send(request.method, request.raw_path, body, headers)
        except asyncio.CancelledError:
            late, ex.late = ex.late, None
            task = asyncio.current_task()
            if late is None or task is None or task.uncancel() > 0:
                raise
            if late == "limit":
                raise TimeoutError from None
            raise member.backend.classify(TimeoutError(), started=False) from None
        finally:
            ex.sending = 0.0

    async def _elsewhere(self, ticket: Ticket | None, model: str | None, tried: set[str], kind: str) -> bool:
        """Whether another backend may take the request (a generation's slot moved there): not after a 4xx."""
        if kind.startswith("http_4") or kind == "first_byte_timeout":
            return False
        others = [
            m for m in self.fleet.members if m.name not in tried and m.place.in_rotation and m.place.may_serve(model)
        ]
        if not others:
            return False
        if ticket is not None:
            self.admission.reroute(ticket)
            await self.admission.wait(ticket)
            if ticket.place is not None and ticket.place.name in tried:  # no other free: its own again
                return False
        return True

    async def _relay(self, request: web.Request, upstream: Upstream, ex: Exchange) -> web.StreamResponse:
        framing = framing_of(ex.route, upstream)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_named(ex))
        backend = self.fleet.member(ex.member.place if ex.member else None).backend
        for name in PASS_RESPONSE:
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
                failure = backend.classify(error, started=True)
                break
            if not data:
                break
            now = clock()
            if ex.chunks:
                gap.observe(now - last)
            ex.first_byte = ex.first_byte or now
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
        if ex.stalled:  # the watchdog closed a silent stream: named as the backend names a silence
            failure = backend.classify(TimeoutError(), started=True)
        elif ex.overtime:
            failure = self._overtime(self.limits.max_reply_seconds)
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

    def _overtime(self, limit: float) -> BackendError:
        return BackendTimeout(
            f"the reply took longer than this gateway's limit of {limit:g} s (max_reply_seconds, set by an admin); "
            "the gateway stopped it",
            backend=self.fleet.primary.url,
            kind="time_limit",
        )

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
        if complete and (failure is None or failure.kind == "time_limit"):  # it ended as its time ran out: whole
            return None
        if framing not in STREAMS or response.content_length is not None:
            return failure  # no frame to append an error to
        if failure is None and framing == "ndjson" and tail.rstrip().rsplit(b"\n", 1)[-1].startswith(b'{"error"'):
            ex.fail("backend_error", "error_line")  # Ollama reported its own failure; the client has it
            return None
        url = ex.member.url if ex.member else self.fleet.primary.url
        if failure is None and repeated(framing, tail):
            failure = BackendError(
                f"backend {url} stopped the reply: the model repeated one token 31 times in a row "
                "(Ollama's guard against a model caught in a loop)",
                backend=url,
                kind="repeat_limit",
            )
        elif failure is None:
            failure = BackendError(
                f"backend {url} ended the stream before the reply was complete",
                backend=url,
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
        if ex.member is not None:
            account(self.fleet, ex)
            if ex.method == "POST" and ex.route in GENERATION:
                ex.counted(end, self.usage, self.monitor)
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
                "timing": ex.timing(end),
            }
        )

    async def watchdog(self) -> None:
        """Close backend streams that went silent; one sweep a second instead of a timer per chunk."""
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            deadline = now - self.idle_timeout
            for ex in list(self.active):
                if ex.sending and ex.late is None and ex.task is not None:  # no response headers yet
                    if ex.deadline and now > ex.deadline:
                        ex.late = "limit"
                    elif now - ex.sending > self.first_byte_timeout:
                        ex.late = "first_byte"
                    if ex.late is not None:
                        ex.task.cancel()
                elif ex.upstream is not None and ex.deadline and now > ex.deadline and not ex.overtime:
                    ex.overtime = True  # past its time, however busy: a reply that never ends is ended here
                    ex.upstream.close()
                elif ex.writing:
                    ex.last_byte = self.clock()  # the silence clock restarts once the client has taken the chunk
                elif ex.upstream is not None and ex.last_byte and ex.last_byte < deadline and not ex.stalled:
                    ex.stalled = True
                    ex.upstream.close()


def _named(ex: Exchange) -> dict[str, str]:
    return {placement.BACKEND_HEADER: ex.member.name} if ex.member is not None else {}


def _cut(request: web.Request) -> None:
    """Close the client's connection mid-body, as the backend closed ours. Finishing the response instead would
    leave a client waiting for a Content-Length never reached, or hand it a short chunked body that looks whole."""
    if request.transport is not None:
        request.transport.close()  # flushes what was relayed; aiohttp then cannot write the end of the body


def _models_of(path: str, parsed: dict[str, Any] | None) -> list[str]:
    """The models a raw request names (Ollama's and OpenAI's field alike), for users limited to some models. Ollama
    reads JSON with Go's encoding/json, which takes "Model" or "MODEL" for "model" too: every spelling counts."""
    if path.startswith("/v1/models/"):
        return [path.removeprefix("/v1/models/")]
    if parsed is None:
        return []
    return [v for k, v in parsed.items() if k.lower() in ("model", "name") and isinstance(v, str) and v]
