"""Conversations and messages, kept in SQLite (the default) or PostgreSQL through SQLAlchemy Core.

Every write goes through one writer task that owns one connection and commits in groups: concurrent chats queue
their writes instead of fighting for SQLite's lock, so none of them ever sees "database is locked", and a burst
of writes costs one commit. Reads use a pool of other connections (SQLite in WAL mode lets them run alongside
the writer). A message is a row of its own: saving one never rewrites its conversation.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

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
    column,
    delete,
    event,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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
    Index("messages_by_conversation", "conversation_id", "created_at"),
)

T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[T]]
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


def async_url(url: str) -> str:
    """Accept the URLs people write (`sqlite:///…`, `postgresql://…`) and name the async driver."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


class Store:
    def __init__(self, url: str, *, max_pending_writes: int = 10_000) -> None:
        self.url = async_url(url)
        self.sqlite = self.url.startswith("sqlite")
        if self.sqlite:
            path = self.url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(self.url, pool_size=8, max_overflow=8, pool_pre_ping=True)
        if self.sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._writes: asyncio.Queue[tuple[Write[Any], asyncio.Future[Any]]] = asyncio.Queue(max_pending_writes)
        self._writer: asyncio.Task[None] | None = None

    @property
    def dialect(self) -> str:
        return "sqlite" if self.sqlite else "postgresql"

    async def open(self) -> None:
        """Bring the schema to the newest migration, then start the writer."""
        from .migrations import upgrade

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)
        self._writer = asyncio.create_task(self._write_loop())

    async def close(self) -> None:
        if self._writer is not None:
            await self._writes.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.engine.dispose()

    # ---- the single writer ---------------------------------------------------------------------------------
    async def write(self, op: Write[T]) -> T:
        """Run `op` in the writer's transaction and wait until it is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._writes.put((op, future))  # bounded: a flood of writes waits here, memory stays flat
        return await future

    async def _write_loop(self) -> None:
        async with self.engine.connect() as conn:
            while True:
                batch = [await self._writes.get()]
                while not self._writes.empty() and len(batch) < 256:
                    batch.append(self._writes.get_nowait())
                await self._commit(conn, batch)
                for _ in batch:
                    self._writes.task_done()

    @staticmethod
    async def _commit(conn: AsyncConnection, batch: list[tuple[Write[Any], asyncio.Future[Any]]]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            async with conn.begin():
                for op, future in batch:
                    try:
                        async with conn.begin_nested():  # one failing write must not undo the others
                            results.append((future, await op(conn), None))
                    except Exception as failed:  # noqa: BLE001 - handed to the caller that asked for the write
                        results.append((future, None, failed))
        except Exception as commit_failed:  # noqa: BLE001 - every write in the group failed with the commit
            results = [(future, None, commit_failed) for _, future in batch]
        for future, value, problem in results:
            if future.done():
                continue
            if problem is None:
                future.set_result(value)
            else:
                future.set_exception(problem)

    # ---- conversations -------------------------------------------------------------------------------------
    async def create_conversation(
        self,
        *,
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
        }

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(conversations.insert().values(**row))

        await self.write(op)
        return row

    async def list_conversations(self, limit: int = 500) -> list[dict[str, Any]]:
        query = (
            select(conversations)
            .order_by(conversations.c.pinned.desc(), conversations.c.updated_at.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_row(row) for row in (await conn.execute(query)).mappings()]

    async def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(conversations).where(conversations.c.id == conversation_id))).mappings()
            found = row.first()
        return _row(found) if found else None

    async def update_conversation(self, conversation_id: str, **fields: Any) -> dict[str, Any] | None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**fields))

        if fields:
            await self.write(op)
        return await self.get_conversation(conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        async def op(conn: AsyncConnection) -> int:
            await conn.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
            result = await conn.execute(delete(conversations).where(conversations.c.id == conversation_id))
            return result.rowcount

        return bool(await self.write(op))

    # ---- messages ------------------------------------------------------------------------------------------
    async def messages(self, conversation_id: str, *, include_superseded: bool = False) -> list[dict[str, Any]]:
        query = select(messages).where(messages.c.conversation_id == conversation_id)
        if not include_superseded:
            query = query.where(messages.c.superseded.is_(False))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(messages.c.created_at, messages.c.id))).mappings()
            return [_row(row) for row in rows]

    async def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str = "",
        *,
        status: str,
        model: str | None = None,
        client_id: str | None = None,
        title: str | None = None,
        omitted_turns: int | None = None,
    ) -> dict[str, Any]:
        """Insert a message and touch its conversation (and set its title from the first message) at once."""
        stamp = now_ms()
        row = {
            "id": new_id(),
            "conversation_id": conversation_id,
            "role": role,
            "content": content,
            "thinking": "",
            "status": status,
            "superseded": False,
            "created_at": stamp,
            "model": model,
            "client_id": client_id,
            "omitted_turns": omitted_turns,
        }

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(messages.insert().values(**row))
            values: dict[str, Any] = {"updated_at": stamp}
            where = conversations.c.id == conversation_id
            await conn.execute(update(conversations).where(where).values(**values))
            if title:
                untitled = where & conversations.c.title_set.is_(False) & (conversations.c.title == "")
                await conn.execute(update(conversations).where(untitled).values(title=title))

        await self.write(op)
        return {**_MESSAGE_DEFAULTS, **row}

    async def update_message(self, message_id: str, **fields: Any) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(messages).where(messages.c.id == message_id).values(**fields))

        await self.write(op)

    async def supersede(self, message_ids: list[str]) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(update(messages).where(messages.c.id.in_(message_ids)).values(superseded=True))

        if message_ids:
            await self.write(op)

    async def interrupt_unfinished(self) -> int:
        """Replies still marked in progress belong to a gateway that stopped: mark them interrupted."""

        async def op(conn: AsyncConnection) -> int:
            result = await conn.execute(
                update(messages)
                .where(messages.c.status.in_(_ACTIVE))
                .values(
                    status="interrupted",
                    finished_at=now_ms(),
                    error="the gateway stopped while this reply was being written",
                )
            )
            return result.rowcount

        return int(await self.write(op))

    # ---- search --------------------------------------------------------------------------------------------
    async def search(self, text: str, limit: int = 50) -> list[dict[str, Any]]:
        """Conversations whose title or shown messages contain `text` (any case), newest first, with a snippet."""
        needle = text.strip()
        if not needle:
            return []
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found: dict[str, dict[str, Any]] = {}
        async with self.engine.connect() as conn:
            titles = await conn.execute(
                select(conversations)
                .where(_like(conversations.c.title, pattern, self.sqlite))
                .order_by(conversations.c.updated_at.desc())
                .limit(limit)
            )
            for row in titles.mappings():
                found[row["id"]] = {"conversation": _row(row), "snippet": None, "message_id": None}
            hits = await conn.execute(self._message_query(needle, pattern, limit))
            for row in hits.mappings():
                entry = found.setdefault(
                    row["conversation_id"], {"conversation": None, "snippet": None, "message_id": row["id"]}
                )
                if entry["snippet"] is None:
                    entry["snippet"], entry["message_id"] = _snippet(row["content"], needle), row["id"]
            missing = [cid for cid, entry in found.items() if entry["conversation"] is None]
            if missing:
                rows = await conn.execute(select(conversations).where(conversations.c.id.in_(missing)))
                for row in rows.mappings():
                    found[row["id"]]["conversation"] = _row(row)
        results = [entry for entry in found.values() if entry["conversation"] is not None]
        results.sort(key=lambda entry: entry["conversation"]["updated_at"], reverse=True)
        return results[:limit]

    def _message_query(self, needle: str, pattern: str, limit: int) -> Any:
        shown = messages.c.superseded.is_(False)
        query = select(messages.c.id, messages.c.conversation_id, messages.c.content).where(shown)
        if self.sqlite and len(needle) >= 3:  # the trigram index answers substrings of three characters or more
            phrase = '"' + needle.replace('"', '""') + '"'
            indexed = (
                text("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :phrase")
                .bindparams(phrase=phrase)
                .columns(column("rowid", Integer))
            )
            query = query.where(literal_column("messages.rowid").in_(indexed))
        else:
            query = query.where(_like(messages.c.content, pattern, self.sqlite))
        return query.order_by(messages.c.created_at.desc()).limit(limit * 4)


_MESSAGE_DEFAULTS = {str(column.name): None for column in messages.columns}


def _row(mapping: Any) -> dict[str, Any]:
    """A plain dict with plain str keys (SQLAlchemy's quoted_name keys trip orjson)."""
    return {str(key): value for key, value in mapping.items()}


def _like(column: Any, pattern: str, sqlite: bool) -> Any:
    if sqlite:
        return func.unicode_lower(column).like(pattern.lower(), escape="\\")
    return column.ilike(pattern, escape="\\")


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _snippet(content: str, needle: str, width: int = 60) -> str:
    at = content.lower().find(needle.lower())
    if at < 0:
        return content[: 2 * width]
    start, end = max(0, at - width), min(len(content), at + len(needle) + width)
    return ("…" if start else "") + content[start:end] + ("…" if end < len(content) else "")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own transaction handling turns each RELEASE SAVEPOINT into a commit, which would undo
    # the writer's group commit; SQLAlchemy's recipe: the driver stays out of it and _sqlite_begin says BEGIN.
    dbapi_connection.isolation_level = None
    # SQLite's LIKE folds the case of ASCII letters only; search folds every script's, as Python does.
    dbapi_connection.create_function("unicode_lower", 1, _lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor the writer them
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; a power cut may lose the last commits
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")  # wait out a checkpoint instead of failing
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def default_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'clawdbot.db'}"
