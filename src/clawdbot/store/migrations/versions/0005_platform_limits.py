"""Platform limits an admin sets on the page: output length and time per reply, model-made titles, and a context
size per model; and a reply length of a conversation's own.

Revision ID: 0005_platform_limits
Revises: 0004_message_versions

A setting with no row here (and a model with no row) takes the command line's default (--num-predict,
--max-num-predict, --max-reply-seconds, --model-titles, --num-ctx): a new database behaves as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_platform_limits"
down_revision = "0004_message_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "platform_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),  # JSON: a number or a boolean
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "model_settings",
        sa.Column("model", sa.String(200), primary_key=True),  # the name as Ollama lists it, lower-case
        sa.Column("num_ctx", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.add_column("conversations", sa.Column("num_predict", sa.Integer))  # null: the platform's default
