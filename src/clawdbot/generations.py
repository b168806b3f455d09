"""Replies as server-side jobs: a generation runs on its own, whoever is watching.

A generation streams one reply from the backend, tells every listener of its conversation what happens (status,
thinking and answer deltas with sequence numbers, the final row) and stores the result — done, stopped, failed
or interrupted, with whatever text there was — when it ends. A listener that disconnects changes nothing; Stop
is explicit and closes the backend request at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .backends import Backend, Delta, Final, chat
from .errors import BackendError
from .logs import LOG
from .store import Store, now_ms


class Listener(Protocol):
    def push(self, data: bytes) -> None:
        """Queue one serialised event; must not block (a listener that cannot keep up drops itself)."""


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
        listeners = self.listeners.get(conversation_id)
        if listeners:
            data = orjson.dumps(event)
            for listener in list(listeners):
                listener.push(data)


@dataclass(slots=True, eq=False)
class Generation:
    reply: dict[str, Any]
    body: dict[str, Any]
    status: str = "waiting"
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    seq: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    thinking_from: float | None = None
    thinking_until: float | None = None
    final: Final | None = None
    error: str | None = None
    ending: str = "stopped"  # what a cancellation means: Stop, or the gateway shutting down ("interrupted")
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return str(self.reply["id"])

    @property
    def conversation_id(self) -> str:
        return str(self.reply["conversation_id"])

    def snapshot(self) -> dict[str, Any]:
        """The reply so far, for a listener that arrives in the middle."""
        return {
            "type": "reply.snapshot",
            "conversation_id": self.conversation_id,
            "id": self.id,
            "status": self.status,
            "seq": self.seq,
            "content": "".join(self.content),
            "thinking": "".join(self.thinking),
            "message": self.reply,
        }

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


class Generations:
    def __init__(self, store: Store, backend: Backend, hub: Hub) -> None:
        self.store = store
        self.backend = backend
        self.hub = hub
        self.active: dict[str, Generation] = {}  # by conversation: one reply at a time in each

    def start(self, reply: dict[str, Any], body: dict[str, Any]) -> Generation:
        generation = Generation(reply, body)
        self.active[generation.conversation_id] = generation
        self.hub.publish(
            generation.conversation_id,
            {"type": "reply.start", "conversation_id": generation.conversation_id, "message": reply},
        )
        generation.task = asyncio.get_running_loop().create_task(self._run(generation))
        return generation

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

    async def _run(self, generation: Generation) -> None:
        try:
            async for event in chat(self.backend, generation.body):
                if isinstance(event, Delta):
                    self._delta(generation, event)
                else:
                    generation.final = event
            generation.status = "done"
        except asyncio.CancelledError:
            generation.status = generation.ending
            if generation.ending == "interrupted":
                generation.error = "the gateway stopped while this reply was being written"
        except BackendError as error:
            generation.status, generation.error = "failed", error.message
            LOG.warning(
                "reply failed",
                extra={
                    "reply_id": generation.id,
                    "kind": error.kind,
                    "backend": error.backend,
                    "reason": error.message,
                },
            )
        await self._finish(generation)

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
                self.hub.publish(
                    generation.conversation_id,
                    {
                        "type": "reply.status",
                        "conversation_id": generation.conversation_id,
                        "id": generation.id,
                        "status": status,
                    },
                )
            parts.append(text)
            generation.seq += 1
            self.hub.publish(
                generation.conversation_id,
                {
                    "type": "reply.delta",
                    "conversation_id": generation.conversation_id,
                    "id": generation.id,
                    "seq": generation.seq,
                    kind: text,
                },
            )

    async def _finish(self, generation: Generation) -> None:
        fields = generation.outcome()
        generation.reply.update(fields)
        try:
            await asyncio.shield(self.store.update_message(generation.id, **fields))
        except Exception:  # noqa: BLE001 - the reply is still sent to listeners; the failure is logged
            LOG.exception("could not store a finished reply", extra={"reply_id": generation.id})
        if self.active.get(generation.conversation_id) is generation:
            del self.active[generation.conversation_id]
        self.hub.publish(
            generation.conversation_id,
            {"type": "reply.done", "conversation_id": generation.conversation_id, "message": generation.reply},
        )
