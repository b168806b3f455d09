"""Which backend wrote each reply, and where a reply moved to another backend mid-way (a failover).

Revision ID: 0006_reply_backends
Revises: 0005_platform_limits

`backend`: the backends' names in the order they wrote the reply, comma-separated (one, unless it failed over);
`switches`: a JSON list of {"from", "to", "at"} (at: the character where the next backend took over). Older replies
have neither.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_reply_backends"
down_revision = "0005_platform_limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("backend", sa.Text))
    op.add_column("messages", sa.Column("switches", sa.JSON))


def downgrade() -> None:
    op.drop_column("messages", "switches")
    op.drop_column("messages", "backend")
