"""Replies as server-side jobs: a generation runs on its own, whoever is watching.

A generation waits for a slot on the backend (admission.py), streams one reply, numbers every event in its log
(eventlog.py) so that any client can resume from any point, writes the text so far to the database about once a
second, and stores the result (done, stopped, failed or interrupted, with whatever text there was) when it ends.
A listener that disconnects changes nothing; Stop is explicit and closes the backend request at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from .admission import Admission, Ticket
from .backends import Backend, Delta, Final, chat
from .errors import BackendError
from .eventlog import GenerationLog, Job, Listener
from .logs import LOG
from .metrics import Metrics
from .store import Store, now_ms

_IN_FLIGHT = ("waiting", "thinking", "writing")  # a checkpoint never writes a final status: _finish does
_RETRY_DELAY = 0.5  # before the one unseen retry: long enough for a restarting backend, short against a TTFT


class Hub:
    """Who listens to which conversation. Events are serialised once and handed to every listener."""

    def __init__(self) -> None:
        self.listeners: defaultdict[str, set[Listener]] = defaultdict(set)

    def subscribe(self, conversation_id: str, listener: Listener) -> None:
        self.listeners[conversation_id].add(listener)

    def unsubscribe(self, conversation_id: str, listener: Listener) -> None:
        listeners = self.listeners.get(conversation_id)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self.listeners[conversation_id]

    def publish(self, conversation_id: str, event: dict[str, Any]) -> None:
        if self.listeners.get(conversation_id):
            self.push(conversation_id, orjson.dumps(event))

    def push(self, conversation_id: str, data: bytes) -> None:
        listeners = self.listeners.get(conversation_id)
        if listeners:
            for listener in list(listeners):
                listener.push(data)


@dataclass(slots=True, eq=False)
class Generation:
    reply: dict[str, Any]
    body: dict[str, Any]
    ticket: Ticket
    prompt: dict[str, Any] | None = None  # the row of the user message this answers (none for Regenerate)
    status: str = "waiting"
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    streamed: bool = False  # text reached listeners: from here on, no silent retry
    dirty: bool = False  # text or status changed since the last checkpoint
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    thinking_from: float | None = None
    thinking_until: float | None = None
    final: Final | None = None
    error: str | None = None
    error_kind: str | None = None
    ending: str = "stopped"  # what a cancellation means: Stop, or the gateway shutting down ("interrupted")
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return str(self.reply["id"])

    @property
    def conversation_id(self) -> str:
        return str(self.reply["conversation_id"])

    @property
    def client_id(self) -> str | None:
        """The client's id for the message this answers: a retried send finds its reply by it."""
        return (self.prompt or {}).get("client_id")

    def checkpoint(self) -> dict[str, Any]:
        content, thinking = "".join(self.content), "".join(self.thinking)
        self.content[:], self.thinking[:] = [content], [thinking]  # joined once, not again next second
        self.dirty = False
        return {"id": self.id, "status": self.status, "content": content, "thinking": thinking}

    def outcome(self) -> dict[str, Any]:
        """The columns the finished reply is stored with."""
        now = time.perf_counter()
        final = self.final
        thinking_until = self.thinking_until or (now if self.thinking_from else None)
        fields: dict[str, Any] = {
            "status": self.status,
            "content": "".join(self.content),
            "thinking": "".join(self.thinking),
            "finished_at": now_ms(),
            "error": self.error,
            "error_kind": self.error_kind,
            "ttft_ms": _ms(self.first_token - self.started) if self.first_token else None,
            "thinking_ms": _ms(thinking_until - self.thinking_from) if self.thinking_from and thinking_until else None,
            "total_ms": _ms(now - self.started),
        }
        if final is not None:
            fields.update(
                done_reason=final.done_reason,
                prompt_tokens=final.prompt_tokens,
                output_tokens=final.output_tokens,
                eval_ms=_ms(final.eval_ns / 1e9),
            )
        return fields


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def explain(error: BackendError) -> str:
    """What the user reads under a failed reply: what happened, in words they can act on."""
    kind = error.kind
    if kind == "connect_refused":
        return "The model server could not be reached (connection refused). It may be down or restarting."
    if kind == "connect_timeout":
        return "The model server did not accept a connection in time. It may be overloaded or unreachable."
    if kind == "first_byte_timeout":
        return "The model server did not start answering in time (--first-byte-timeout)."
    if kind == "idle_timeout":
        return "The model server stopped sending in the middle of the reply (--idle-timeout); the text so far is kept."
    if kind == "reset":
        return "The model server closed the connection before answering."
    if kind in ("reset_mid_stream", "incomplete_stream"):
        return "The model server closed the connection in the middle of the reply; the text so far is kept."
    if kind == "http_503":
        return "The model server is busy (its queue is full). Try again in a few seconds."
    if kind.startswith("http_5"):
        return f"The model server failed (HTTP {kind[5:]}): {_detail(error)}"
    if kind.startswith("http_4"):
        return f"The model server refused the request (HTTP {kind[5:]}): {_detail(error)}"
    if kind == "error_line":
        return f"The model stopped with an error: {error.message.removeprefix('the model failed: ')}"
    if kind == "malformed":
        return "The model server sent something that is not Ollama's streaming format; the text so far is kept."
    return f"The model server failed: {error.message}"


