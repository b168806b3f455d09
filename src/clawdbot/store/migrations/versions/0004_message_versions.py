"""Message versions: Regenerate and Edit keep the earlier versions of a message, and the user picks the one shown.

Revision ID: 0004_message_versions
Revises: 0003_accounts

The messages of a conversation form a tree (versions.py): `parent_id` is the message a message follows (a reply's
user message; a user message's preceding reply; none for a first message), and the versions of a message are the
messages with the same parent. `chosen` marks the version shown whenever its branch is shown, so a branch comes
back as it was left; `superseded` keeps its meaning of "not shown" (not on the chosen path). Continue does not
make a version: the reply it went on from gets `continued_by` and drops out of the tree.

Backfill: before this revision Regenerate and Edit marked the replaced messages superseded and kept them, and every
turn inserted its rows at once, so replaying a conversation's rows in the order they were made places each one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_message_versions"
down_revision = "0003_accounts"
branch_labels = None
depends_on = None

_ENDED_EARLY = ("interrupted", "failed", "stopped")  # what Continue went on from


def upgrade() -> None:
    op.add_column("messages", sa.Column("parent_id", sa.String(36)))
    # Every row stored so far is then its group's only version until the backfill below says otherwise.
    op.add_column("messages", sa.Column("chosen", sa.Boolean, nullable=False, server_default=sa.true()))
    op.add_column("messages", sa.Column("continued_by", sa.String(36)))
    bind = op.get_bind()
    table = sa.table(
        "messages",
        *(sa.column(name) for name in ("id", "conversation_id", "role", "content", "thinking", "status")),
        *(sa.column(name) for name in ("superseded", "created_at", "parent_id", "chosen", "continued_by")),
    )
    ids = [row[0] for row in bind.execute(sa.select(table.c.conversation_id).distinct())]
    changes = sa.update(table).where(table.c.id == sa.bindparam("b_id"))
    changes = changes.values(
        parent_id=sa.bindparam("b_parent"),
        chosen=sa.bindparam("b_chosen"),
        continued_by=sa.bindparam("b_continued"),
        superseded=sa.bindparam("b_superseded"),
    )
    for conversation_id in ids:
        query = sa.select(table).where(table.c.conversation_id == conversation_id)
        rows = [dict(row) for row in bind.execute(query.order_by(table.c.created_at, table.c.id)).mappings()]
        placed = list(_placed(rows))
        if placed:
            bind.execute(changes, placed)


def _placed(rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each row's parent, chosen, continued_by and superseded, from replaying the turns that made them."""
    by_id = {row["id"]: row for row in rows}
    path: list[dict[str, Any]] = []  # the shown messages as they were after each turn
    for row in rows:
        row["parent_id"] = row["continued_by"] = None
        row["chosen"] = False  # until its group is known (_chosen)
        if row["role"] == "user":
            users = [index for index, shown in enumerate(path) if shown["role"] == "user"]
            if users and path[users[-1]]["superseded"]:  # an edit: only the last user message was editable
                del path[users[-1] :]
        elif path and path[-1]["role"] == "assistant":  # Regenerate or Continue replaced that reply
            earlier = path.pop()
            if _continues(row, earlier):
                earlier["continued_by"] = row["id"]
            row["parent_id"] = earlier["parent_id"]
            path.append(row)
            continue
        row["parent_id"] = path[-1]["id"] if path else None
        path.append(row)
    yield from _chosen(rows, by_id)


def _continues(reply: dict[str, Any], earlier: dict[str, Any]) -> bool:
    """Continue started the new reply with the earlier one's text; Regenerate started it empty."""
    text = earlier["content"] or earlier["thinking"]
    return (
        earlier["status"] in _ENDED_EARLY
        and bool(text)
        and reply["content"].startswith(earlier["content"])
        and reply["thinking"].startswith(earlier["thinking"])
    )


def _chosen(rows: list[dict[str, Any]], by_id: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """In each group of versions the shown one is chosen; in a group no longer shown (under an edited message),
    the newest, which is the one that was shown when it was left. Shown is then the path of chosen versions."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        if row["continued_by"] is None:
            groups.setdefault(row["parent_id"], []).append(row)
    for group in groups.values():
        pick = next((row for row in reversed(group) if not row["superseded"]), group[-1])
        for row in group:
            row["chosen"] = row is pick
    on_path: set[str] = set()
    parent: str | None = None
    while parent in groups:  # from the first message's versions (parent None) down the chosen ones
        pick = next(row for row in groups[parent] if row["chosen"])
        on_path.add(pick["id"])
        parent = pick["id"]
    for row in by_id.values():
        yield {
            "b_id": row["id"],
            "b_parent": row["parent_id"],
            "b_chosen": row["chosen"],
            "b_continued": row["continued_by"],
            "b_superseded": row["id"] not in on_path,
        }
