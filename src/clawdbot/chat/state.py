"""Which conversations are busy, and what a send already answered: the chat's live state besides the event log.

A conversation holds one turn at a time. From "may I start?" until its reply's generation exists the turn is
*starting* (`SendResults`, with the client id of a send and the answer it will give); from then until the reply is
stored it is *running* (`RunningReplies`). Both make a second turn there a 409, and both let a retried send (the
same client id) get the first one's answer instead of sending again; once the reply is stored, the history the
turn reads answers it.

The `Memory…` classes keep this in one process. A later issue shares it between gateway replicas (a key per
conversation, with the reply's id and the send's client id), behind the same interfaces.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from .results import TurnResult

if TYPE_CHECKING:
    from .generations import Generation

Answer = asyncio.Future[TurnResult]


class RunningReplies(Protocol):
    """The reply being written in each conversation: the 409 check, a retried send's answer, Stop and Delete."""

    def add(self, generation: Generation) -> None:
        """The reply now being written in its conversation."""

    def get(self, conversation_id: str) -> Generation | None: ...

    def remove(self, generation: Generation) -> None:
        """The reply is stored; a newer one in the same conversation stays."""

    def here(self) -> list[Generation]:
        """The replies this process is writing (what it checkpoints, and stores at shutdown)."""


class MemoryRunningReplies:
    def __init__(self) -> None:
        self.by_conversation: dict[str, Generation] = {}

    def add(self, generation: Generation) -> None:
        self.by_conversation[generation.conversation_id] = generation

    def get(self, conversation_id: str) -> Generation | None:
        return self.by_conversation.get(conversation_id)

    def remove(self, generation: Generation) -> None:
        if self.by_conversation.get(generation.conversation_id) is generation:
            del self.by_conversation[generation.conversation_id]

    def here(self) -> list[Generation]:
        return list(self.by_conversation.values())


class SendResults(Protocol):
    """Turns being started, by conversation, each with its send's client id and what it will answer."""

    def begin(self, conversation_id: str, client_id: str | None, answer: Answer) -> None:
        """The conversation starts a turn; `answer` is settled with the turn's result (or its error)."""

    def starting(self, conversation_id: str) -> bool: ...

    def answer(self, conversation_id: str, client_id: str) -> Answer | None:
        """What the send with this client id, starting in the conversation now, will answer; None if none is."""

    def end(self, conversation_id: str) -> None:
        """The turn's reply exists (or the turn failed): the conversation is no longer starting one."""


class MemorySendResults:
    def __init__(self) -> None:
        self.starting_now: dict[str, tuple[str | None, Answer]] = {}

    def begin(self, conversation_id: str, client_id: str | None, answer: Answer) -> None:
        self.starting_now[conversation_id] = (client_id, answer)

    def starting(self, conversation_id: str) -> bool:
        return conversation_id in self.starting_now

    def answer(self, conversation_id: str, client_id: str) -> Answer | None:
        found = self.starting_now.get(conversation_id)
        return found[1] if found is not None and found[0] == client_id else None

    def end(self, conversation_id: str) -> None:
        del self.starting_now[conversation_id]
