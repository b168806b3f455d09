"""Usage: requests, failures and tokens in and out per hour, by user, API key, model, backend and source (the chat
page, or the raw API), kept as rollup rows (migration 0009).

A finished reply or raw generation is counted into this process's tally (no statement of its own: the relay's cost
per request stays what it was); every few seconds the tally is written as one upsert per row, its counts added to
what the row holds, so any number of processes share the rows. A report reads rollup rows, never messages. A day
is the sum of its hours. A process that dies loses at most the counts of its last few seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Index, PrimaryKeyConstraint, String, Table, Text, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..logs import LOG
from .database import Database
from .records import now_ms
from .tables import metadata

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

usage = Table(
    "usage",
    metadata,
    Column("hour", BigInteger, nullable=False),  # the hour's start, ms since the epoch (UTC)
    Column("user_id", String(36), nullable=False),
    Column("key_id", String(36), nullable=False),  # the API key's id; "" for the chat page and signed-in sessions
    Column("model", Text, nullable=False),  # "" where the request named none the gateway could read
    Column("backend", Text, nullable=False),  # the backend's name ("" if it never reached one)
    Column("source", String(8), nullable=False),  # chat | raw
    Column("requests", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    PrimaryKeyConstraint("hour", "user_id", "key_id", "model", "backend", "source"),
    Index("usage_by_user", "user_id", "hour"),
)
_KEY = ("hour", "user_id", "key_id", "model", "backend", "source")
COUNTS = ("requests", "failures", "prompt_tokens", "output_tokens")
GROUPS = ("user", "key", "model", "backend", "source")
_COLUMN = {"user": "user_id", "key": "key_id", "model": "model", "backend": "backend", "source": "source"}


@dataclass(frozen=True, slots=True)
class Filters:
    """What a report counts: [start, end) in ms, and optionally one user, key, model, backend or source."""

    start: int
    end: int
    user_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    backend: str | None = None
    source: str | None = None


class Usage:
    """This process's tally, written to the rollup rows every `interval` seconds (and at close)."""

    def __init__(self, db: Database, *, interval: float = 5.0, retention_days: int = 400) -> None:
        self.db, self.interval, self.retention_days = db, interval, retention_days
        self._tally: dict[tuple[int, str, str, str, str, str], list[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()

    def count(
        self,
        *,
        user_id: str,
        key_id: str | None,
        model: str | None,
        backend: str | None,
        source: str,
        failed: bool,
        prompt_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        hour = now_ms() // HOUR_MS * HOUR_MS
        row = (hour, user_id, key_id or "", model or "", backend or "", source)
        counts = self._tally.get(row)
        if counts is None:
            counts = self._tally[row] = [0, 0, 0, 0]
        counts[0] += 1
        counts[1] += failed
        counts[2] += prompt_tokens or 0
        counts[3] += output_tokens or 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Write the tally now: its counts are added to the rows, and it starts again from nothing."""
        async with self._writing:
            tally, self._tally = self._tally, {}
            if not tally:
                return
            rows = [dict(zip(_KEY + COUNTS, key + tuple(counts), strict=True)) for key, counts in tally.items()]
            try:
                await self.db.write(lambda conn: _add(conn, rows))
            except Exception:
                for key, counts in tally.items():  # kept for the next try: counted once, late
                    mine = self._tally.setdefault(key, [0, 0, 0, 0])
                    for i, value in enumerate(counts):
                        mine[i] += value
                raise

    async def report(self, filters: Filters) -> list[dict[str, Any]]:
        """The hourly rows that match, this process's tally written first (a report shows what was just done)."""
        await self.flush()
        return await self.db.read(lambda conn: _rows(conn, filters))

    async def prune(self, before: int) -> int:
        """Delete the rows of the hours before `before` (ms); how many there were."""

        def query(conn: Connection) -> int:
            return int(conn.execute(delete(usage).where(usage.c.hour < before)).rowcount)

        return await self.db.write(query)

    async def _run(self) -> None:
        pruned = 0.0
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
                loop_now = asyncio.get_running_loop().time()
                if loop_now - pruned > 3600:
                    pruned = loop_now
                    await self.prune(now_ms() - self.retention_days * DAY_MS)
            except Exception:  # noqa: BLE001 - kept in the tally; the next round tries again
                LOG.exception("could not write usage counts")


def _add(conn: Connection, rows: list[dict[str, Any]]) -> None:
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(usage)
    added = {name: usage.c[name] + insert.excluded[name] for name in COUNTS}
    conn.execute(insert.on_conflict_do_update(index_elements=list(_KEY), set_=added), rows)


def _rows(conn: Connection, filters: Filters) -> list[dict[str, Any]]:
    query = select(usage).where(usage.c.hour >= filters.start // HOUR_MS * HOUR_MS, usage.c.hour < filters.end)
    for column, value in (
        ("user_id", filters.user_id),
        ("key_id", filters.key_id),
        ("model", filters.model),
        ("backend", filters.backend),
        ("source", filters.source),
    ):
        if value is not None:
            query = query.where(usage.c[column] == value)
    return [dict(row._mapping) for row in conn.execute(query.order_by(usage.c.hour))]


def rolled_up(
    rows: Iterable[dict[str, Any]], by: str, group: Sequence[str], offset_ms: int = 0
) -> list[dict[str, Any]]:
    """Hourly rows summed per `by` bucket ("hour" or "day", days starting at local midnight for a clock `offset_ms`
    ahead of UTC) and per value of each of `group` (user, key, model, backend, source), oldest first."""
    size = DAY_MS if by == "day" else HOUR_MS
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        bucket = (row["hour"] + offset_ms) // size * size - offset_ms
        named = tuple(row[_COLUMN[name]] for name in group)
        out = sums.get((bucket, *named))
        if out is None:
            out = sums[(bucket, *named)] = {"bucket": bucket, **dict(zip(group, named, strict=True))}
            out.update(dict.fromkeys(COUNTS, 0))
        for name in COUNTS:
            out[name] += row[name]
    return sorted(sums.values(), key=lambda out: (out["bucket"], *(str(out[g]) for g in group)))


def totals(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(COUNTS, 0)
    for row in rows:
        for name in COUNTS:
            out[name] += row[name]
    return out
