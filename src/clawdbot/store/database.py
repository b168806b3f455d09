"""Where the store's queries run: SQLite through threads of our own, PostgreSQL through asyncpg.

Every query is a plain synchronous SQLAlchemy Core function of a Connection, and each one is a single step for the
event loop, whatever number of statements it runs. On SQLite that step is one hand-off to a thread holding a
sqlite3 connection: a driver that hops to a thread per statement and per cursor call (aiosqlite) costs about
three hand-offs, each a GIL round trip, per statement; measured in BENCHMARKS.md §4. On PostgreSQL it is
AsyncConnection.run_sync, so asyncpg's statements are awaited without any thread.

The threads take their work from a queue the loop never waits on (threads.py).

Every write goes through one writer that owns one connection and commits in groups: concurrent chats queue their
writes instead of fighting for SQLite's lock, so none of them ever sees "database is locked", and a burst of
writes costs one commit. Reads use other connections (SQLite in WAL mode lets them run alongside the writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..logs import LOG
from .threads import Threads

T = TypeVar("T")
Query = Callable[[Connection], T]
_GROUP = 256  # writes committed together at most
Result = tuple[Any, BaseException | None]


def driver_url(url: str) -> str:
    """Accept the URLs people write (`sqlite:///…`, `postgresql://…`) and name the driver clawdbot runs them on."""
    for plain, driver in (
        ("sqlite+aiosqlite://", "sqlite://"),  # the form earlier versions documented
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


# The PostgreSQL advisory lock the migrations run under (any number the application uses for nothing else).
MIGRATION_LOCK = 0x636C6177


class Database:
    def __init__(self, url: str, *, max_pending_writes: int = 10_000, readers: int = 4) -> None:
        self.url = driver_url(url)
        self.sqlite = self.url.startswith("sqlite")
        self._writes: asyncio.Queue[tuple[Query[Any], asyncio.Future[Any]]] = asyncio.Queue(max_pending_writes)
        self._writer: asyncio.Task[None] | None = None
        self._sync: Engine | None = None
        self._async: AsyncEngine | None = None
        if self.sqlite:
            path = self.url.split(":///", 1)[-1]
            if not path or path == ":memory:":
                raise ValueError("the SQLite database must be a file (its readers and writer share it)")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # A file database gets a QueuePool whose connections may move between our threads.
            self._sync = create_engine(self.url, pool_size=readers + 1, max_overflow=readers)
            event.listen(self._sync, "connect", _sqlite_pragmas)
            event.listen(self._sync, "begin", _sqlite_begin)
            self._readers = Threads(readers, "clawdbot-db-read")
            self._writer_thread = Threads(1, "clawdbot-db-write")
        else:
            # No ping on every checkout (it costs ~40 % of a read): a read on a connection the server dropped is
            # retried once on a fresh one, and the writer replaces its connection when it breaks.
            self._async = create_async_engine(self.url, pool_size=8, max_overflow=8)

    @property
    def dialect(self) -> str:
        return "sqlite" if self.sqlite else "postgresql"

    async def open(self, prepare: Callable[[Connection], None]) -> None:
        """Run `prepare` (the migrations) in a transaction of its own, then start the writer."""

        def migrate(conn: Connection) -> None:
            # Replicas and --workers start together: one migrates while the others wait, then find nothing to do.
            if self.sqlite:
                conn = conn.execution_options(begin="BEGIN IMMEDIATE")  # the write lock before the version is read
            with conn.begin():
                if not self.sqlite:
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                prepare(conn)

        await self._on_writer(migrate)
        self._writer = asyncio.create_task(self._write_loop())

    async def close(self) -> None:
        if self._writer is not None:
            await self._writes.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._sync is not None:
            self._readers.shutdown()
            self._writer_thread.shutdown()
            self._sync.dispose()
        if self._async is not None:
            await self._async.dispose()

    async def read(self, query: Query[T]) -> T:
        """Run `query` on a reading connection, as one step."""
        if self._sync is not None:
            return await self._readers.run(_read, self._sync, query)
        assert self._async is not None
        try:
            async with self._async.connect() as conn:
                return await conn.run_sync(query)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        async with self._async.connect() as conn:  # the server restarted: the pool now has fresh connections
            return await conn.run_sync(query)

    async def write(self, query: Query[T]) -> T:
        """Run `query` in the writer's transaction and wait until it is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._writes.put((query, future))  # bounded: a flood of writes waits here, memory stays flat
        return await future

    async def _on_writer(self, query: Query[T]) -> T:
        """Run `query` on a fresh connection where the writer runs (its thread, or the event loop)."""
        if self._sync is not None:
            return await self._writer_thread.run(_on_connection, self._sync, query)
        assert self._async is not None
        async with self._async.connect() as conn:
            return await conn.run_sync(query)

    async def _write_loop(self) -> None:
        connection: Connection | AsyncConnection | None = None
        try:
            while True:
                batch = [await self._writes.get()]
                while not self._writes.empty() and len(batch) < _GROUP:
                    batch.append(self._writes.get_nowait())
                queries = [query for query, _ in batch]
                try:
                    if self._sync is not None:
                        if connection is None:
                            connection = await self._writer_thread.run(self._sync.connect)
                            # The write lock at BEGIN: another process (--workers) writing between this transaction's
                            # first read and its first write would otherwise fail it at once, whatever busy_timeout.
                            connection.execution_options(begin="BEGIN IMMEDIATE")
                        assert isinstance(connection, Connection)
                        results = await self._writer_thread.run(_commit, connection, queries)
                    else:
                        assert self._async is not None
                        if connection is None:
                            connection = await self._async.connect()
                        assert isinstance(connection, AsyncConnection)
                        results = await connection.run_sync(_commit, queries)
                except Exception as lost:  # noqa: BLE001 - the connection itself failed: a fresh one next time
                    LOG.warning("database connection failed; reconnecting", extra={"reason": type(lost).__name__})
                    results = [(None, lost)] * len(batch)
                    await self._discard(connection)
                    connection = None
                if connection is not None and connection.invalidated:  # the server went away mid-group
                    await self._discard(connection)
                    connection = None
                for (_, future), (value, problem) in zip(batch, results, strict=True):
                    if not future.done():
                        if problem is None:
                            future.set_result(value)
                        else:
                            future.set_exception(problem)
                    self._writes.task_done()
        finally:
            await self._discard(connection)

    async def _discard(self, connection: Connection | AsyncConnection | None) -> None:
        """Close a connection that may be broken; the writer opens a fresh one for its next group."""
        try:
            if isinstance(connection, AsyncConnection):
                await connection.close()
            elif connection is not None:
                await self._writer_thread.run(connection.close)
        except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
            LOG.debug("closing a broken database connection failed")


