"""benchmarks/durability.py's verdict: the database's rows against what every client saw and was acknowledged.

Every acknowledged user message stored exactly once; every one followed by a reply in a final state; every stream
that ended with a numbered reply.done equal to the stored text; interrupted replies agreeing with what was shown."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from _durability_users import Turn, User

FINAL = ("done", "stopped", "failed", "interrupted")
_ACTIVE = ("waiting", "thinking", "writing")


# ---- the rows ----------------------------------------------------------------------------------------
_COLUMNS = "id, conversation_id, role, content, thinking, status, superseded, client_id, error_kind"


def rows_sqlite(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        query = f"SELECT {_COLUMNS} FROM messages ORDER BY conversation_id, created_at, id"
        return [dict(row) for row in conn.execute(query)]
    finally:
        conn.close()


async def rows_postgres(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        query = f"SELECT {_COLUMNS} FROM messages ORDER BY conversation_id, created_at, id"
        return [dict(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


def verify(users: list[User], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The invariants, from the database's rows and what each client saw."""
    by_conversation: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_conversation.setdefault(row["conversation_id"], []).append(row)
    replies: dict[str, dict[str, Any]] = {}  # user message id → the reply that follows it
    user_rows: dict[str, dict[str, Any]] = {}
    for messages in by_conversation.values():
        for index, row in enumerate(messages):
            if row["role"] == "user":
                user_rows[row["id"]] = row
                after = messages[index + 1] if index + 1 < len(messages) else None
                if after is not None and after["role"] == "assistant":
                    replies[row["id"]] = after
    client_ids = Counter((r["conversation_id"], r["client_id"]) for r in user_rows.values())
    acknowledged = [t for u in users for t in u.turns if t.message_id is not None]
    acked_ids = {t.message_id for t in acknowledged}
    problems: list[str] = []
    out: Counter[str] = Counter()
    for turn in acknowledged:
        _check_turn(turn, user_rows, replies, client_ids, out, problems)
    out["unacknowledged_stored"] = sum(1 for i in user_rows if i not in acked_ids)
    out["superseded"] = sum(1 for r in rows if r["superseded"])
    out["left_active"] = sum(1 for r in rows if r["role"] == "assistant" and r["status"] in _ACTIVE)
    statuses = Counter(r["status"] for r in rows if r["role"] == "assistant")
    kinds = Counter(f"{r['status']}:{r['error_kind']}" for r in rows if r["error_kind"])
    return {
        "acknowledged": len(acknowledged),
        "user_rows": len(user_rows),
        "reply_rows": sum(statuses.values()),
        "statuses": dict(statuses),
        "error_kinds": dict(kinds),
        **{key: out[key] for key in INVARIANTS},
        "unacknowledged_stored": out["unacknowledged_stored"],
        "whole_streams_checked": out["whole_streams_checked"],
        "resumed_streams_checked": out["resumed_streams_checked"],
        "interrupted_checked": out["interrupted_checked"],
        "problems": problems[:10],
    }


# Each must be 0.
INVARIANTS = ("missing", "duplicates", "lost", "left_active", "mismatches", "interrupted_disagree", "superseded")


def _check_turn(
    turn: Turn,
    user_rows: dict[str, dict[str, Any]],
    replies: dict[str, dict[str, Any]],
    client_ids: Counter[tuple[str, str]],
    out: Counter[str],
    problems: list[str],
) -> None:
    assert turn.message_id is not None
    assert turn.reply is not None
    row = user_rows.get(turn.message_id)
    if row is None:
        out["missing"] += 1
        problems.append(f"{turn.client_id}: acknowledged message {turn.message_id} not stored")
        return
    if client_ids[(turn.conversation_id, turn.client_id)] != 1 or row["client_id"] != turn.client_id:
        out["duplicates"] += 1
        problems.append(f"{turn.client_id}: stored {client_ids[(turn.conversation_id, turn.client_id)]} times")
    reply = replies.get(turn.message_id)
    if reply is None or reply["status"] not in FINAL:
        out["lost"] += 1
        problems.append(f"{turn.describe()}: stored reply {reply and reply['status']}")
        return
    if reply["id"] != turn.reply.id:
        out["mismatches"] += 1
        problems.append(f"{turn.client_id}: acknowledged reply {turn.reply.id}, stored {reply['id']}")
        return
    seen = "".join(turn.reply.content)
    seen_status = (turn.reply.final or {}).get("status")
    if seen_status in _ACTIVE:  # a reply.done that ends nothing (what the final row says is checked below)
        problems.append(f"{turn.describe()}: answered reply.done with status {seen_status}, stored {reply['status']}")
    if turn.reply.numbered_done:
        out["whole_streams_checked"] += 1
        out["resumed_streams_checked"] += turn.reply.resumed
        final = turn.reply.final or {}
        if seen != reply["content"] or "".join(turn.reply.thinking) != reply["thinking"]:
            out["mismatches"] += 1
            problems.append(f"{turn.client_id}: reassembled {len(seen)} chars, stored {len(reply['content'])}")
        elif final.get("content") != reply["content"] or final.get("status") != reply["status"]:
            out["mismatches"] += 1
            problems.append(f"{turn.client_id}: reply.done carried other text or status than was stored")
    if turn.reply.snapshot_mismatch:
        out["mismatches"] += 1
        problems.append(f"{turn.client_id}: a snapshot did not extend the text already seen")
    if reply["status"] == "interrupted":
        out["interrupted_checked"] += 1
        stored = reply["content"]
        if not (seen.startswith(stored) or stored.startswith(seen)):
            out["interrupted_disagree"] += 1
            problems.append(f"{turn.client_id}: interrupted text and what the client saw differ")
