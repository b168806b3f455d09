"""What the chat service answers: a conversation's view, a turn's result, where a reply stands. web/ makes the JSON
(web/shapes.py), and says which keys a result shows: a field that is None here may be a key that is absent there.

The reply being written (`View.active`, `ReplyState.snapshot`) stays the event log's `reply.snapshot` event: it
is a wire event already, sent as it is on the event streams too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store.records import Conversation, Message

Versions = dict[str, list[str]]  # a shown message's id: the ids of its versions, oldest first (itself among them)


@dataclass(frozen=True, slots=True)
class ContextUse:
    """How full a conversation's context is: the page's gauge."""

    in_use: int | None  # tokens at the end of the last finished reply; None before the backend counted any
    num_ctx: int
    omitted_turns: int  # the oldest turns the last reply's request left out to fit


@dataclass(frozen=True, slots=True)
class View:
    """A conversation with its shown messages, the versions of those that have several, and the reply in flight."""

    conversation: Conversation
    messages: list[Message]
    versions: Versions
    active: dict[str, Any] | None  # the reply.snapshot of the reply being written, if one is
    context: ContextUse


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What a send, edit, regenerate or continue answers."""

    message: Message | None  # the user message the turn stored: a send's or an edit's; None for the others
    reply: Message | None  # the reply it started (a repeated send: the first one's, None if that one has none)
    duplicate: bool = False  # a repeated send (same client id): nothing was stored or started again
    versions: Versions | None = None  # a turn that added a version: those of its message (None for a send)


@dataclass(frozen=True, slots=True)
class ReplyState:
    """Where a reply stands: `snapshot` while the event log has it, else its stored `message` (one of the two)."""

    id: str
    conversation_id: str
    live: bool
    seq: int | None
    queue_position: int | None
    snapshot: dict[str, Any] | None = None
    message: Message | None = None


@dataclass(frozen=True, slots=True)
class Shown:
    """A version switch (versions.show): the messages that left the shown path, those that joined it (in order),
    and the versions of the latter."""

    message_id: str
    hidden: list[str]
    messages: list[Message]
    versions: Versions
