"""Search over one user's conversations: titles and shown messages, in any case, with a snippet around a hit
(plain text with the matches located in it: snippets.py).

On SQLite, a needle of three characters or more is looked up in the trigram index (messages_fts, migration 0002);
shorter ones, and PostgreSQL, scan with LIKE / ILIKE. Another user's conversations are never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, column, func, literal_column, select, text
from sqlalchemy.engine import Connection

from ..store.conversations import Store
from ..store.records import Conversation
from ..store.tables import conversations, messages
from .snippets import snippet


@dataclass(slots=True)
class Hit:
    """A conversation found, and where: the newest matching message and a snippet of it (none for a title)."""

    conversation: Conversation | None  # None only while the query is still gathering it
    snippet: str | None = None
    highlights: list[tuple[int, int]] = field(default_factory=list)
    message_id: str | None = None


async def find_conversations(store: Store, needle: str, user_id: str, limit: int = 50) -> list[Hit]:
    """The user's conversations whose title or shown messages contain `needle`, newest first, each with the newest
    matching message's id and a snippet of it with its highlights (none when only the title matched)."""
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

    def query(conn: Connection) -> list[Hit]:
        found: dict[str, Hit] = {}
        for row in conn.execute(titles_query):
            found[row.id] = Hit(Conversation(*row))
        for hit in conn.execute(hits_query):
            entry = found.setdefault(hit.conversation_id, Hit(None))
            if entry.snippet is None:
                shown = snippet(hit.content, needle)
                entry.snippet, entry.highlights, entry.message_id = shown.text, shown.highlights, hit.id
        missing = [cid for cid, entry in found.items() if entry.conversation is None]
        if missing:
            for row in conn.execute(select(conversations).where(conversations.c.id.in_(missing))):
                found[row.id].conversation = Conversation(*row)
        return [entry for entry in found.values() if entry.conversation is not None]

    results = await store.read(query)
    results.sort(key=lambda entry: entry.conversation.updated_at if entry.conversation else 0, reverse=True)
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
