"""Conversations as the chat page uses them: send, regenerate, edit, stop, views and exports.

Both transports (WebSocket and plain HTTP with an event stream) call this one service. The user's message is
stored before anything is sent to the model; the reply's row exists from the moment its generation starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import IntegrityError

from ..backends.admission import Admission
from ..backends.fleet import Fleet
from ..errors import BadRequest, Conflict, NotFound, PayloadTooLarge, RedisUnavailable
from ..identity import Actor
from ..settings import Settings
from ..store.conversations import Store
from ..store.limits import Limits
from ..store.records import Conversation, Message, new_message
from ..store.usage import Usage
from . import catalog, context, versions
from .eventlog import GenerationLog, Job
from .generation import Guard, ended_early
from .generations import Generations
from .results import ContextUse, ReplyState, Shown, TurnResult, View
from .state import SendResults
from .turns import Turn, Turns

_IN_FLIGHT = ("waiting", "thinking", "writing")
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def title_from(text: str) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= 60 else line[:59].rstrip() + "…"


class Chat:
    def __init__(
        self,
        store: Store,
        generations: Generations,
        fleet: Fleet,
        settings: Settings,
        limits: Limits,
        *,
        log: GenerationLog,
        admission: Admission,
        results: SendResults,
    ) -> None:
        self.store = store
        self.usage: Usage | None = None  # token quotas, once web/app.py has the rollups
        self.generations = generations
        self.log, self.admission = log, admission
        self.fleet = fleet
        self.settings = settings
        self.turns = Turns(generations, results)
        self.limits = limits

    # ---- what the page reads -------------------------------------------------------------------------------
    def models(self, actor: Actor) -> catalog.Models:
        """The backend's models this user may use."""
        return catalog.listing(self.fleet, self.settings, self.limits, actor)

    def default_model(self, actor: Actor) -> str:
        return catalog.default_model(self.fleet, self.settings, actor)

    async def snapshot(self, conversation_id: str) -> dict[str, Any] | None:
        """The reply being written in the conversation, as far as it got, for a client that arrives now."""
        return await self.generations.snapshot(conversation_id)

    async def conversation(self, conversation_id: str, owner: str) -> Conversation:
        found, _ = await self._history(conversation_id, owner, messages=False)
        return found

    async def reply(self, reply_id: str, owner: str) -> Message:
        """A reply as stored; NotFound (never a new generation) for an id that is not one of this user's."""
        found = await self.store.get_reply(reply_id, owner) if _ID.fullmatch(reply_id) else None
        if found is not None:
            return found
        raise NotFound(f"no reply {reply_id}: nothing is being written or was stored under that id")

    async def job(self, reply_id: str, owner: str) -> Job | None:
        """A reply in the event log, if it is this user's: another's is as absent as an unknown one. Where the log
        cannot be read (Redis is down) a reply that has ended is left to its stored row; one in flight is a 503.
        So is one in flight that the log does not have: a log shared by several processes lost it (Redis restarted
        empty) until its writer writes it again, or its writer died before it was in the log and the sweep has not
        ended it yet; its row, not final, is not how it ends (a client told so would stop following it)."""
        try:
            job = await self.log.job(reply_id)
        except RedisUnavailable:
            if await self._in_flight(reply_id, owner):
                raise
            return None
        if job is None and await self._in_flight(reply_id, owner):
            raise RedisUnavailable("This reply's events cannot be read now (its writer is catching up); try again")
        return job if job is not None and job.owner == owner else None

    async def _in_flight(self, reply_id: str, owner: str) -> bool:
        row = await self.store.get_reply(reply_id, owner) if _ID.fullmatch(reply_id) else None
        return row is not None and row.status in _IN_FLIGHT

    async def generation(self, reply_id: str, owner: str) -> ReplyState:
        """Where a reply stands: live from the event log while it runs (and briefly after), else its stored row.
        web/ adds the URL of its events."""
        job = await self.job(reply_id, owner)
        if job is not None:
            live = not job.finished
            return ReplyState(job.id, job.conversation_id, live, job.seq, job.queue_position, snapshot=job.snapshot())
        row = await self.reply(reply_id, owner)
        return ReplyState(row.id, row.conversation_id, live=False, seq=None, queue_position=None, message=row)

    async def first_title(self, conversation_id: str) -> str:
        """The title of a conversation that follows its first (shown) message."""
        history = await self.store.messages(conversation_id)
        first = next((m for m in history if m.role == "user"), None)
        return title_from(first.content) if first else ""

    async def view(self, conversation_id: str, owner: str) -> View:
        """A conversation with its shown messages (and the versions of those that have several), the reply in
        flight if any, and how full its context is."""
        conversation, history = await self._history(conversation_id, owner)
        active = await self.snapshot(conversation_id)
        last_reply = next((m for m in reversed(history) if m.role == "assistant"), None)
        return View(
            conversation=conversation,
            messages=history,
            versions=await versions.annotate(self.store, conversation_id, history),
            active=active,
            context=ContextUse(
                in_use=context.in_use(history),
                num_ctx=self._num_ctx(conversation),
                omitted_turns=(last_reply.omitted_turns if last_reply else None) or 0,
            ),
        )

    # ---- what the page does --------------------------------------------------------------------------------
    # A turn is one read (the conversation and its history) and one write (everything the turn changes), and the
    # write is committed before the model is asked: the user's message is stored before it is forwarded.
    async def send(
        self, conversation_id: str, content: str, client_id: str | None = None, *, actor: Actor
    ) -> TurnResult:
        """Store the user's message and start the reply. Idempotent by `client_id`: a retried send gets the first
        one's message and reply (with `duplicate: true`), never a second message or a second generation."""
        return await self.turns.to_the_end(self._send(conversation_id, self._checked(content), client_id, actor))

    async def regenerate(self, conversation_id: str, *, actor: Actor) -> TurnResult:
        return await self.turns.to_the_end(self._regenerate(conversation_id, actor))

    async def continue_reply(self, conversation_id: str, *, actor: Actor) -> TurnResult:
        """Go on with a reply that ended early (interrupted, failed, stopped, or cut off at a limit of length or
        time) from the text it has: the model gets that text as the start of its answer. The new reply, which starts
        with the same text, takes the old one's place: the same answer, continued, and not a version of its own
        (versions.py)."""
        return await self.turns.to_the_end(self._continue(conversation_id, actor))

    async def edit(
        self, conversation_id: str, content: str, message_id: str | None = None, *, actor: Actor
    ) -> TurnResult:
        """Add a version of a shown user message (the last one unless `message_id` names another) with new text,
        and answer that; the earlier version keeps its thread."""
        return await self.turns.to_the_end(self._edit(conversation_id, self._checked(content), message_id, actor))

    async def switch(self, conversation_id: str, message_id: str, *, actor: Actor) -> Shown:
        """Show another version of a message (versions.show); other tabs get it as a `version.shown` event."""
        async with await self._reserve(conversation_id, actor.id):
            await self.conversation(conversation_id, actor.id)
            shown = await versions.show(self.store, conversation_id, message_id)
        if shown is None:
            raise NotFound(f"no message {message_id} in this conversation")
        self._publish(
            conversation_id,
            {
                "type": "version.shown",
                "message_id": shown.message_id,
                "hidden": shown.hidden,
                "messages": shown.messages,
                "versions": shown.versions,
            },
        )
        return shown

    async def finish_turns(self) -> None:
        """At shutdown, before the replies in flight are stored: let turns being written start theirs."""
        await self.turns.finish()

    async def _send(self, conversation_id: str, content: str, client_id: str | None, actor: Actor) -> TurnResult:
        if client_id is not None and (earlier := await self.turns.sent_before(conversation_id, client_id)) is not None:
            await self.conversation(conversation_id, actor.id)  # someone else's send is not found, not repeated
            return earlier
        async with await self._reserve(conversation_id, actor.id, client_id) as turn:
            conversation, history = await self._history(conversation_id, actor.id)
            if client_id is not None and (earlier := _answered(history, client_id)) is not None:
                return earlier  # stored between the check above and this read
            after = history[-1].id if history else None  # the new message follows the last one shown
            user_message = new_message(
                conversation_id, "user", content, status="sent", client_id=client_id, parent_id=after
            )
            try:
                # The store titles a conversation only while it has no title, i.e. from its first message.
                reply = await self._reply(
                    conversation, [*history, user_message], [user_message], actor, title=title_from(content)
                )
            except IntegrityError:  # the id belongs to a message no longer shown (edited away): still the same send
                message, answer = await self.store.by_client_id(conversation_id, client_id or "")
                if message is None:
                    raise
                return turn.done(TurnResult(message, answer, duplicate=True))
            return turn.done(TurnResult(user_message, reply))

    async def _regenerate(self, conversation_id: str, actor: Actor) -> TurnResult:
        async with await self._reserve(conversation_id, actor.id):
            conversation, history = await self._history(conversation_id, actor.id)
            if not any(m.role == "user" for m in history):
                raise BadRequest("there is no message to answer again")
            keep = _last_user(history) + 1
            reply = await self._reply(conversation, history[:keep], [], actor, supersede=history[keep:])
        return await self._versioned(TurnResult(None, reply), reply)

    async def _continue(self, conversation_id: str, actor: Actor) -> TurnResult:
        async with await self._reserve(conversation_id, actor.id):
            conversation, history = await self._history(conversation_id, actor.id)
            last = history[-1] if history else None
            if last is None or last.role != "assistant" or not ended_early(last):
                raise BadRequest("only a reply that was interrupted, failed, stopped or cut off can be continued")
            reply = await self._reply(conversation, history, [], actor, supersede=[last], prefix=last)
        return await self._versioned(TurnResult(None, reply), reply)

    async def _edit(self, conversation_id: str, content: str, message_id: str | None, actor: Actor) -> TurnResult:
        async with await self._reserve(conversation_id, actor.id):
            conversation, history = await self._history(conversation_id, actor.id)
            if not any(m.role == "user" for m in history):
                raise BadRequest("there is no message to edit")
            keep = _last_user(history) if message_id is None else _shown_user(history, message_id)
            edited = new_message(conversation_id, "user", content, status="sent", parent_id=history[keep].parent_id)
            shown = [*history[:keep], edited]
            first = next(m for m in shown if m.role == "user")  # the edited message may have been the first one
            reply = await self._reply(
                conversation,
                shown,
                [edited],
                actor,
                supersede=history[keep:],
                title=title_from(first.content),
                retitle=True,
            )
        return await self._versioned(TurnResult(edited, reply), edited)

    async def stop(self, conversation_id: str, owner: str) -> str | None:
        """Stop the reply being written in the conversation; its id, None if none was."""
        await self.conversation(conversation_id, owner)
        return await self.generations.stop(conversation_id)

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

    async def _reserve(self, conversation_id: str, owner: str, client_id: str | None = None) -> Turn:
        """The conversation, marked as starting a reply; its Conflict (which says where the running reply is)
        only for its owner. Ownership of a conversation that is free is checked by the turn's own read."""
        try:
            return await self.turns.begin(conversation_id, client_id)
        except Conflict:
            await self.conversation(conversation_id, owner)
            raise

    def _publish(self, conversation_id: str, event: dict[str, Any]) -> None:
        self.log.publish(conversation_id, {**event, "conversation_id": conversation_id})

    async def _versioned(self, result: TurnResult, row: Message) -> TurnResult:
        """A turn that added a version of `row`: the versions go with its answer and to the other tabs."""
        found = await versions.annotate(self.store, row.conversation_id, [row])
        if found:
            self._publish(row.conversation_id, {"type": "versions", "versions": found})
        return replace(result, versions=found)

    def _num_ctx(self, conversation: Conversation) -> int:
        return int(conversation.num_ctx or self.limits.num_ctx(conversation.model))

    async def _history(
        self, conversation_id: str, owner: str, *, messages: bool = True
    ) -> tuple[Conversation, list[Message]]:
        """The owner's conversation (NotFound if there is none, or it is someone else's: the answer is the same)
        and, with `messages`, its shown messages, in one read. Not one of our ids needs no query, and PostgreSQL
        would fail on some (a NUL)."""
        found: Conversation | None = None
        history: list[Message] = []
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
        conversation: Conversation,
        history: list[Message],
        new: list[Message],
        actor: Actor,
        *,
        supersede: Sequence[Message] = (),
        title: str | None = None,
        retitle: bool = False,
        prefix: Message | None = None,
    ) -> Message:
        """Store the turn (`new` messages, `supersede`d ones, the reply's row) at once, then start the reply to
        `history` (the messages the model is to see; with a `prefix` reply last, the model goes on from it).
        The first of `supersede` is the version the first new message replaces. The slot or queue place is taken
        first: when the queue is full, nothing is stored."""
        conversation_id = conversation.id
        actor.check_model(conversation.model)
        num_ctx = self._num_ctx(conversation)
        plan = context.plan(history, conversation.system_prompt, num_ctx, self.settings.reply_room)
        reply = new_message(
            conversation_id,
            "assistant",
            prefix.content if prefix else "",
            status="waiting",
            model=conversation.model,
            omitted_turns=plan.omitted_turns,
            parent_id=prefix.parent_id if prefix else history[-1].id,  # Continue: in place of `prefix`
            thinking=prefix.thinking if prefix else "",
        )
        superseded = [m.id for m in supersede]
        # Overloaded when the queue is full, or the user over their rate or token quota: nothing is stored yet
        if self.usage is not None:
            await self.usage.check(actor)
        ticket = await self.admission.enter(
            actor.queue,
            max_running=actor.max_running,
            per_minute=actor.requests_per_minute,
            model=conversation.model,
            prefer=self.fleet.affinity.get(conversation_id),
        )
        try:
            await self.store.record_turn(
                conversation_id,
                [*new, reply],
                supersede=superseded,
                replaces=superseded[0] if superseded else None,
                continued=prefix is not None,
                title=title,
                retitle=retitle,
            )
        except BaseException:
            self.admission.release(ticket)
            raise
        if superseded:
            self._publish(conversation_id, {"type": "messages.superseded", "ids": superseded})
        for sent in new:
            self._publish(conversation_id, {"type": "message.new", "message": sent})
        body = context.request(
            conversation,
            plan,
            num_ctx,
            self.limits.reply_tokens(conversation.num_predict, conversation.model),
        )
        prompt = next((m for m in new if m.role == "user"), None)
        guard = Guard(self.limits.max_num_predict, self.limits.max_reply_seconds)
        await self.generations.start(reply, body, ticket, prompt=prompt, owner=actor.id, key=actor.key, guard=guard)
        return reply


def _answered(history: list[Message], client_id: str) -> TurnResult | None:
    for index, message in enumerate(history):
        if message.client_id == client_id:
            reply = next((m for m in history[index + 1 :] if m.role == "assistant"), None)
            return TurnResult(message, reply, duplicate=True)
    return None


def _last_user(history: list[Message]) -> int:
    return max(i for i, m in enumerate(history) if m.role == "user")


def _shown_user(history: list[Message], message_id: str) -> int:
    found = next((i for i, m in enumerate(history) if m.id == message_id and m.role == "user"), None)
    if found is None:
        raise NotFound(f"no shown message {message_id} of yours to edit in this conversation")
    return found
