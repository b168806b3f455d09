"""Where each reply's time went (timing.py): the gateway's share, the queue, the model's load, prompt and first
token, the relay to the client, the generation and the finish, in milliseconds, as a JSON object.

Revision ID: 0008_reply_timing
Revises: 0007_setup_tokens

Older replies have none (null).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_reply_timing"
down_revision = "0007_setup_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("timing", sa.JSON))


def downgrade() -> None:
    op.drop_column("messages", "timing")
