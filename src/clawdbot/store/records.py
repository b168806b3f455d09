"""What the store hands out: one frozen record per row, never a dict, so a field's name and type are checked where
it is read.

Each record's fields are its table's columns, in the table's order (tests/test_store.py holds them to it): a row is
built from a result row by position, and orjson writes a record as its fields in that order, which is the JSON the
chat API has always sent for a conversation or a message. What a user, key or session shows on the wire, if
anything, is web/'s to say (web/shapes.py). New records get their ids and times here too.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    title: str
    title_set: bool  # renamed by the user: no longer follows the first message
    model: str
    system_prompt: str
    temperature: float | None
    num_ctx: int | None
    think: bool | None
    pinned: bool
    created_at: int  # milliseconds since the epoch
    updated_at: int
    user_id: str | None  # the owner; None only in a database older than migration 0003
    num_predict: int | None  # the most tokens a reply may write; None: the platform's default


@dataclass(frozen=True, slots=True)
class Message:
    """A user message or a reply (`role` user or assistant): one version among those with the same parent."""

    id: str
    conversation_id: str
    role: str
    content: str
    thinking: str
    # user: sent. assistant: waiting, thinking, writing, then done, stopped, failed or interrupted.
    status: str
    superseded: bool  # not on the path of chosen versions: not shown, not sent to the model
    created_at: int
    finished_at: int | None
    model: str | None
    error: str | None
    done_reason: str | None
    prompt_tokens: int | None
    output_tokens: int | None
    ttft_ms: int | None
    thinking_ms: int | None
    total_ms: int | None
    eval_ms: int | None
    omitted_turns: int | None
    client_id: str | None
    error_kind: str | None  # a failed reply's cause (BackendError.kind)
    parent_id: str | None  # the message this one follows (versions.py)
    chosen: bool  # the version shown whenever its branch is
    continued_by: str | None  # the reply Continue went on from this one with (then this one is no version)
    backend: str | None  # the backends that wrote the reply, comma-separated, in order (several after a failover)
    switches: list[dict[str, Any]] | None  # each failover: {"from", "to", "at"}, at the character where it moved
    timing: dict[str, float | None] | None  # where its time went, in ms (timing.py); none before migration 0008


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    password_hash: str | None  # Argon2id; None for a single-sign-on user and the unclaimed owner
    role: str  # admin | user
    disabled: bool
    sso: bool
    max_running: int | None
    requests_per_minute: int | None
    models: str | None  # a JSON list of the models the user may use; None: every model
    created_at: int
    last_login_at: int | None
    tokens_per_day: int | None = None  # quotas of tokens in and out (migration 0010); None: none
    tokens_per_month: int | None = None


@dataclass(frozen=True, slots=True)
class Session:
    id: str  # the SHA-256 of the cookie's token
    user_id: str
    csrf_token: str
    created_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    user_id: str
    name: str
    prefix: str  # the secret's first characters, to tell keys apart
    secret_hash: str  # the SHA-256 of the secret
    created_at: int
    last_used_at: int | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The text so far of a reply being written, and where it stands (waiting, thinking or writing)."""

    id: str
    status: str
    content: str
    thinking: str


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A reply the database has as still being written: whether anyone still writes it is for the caller to say."""

    id: str
    conversation_id: str
    active_at: int  # its last checkpoint, else when it started (milliseconds since the epoch)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a reply ended: the columns Store.finish_reply writes, which its Message takes too. Every one is written,
    None included: the reply's row was stored with None in each that the reply had not reached yet."""

    status: str  # done, stopped, failed or interrupted
    content: str
    thinking: str
    finished_at: int
    error: str | None
    error_kind: str | None
    ttft_ms: int | None
    thinking_ms: int | None
    total_ms: int
    # From the backend's last line; a reply the gateway cut off (Guard) without it has its own done_reason and count.
    done_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    eval_ms: int | None = None
    backend: str | None = None
    switches: list[dict[str, Any]] | None = None
    timing: dict[str, float | None] | None = None


def as_row(record: DataclassInstance) -> dict[str, Any]:
    """A record as the values of its row, for an INSERT (an outcome: of its columns, for an UPDATE); any record as a
    dict of its fields in order."""
    return {field.name: getattr(record, field.name) for field in fields(record)}


def new_message(
    conversation_id: str,
    role: str,
    content: str = "",
    *,
    status: str,
    model: str | None = None,
    client_id: str | None = None,
    omitted_turns: int | None = None,
    parent_id: str | None = None,
    thinking: str = "",
) -> Message:
    """A new message, not yet stored (see Store.record_turn): the chosen version, following `parent_id`."""
    return Message(
        id=new_id(),
        conversation_id=conversation_id,
        role=role,
        content=content,
        thinking=thinking,
        status=status,
        superseded=False,
        created_at=now_ms(),
        finished_at=None,
        model=model,
        error=None,
        done_reason=None,
        prompt_tokens=None,
        output_tokens=None,
        ttft_ms=None,
        thinking_ms=None,
        total_ms=None,
        eval_ms=None,
        omitted_turns=omitted_turns,
        client_id=client_id,
        error_kind=None,
        parent_id=parent_id,
        chosen=True,
        continued_by=None,
        backend=None,
        switches=None,
        timing=None,
    )


_id_lock = threading.Lock()
_last_id = [0, 0]  # (milliseconds, counter) so ids made in the same millisecond still sort


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    """A UUIDv7 (RFC 9562, with the monotonic counter of method 1): time-sortable, unique."""
    with _id_lock:
        ms = now_ms()
        counter = _last_id[1] + 1 if ms <= _last_id[0] else secrets.randbits(11)
        ms = max(ms, _last_id[0])
        if counter >= 1 << 12:
            ms, counter = ms + 1, secrets.randbits(11)
        _last_id[:] = [ms, counter]
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | secrets.randbits(62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