def _on_connection(engine: Engine, query: Query[T]) -> T:
    with engine.connect() as conn:
        return query(conn)


def _read(engine: Engine, query: Query[T]) -> T:
    # Begun here, not at the first statement: one that runs on the driver (prepared.py) begins nothing itself, and a
    # read of several statements is to see one snapshot.
    with engine.connect() as conn, conn.begin():
        return query(conn)


def _commit(conn: Connection, queries: list[Query[Any]]) -> list[Result]:
    """One transaction for the group. If any write fails, the group is rolled back and each write runs again in a
    transaction of its own, so one bad write spares the others without a savepoint around every write."""
    try:
        with conn.begin():
            return [(query(conn), None) for query in queries]
    except Exception as failed:  # noqa: BLE001 - handed to the caller that asked for the write
        if len(queries) == 1:
            return [(None, failed)]
    results: list[Result] = []
    for query in queries:
        try:
            with conn.begin():
                results.append((query(conn), None))
        except Exception as failed:  # noqa: BLE001 - handed to the caller that asked for the write
            results.append((None, failed))
    return results


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own transaction handling commits behind SQLAlchemy's back; SQLAlchemy's recipe: the
    # driver stays out of it and _sqlite_begin says BEGIN.
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
    conn.exec_driver_sql(conn.get_execution_options().get("begin", "BEGIN"))


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value
