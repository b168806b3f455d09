"""Per-user token quotas (store/usage.py): the most tokens in and out a user may use per UTC day and per month.

Revision ID: 0010_token_quotas
Revises: 0009_usage

Null: no quota (every user, to begin with).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_token_quotas"
down_revision = "0009_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("tokens_per_day", sa.BigInteger))
    op.add_column("users", sa.Column("tokens_per_month", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("users", "tokens_per_month")
    op.drop_column("users", "tokens_per_day")
