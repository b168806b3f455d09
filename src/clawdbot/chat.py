"""Conversations as the chat page uses them: send, regenerate, edit, stop, views and exports.

Both transports (WebSocket and plain HTTP with an event stream) call this one service. The user's message is
stored before anything is sent to the model; the reply's row exists from the moment its generation starts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from . import context
from .backends import Backend
from .errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from .eventlog import Job
from .generations import Generations
from .identity import Actor
from .settings import Settings
from .store import Store, new_message

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def title_from(text: str) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


class Chat:
    def __init__(self, store: Store, generations: Generations, backend: Backend, settings: Settings) -> None:
        self.store = store
        self.generations = generations
        self.backend = backend
        self.settings = settings
        # Conversations between "may I start?" and the generation existing, with the client id of the send
        # starting there and what it will answer: a retry of that very send waits for the same answer.
        self._starting: dict[str, tuple[str | None, asyncio.Future[dict[str, Any]]]] = {}
        self._turns: set[asyncio.Task[dict[str, Any]]] = set()  # turns whose client left: they still finish

    # ---- what the page reads -------------------------------------------------------------------------------
    def models(self, actor: Actor) -> dict[str, Any]:
        """The backend's models this user may use."""
        listed = [
            {
                "name": m.get("name"),
                "size": m.get("size"),
                "parameter_size": (m.get("details") or {}).get("parameter_size"),
                "quantization": (m.get("details") or {}).get("quantization_level"),
                "family": (m.get("details") or {}).get("family"),
                "capabilities": m.get("capabilities") or [],
            }
            for m in self.backend.status.models
            if actor.may_use(m.get("name"))
        ]
        return {
            "models": listed,
            "default": self.default_model(actor),
            "num_ctx": self.settings.num_ctx,
            "reachable": self.backend.status.reachable,
            "simulated": self.backend.simulated,
        }

    def default_model(self, actor: Actor) -> str:
        names = [name for name in self.backend.status.model_names() if actor.may_use(name)]
        if self.settings.default_model and actor.may_use(self.settings.default_model):
            return self.settings.default_model
        return names[0] if names else (actor.models or ("qwen3:32b",))[0]

    async def conversation(self, conversation_id: str, owner: str) -> dict[str, Any]:
        found, _ = await self._history(conversation_id, owner, messages=False)
        return found

    async def reply(self, reply_id: str, owner: str) -> dict[str, Any]:
        """A reply's stored row; NotFound (never a new generation) for an id that is not one of this user's."""
        found = await self.store.get_reply(reply_id, owner) if _ID.fullmatch(reply_id) else None
        if found is not None:
            return found
        raise NotFound(f"no reply {reply_id}: nothing is being written or was stored under that id")

    def job(self, reply_id: str, owner: str) -> Job | None:
        """A reply in the event log, if it is this user's: another's is as absent as an unknown one."""
        job = self.generations.log.job(reply_id)
        return job if job is not None and job.owner == owner else None

    async def generation(self, reply_id: str, owner: str) -> dict[str, Any]:
        """Where a reply stands: live from the event log while it runs (and briefly after), else its stored row."""
        job = self.job(reply_id, owner)
        if job is not None:
            return {
                "id": job.id,
                "conversation_id": job.conversation_id,
                "live": not job.finished,
                "seq": job.seq,
                "queue_position": job.queue_position,
                "snapshot": job.snapshot(),
                "events": f"/chat/api/generations/{job.id}/events",
            }
        row = await self.reply(reply_id, owner)
        return {
            "id": row["id"],
            "conversation_id": row["conversation_id"],
            "live": False,
            "seq": None,
            "queue_position": None,
            "message": row,
            "events": f"/chat/api/generations/{row['id']}/events",
        }

    async def first_title(self, conversation_id: str) -> str:
        """The title of a conversation that follows its first (shown) message."""
        history = await self.store.messages(conversation_id)
        first = next((m for m in history if m["role"] == "user"), None)
        return title_from(first["content"]) if first else ""

    async def view(self, conversation_id: str, owner: str) -> dict[str, Any]:
        """A conversation with its shown messages, the reply in flight if any, and how full its context is."""
        conversation, history = await self._history(conversation_id, owner)
        active = self.generations.snapshot(conversation_id)
        last_reply = next((m for m in reversed(history) if m["role"] == "assistant"), None)
        return {
            "conversation": conversation,
            "messages": history,
            "active": active,
            "context": {
                "in_use": context.in_use(history),
                "num_ctx": self._num_ctx(conversation),
                "omitted_turns": (last_reply or {}).get("omitted_turns") or 0,
            },
        }

    # ---- what the page does --------------------------------------------------------------------------------
    # A turn is one read (the conversation and its history) and one write (everything the turn changes), and the
    # write is committed before the model is asked: the user's message is stored before it is forwarded.
    async def send(
        self, conversation_id: str, content: str, client_id: str | None = None, *, actor: Actor
    ) -> dict[str, Any]:
        """Store the user's message and start the reply. Idempotent by `client_id`: a retried send gets the first
        one's message and reply (with `duplicate: true`), never a second message or a second generation."""
        return await self._to_the_end(self._send(conversation_id, self._checked(content), client_id, actor))

    async def regenerate(self, conversation_id: str, *, actor: Actor) -> dict[str, Any]:
        return await self._to_the_end(self._regenerate(conversation_id, actor))

    async def continue_reply(self, conversation_id: str, *, actor: Actor) -> dict[str, Any]:
        """Go on with a reply that ended early (interrupted, failed or stopped) from the text it has: the model
        gets that text as the start of its answer. The old reply is superseded by the new one, which starts
        with the same text."""
        return await self._to_the_end(self._continue(conversation_id, actor))

    async def edit(self, conversation_id: str, content: str, *, actor: Actor) -> dict[str, Any]:
        """Replace the last user message (and the reply to it) with new text, and answer that."""
        return await self._to_the_end(self._edit(conversation_id, self._checked(content), actor))

    async def finish_turns(self) -> None:
        """At shutdown, before the replies in flight are stored: let turns being written start theirs."""
        await asyncio.gather(*self._turns, return_exceptions=True)

    async def _to_the_end(self, turn: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        """Run a turn to its end even if the client that asked goes away (aiohttp cancels its handler): a turn
        whose write was committed must start its reply, or the reply would be left waiting forever."""
        task = asyncio.ensure_future(turn)
        self._turns.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._turns.discard)
        return await asyncio.shield(task)

    async def _send(self, conversation_id: str, content: str, client_id: str | None, actor: Actor) -> dict[str, Any]:
        if client_id is not None and (earlier := await self._sent_before(conversation_id, client_id)) is not None:
            await self.conversation(conversation_id, actor.id)  # someone else's send is not found, not repeated
            return earlier
        with await self._reserve(conversation_id, actor.id, client_id) as turn:
            conversation, history = await self._history(conversation_id, actor.id)
            if client_id is not None and (earlier := _answered(history, client_id)) is not None:
                return earlier  # stored between the check above and this read
            user_message = new_message(conversation_id, "user", content, status="sent", client_id=client_id)
            try:
                # The store titles a conversation only while it has no title, i.e. from its first message.
                reply = await self._reply(
                    conversation, [*history, user_message], [user_message], actor, title=title_from(content)
                )
            except IntegrityError:  # the id belongs to a message no longer shown (edited away): still the same send
                message, answer = await self.store.by_client_id(conversation_id, client_id or "")
                if message is None:
                    raise
                return turn.done({"message": message, "reply": answer, "duplicate": True})
            return turn.done({"message": user_message, "reply": reply})

    async def _sent_before(self, conversation_id: str, client_id: str) -> dict[str, Any] | None:
        """The answer already given to a send with this client id, if there was one."""
        starting = self._starting.get(conversation_id)
        if starting is not None and starting[0] == client_id:
            return {**await asyncio.shield(starting[1]), "duplicate": True}
        running = self.generations.active.get(conversation_id)
        if running is not None and running.client_id == client_id:
            return {"message": running.prompt, "reply": running.reply, "duplicate": True}
        return None  # a send that finished is found in the history the turn reads anyway

    async def _regenerate(self, conversation_id: str, actor: Actor) -> dict[str, Any]:
        with await self._reserve(conversation_id, actor.id):
            conversation, history = await self._history(conversation_id, actor.id)
            if not any(m["role"] == "user" for m in history):
                raise BadRequest("there is no message to answer again")
            keep = _last_user(history) + 1
            reply = await self._reply(conversation, history[:keep], [], actor, supersede=history[keep:])
        return {"reply": reply}

    async def _continue(self, conversation_id: str, actor: Actor) -> dict[str, Any]:
        with await self._reserve(conversation_id, actor.id):
            conversation, history = await self._history(conversation_id, actor.id)
            last = history[-1] if history else None
            if last is None or last["role"] != "assistant" or last["status"] not in _ENDED_EARLY:
                raise BadRequest("only a reply that was interrupted, failed or stopped can be continued")
            reply = await self._reply(conversation, history, [], actor, supersede=[last], prefix=last)
        return {"reply": reply}

    async def _edit(self, conversation_id: str, content: str, actor: Actor) -> dict[str, Any]:
        with await self._reserve(conversation_id, actor.id):
            conversation, history = await self._history(conversation_id, actor.id)
            if not any(m["role"] == "user" for m in history):
                raise BadRequest("there is no message to edit")
            keep = _last_user(history)
            edited = new_message(conversation_id, "user", content, status="sent")
            shown = [*history[:keep], edited]
            first = next(m for m in shown if m["role"] == "user")  # the edited message may have been the first one
            reply = await self._reply(
                conversation,
                shown,
                [edited],
                actor,
                supersede=history[keep:],
                title=title_from(first["content"]),
                retitle=True,
            )
        return {"message": edited, "reply": reply}

    async def stop(self, conversation_id: str, owner: str) -> dict[str, Any]:
        await self.conversation(conversation_id, owner)
        generation = self.generations.stop(conversation_id)
        return {"stopping": generation.id if generation else None}

    # ---- helpers -------------------------------------------------------------------------------------------
    def _checked(self, content: str) -> str:
        if not isinstance(content, str) or not content.strip():
            raise BadRequest("the message is empty")
        if len(content) > self.settings.max_message_chars:
            raise PayloadTooLarge(
                f"the message has {len(content)} characters; the limit is "
                f"{self.settings.max_message_chars} (--max-message-chars)"
            )
        return content

    async def _reserve(self, conversation_id: str, owner: str, client_id: str | None = None) -> _Turn:
        """The conversation, marked as starting a reply; its Conflict (which says where the running reply is)
        only for its owner. Ownership of a conversation that is free is checked by the turn's own read."""
        try:
            return self._turn(conversation_id, client_id)
        except Conflict:
            await self.conversation(conversation_id, owner)
            raise

    def _turn(self, conversation_id: str, client_id: str | None = None) -> _Turn:
        running = self.generations.active.get(conversation_id)
        if running is not None or conversation_id in self._starting:
            details = {"conversation_id": conversation_id, "conversation_events": _events(conversation_id)}
            if running is not None:  # where to attach: the reply's own event stream, replayable from any seq
                details.update(reply_id=running.id, events=f"/chat/api/generations/{running.id}/events")
            else:
                details.update(events=_events(conversation_id))
            raise Conflict("a reply is still being written in this conversation; stop it or wait for it", **details)
        return _Turn(self._starting, conversation_id, client_id)

    def _publish(self, conversation_id: str, event: dict[str, Any]) -> None:
        self.generations.hub.publish(conversation_id, {**event, "conversation_id": conversation_id})

    def _num_ctx(self, conversation: dict[str, Any]) -> int:
        return int(conversation.get("num_ctx") or self.settings.num_ctx)

    async def _history(
        self, conversation_id: str, owner: str, *, messages: bool = True
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The owner's conversation (NotFound if there is none, or it is someone else's: the answer is the same)
        and, with `messages`, its shown messages, in one read. Not one of our ids needs no query, and PostgreSQL
        would fail on some (a NUL)."""
        found: dict[str, Any] | None = None
        history: list[dict[str, Any]] = []
        if _ID.fullmatch(conversation_id):
            if messages:
                found, history = await self.store.conversation_and_messages(conversation_id, owner)
            else:
                found = await self.store.get_conversation(conversation_id, owner)
        if found is None:
            raise NotFound(f"no conversation {conversation_id}")
        return found, history

    async def _reply(
        self,
        conversation: dict[str, Any],
        history: list[dict[str, Any]],
        new: list[dict[str, Any]],
        actor: Actor,
        *,
        supersede: Sequence[dict[str, Any]] = (),
        title: str | None = None,
        retitle: bool = False,
        prefix: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store the turn (`new` messages, `supersede`d ones, the reply's row) at once, then start the reply to
        `history` (the messages the model is to see; with a `prefix` reply last, the model goes on from it).
        The slot or queue place is taken first: when the queue is full, nothing is stored."""
        conversation_id = conversation["id"]
        actor.check_model(conversation["model"])
        num_ctx = self._num_ctx(conversation)
        plan = context.plan(history, conversation["system_prompt"], num_ctx, self.settings.reply_room)
        reply = new_message(
            conversation_id,
            "assistant",
            (prefix or {}).get("content") or "",
            status="waiting",
            model=conversation["model"],
            omitted_turns=plan.omitted_turns,
        )
        reply["thinking"] = (prefix or {}).get("thinking") or ""
        superseded = [m["id"] for m in supersede]
        # Overloaded when the queue is full or the user over their rate: nothing is stored yet
        ticket = self.generations.admission.enter(
            actor.queue, max_running=actor.max_running, per_minute=actor.requests_per_minute
        )
        try:
            await self.store.record_turn(
                conversation_id, [*new, reply], supersede=superseded, title=title, retitle=retitle
            )
        except BaseException:
            self.generations.admission.release(ticket)
            raise
        if superseded:
            self._publish(conversation_id, {"type": "messages.superseded", "ids": superseded})
        for sent in new:
            self._publish(conversation_id, {"type": "message.new", "message": sent})
        options: dict[str, Any] = {"num_ctx": num_ctx}
        if conversation["temperature"] is not None:
            options["temperature"] = conversation["temperature"]
        body: dict[str, Any] = {
            "model": conversation["model"],
            "messages": plan.messages,
            "stream": True,
            "options": options,
        }
        if conversation["think"] is not None:
            body["think"] = conversation["think"]
        prompt = next((m for m in new if m["role"] == "user"), None)
        self.generations.start(reply, body, ticket, prompt=prompt, owner=actor.id)
        return reply


