"""Usage: requests, failures and tokens in and out per hour, by user, API key, model, backend and source (the chat
page, or the raw API), kept as rollup rows (migration 0009).

A finished reply or raw generation is counted into this process's tally (no statement of its own: the relay's cost
per request stays what it was); every few seconds the tally is written as one upsert per row, its counts added to
what the row holds, so any number of processes share the rows. A report reads rollup rows, never messages. A day
is the sum of its hours. A process that dies loses at most the counts of its last few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Column, Index, PrimaryKeyConstraint, String, Table, Text, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..errors import Overloaded
from ..identity import Actor
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
        self._used_cache: dict[str, tuple[float, tuple[int, int], int, int]] = {}  # user: (until, periods, day, month)
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

    async def check(self, actor: Actor) -> None:
        """Refuse a request of a user who has used their tokens (in and out) of this UTC day or month: 429,
        `quota_reached`, with when it starts again. Counted within seconds: other processes' counts arrive with
        their next write, and a reply already running finishes."""
        if actor.tokens_per_day is None and actor.tokens_per_month is None:
            return
        today, month, tomorrow, next_month = _periods(datetime.now(UTC))
        used_today, used_month = await self._used(actor.id, today, month)
        for quota, used, period, again in (
            (actor.tokens_per_day, used_today, "today", tomorrow),
            (actor.tokens_per_month, used_month, "this month", next_month),
        ):
            if quota is not None and used >= quota:
                wait = max(1, (again - now_ms()) // 1000)
                at = datetime.fromtimestamp(again / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
                raise Overloaded(
                    f"you have used your quota of {quota:,} tokens {period} ({used:,} in and out); it starts again "
                    f"at {at}. Ask an admin for more.",
                    retry_after=int(wait),
                    status=429,
                    code="quota_reached",
                )

    async def _used(self, user_id: str, today: int, month: int) -> tuple[int, int]:
        """The user's tokens since `today` and since `month` (ms): the rows (read at most every few seconds) and
        what this process has not written yet."""
        cached = self._used_cache.get(user_id)
        clock = time.monotonic()
        if cached is None or cached[0] < clock or cached[1] != (today, month):

            def query(conn: Connection) -> tuple[int, int]:
                spent = usage.c.prompt_tokens + usage.c.output_tokens
                day = func.coalesce(func.sum(case((usage.c.hour >= today, spent), else_=0)), 0)
                mine = (usage.c.user_id == user_id) & (usage.c.hour >= month)
                found = conn.execute(select(day, func.coalesce(func.sum(spent), 0)).where(mine)).one()
                return int(found[0]), int(found[1])

            cached = (clock + self.interval, (today, month), *await self.db.read(query))
            self._used_cache[user_id] = cached
        used_today, used_month = cached[2], cached[3]
        for key, counts in self._tally.items():
            if key[1] == user_id and key[0] >= month:
                used_month += counts[2] + counts[3]
                if key[0] >= today:
                    used_today += counts[2] + counts[3]
        return used_today, used_month

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


def _periods(now: datetime) -> tuple[int, int, int, int]:
    """The starts of this UTC day and month, and of the next ones, in ms since the epoch."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    following = (
        month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)
    )
    return tuple(round(t.timestamp() * 1000) for t in (day, month, day + timedelta(days=1), following))  # type: ignore[return-value]
