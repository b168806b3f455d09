"""The chat's tables: conversations, their messages, and the text so far of replies being written.

Every other table (accounts, limits) is added to the same `metadata`; the migrations create them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("title", Text, nullable=False),
    Column("title_set", Boolean, nullable=False),  # renamed by the user: no longer follows the first message
    Column("model", Text, nullable=False),
    Column("system_prompt", Text, nullable=False),
    Column("temperature", Float),
    Column("num_ctx", Integer),
    Column("think", Boolean),
    Column("pinned", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # milliseconds since the epoch
    Column("updated_at", BigInteger, nullable=False),
    Column("user_id", String(36)),  # the owner (accounts.users); null only in a database older than 0003
    Column("num_predict", Integer),  # the most tokens a reply may write; null: the platform's default (0004)
    Index("conversations_by_user", "user_id", "pinned", "updated_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("conversation_id", String(36), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(16), nullable=False),  # user | assistant
    Column("content", Text, nullable=False),
    Column("thinking", Text, nullable=False),
    # user: sent. assistant: waiting, thinking, writing, then done, stopped, failed or interrupted.
    Column("status", String(16), nullable=False),
    Column("superseded", Boolean, nullable=False),  # not shown (nor sent): not on the path of chosen versions
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Column("model", Text),
    Column("error", Text),
    Column("done_reason", String(16)),
    Column("prompt_tokens", Integer),
    Column("output_tokens", Integer),
    Column("ttft_ms", Integer),
    Column("thinking_ms", Integer),
    Column("total_ms", Integer),
    Column("eval_ms", Integer),
    Column("omitted_turns", Integer),
    Column("client_id", String(64)),
    Column("error_kind", String(32)),  # a failed reply's cause (BackendError.kind), as counted in /metrics
    # Versions (migration 0004, versions.py): the message this one follows, and whether it is the version shown
    # when its branch is; a reply that Continue went on from is no version (continued_by: the reply that did).
    Column("parent_id", String(36)),
    Column("chosen", Boolean, nullable=False),
    Column("continued_by", String(36)),
    Column("backend", Text),  # the backends that wrote a reply, in order (migration 0006)
    Column("switches", JSON),  # where it moved from one to the next: [{"from", "to", "at"}]
    Column("timing", JSON),  # where its time went, in milliseconds (timing.py; migration 0008)
    Index("messages_by_conversation", "conversation_id", "created_at"),
    Index("messages_by_client_id", "conversation_id", "client_id", unique=True),
)

# The text so far of replies being written, about once a second; see migration 0002.
reply_checkpoints = Table(
    "reply_checkpoints",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("content", Text, nullable=False),
    Column("thinking", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
