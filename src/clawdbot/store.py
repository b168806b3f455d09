"""Conversations and messages, kept in SQLite (the default) or PostgreSQL through SQLAlchemy Core.

The tables and the queries on them; database.py runs the queries (reads alongside one group-committing writer).
A message is a row of its own: saving one never rewrites its conversation.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from .database import Database

metadata = MetaData()

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("title", Text, nullable=False),
    Column("title_set", Boolean, nullable=False),  # renamed by the user: no longer follows the first message
    Column("model", Text, nullable=False),
    Column("system_prompt", Text, nullable=False),
    Column("temperature", Float),
    Column("num_ctx", Integer),
    Column("think", Boolean),
    Column("pinned", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # milliseconds since the epoch
    Column("updated_at", BigInteger, nullable=False),
    Column("user_id", String(36)),  # the owner (accounts.users); null only in a database older than 0003
    Index("conversations_by_user", "user_id", "pinned", "updated_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("conversation_id", String(36), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(16), nullable=False),  # user | assistant
    Column("content", Text, nullable=False),
    Column("thinking", Text, nullable=False),
    # user: sent. assistant: waiting, thinking, writing, then done, stopped, failed or interrupted.
    Column("status", String(16), nullable=False),
    Column("superseded", Boolean, nullable=False),  # replaced by Regenerate or Edit: kept, not shown or sent
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Column("model", Text),
    Column("error", Text),
    Column("done_reason", String(16)),
    Column("prompt_tokens", Integer),
    Column("output_tokens", Integer),
    Column("ttft_ms", Integer),
    Column("thinking_ms", Integer),
    Column("total_ms", Integer),
    Column("eval_ms", Integer),
    Column("omitted_turns", Integer),
    Column("client_id", String(64)),
    Column("error_kind", String(32)),  # a failed reply's cause (BackendError.kind), as counted in /metrics
    Index("messages_by_conversation", "conversation_id", "created_at"),
    Index("messages_by_client_id", "conversation_id", "client_id", unique=True),
)

# The text so far of replies being written, about once a second; see migration 0002.
reply_checkpoints = Table(
    "reply_checkpoints",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("content", Text, nullable=False),
    Column("thinking", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

Row = dict[str, Any]
_ACTIVE = ("waiting", "thinking", "writing")
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


class Store:
    """The chat platform's queries. Each method is one step on the database, however many statements it runs."""

    def __init__(self, url: str, *, max_pending_writes: int = 10_000) -> None:
        self.db = Database(url, max_pending_writes=max_pending_writes)
        self.sqlite = self.db.sqlite
        self.read, self.write = self.db.read, self.db.write

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def open(self) -> None:
        """Bring the schema to the newest migration, then start the writer."""
        from .migrations import upgrade

        await self.db.open(upgrade)

    async def close(self) -> None:
        await self.db.close()

    # ---- conversations -------------------------------------------------------------------------------------
    async def create_conversation(
        self,
        *,
        user_id: str,
        model: str,
        system_prompt: str = "",
        temperature: float | None = None,
        num_ctx: int | None = None,
        think: bool | None = None,
        title: str = "",
    ) -> dict[str, Any]:
        stamp = now_ms()
        row = {
            "id": new_id(),
            "title": title,
            "title_set": bool(title),
            "model": model,
            "system_prompt": system_prompt,
            "temperature": temperature,
            "num_ctx": num_ctx,
            "think": think,
            "pinned": False,
            "created_at": stamp,
            "updated_at": stamp,
            "user_id": user_id,
        }

        def query(conn: Connection) -> None:
            conn.execute(conversations.insert().values(**row))

        await self.write(query)
        return row

    async def list_conversations(self, user_id: str, limit: int = 500) -> list[dict[str, Any]]:
        order = (conversations.c.pinned.desc(), conversations.c.updated_at.desc())
        query = select(conversations).where(conversations.c.user_id == user_id).order_by(*order).limit(limit)
        return await self.read(lambda conn: _rows(conn.execute(query)))

    async def get_conversation(self, conversation_id: str, user_id: str | None = None) -> dict[str, Any] | None:
        """The conversation; with `user_id`, only if it is that user's."""
        return await self.read(lambda conn: _conversation(conn, conversation_id, user_id))

    async def conversation_and_messages(self, conversation_id: str, user_id: str) -> tuple[Row | None, list[Row]]:
        """The user's conversation and its shown messages, read together (one snapshot, one step); another
        user's reads as none, and its messages are not read."""

        def query(conn: Connection) -> tuple[Row | None, list[Row]]:
            found = _conversation(conn, conversation_id, user_id)
            return found, _messages(conn, conversation_id) if found else []

        return await self.read(query)

    async def update_conversation(self, conversation_id: str, **fields: Any) -> dict[str, Any] | None:
        def query(conn: Connection) -> None:
            conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**fields))

        if fields:
            await self.write(query)
        return await self.get_conversation(conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        def query(conn: Connection) -> int:
            mine = select(messages.c.id).where(messages.c.conversation_id == conversation_id)
            conn.execute(delete(reply_checkpoints).where(reply_checkpoints.c.id.in_(mine)))
            conn.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
            return conn.execute(delete(conversations).where(conversations.c.id == conversation_id)).rowcount

        return bool(await self.write(query))

    # ---- messages ------------------------------------------------------------------------------------------
    async def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """The shown messages (not those replaced by Regenerate or Edit), oldest first."""
        return await self.read(lambda conn: _messages(conn, conversation_id))

    async def record_turn(
        self,
        conversation_id: str,
        rows: list[dict[str, Any]],
        *,
        supersede: list[str] | None = None,
        title: str | None = None,
        retitle: bool = False,
    ) -> None:
        """Everything one turn changes, in one write: earlier messages superseded, new messages (made by
        `new_message()`) inserted, the conversation touched and, while the user has not named it, titled (`retitle`:
        even if it has a title already, as after an edit of its first message)."""

        def query(conn: Connection) -> None:
            if supersede:
                conn.execute(update(messages).where(messages.c.id.in_(supersede)).values(superseded=True))
            if rows:
                conn.execute(messages.insert(), rows)
            values: dict[str, Any] = {"updated_at": now_ms()}
            if title:
                named: Any = conversations.c.title_set.is_(True)
                if not retitle:  # a first message titles only a conversation that has no title yet
                    named = named | (conversations.c.title != "")
                values["title"] = case((named, conversations.c.title), else_=literal(title))
            conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**values))

        await self.write(query)

    async def get_reply(self, reply_id: str, user_id: str) -> dict[str, Any] | None:
        """A stored reply, if its conversation is this user's: ownership is part of the one lookup."""

        def query(conn: Connection) -> dict[str, Any] | None:
            owned = select(messages).join(conversations, conversations.c.id == messages.c.conversation_id)
            owned = owned.where(
                messages.c.id == reply_id, messages.c.role == "assistant", conversations.c.user_id == user_id
            )
            found = conn.execute(owned).mappings().first()
            return plain_row(found) if found else None

        return await self.read(query)

    async def by_client_id(self, conversation_id: str, client_id: str) -> tuple[Row | None, Row | None]:
        """The user message a client sent with this id, and the reply that answered it (or its successor)."""

        def query(conn: Connection) -> tuple[Row | None, Row | None]:
            mine = (messages.c.conversation_id == conversation_id) & (messages.c.client_id == client_id)
            found = conn.execute(select(messages).where(mine)).mappings().first()
            if found is None:
                return None, None
            after = (
                (messages.c.conversation_id == conversation_id)
                & (messages.c.role == "assistant")
                & (messages.c.created_at >= found["created_at"])
            )
            order = (messages.c.superseded, messages.c.created_at, messages.c.id)
            reply = conn.execute(select(messages).where(after).order_by(*order).limit(1)).mappings().first()
            return plain_row(found), plain_row(reply) if reply else None

        return await self.read(query)

    async def checkpoint(self, rows: list[dict[str, Any]]) -> None:
        """Save the text so far of replies in flight (`id`, `status`, `content`, `thinking` each)."""
        stamp = now_ms()
        saved = [{"id": r["id"], "content": r["content"], "thinking": r["thinking"], "updated_at": stamp} for r in rows]
        # Only a row still in flight takes a status: a late checkpoint never undoes a reply's final state.
        # (Bound names differ from the columns': SQLAlchemy reserves those in an UPDATE's SET and WHERE.)
        status = (
            update(messages)
            .where(messages.c.id == bindparam("b_id"), or_(*(messages.c.status == active for active in _ACTIVE)))
            .values(status=bindparam("b_status"))
        )

        def query(conn: Connection) -> None:
            conn.execute(delete(reply_checkpoints).where(reply_checkpoints.c.id.in_([r["id"] for r in saved])))
            conn.execute(reply_checkpoints.insert(), saved)
            conn.execute(status, [{"b_id": r["id"], "b_status": r["status"]} for r in rows])

        await self.write(query)

    async def finish_reply(self, message_id: str, **fields: Any) -> None:
        """Store a reply's final state; its checkpoint is no longer needed."""

        def query(conn: Connection) -> None:
            conn.execute(update(messages).where(messages.c.id == message_id).values(**fields))
            conn.execute(delete(reply_checkpoints).where(reply_checkpoints.c.id == message_id))

        await self.write(query)

    async def interrupt_unfinished(self) -> int:
        """Replies still marked in progress belong to a gateway that stopped: mark them interrupted, with the
        text of their last checkpoint."""
        saved = reply_checkpoints.c

        def checkpointed(column: Any, own: Any) -> Any:
            return func.coalesce(select(column).where(saved.id == messages.c.id).scalar_subquery(), own)

        def query(conn: Connection) -> int:
            count = conn.execute(
                update(messages)
                .where(messages.c.status.in_(_ACTIVE))
                .values(
                    status="interrupted",
                    content=checkpointed(saved.content, messages.c.content),
                    thinking=checkpointed(saved.thinking, messages.c.thinking),
                    finished_at=now_ms(),
                    error="The gateway stopped while this reply was being written; the text so far is kept.",
                    error_kind="gateway_stopped",
                )
            ).rowcount
            conn.execute(delete(reply_checkpoints))
            return int(count)

        return int(await self.write(query))


