"""The JSON the APIs send, made from the store's records and the chat service's results.

A conversation, a message or a search hit goes out as its fields in order: orjson writes a dataclass that way
natively, with no dict built first, and `plain` gives the standard library's encoder the same. So do a
conversation's view and the model listing (chat/results.py, chat/catalog.py), whose keys are always all there. A
user or an API key shows only some of its fields, and a user's models as a list: `public_user` and `public_key`. A
version switch is its fields too (`plain`). A turn's result and where a reply stands have keys that only some
answers carry, and a WebSocket ack spreads a result into itself: those are dicts made here.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from typing import Any

from ..auth.accounts import allowed_models
from ..chat.results import ReplyState, TurnResult
from ..store.records import ApiKey, User, as_row


def plain(value: object) -> dict[str, Any]:
    """A record or a result as a dict of its fields in order: the `default` of json.dumps, which cannot write
    dataclasses, and a result a WebSocket ack spreads into itself."""
    if is_dataclass(value) and not isinstance(value, type):
        return as_row(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def public_user(user: User) -> dict[str, Any]:
    """A user as the API shows it: never the password hash."""
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "sso": user.sso,
        "max_running": user.max_running,
        "requests_per_minute": user.requests_per_minute,
        "tokens_per_day": user.tokens_per_day,
        "tokens_per_month": user.tokens_per_month,
        "models": allowed_models(user),
        "created_at": user.created_at,
        "last_login_at": user.last_login_at,
    }


def public_key(key: ApiKey) -> dict[str, Any]:
    """An API key as its owner sees it: never its secret's digest."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
    }


def turn(result: TurnResult) -> dict[str, Any]:
    """A turn's answer: `message` for a send or an edit, `duplicate` only for a repeated send, `versions` only for a
    turn that added a version (edit, regenerate, continue)."""
    body: dict[str, Any] = {} if result.message is None else {"message": result.message}
    body["reply"] = result.reply
    if result.duplicate:
        body["duplicate"] = True
    if result.versions is not None:
        body["versions"] = result.versions
    return body


def stopping(reply_id: str | None) -> dict[str, Any]:
    """Stop's answer: the reply being stopped, null if none was being written."""
    return {"stopping": reply_id}


def reply_state(state: ReplyState, events: str) -> dict[str, Any]:
    """Where a reply stands, with the URL of its events: its `snapshot` while live (or just ended), else the stored
    `message`."""
    body: dict[str, Any] = {
        "id": state.id,
        "conversation_id": state.conversation_id,
        "live": state.live,
        "seq": state.seq,
        "queue_position": state.queue_position,
    }
    if state.snapshot is not None:
        body["snapshot"] = state.snapshot
    else:
        body["message"] = state.message
    body["events"] = events
    return body
