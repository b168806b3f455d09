"""Conversations and messages, kept in SQLite (the default) or PostgreSQL through SQLAlchemy Core.

The tables and the queries on them; database.py runs the queries (reads alongside one group-committing writer).
A message is a row of its own: saving one never rewrites its conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, case, delete, func, or_, select, update
from sqlalchemy.engine import Connection

from .database import Database
from .prepared import Prepared
from .records import Checkpoint, Conversation, Message, Outcome, Unfinished, as_row, new_id, now_ms
from .tables import conversations, messages, reply_checkpoints

_ACTIVE = ("waiting", "thinking", "writing")

# The statements of every turn, built once (building one, its clauses and cache key, cost more than running it:
# 335 against 113 µs for a history read) and run through prepared.py (113 against ~40 µs on SQLite). Bound names
# differ from the columns': SQLAlchemy reserves those in an UPDATE's SET and WHERE.
_CONVERSATION_ROW = select(conversations).where(conversations.c.id == bindparam("b_id"))
_CONVERSATION = Prepared(_CONVERSATION_ROW)
_OWNED = Prepared(_CONVERSATION_ROW.where(conversations.c.user_id == bindparam("b_user")))
_SHOWN = Prepared(
    select(messages)
    .where(messages.c.conversation_id == bindparam("b_id"), messages.c.superseded.is_(False))
    .order_by(messages.c.created_at, messages.c.id)
)
_ADD_CONVERSATION = Prepared(conversations.insert())
_ADD_MESSAGES = Prepared(messages.insert())
_ADD_CHECKPOINTS = Prepared(reply_checkpoints.insert())
_OUTCOME = [field.name for field in fields(Outcome)]
_FINISH = Prepared(
    update(messages)
    .where(messages.c.id == bindparam("b_id"))
    .values({name: bindparam("v_" + name, type_=messages.c[name].type) for name in _OUTCOME})
)
_NO_CHECKPOINT = Prepared(delete(reply_checkpoints).where(reply_checkpoints.c.id == bindparam("b_id")))
_STILL_RUNNING = or_(*(messages.c.status == active for active in _ACTIVE))
# Only a row still in flight takes a checkpoint's status: a late checkpoint never undoes a reply's final state.
_CHECKPOINT_STATUS = Prepared(
    update(messages).where(messages.c.id == bindparam("b_id"), _STILL_RUNNING).values(status=bindparam("b_status"))
)


def _touch(title: bool, retitle: bool) -> Prepared:
    """A turn's update of its conversation: the time, and (`title`) the title while the user has not named it;
    a first message titles only a conversation that has no title yet, an edit of it (`retitle`) any."""
    values: dict[str, Any] = {"updated_at": bindparam("v_updated_at")}
    if title:
        named: Any = conversations.c.title_set.is_(True)
        if not retitle:
            named = named | (conversations.c.title != "")
        values["title"] = case(
            (named, conversations.c.title), else_=bindparam("v_title", type_=conversations.c.title.type)
        )
    return Prepared(update(conversations).where(conversations.c.id == bindparam("b_id")).values(values))


_TOUCH = {(title, retitle): _touch(title, retitle) for title in (False, True) for retitle in (False, True)}


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
        num_predict: int | None = None,
    ) -> Conversation:
        stamp = now_ms()
        made = Conversation(
            id=new_id(),
            title=title,
            title_set=bool(title),
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            num_ctx=num_ctx,
            think=think,
            pinned=False,
            created_at=stamp,
            updated_at=stamp,
            user_id=user_id,
            num_predict=num_predict,
        )

        def query(conn: Connection) -> None:
            _ADD_CONVERSATION.run(conn, as_row(made))

        await self.write(query)
        return made

    async def list_conversations(self, user_id: str, limit: int = 500) -> list[Conversation]:
        order = (conversations.c.pinned.desc(), conversations.c.updated_at.desc())
        query = select(conversations).where(conversations.c.user_id == user_id).order_by(*order).limit(limit)
        return await self.read(lambda conn: [Conversation(*row) for row in conn.execute(query)])

    async def get_conversation(self, conversation_id: str, user_id: str | None = None) -> Conversation | None:
        """The conversation; with `user_id`, only if it is that user's."""
        return await self.read(lambda conn: _conversation(conn, conversation_id, user_id))

    async def conversation_and_messages(
        self, conversation_id: str, user_id: str
    ) -> tuple[Conversation | None, list[Message]]:
        """The user's conversation and its shown messages, read together (one snapshot, one step); another
        user's reads as none, and its messages are not read."""

        def query(conn: Connection) -> tuple[Conversation | None, list[Message]]:
            found = _conversation(conn, conversation_id, user_id)
            return found, _messages(conn, conversation_id) if found else []

        return await self.read(query)

    async def update_conversation(self, conversation_id: str, **changes: Any) -> Conversation | None:
        def query(conn: Connection) -> None:
            conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**changes))

        if changes:
            await self.write(query)
        return await self.get_conversation(conversation_id)

    async def retitle(self, conversation_id: str, title: str, *, was: str) -> bool:
        """Give a conversation a title of the gateway's making, only while it is still `was` and the user has not
        named it: a rename or an edit of the first message since then wins."""

        def query(conn: Connection) -> int:
            untouched = (conversations.c.title_set.is_(False)) & (conversations.c.title == was)
            where = (conversations.c.id == conversation_id) & untouched
            return conn.execute(update(conversations).where(where).values(title=title)).rowcount

        return bool(await self.write(query))

    async def delete_conversation(self, conversation_id: str) -> bool:
        def query(conn: Connection) -> int:
            mine = select(messages.c.id).where(messages.c.conversation_id == conversation_id)
            conn.execute(mine.with_for_update())  # rows before their checkpoints, as every writer locks them
            conn.execute(delete(reply_checkpoints).where(reply_checkpoints.c.id.in_(mine)))
            conn.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
            return conn.execute(delete(conversations).where(conversations.c.id == conversation_id)).rowcount

        return bool(await self.write(query))

    # ---- messages ------------------------------------------------------------------------------------------
    async def messages(self, conversation_id: str) -> list[Message]:
        """The shown messages (not those replaced by Regenerate or Edit), oldest first."""
        return await self.read(lambda conn: _messages(conn, conversation_id))

    async def record_turn(
        self,
        conversation_id: str,
        rows: list[Message],
        *,
        supersede: list[str] | None = None,
        replaces: str | None = None,
        continued: bool = False,
        title: str | None = None,
        retitle: bool = False,
    ) -> None:
        """Everything one turn changes, in one write: earlier messages superseded, new messages (made by
        `new_message()`) inserted, the conversation touched and, while the user has not named it, titled (`retitle`:
        even if it has a title already, as after an edit of its first message). The first new message becomes
        the chosen version in place of `replaces`; `continued`: it went on from that one's text instead."""

        def query(conn: Connection) -> None:
            if supersede:
                conn.execute(update(messages).where(messages.c.id.in_(supersede)).values(superseded=True))
            if replaces:
                left: dict[str, Any] = {"chosen": False, "continued_by": rows[0].id if continued else None}
                conn.execute(update(messages).where(messages.c.id == replaces).values(**left))
            if rows:
                _ADD_MESSAGES.run(conn, [as_row(row) for row in rows])
            touched = {"b_id": conversation_id, "v_updated_at": now_ms(), **({"v_title": title} if title else {})}
            _TOUCH[bool(title), retitle].run(conn, touched)

        await self.write(query)

    async def get_reply(self, reply_id: str, user_id: str) -> Message | None:
        """A stored reply, if its conversation is this user's: ownership is part of the one lookup."""

        def query(conn: Connection) -> Message | None:
            owned = select(messages).join(conversations, conversations.c.id == messages.c.conversation_id)
            owned = owned.where(
                messages.c.id == reply_id, messages.c.role == "assistant", conversations.c.user_id == user_id
            )
            found = conn.execute(owned).first()
            return Message(*found) if found else None

        return await self.read(query)

    async def by_client_id(self, conversation_id: str, client_id: str) -> tuple[Message | None, Message | None]:
        """The user message a client sent with this id, and the reply that answered it (its chosen version)."""

        def query(conn: Connection) -> tuple[Message | None, Message | None]:
            mine = (messages.c.conversation_id == conversation_id) & (messages.c.client_id == client_id)
            found = conn.execute(select(messages).where(mine)).first()
            if found is None:
                return None, None
            sent = Message(*found)
            answers = (messages.c.parent_id == sent.id) & messages.c.continued_by.is_(None)
            order = (messages.c.chosen.desc(), messages.c.created_at.desc())
            reply = conn.execute(select(messages).where(answers).order_by(*order).limit(1)).first()
            return sent, Message(*reply) if reply else None

        return await self.read(query)

    async def checkpoint(self, rows: list[Checkpoint]) -> None:
        """Save the text so far of replies in flight."""
        stamp = now_ms()
        saved = [{"id": r.id, "content": r.content, "thinking": r.thinking, "updated_at": stamp} for r in rows]

        def query(conn: Connection) -> None:
            # The message rows first, then their checkpoints: the order in which every writer locks them, so that
            # two gateway processes on one PostgreSQL database never deadlock (a Delete while a reply is stored).
            _CHECKPOINT_STATUS.run(conn, [{"b_id": r.id, "b_status": r.status} for r in rows])
            _NO_CHECKPOINT.run(conn, [{"b_id": r.id} for r in rows])
            _ADD_CHECKPOINTS.run(conn, saved)

        await self.write(query)

    async def finish_reply(self, message_id: str, outcome: Outcome, *, checkpointed: bool = True) -> None:
        """Store a reply's final state; its checkpoint, if it may have one, is no longer needed."""
        row = {"b_id": message_id, **{"v_" + name: value for name, value in as_row(outcome).items()}}

        def query(conn: Connection) -> None:
            _FINISH.run(conn, row)
            if checkpointed:
                _NO_CHECKPOINT.run(conn, {"b_id": message_id})

        await self.write(query)

    async def interrupt_unfinished(self) -> int:
        """Replies still marked in progress belong to a gateway that stopped: mark them interrupted, with the
        text of their last checkpoint. (Only for a gateway alone on its database: where several processes share
        it, `end_unfinished` ends the replies whose writer is gone, and no other.)"""

        def query(conn: Connection) -> int:
            count = conn.execute(update(messages).where(messages.c.status.in_(_ACTIVE)).values(**_ended("interrupted")))
            conn.execute(delete(reply_checkpoints))
            return int(count.rowcount)

        return int(await self.write(query))

    async def unfinished(
        self, ids: Sequence[str] | None = None, *, conversation_id: str | None = None
    ) -> list[Unfinished]:
        """Replies still marked in progress: all of them, those of `ids`, or those of one conversation."""
        active_at = func.coalesce(
            select(reply_checkpoints.c.updated_at).where(reply_checkpoints.c.id == messages.c.id).scalar_subquery(),
            messages.c.created_at,
        )
        query = select(messages.c.id, messages.c.conversation_id, active_at).where(messages.c.status.in_(_ACTIVE))
        if ids is not None:
            query = query.where(messages.c.id.in_(list(ids)))
        if conversation_id is not None:
            query = query.where(messages.c.conversation_id == conversation_id)

        def run(conn: Connection) -> list[Unfinished]:
            return [Unfinished(*row) for row in conn.execute(query)]

        if ids is not None and not ids:
            return []
        return list(await self.read(run))

    async def end_unfinished(self, ids: Sequence[str], status: str) -> list[str]:
        """End those of the replies `ids` still marked in progress, with the text of their last checkpoint:
        `interrupted` (their writer is gone) or `stopped` (a Stop found their writer gone). The ids of those it
        ended; one its writer ended meanwhile keeps its own outcome."""

        def query(conn: Connection) -> list[str]:
            still = messages.c.id.in_(list(ids)) & messages.c.status.in_(_ACTIVE)
            found = [row[0] for row in conn.execute(select(messages.c.id).where(still).with_for_update())]
            if found:
                ended = messages.c.id.in_(found)
                conn.execute(update(messages).where(ended).values(**_ended(status)))
                conn.execute(delete(reply_checkpoints).where(reply_checkpoints.c.id.in_(found)))
            return found

        return list(await self.write(query)) if ids else []


