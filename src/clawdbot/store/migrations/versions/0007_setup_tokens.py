"""One-time setup links in the database, so that whichever replica or worker serves the setup page takes the link
another one printed (they were in the printing process's memory).

Revision ID: 0007_setup_tokens
Revises: 0006_reply_backends
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_setup_tokens"
down_revision = "0006_reply_backends"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "setup_tokens",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("setup_tokens")
