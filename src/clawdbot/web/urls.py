"""The URLs the chat API hands out: where a client attaches to a reply's or a conversation's events. They are
built here, next to the routes that serve them (realtime.py); the chat service below gives ids only."""

from __future__ import annotations

from ..chat.turns import Busy
from ..errors import Conflict


def reply_events(reply_id: str) -> str:
    return f"/chat/api/generations/{reply_id}/events"


def conversation_events(conversation_id: str) -> str:
    return f"/chat/api/conversations/{conversation_id}/events"


def conflict_details(error: Conflict) -> dict[str, str]:
    """What a 409 carries besides its message; for a busy conversation, where to attach instead."""
    if not isinstance(error, Busy):
        return dict(error.details)
    conversation_id = error.conversation_id
    details = {"conversation_id": conversation_id, "conversation_events": conversation_events(conversation_id)}
    if error.reply_id is not None:  # the reply's own event stream, replayable from any seq
        details.update(reply_id=error.reply_id, events=reply_events(error.reply_id))
    else:
        details.update(events=conversation_events(conversation_id))
    return details
