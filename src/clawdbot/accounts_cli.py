"""What `clawdbot user …` does: accounts changed straight in the database, for the gateway's own operator."""

from __future__ import annotations

import re

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
    store = Store(settings.database_url or default_url(settings.data_dir))
    await store.open()
    try:
        accounts = Accounts(store.db)
        if await accounts.user_by_name(name) is not None:
            raise click.ClickException(f"there is a user {name} already")
        try:
            user = await accounts.create_user(name, PasswordHasher().hash(password), role="admin" if admin else "user")
        except IntegrityError:
            raise click.ClickException(f"there is a user {name} already") from None
    finally:
        await store.close()
    click.echo(f"created {user['role']} {user['name']} ({user['id']}); sign in at /chat/login")


async def list_users(settings: Settings) -> None:
    store = Store(settings.database_url or default_url(settings.data_dir))
    await store.open()
    try:
        users = await Accounts(store.db).list_users()
    finally:
        await store.close()
    for user in users:
        limits = ", ".join(
            f"{key}={user[key]}" for key in ("max_running", "requests_per_minute", "models") if user[key] is not None
        )
        state = "disabled" if user["disabled"] else "enabled"
        click.echo(f"{user['name']:<24} {user['role']:<6} {state:<9} {'sso ' if user['sso'] else ''}{limits}")
    if not users:
        click.echo("no users yet: clawdbot user add NAME --admin")
