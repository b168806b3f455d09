"""Durable replies: checkpoints of replies in flight, why a reply failed, one message per client id.

Revision ID: 0002_durable_replies
Revises: 0001_conversations
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_durable_replies"
down_revision = "0001_conversations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("error_kind", sa.String(32)))  # a plain ALTER on SQLite too
    # A send retried with the same client id finds the first one instead of storing the message twice.
    op.create_index("messages_by_client_id", "messages", ["conversation_id", "client_id"], unique=True)
    # The text of replies in flight, rewritten about once a second. Kept apart from messages so that the
    # full-text index is not rebuilt for a growing reply every second; folded into the reply when it ends.
    op.create_table(
        "reply_checkpoints",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("thinking", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