def new_message(
    conversation_id: str,
    role: str,
    content: str = "",
    *,
    status: str,
    model: str | None = None,
    client_id: str | None = None,
    omitted_turns: int | None = None,
) -> dict[str, Any]:
    """A new message row, not yet stored (see Store.record_turn)."""
    return {
        **_MESSAGE_DEFAULTS,
        "id": new_id(),
        "conversation_id": conversation_id,
        "role": role,
        "content": content,
        "thinking": "",
        "status": status,
        "superseded": False,
        "created_at": now_ms(),
        "model": model,
        "client_id": client_id,
        "omitted_turns": omitted_turns,
    }


def _conversation(conn: Connection, conversation_id: str, user_id: str | None = None) -> dict[str, Any] | None:
    query = select(conversations).where(conversations.c.id == conversation_id)
    if user_id is not None:
        query = query.where(conversations.c.user_id == user_id)
    found = conn.execute(query).mappings().first()
    return plain_row(found) if found else None


def _messages(conn: Connection, conversation_id: str) -> list[dict[str, Any]]:
    shown = (messages.c.conversation_id == conversation_id) & messages.c.superseded.is_(False)
    return _rows(conn.execute(select(messages).where(shown).order_by(messages.c.created_at, messages.c.id)))


def _rows(result: Any) -> list[dict[str, Any]]:
    return [plain_row(row) for row in result.mappings()]


_MESSAGE_DEFAULTS = {str(column.name): None for column in messages.columns}


def plain_row(mapping: Any) -> dict[str, Any]:
    """A plain dict with plain str keys (SQLAlchemy's quoted_name keys trip orjson)."""
    return {str(key): value for key, value in mapping.items()}


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'clawdbot.db'}"
