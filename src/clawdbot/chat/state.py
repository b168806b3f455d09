"""Which conversations are busy, and what a send already answered: the chat's live state besides the event log.

A conversation holds one turn at a time. From "may I start?" until its reply's generation exists the turn is
*starting* (`SendResults`, with the client id of a send and the answer it will give); from then until the reply is
stored it is *running* (`RunningReplies`). Both make a second turn there a 409, and both let a retried send (the
same client id) get the first one's answer instead of sending again; once the reply is stored, the history the
turn reads answers it.

The `Memory…` classes keep this in one process. live/replies.py shares it between gateway processes (a key per
conversation naming the starting turn or the running reply and the process writing it), behind the same
interfaces: that is why the methods that may have to ask another process are `async`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .results import TurnResult

if TYPE_CHECKING:
    from .generation import Generation

Answer = asyncio.Future[TurnResult]


@dataclass(frozen=True, slots=True)
class Running:
    """A reply being written in a conversation, by this process or another."""

    id: str
    conversation_id: str
    client_id: str | None  # of the send it answers: a retried send finds it by this
    generation: Generation | None = None  # this process's own reply; None: another process writes it
    writer: str | None = None  # the process writing it (Live.node), where several share the state


class RunningReplies(Protocol):
    """The reply being written in each conversation: the 409 check, a retried send's answer, Stop and Delete."""

    async def add(self, generation: Generation) -> None:
        """The reply now being written in its conversation (by this process). Never fails: a shared
        implementation that cannot record it now does so as soon as it can."""

    async def get(self, conversation_id: str) -> Running | None:
        """The reply being written in the conversation, by any process."""

    def local(self, conversation_id: str) -> Generation | None:
        """The reply this process is writing in the conversation, if it is."""

    async def remove(self, generation: Generation) -> None:
        """The reply is stored; a newer one in the same conversation stays."""

    def here(self) -> list[Generation]:
        """The replies this process is writing (what it checkpoints, and stores at shutdown)."""

    def on_stop(self, stop: Callable[[Generation], None]) -> None:
        """How this process stops one of its replies when another process asks."""

    async def stop_elsewhere(self, conversation_id: str) -> str | None:
        """Have the process writing the conversation's reply stop it, or, if that process is gone, store the reply
        as stopped; the reply's id, None if no other process is writing one there."""


class MemoryRunningReplies:
    def __init__(self) -> None:
        self.by_conversation: dict[str, Generation] = {}

    async def add(self, generation: Generation) -> None:
        self.by_conversation[generation.conversation_id] = generation

    async def get(self, conversation_id: str) -> Running | None:
        generation = self.by_conversation.get(conversation_id)
        if generation is None:
            return None
        return Running(generation.id, conversation_id, generation.client_id, generation)

    def local(self, conversation_id: str) -> Generation | None:
        return self.by_conversation.get(conversation_id)

    async def remove(self, generation: Generation) -> None:
        if self.by_conversation.get(generation.conversation_id) is generation:
            del self.by_conversation[generation.conversation_id]

    def here(self) -> list[Generation]:
        return list(self.by_conversation.values())

    def on_stop(self, stop: Callable[[Generation], None]) -> None:
        """One process: every Stop is local."""

    async def stop_elsewhere(self, conversation_id: str) -> str | None:
        return None


class SendResults(Protocol):
    """Turns being started, by conversation, each with its send's client id and what it will answer."""

    async def begin(self, conversation_id: str, client_id: str | None, answer: Answer) -> bool:
        """Take the conversation for a turn; `answer` is settled with the turn's result (or its error). False if a
        turn is starting there already (a shared implementation also refuses while a reply is running there:
        only it can check both at once across processes)."""

    async def answer(self, conversation_id: str, client_id: str) -> TurnResult | None:
        """The answer of the send with this client id if it is starting now, once it has one (its error if it
        failed). A shared implementation waits for one starting in another process to settle there, then answers
        None: the running reply, or the history, has its answer by then."""

    async def end(self, conversation_id: str) -> None:
        """The turn's reply exists (or the turn failed): the conversation is no longer starting one."""


class MemorySendResults:
    def __init__(self) -> None:
        self.starting_now: dict[str, tuple[str | None, Answer]] = {}

    async def begin(self, conversation_id: str, client_id: str | None, answer: Answer) -> bool:
        if conversation_id in self.starting_now:
            return False
        self.starting_now[conversation_id] = (client_id, answer)
        return True

    async def answer(self, conversation_id: str, client_id: str) -> TurnResult | None:
        found = self.starting_now.get(conversation_id)
        if found is None or found[0] != client_id:
            return None
        return await asyncio.shield(found[1])

    async def end(self, conversation_id: str) -> None:
        del self.starting_now[conversation_id]
