"""Search over one user's conversations: titles and shown messages, in any case, with a snippet around a hit.

On SQLite, a needle of three characters or more is looked up in the trigram index (messages_fts, migration 0002);
shorter ones, and PostgreSQL, scan with LIKE / ILIKE. Another user's conversations are never read.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, column, func, literal_column, select, text
from sqlalchemy.engine import Connection

from .store import Store, conversations, messages, plain_row


async def find_conversations(store: Store, needle: str, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The user's conversations whose title or shown messages contain `needle`, newest first, each with the first
    matching message's id and a snippet of it (none when only the title matched)."""
    needle = needle.strip()
    if not needle:
        return []
    pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    titles_query = (
        select(conversations)
        .where(conversations.c.user_id == user_id, _like(conversations.c.title, pattern, store.sqlite))
        .order_by(conversations.c.updated_at.desc())
        .limit(limit)
    )
    mine = select(conversations.c.id).where(conversations.c.user_id == user_id)
    hits_query = _message_query(needle, pattern, limit, store.sqlite).where(messages.c.conversation_id.in_(mine))

    def query(conn: Connection) -> list[dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for row in conn.execute(titles_query).mappings():
            found[row["id"]] = {"conversation": plain_row(row), "snippet": None, "message_id": None}
        for hit in conn.execute(hits_query).mappings():
            entry = found.setdefault(
                hit["conversation_id"], {"conversation": None, "snippet": None, "message_id": hit["id"]}
            )
            if entry["snippet"] is None:
                entry["snippet"], entry["message_id"] = _snippet(hit["content"], needle), hit["id"]
        missing = [cid for cid, entry in found.items() if entry["conversation"] is None]
        if missing:
            for row in conn.execute(select(conversations).where(conversations.c.id.in_(missing))).mappings():
                found[row["id"]]["conversation"] = plain_row(row)
        return [entry for entry in found.values() if entry["conversation"] is not None]

    results = await store.read(query)
    results.sort(key=lambda entry: entry["conversation"]["updated_at"], reverse=True)
    return results[:limit]


def _message_query(needle: str, pattern: str, limit: int, sqlite: bool) -> Any:
    shown = messages.c.superseded.is_(False)
    query = select(messages.c.id, messages.c.conversation_id, messages.c.content).where(shown)
    if sqlite and len(needle) >= 3:  # the trigram index answers substrings of three characters or more
        phrase = '"' + needle.replace('"', '""') + '"'
        indexed = (
            text("SELECT rowid FROM messages_fts WHERE messages_fts MATCH :phrase")
            .bindparams(phrase=phrase)
            .columns(column("rowid", Integer))
        )
        query = query.where(literal_column("messages.rowid").in_(indexed))
    else:
        query = query.where(_like(messages.c.content, pattern, sqlite))
    return query.order_by(messages.c.created_at.desc()).limit(limit * 4)


def _like(column_: Any, pattern: str, sqlite: bool) -> Any:
    if sqlite:
        return func.unicode_lower(column_).like(pattern.lower(), escape="\\")
    return column_.ilike(pattern, escape="\\")


def _snippet(content: str, needle: str, width: int = 60) -> str:
    at = content.lower().find(needle.lower())
    if at < 0:
        return content[: 2 * width]
    start, end = max(0, at - width), min(len(content), at + len(needle) + width)
    return ("…" if start else "") + content[start:end] + ("…" if end < len(content) else "")
