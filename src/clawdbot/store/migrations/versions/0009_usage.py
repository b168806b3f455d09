"""Usage rollups (store/usage.py): requests, failures and tokens in and out per hour, by user, API key, model,
backend and source (chat | raw).

Revision ID: 0009_usage
Revises: 0008_reply_timing

Counted from this version on; replies stored before it are not rolled up.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_usage"
down_revision = "0008_reply_timing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("hour", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("key_id", sa.String(36), nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("backend", sa.Text, nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("failures", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("hour", "user_id", "key_id", "model", "backend", "source"),
    )
    op.create_index("usage_by_user", "usage", ["user_id", "hour"])


def downgrade() -> None:
    op.drop_index("usage_by_user", "usage")
    op.drop_table("usage")
