"""Conversations and their messages, with a full-text index of what was said.

Revision ID: 0001_conversations
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_conversations"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("title_set", sa.Boolean, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=False),
        sa.Column("temperature", sa.Float),
        sa.Column("num_ctx", sa.Integer),
        sa.Column("think", sa.Boolean),
        sa.Column("pinned", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("conversations_recent", "conversations", ["pinned", "updated_at"])
    op.create_table(
        "messages",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "conversation_id", sa.String(36), sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("thinking", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("superseded", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("model", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("done_reason", sa.String(16)),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
        sa.Column("ttft_ms", sa.Integer),
        sa.Column("thinking_ms", sa.Integer),
        sa.Column("total_ms", sa.Integer),
        sa.Column("eval_ms", sa.Integer),
        sa.Column("omitted_turns", sa.Integer),
        sa.Column("client_id", sa.String(64)),
    )
    op.create_index("messages_by_conversation", "messages", ["conversation_id", "created_at"])
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_fts()
    else:
        _postgres_trigram()


def _sqlite_fts() -> None:
    # An external-content FTS5 table over messages.content, kept in step by triggers. The trigram tokenizer
    # finds any substring of three or more characters, which works for Chinese as well as for English.
    op.execute(
        "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='rowid', "
        "tokenize='trigram')"
    )
    op.execute(
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
        "INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END"
    )
    op.execute(
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
        "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content); END"
    )
    op.execute(
        "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN "
        "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content); "
        "INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END"
    )


def _postgres_trigram() -> None:
    # pg_trgm makes ILIKE '%…%' use an index. Creating an extension needs a privilege a hosted database may
    # withhold; search then still works, by scanning.
    op.execute("""
        DO $$ BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
            CREATE INDEX messages_content_trgm ON messages USING gin (content gin_trgm_ops);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm unavailable: message search will scan';
        END $$;
    """)
