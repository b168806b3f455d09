"""What `clawdbot user …` does: accounts changed straight in the database, for the gateway's own operator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import click
from sqlalchemy.exc import IntegrityError

from ..settings import Settings
from ..store.conversations import Store, default_url
from .accounts import Accounts, name_problem, password_problem
from .passwords import Passwords


async def add_user(settings: Settings, name: str, password: str, *, admin: bool) -> None:
    name = name.strip().lower()
    problem = name_problem(name) or password_problem(password)
    if problem:
        raise click.UsageError(problem)
    async with _accounts(settings) as accounts:
        try:
            user = await accounts.create_user(
                name, await Passwords(1).hash(password), role="admin" if admin else "user"
            )
        except IntegrityError:
            raise click.ClickException(f"there is a user {name} already") from None
    click.echo(f"created {user.role} {user.name} ({user.id}); sign in at /chat/login")


async def list_users(settings: Settings) -> None:
    async with _accounts(settings) as accounts:
        users = await accounts.list_users()
    for user in users:
        given = {
            "max_running": user.max_running,
            "requests_per_minute": user.requests_per_minute,
            "tokens_per_day": user.tokens_per_day,
            "tokens_per_month": user.tokens_per_month,
            "models": user.models,
        }
        limits = ", ".join(f"{key}={value}" for key, value in given.items() if value is not None)
        state = "disabled" if user.disabled else "enabled"
        click.echo(f"{user.name:<24} {user.role:<6} {state:<9} {'sso ' if user.sso else ''}{limits}")
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