class _Turn:
    """Marks a conversation as starting a reply for the length of a `with` block, so two sends cannot race; a
    retry of the same send (same client id) waits for this one's answer instead."""

    def __init__(
        self,
        starting: dict[str, tuple[str | None, asyncio.Future[dict[str, Any]]]],
        conversation_id: str,
        client_id: str | None,
    ) -> None:
        self.starting, self.conversation_id = starting, conversation_id
        self.answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answer.add_done_callback(lambda answer: answer.cancelled() or answer.exception())  # no retry waited
        self.client_id = client_id

    def __enter__(self) -> _Turn:
        self.starting[self.conversation_id] = (self.client_id, self.answer)
        return self

    def done(self, result: dict[str, Any]) -> dict[str, Any]:
        self.answer.set_result(result)
        return result

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, *rest: object) -> None:
        del self.starting[self.conversation_id]
        if not self.answer.done():
            if isinstance(error, Exception):
                self.answer.set_exception(error)
            else:
                self.answer.cancel()


def _settled(task: asyncio.Task[Any]) -> None:
    """A turn's error reaches its caller; with the caller gone, it is only retrieved here (no asyncio warning)."""
    if not task.cancelled():
        task.exception()


_ENDED_EARLY = ("interrupted", "failed", "stopped")


def _events(conversation_id: str) -> str:
    return f"/chat/api/conversations/{conversation_id}/events"


def _answered(history: list[dict[str, Any]], client_id: str) -> dict[str, Any] | None:
    for index, message in enumerate(history):
        if message["client_id"] == client_id:
            reply = next((m for m in history[index + 1 :] if m["role"] == "assistant"), None)
            return {"message": message, "reply": reply, "duplicate": True}
    return None


def _last_user(history: list[dict[str, Any]]) -> int:
    return max(i for i, m in enumerate(history) if m["role"] == "user")
