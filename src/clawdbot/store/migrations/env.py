"""Alembic's entry point: migrations always run on a connection the application hands over."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the application always provides one
    raise RuntimeError("clawdbot migrations run through clawdbot.store.migrations.upgrade(), with a connection")

context.configure(
    connection=connection, render_as_batch=connection.dialect.name == "sqlite", transaction_per_migration=True
)
with context.begin_transaction():
    context.run_migrations()
