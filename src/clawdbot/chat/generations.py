"""Replies as server-side jobs: a generation runs on its own, whoever is watching.

A generation waits for a slot on the backend (backends/admission.py), streams one reply, numbers every event in its log
(eventlog.py) so that any client can resume from any point, writes the text so far to the database about once a
second, and stores the result (done, stopped, failed or interrupted, with whatever text there was) when it ends.
A listener that disconnects changes nothing; Stop is explicit and closes the backend request at once.

With several backends, a failure before the first token is retried on another one, unseen; a failure after text
has streamed continues the same reply on another backend from the text it has (a `reply.switch` event marks where),
so nothing the model wrote is lost and a follower notices only a pause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from ..backends.admission import Admission, Ticket
from ..backends.base import Delta, Final
from ..backends.fleet import Fleet, Member
from ..errors import BackendError
from ..logs import LOG
from ..metrics import Metrics
from ..store.conversations import Store
from ..store.records import Message, as_row
from .context import continuation
from .eventlog import GenerationLog, Job
from .generation import Generation, Guard
from .state import Running, RunningReplies

_IN_FLIGHT = ("waiting", "thinking", "writing")  # a checkpoint never writes a final status: _finish does
_HANDED_OVER = "handed_over"  # a cancellation at shutdown that leaves the reply to another process
_RETRY_DELAY = 0.5  # before the one unseen retry: long enough for a restarting backend, short against a TTFT


def _retryable(error: BackendError) -> bool:
    # Not a 4xx (the same request fails the same way) and not a first-byte timeout (it already waited minutes).
    return not error.kind.startswith("http_4") and error.kind != "first_byte_timeout"


class Generations:
    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        log: GenerationLog,
        admission: Admission,
        active: RunningReplies,
        metrics: Metrics,
        *,
        checkpoint_interval: float = 1.0,
    ) -> None:
        self.store, self.fleet, self.log = store, fleet, log
        self.admission, self.metrics = admission, metrics
        self.checkpoint_interval = checkpoint_interval
        self.active = active  # by conversation: one reply at a time in each
        active.on_stop(self._cancel)  # a Stop or Delete that reached another process first
        self._checkpointer: asyncio.Task[None] | None = None
        self.finished: list[Callable[[Generation], None]] = []  # told of every reply once it is stored

    async def start(
        self,
        reply: Message,
        body: dict[str, Any],
        ticket: Ticket,
        *,
        prompt: Message | None = None,
        owner: str,
        key: str | None = None,
        guard: Guard | None = None,
    ) -> Generation:
        generation = Generation(reply, body, ticket, prompt=prompt, guard=guard, checkpointed=False)  # a new row
        generation.owner, generation.key = owner, key
        if reply.content:  # Continue: the reply goes on from the text it has
            generation.content.append(reply.content)
        if reply.thinking:
            generation.thinking.append(reply.thinking)
        await self.active.add(generation)
        self.log.register(Job(generation.id, generation.conversation_id, owner, reply))
        self._emit(generation, {"type": "reply.start", "message": reply})  # the reply as it started
        self._launch(generation)
        return generation

    async def adopt(self, generation: Generation, owner: str, seq: int) -> None:
        """Go on with a reply whose writer (another process) died: the same reply, its log numbered on from `seq`
        (the shared log has its events up to there), from the text `generation` holds."""
        generation.owner = owner
        await self.active.add(generation)
        content, thinking, status = "".join(generation.content), "".join(generation.thinking), generation.status
        job = Job(generation.id, generation.conversation_id, owner, generation.reply, status=status, seq=seq)
        job.base_seq, job.base_content, job.base_thinking, job.base_status = seq, [content], [thinking], status
        self.log.register(job)
        self._launch(generation)

    def _launch(self, generation: Generation) -> None:
        self.admission.watch(generation.ticket, lambda position: self._queued(generation, position))
        generation.task = asyncio.get_running_loop().create_task(self._run(generation))
        if self._checkpointer is None:
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoints())

    async def running(self, conversation_id: str) -> Running | None:
        """The reply being written in the conversation, if one is (by any process)."""
        return await self.active.get(conversation_id)

    async def snapshot(self, conversation_id: str) -> dict[str, Any] | None:
        """The reply being written in the conversation (by any process), as far as it got, for a client that
        arrives now."""
        running = await self.active.get(conversation_id)
        job = await self.log.job(running.id) if running is not None else None
        return job.snapshot() if job is not None else None

    async def stop(self, conversation_id: str) -> str | None:
        """Stop the conversation's reply, here or in another process (stored as stopped); its id, None if none."""
        generation = self.active.local(conversation_id)
        if generation is None:
            return await self.active.stop_elsewhere(conversation_id)
        self._cancel(generation)
        return generation.id

    def _cancel(self, generation: Generation) -> None:
        if generation.task is not None:
            generation.task.cancel()  # closes the backend request; _run stores the partial reply as stopped

    async def shutdown(self, *, hand_over: bool = False) -> list[Generation]:
        """Before the process exits: store what every reply in flight has so far, marked interrupted; or, with
        `hand_over` (other processes share the replies), stop them unstored, their text checkpointed, for a process
        that lives to go on with (returned: the caller marks them so once their last events are in Redis)."""
        running = self.active.here()
        for generation in running:
            generation.ending = _HANDED_OVER if hand_over else "interrupted"
            if generation.task is not None:
                generation.task.cancel()
        await asyncio.gather(*(g.task for g in running if g.task is not None), return_exceptions=True)
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        handed = [g for g in running if g.ending == _HANDED_OVER and g.status in _IN_FLIGHT]
        if handed:
            await self.store.checkpoint([g.checkpoint() for g in handed])
        return handed

    def _emit(self, generation: Generation, event: dict[str, Any]) -> None:
        event["conversation_id"], event["id"] = generation.conversation_id, generation.id
        self.log.append(generation.id, event)  # to the reply's followers and its conversation's subscribers

    def _queued(self, generation: Generation, position: int) -> None:
        self.log.queued(generation.id, position)

    async def _run(self, generation: Generation) -> None:
        ticket, slot_from = generation.ticket, None
        try:
            await self.admission.wait(ticket)
            slot_from = time.perf_counter()
            generation.clocks.queued = slot_from - generation.started
            self.metrics.queue_wait.labels("chat").observe(slot_from - generation.started)
            self.log.queued(generation.id, None)
            await self._stream(generation)
            generation.status = "done"
        except asyncio.CancelledError:
            if generation.ending == _HANDED_OVER:  # not ended: another process goes on with it
                return
            generation.status = generation.ending
            if generation.ending == "interrupted":
                generation.error = "The gateway stopped while this reply was being written; the text so far is kept."
                generation.error_kind = "gateway_stopped"
        except BackendError as error:
            generation.status, generation.error, generation.error_kind = "failed", error.explain(), error.kind
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
        """The reply from the backend, within the guard's time; a failure before any text is retried once, and the
        user never sees it."""
        seconds = generation.guard.seconds if generation.guard is not None else None
        clocks = generation.clocks
        try:
            async with asyncio.timeout(seconds) as deadline:
                await self._attempts(generation)
        except TimeoutError:
            if not deadline.expired():
                raise
            generation.cut = "time_limit"
        finally:
            if clocks.first_byte:
                clocks.last_byte = time.perf_counter()

    async def _attempts(self, generation: Generation) -> None:
        tries = 0
        limit = generation.guard.tokens if generation.guard is not None else None
        while True:
            member = self._placed(generation)
            granted, first = time.perf_counter(), True
            if not generation.clocks.forwarded:  # a retry's wait counts as the backend's: it failed the first
                generation.clocks.forwarded = granted
            try:
                async with aclosing(member.backend.chat(self._body(generation))) as events:  # a cut closes it
                    async for event in events:
                        if isinstance(event, Final):
                            generation.final = event
                            member.prompt_tokens += event.prompt_tokens
                            member.output_tokens += event.output_tokens
                            continue
                        if first:
                            now = time.perf_counter()
                            member.ttft.observe(now - granted)
                            generation.clocks.first_byte = generation.clocks.first_byte or now
                            first = False
                        self._delta(generation, event)
                        generation.tokens += event.lines
                        if limit is not None and generation.tokens > limit:
                            generation.cut = "length"
                            return
                self.fleet.succeeded(member, generation.body.get("model"))
                return
            except BackendError as error:
                self.fleet.failed(member, error)
                if not self._may_move(generation, error, tries):
                    raise
                tries += 1
                await self._move(generation, member, error)

    def _may_move(self, generation: Generation, error: BackendError, tries: int) -> bool:
        """Whether a failure is retried elsewhere: not a 4xx (the same request fails the same way) nor a first-byte
        timeout (it already waited minutes). Before any text: once on a lone backend, else on each other one. After
        text: only on another backend that serves the model, which goes on from that text."""
        if not _retryable(error):
            return False
        others = [
            m
            for m in self.fleet.members
            if m.name not in generation.backends and m.place.in_rotation and m.place.may_serve(generation.body["model"])
        ]
        if generation.streamed:
            return bool(others) and tries < len(self.fleet.members)
        return tries < max(1, len(others))

    async def _move(self, generation: Generation, member: Member, error: BackendError) -> None:
        """Give the failed slot back and wait for one elsewhere (first in line): a lone backend after a pause."""
        if generation.streamed:
            self.metrics.reply_failovers[error.kind] += 1
        else:
            self.metrics.reply_retries[error.kind] += 1
        LOG.info(
            "moving a reply to another backend" if generation.streamed else "retrying a reply once",
            extra={"reply_id": generation.id, "kind": error.kind, "backend": member.name},
        )
        if len(self.fleet.members) == 1:
            await asyncio.sleep(_RETRY_DELAY)  # long enough for a restarting backend, short against a TTFT
        self.admission.reroute(generation.ticket)
        await self.admission.wait(generation.ticket)
        if generation.ticket.place is not None and generation.ticket.place.name != member.name:
            member.failovers += 1

    def _placed(self, generation: Generation) -> Member:
        """The member the ticket holds a slot on, noted: affinity for the next turn, and a switch once text came."""
        ticket = generation.ticket
        first = not generation.backends
        member = self.fleet.placed(
            generation.conversation_id, ticket.place, ticket.prefer, ticket.affinity if first else None
        )
        if not first and generation.streamed and generation.backends[-1] != member.name:
            switch = {"from": generation.backends[-1], "to": member.name, "at": len("".join(generation.content))}
            generation.switches.append(switch)
            self._emit(generation, {"type": "reply.switch", **switch})
        if not generation.backends or generation.backends[-1] != member.name:
            generation.backends.append(member.name)
        member.requests += 1
        return member

    def _body(self, generation: Generation) -> dict[str, Any]:
        if not generation.switches:
            return generation.body
        content, thinking = "".join(generation.content), "".join(generation.thinking)
        return continuation(generation.body, content, thinking, generation.tokens)

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
            rows = [g.checkpoint() for g in self.active.here() if g.dirty and g.status in _IN_FLIGHT]
            if not rows:
                continue
            try:
                await self.store.checkpoint(rows)
            except Exception:  # noqa: BLE001 - the next checkpoint or the final write carries the text
                LOG.exception("could not checkpoint replies in flight", extra={"count": len(rows)})

    async def _finish(self, generation: Generation) -> None:
        outcome = generation.outcome()
        generation.reply = replace(generation.reply, **as_row(outcome))
        job = await self.log.job(generation.id)
        if job is not None:  # a snapshot from now on shows the reply as stored
            job.message = generation.reply
        try:
            await asyncio.shield(self.store.finish_reply(generation.id, outcome, checkpointed=generation.checkpointed))
        except Exception:  # noqa: BLE001 - the reply is still sent to listeners; the failure is logged
            LOG.exception("could not store a finished reply", extra={"reply_id": generation.id})
        await self.active.remove(generation)
        if generation.cut is not None:
            self.metrics.reply_cuts[generation.cut] += 1
        if generation.final is not None or generation.cut is not None:
            self._emit(
                generation,
                {
                    "type": "reply.stats",
                    "done_reason": outcome.done_reason,
                    "prompt_tokens": outcome.prompt_tokens,
                    "output_tokens": outcome.output_tokens,
                    "eval_ms": outcome.eval_ms,
                    "ttft_ms": outcome.ttft_ms,
                    "total_ms": outcome.total_ms,
                    "timing": outcome.timing,
                },
            )
        if generation.error is not None:
            self._emit(generation, {"type": "reply.error", "code": generation.error_kind, "message": generation.error})
        self._emit(generation, {"type": "reply.done", "message": generation.reply})
        self.log.finish(generation.id)
        for hook in self.finished:
            hook(generation)