def _detail(error: BackendError) -> str:
    return error.message.split(": ", 1)[-1]


def _retryable(error: BackendError) -> bool:
    # Not a 4xx (the same request fails the same way) and not a first-byte timeout (it already waited minutes).
    return not error.kind.startswith("http_4") and error.kind != "first_byte_timeout"


class Generations:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        hub: Hub,
        log: GenerationLog,
        admission: Admission,
        metrics: Metrics,
        *,
        checkpoint_interval: float = 1.0,
    ) -> None:
        self.store, self.backend, self.hub, self.log = store, backend, hub, log
        self.admission, self.metrics = admission, metrics
        self.checkpoint_interval = checkpoint_interval
        self.active: dict[str, Generation] = {}  # by conversation: one reply at a time in each
        self._checkpointer: asyncio.Task[None] | None = None

    def start(
        self,
        reply: dict[str, Any],
        body: dict[str, Any],
        ticket: Ticket,
        *,
        prompt: dict[str, Any] | None = None,
        owner: str,
    ) -> Generation:
        generation = Generation(reply, body, ticket, prompt=prompt)
        if reply["content"]:  # Continue: the reply goes on from the text it has
            generation.content.append(reply["content"])
        if reply["thinking"]:
            generation.thinking.append(reply["thinking"])
        self.active[generation.conversation_id] = generation
        self.log.register(Job(generation.id, generation.conversation_id, owner, reply))
        self.admission.watch(ticket, lambda position: self._queued(generation, position))
        self._emit(generation, {"type": "reply.start", "message": dict(reply)})  # the row as it started
        generation.task = asyncio.get_running_loop().create_task(self._run(generation))
        if self._checkpointer is None:
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoints())
        return generation

    def snapshot(self, conversation_id: str) -> dict[str, Any] | None:
        """The reply being written in the conversation, as far as it got, for a client that arrives now."""
        generation = self.active.get(conversation_id)
        job = self.log.job(generation.id) if generation is not None else None
        return job.snapshot() if job is not None else None

    def stop(self, conversation_id: str) -> Generation | None:
        generation = self.active.get(conversation_id)
        if generation is not None and generation.task is not None:
            generation.task.cancel()  # closes the backend request; _run stores the partial reply as stopped
        return generation

    async def shutdown(self) -> None:
        """Store what every reply in flight has so far, marked interrupted, before the process exits."""
        running = list(self.active.values())
        for generation in running:
            generation.ending = "interrupted"
            if generation.task is not None:
                generation.task.cancel()
        await asyncio.gather(*(g.task for g in running if g.task is not None), return_exceptions=True)
        if self._checkpointer is not None:
            self._checkpointer.cancel()

    def _emit(self, generation: Generation, event: dict[str, Any]) -> None:
        event["conversation_id"], event["id"] = generation.conversation_id, generation.id
        self.hub.push(generation.conversation_id, self.log.append(generation.id, event))

    def _queued(self, generation: Generation, position: int) -> None:
        job = self.log.job(generation.id)
        if job is not None:
            job.queue_position = position
        self.hub.publish(
            generation.conversation_id,
            {
                "type": "reply.queue",
                "conversation_id": generation.conversation_id,
                "id": generation.id,
                "queue_position": position,
            },
        )

    async def _run(self, generation: Generation) -> None:
        ticket, slot_from = generation.ticket, None
        try:
            await self.admission.wait(ticket)
            slot_from = time.perf_counter()
            self.metrics.queue_wait.labels("chat").observe(slot_from - generation.started)
            job = self.log.job(generation.id)
            if job is not None:
                job.queue_position = None
            await self._stream(generation)
            generation.status = "done"
        except asyncio.CancelledError:
            generation.status = generation.ending
            if generation.ending == "interrupted":
                generation.error = "The gateway stopped while this reply was being written; the text so far is kept."
                generation.error_kind = "gateway_stopped"
        except BackendError as error:
            generation.status, generation.error, generation.error_kind = "failed", explain(error), error.kind
            self.metrics.reply_failures[error.kind] += 1
            LOG.warning(
                "reply failed",
                extra={
                    "reply_id": generation.id,
                    "kind": error.kind,
                    "backend": error.backend,
                    "reason": error.message,
                },
            )
        finally:
            self.admission.release(ticket, None if slot_from is None else time.perf_counter() - slot_from)
        self.metrics.replies[generation.status] += 1
        await self._finish(generation)

    async def _stream(self, generation: Generation) -> None:
        """The reply from the backend; a failure before any text is retried once, and the user never sees it."""
        retried = False
        while True:
            try:
                async for event in chat(self.backend, generation.body):
                    if isinstance(event, Delta):
                        self._delta(generation, event)
                    else:
                        generation.final = event
                return
            except BackendError as error:
                if retried or generation.streamed or not _retryable(error):
                    raise
                retried = True
                self.metrics.reply_retries[error.kind] += 1
                LOG.info("retrying a reply once", extra={"reply_id": generation.id, "kind": error.kind})
                await asyncio.sleep(_RETRY_DELAY)

    def _delta(self, generation: Generation, delta: Delta) -> None:
        now = time.perf_counter()
        if generation.first_token is None:
            generation.first_token = now
        for kind, text, parts in (
            ("thinking", delta.thinking, generation.thinking),
            ("content", delta.content, generation.content),
        ):
            if not text:
                continue
            status = "thinking" if kind == "thinking" else "writing"
            if generation.status != status:
                if status == "thinking":
                    generation.thinking_from = now
                elif generation.thinking_from is not None and generation.thinking_until is None:
                    generation.thinking_until = now
                generation.status = status
                self._emit(generation, {"type": "reply.status", "status": status})
            parts.append(text)
            generation.streamed = generation.dirty = True
            self._emit(generation, {"type": "reply.delta", kind: text})

    async def _checkpoints(self) -> None:
        """The text so far goes to the database about once a second: a crash loses at most that much."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            rows = [g.checkpoint() for g in list(self.active.values()) if g.dirty and g.status in _IN_FLIGHT]
            if not rows:
                continue
            try:
                await self.store.checkpoint(rows)
            except Exception:  # noqa: BLE001 - the next checkpoint or the final write carries the text
                LOG.exception("could not checkpoint replies in flight", extra={"count": len(rows)})

    async def _finish(self, generation: Generation) -> None:
        fields = generation.outcome()
        generation.reply.update(fields)
        try:
            await asyncio.shield(self.store.finish_reply(generation.id, **fields))
        except Exception:  # noqa: BLE001 - the reply is still sent to listeners; the failure is logged
            LOG.exception("could not store a finished reply", extra={"reply_id": generation.id})
        if self.active.get(generation.conversation_id) is generation:
            del self.active[generation.conversation_id]
        final = generation.final
        if final is not None:
            self._emit(
                generation,
                {
                    "type": "reply.stats",
                    "done_reason": final.done_reason,
                    "prompt_tokens": final.prompt_tokens,
                    "output_tokens": final.output_tokens,
                    "eval_ms": fields["eval_ms"],
                    "ttft_ms": fields["ttft_ms"],
                    "total_ms": fields["total_ms"],
                },
            )
        if generation.error is not None:
            self._emit(generation, {"type": "reply.error", "code": generation.error_kind, "message": generation.error})
        self._emit(generation, {"type": "reply.done", "message": generation.reply})
        self.log.finish(generation.id)
