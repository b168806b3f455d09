"""Usage reports (store/usage.py): `/chat/api/usage` is the caller's own, `/chat/api/admin/usage` everyone's (admins
only, with filters); both by hour or by day, grouped by any of user, key, model, backend and source, as JSON or CSV.

    GET /chat/api/usage?from=…&to=…&by=day&group=model&offset=60&format=csv

`from` and `to` are milliseconds since the epoch (default: the last 7 days to now); `offset` the viewer's clock in
minutes ahead of UTC, so that days start at their midnight; a range by hour spans at most 31 days.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..auth.accounts import api_keys, users
from ..errors import BadRequest, Forbidden
from ..store.usage import COUNTS, DAY_MS, GROUPS, Filters, Usage, rolled_up, totals
from .authenticate import current
from .http import json

USAGE: web.AppKey[Usage] = web.AppKey("usage", Usage)
_MAX_HOURLY_DAYS = 31
_LAST = 253_402_300_800_000  # 10000-01-01 in ms: a time every database and every clock can hold


def routes(app: web.Application) -> None:
    app.router.add_get("/chat/api/usage", own, allow_head=False)
    app.router.add_get("/chat/api/admin/usage", everyone, allow_head=False)


async def own(request: web.Request) -> web.StreamResponse:
    actor = current(request)
    return await _report(request, {"user_id": actor.id}, default_group=("model",))


async def everyone(request: web.Request) -> web.StreamResponse:
    if not current(request).admin:
        raise Forbidden("only an admin may see everyone's usage")
    query = request.query
    chosen = {name: _text(query, name) for name in ("user_id", "key_id", "model", "backend", "source")}
    return await _report(request, chosen, default_group=("user",))


async def _report(
    request: web.Request, chosen: dict[str, str | None], default_group: Sequence[str]
) -> web.StreamResponse:
    query = request.query
    now = int(time.time() * 1000)
    start, end = _int(query, "from", now - 7 * DAY_MS), _int(query, "to", now)
    by, offset = query.get("by", "day"), _int(query, "offset", 0)
    group = tuple(g for g in query.get("group", ",".join(default_group)).split(",") if g)
    if by not in ("hour", "day"):
        raise BadRequest("by: hour or day")
    if unknown := [g for g in group if g not in GROUPS]:
        raise BadRequest(f"group: {', '.join(unknown)} is not one of {', '.join(GROUPS)}")
    if not 0 <= start < end <= _LAST:
        raise BadRequest("from must be before to (milliseconds since the epoch, before the year 10000)")
    if by == "hour" and end - start > _MAX_HOURLY_DAYS * DAY_MS:
        raise BadRequest(f"a report by hour spans at most {_MAX_HOURLY_DAYS} days; ask by day")
    if not -14 * 60 <= offset <= 14 * 60:
        raise BadRequest("offset: minutes ahead of UTC, from -840 to 840")
    if query.get("format", "json") not in ("json", "csv"):
        raise BadRequest("format: json or csv")
    usage = request.app[USAGE]
    hourly = await usage.report(Filters(start, end, **chosen))
    rows = rolled_up(hourly, by, group, offset * 60_000)
    names = await usage.db.read(lambda conn: _names(conn, rows))
    if query.get("format") == "csv":
        return _csv(rows, group, names)
    body = {"from": start, "to": end, "by": by, "group": list(group), "rows": rows, "totals": totals(hourly)}
    return json({**body, "names": names})


def _int(query: Any, name: str, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name}: a whole number") from None


def _text(query: Any, name: str) -> str | None:
    value = query.get(name)
    if value is not None and (len(value) > 200 or "\x00" in value):
        raise BadRequest(f"{name}: at most 200 characters, no NUL")
    return str(value) if value is not None else None


def _names(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The users' names and the keys' names (with their visible prefix) the rows mention."""
    user_ids = {row["user"] for row in rows if row.get("user")}
    key_ids = {row["key"] for row in rows if row.get("key")}
    found: dict[str, dict[str, str]] = {"users": {}, "keys": {}}
    if user_ids:
        for user_id, name in conn.execute(select(users.c.id, users.c.name).where(users.c.id.in_(user_ids))):
            found["users"][user_id] = name
    if key_ids:
        keys = select(api_keys.c.id, api_keys.c.name, api_keys.c.prefix).where(api_keys.c.id.in_(key_ids))
        for key_id, name, prefix in conn.execute(keys):
            found["keys"][key_id] = f"{name} ({prefix}…)"
    return found


def _csv(rows: list[dict[str, Any]], group: Sequence[str], names: dict[str, dict[str, str]]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out)
    named = [column for g in group for column in ((g, f"{g}_name") if g in ("user", "key") else (g,))]
    writer.writerow(["bucket", *named, *COUNTS])
    for row in rows:
        cells: list[Any] = [datetime.fromtimestamp(row["bucket"] / 1000, UTC).isoformat().replace("+00:00", "Z")]
        for g in group:
            cells.append(row[g])
            if g in ("user", "key"):
                cells.append(names[f"{g}s"].get(row[g], ""))
        writer.writerow([_cell(cell) for cell in (*cells, *(row[name] for name in COUNTS))])
    headers = {"Content-Disposition": 'attachment; filename="clawdbot-usage.csv"'}
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8", headers=headers)


def _cell(value: Any) -> Any:
    """A name a spreadsheet would run as a formula (=, +, -, @ first) is quoted as text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
