"""Accounts: users, server-side sessions, API keys, and an owner for every conversation.

Revision ID: 0003_accounts
Revises: 0002_durable_replies

The built-in owner account (id OWNER_ID, name "local", no password) holds the conversations made before accounts
existed; --no-auth acts as it, and the first admin to be set up takes it over.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003_accounts"
down_revision = "0002_durable_replies"
branch_labels = None
depends_on = None

OWNER_ID = "00000000-0000-7000-8000-000000000001"


def upgrade() -> None:
    users = op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),  # stored lower-case
        sa.Column("password_hash", sa.Text),  # Argon2id; null: never set (the unclaimed owner, SSO users)
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("sso", sa.Boolean, nullable=False),
        sa.Column("max_running", sa.Integer),
        sa.Column("requests_per_minute", sa.Integer),
        sa.Column("models", sa.Text),  # a JSON list of model names; null: every model
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_login_at", sa.BigInteger),
    )
    op.create_table(
        "sessions",
        sa.Column(
            "id", sa.String(64), primary_key=True
        ),  # SHA-256 of the cookie's token: a stolen table logs no one in
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("sessions_by_user", "sessions", ["user_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),  # the key's first characters, to tell keys apart
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),  # SHA-256: keys are 256 random bits
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("last_used_at", sa.BigInteger),
    )
    op.create_index("api_keys_by_user", "api_keys", ["user_id"])
    op.bulk_insert(
        users,
        [
            {
                "id": OWNER_ID,
                "name": "local",
                "password_hash": None,
                "role": "admin",
                "disabled": False,
                "sso": False,
                "created_at": time.time_ns() // 1_000_000,
            }
        ],
    )
    op.add_column("conversations", sa.Column("user_id", sa.String(36)))
    op.execute(sa.text("UPDATE conversations SET user_id = :owner").bindparams(owner=OWNER_ID))
    op.create_index("conversations_by_user", "conversations", ["user_id", "pinned", "updated_at"])
