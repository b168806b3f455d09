"""The statements every chat turn runs, compiled once and, on SQLite, run straight on the sqlite3 driver.

SQLAlchemy's execution of a statement it has compiled and cached (the execution context, events, the result's
wrapping) cost more than SQLite's own work on it: one turn's reads and writes took 1.7 ms of a thread's CPU through
Connection.execute and 1.0 ms on the driver. Worse, that Python work runs in the database threads while the event
loop is streaming: each stretch of it makes the loop hand over the GIL, and with the loop busy 90 % of the time the
same turn took 3.6 ms against 1.5 ms (BENCHMARKS.md §12).

Each statement is still written in Core and compiled by SQLAlchemy's own SQLite dialect, its parameters and result
columns go through the same type processing (booleans, JSON), and a driver error comes out as the same
`sqlalchemy.exc` exception. It runs on the connection it is given, inside that connection's transaction. On
PostgreSQL (asyncpg's statements are awaited on the event loop, with no thread to compete with) it runs through
Connection.execute like any other statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql.expression import Executable

Params = Mapping[str, Any]


class _Compiled:
    """A statement as SQLite's dialect renders it (qmark parameters), with what converts its values."""

    __slots__ = ("binds", "results", "sql")

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        # (name, its value when the caller gives none: a literal of the statement's own, else NULL; its processor)
        self.binds: list[tuple[str, Any, Callable[[Any], Any] | None]] = [
            (name, compiled.params.get(name), _bind_processor(compiled.binds[name].type, dialect))
            for name in compiled.positiontup or ()
        ]
        columns = getattr(statement, "selected_columns", None)
        kinds = [] if columns is None else [column.type.dialect_impl(dialect) for column in columns]
        processors = [kind.result_processor(dialect, None) for kind in kinds]
        # Only the columns that need converting (booleans, JSON): most come from sqlite3 as they are.
        self.results: list[tuple[int, Callable[[Any], Any]]] = [(i, p) for i, p in enumerate(processors) if p]

    def args(self, params: Params) -> list[Any]:
        values = []
        for name, default, process in self.binds:
            value = params.get(name, default)
            values.append(value if process is None else process(value))
        return values

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        if not self.results:
            return raw
        row = list(raw)
        for index, process in self.results:
            row[index] = process(row[index])
        return tuple(row)


def _bind_processor(kind: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    processor: Callable[[Any], Any] | None = kind.dialect_impl(dialect).bind_processor(dialect)
    return processor


class Prepared:
    """A Core statement for the hot path: `rows` for a SELECT, `run` for a write (one parameter set, or several)."""

    __slots__ = ("_sqlite", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._sqlite: _Compiled | None = None

    def rows(self, conn: Connection, params: Params) -> list[tuple[Any, ...]]:
        if conn.dialect.name != "sqlite":
            return [tuple(row) for row in conn.execute(self.statement, params)]
        compiled = self._compiled(conn.dialect)
        args = compiled.args(params)
        try:
            found = _driver(conn).execute(compiled.sql, args).fetchall()
        except sqlite3.Error as error:
            raise _wrapped(compiled.sql, args, error) from error
        return [compiled.row(row) for row in found]

    def run(self, conn: Connection, params: Params | Sequence[Params]) -> int:
        """Run the write; the number of rows it matched."""
        if conn.dialect.name != "sqlite":
            return int(conn.execute(self.statement, params).rowcount)
        compiled = self._compiled(conn.dialect)
        driver = _driver(conn)
        args: Any = None
        try:
            if isinstance(params, Mapping):
                args = compiled.args(params)
                return int(driver.execute(compiled.sql, args).rowcount)
            args = [compiled.args(one) for one in params]
            return int(driver.executemany(compiled.sql, args).rowcount)
        except sqlite3.Error as error:
            raise _wrapped(compiled.sql, args, error) from error

    def _compiled(self, dialect: Dialect) -> _Compiled:
        if self._sqlite is None:
            self._sqlite = _Compiled(self.statement, dialect)
        return self._sqlite


def _driver(conn: Connection) -> sqlite3.Connection:
    """The connection's own sqlite3 connection: statements on it are in the transaction `conn` began."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def _wrapped(sql: str, args: Any, error: sqlite3.Error) -> StatementError:
    """The exception SQLAlchemy raises for this driver error (an IntegrityError for a duplicate key, …)."""
    return DBAPIError.instance(sql, args, error, sqlite3.Error)
