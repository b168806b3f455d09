"""What `clawdbot user …` does: accounts changed straight in the database, for the gateway's own operator."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import click
from argon2 import PasswordHasher
from sqlalchemy.exc import IntegrityError

from .accounts import Accounts
from .authapi import NAME
from .settings import Settings
from .store import Store, default_url


async def add_user(settings: Settings, name: str, password: str, *, admin: bool) -> None:
    name = name.strip().lower()
    if not re.fullmatch(NAME, name):
        raise click.UsageError(f"{name!r} is not a name: 1–64 letters, digits or ._@-")
    if not 8 <= len(password) <= 1024:
        raise click.UsageError("the password must have 8 to 1024 characters")
    async with _accounts(settings) as accounts:
        try:
            user = await accounts.create_user(name, PasswordHasher().hash(password), role="admin" if admin else "user")
        except IntegrityError:
            raise click.ClickException(f"there is a user {name} already") from None
    click.echo(f"created {user['role']} {user['name']} ({user['id']}); sign in at /chat/login")


async def list_users(settings: Settings) -> None:
    async with _accounts(settings) as accounts:
        users = await accounts.list_users()
    for user in users:
        limits = ", ".join(
            f"{key}={user[key]}" for key in ("max_running", "requests_per_minute", "models") if user[key] is not None
        )
        state = "disabled" if user["disabled"] else "enabled"
        click.echo(f"{user['name']:<24} {user['role']:<6} {state:<9} {'sso ' if user['sso'] else ''}{limits}")
    if not users:
        click.echo("no users yet: clawdbot user add NAME --admin")


@contextlib.asynccontextmanager
async def _accounts(settings: Settings) -> AsyncIterator[Accounts]:
    """The accounts in the gateway's database (migrated first, as the gateway itself would)."""
    store = Store(settings.database_url or default_url(settings.data_dir))
    await store.open()
    try:
        yield Accounts(store.db)
    finally:
        await store.close()