def _ended(status: str) -> dict[str, Any]:
    """The columns of a reply ended for its writer, which is gone: its last checkpoint's text, and why."""
    saved = reply_checkpoints.c

    def checkpointed(column: Any, own: Any) -> Any:
        return func.coalesce(select(column).where(saved.id == messages.c.id).scalar_subquery(), own)

    why: dict[str, Any] = {"error": None, "error_kind": None}
    if status == "interrupted":
        why = {
            "error": "The gateway stopped while this reply was being written; the text so far is kept.",
            "error_kind": "gateway_stopped",
        }
    return {
        "status": status,
        "content": checkpointed(saved.content, messages.c.content),
        "thinking": checkpointed(saved.thinking, messages.c.thinking),
        "finished_at": now_ms(),
        **why,
    }


def _conversation(conn: Connection, conversation_id: str, user_id: str | None = None) -> Conversation | None:
    if user_id is None:
        found = _CONVERSATION.rows(conn, {"b_id": conversation_id})
    else:
        found = _OWNED.rows(conn, {"b_id": conversation_id, "b_user": user_id})
    return Conversation(*found[0]) if found else None


def _messages(conn: Connection, conversation_id: str) -> list[Message]:
    return [Message(*row) for row in _SHOWN.rows(conn, {"b_id": conversation_id})]


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'clawdbot.db'}"
