"""Users, their server-side sessions and their API keys: the tables (migration 0003) and the queries on them.

Secrets are never stored: a session cookie and an API key are 256 random bits, kept as their SHA-256 (a slow hash
adds nothing to a secret that cannot be guessed, and every request looks one up). Passwords are Argon2id hashes,
made and checked in auth/passwords.py.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

import orjson
from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Integer, String, Table, Text, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..errors import Forbidden
from ..identity import OWNER_ID, Actor, Via
from ..store.database import Database
from ..store.records import ApiKey, Session, User, as_row, new_id, now_ms
from ..store.tables import metadata

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", Text),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("sso", Boolean, nullable=False),
    Column("max_running", Integer),
    Column("requests_per_minute", Integer),
    Column("models", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("last_login_at", BigInteger),
    Column("tokens_per_day", BigInteger),  # quotas of tokens in and out, per UTC day and month (migration 0010)
    Column("tokens_per_month", BigInteger),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger),
)

# One-time setup links' digests: in the database, so that any replica or worker takes the one another printed.
setup_tokens = Table(
    "setup_tokens",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
)
SETUP_TOKEN_DAYS = 7  # a link older than this no longer works (each start prints a new one)

KEY_PREFIX = "cbk_"
# What a name and a password must be, wherever one is given (the page's API and `clawdbot user add`).
NAME = r"^[A-Za-z0-9._@-]{1,64}$"
PASSWORD_CHARS = (8, 1024)


def name_problem(name: str) -> str | None:
    return None if re.fullmatch(NAME, name) else f"{name!r} is not a name: 1–64 letters, digits or ._@-"


def password_problem(password: str) -> str | None:
    low, high = PASSWORD_CHARS
    return None if low <= len(password) <= high else f"the password must have {low} to {high} characters"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


# The built-in owner account before anyone took it over (migration 0003): no one's, listed nowhere.
_UNCLAIMED = (users.c.id == OWNER_ID) & users.c.password_hash.is_(None) & users.c.sso.is_(False)


def unclaimed(user: User) -> bool:
    return user.id == OWNER_ID and user.password_hash is None and not user.sso


def allowed_models(user: User) -> list[str] | None:
    """The models the user may use; None: every model."""
    return orjson.loads(user.models) if user.models else None  # stored as JSON


def actor(user: User, via: Via, session: Session | None = None, key: str | None = None) -> Actor:
    return Actor(
        user.id,
        user.name,
        user.role,
        via,
        queue=user.id,
        max_running=user.max_running,
        requests_per_minute=user.requests_per_minute,
        tokens_per_day=user.tokens_per_day,
        tokens_per_month=user.tokens_per_month,
        models=None if (allowed := allowed_models(user)) is None else tuple(allowed),
        session=session.id if session else None,
        csrf_token=session.csrf_token if session else None,
        key=key,
        expires_at=session.expires_at if session else None,
    )


class Accounts:
    def __init__(self, db: Database) -> None:
        self.read, self.write = db.read, db.write

    # ---- users ---------------------------------------------------------------------------------------------
    async def has_admin(self) -> bool:
        """Whether someone can administer: an enabled admin who can sign in (a password, or single sign-on)."""
        claimed = (users.c.password_hash.is_not(None)) | users.c.sso.is_(True)
        query = select(users.c.id).where(users.c.role == "admin", users.c.disabled.is_(False), claimed).limit(1)
        return await self.read(lambda conn: conn.execute(query).first() is not None)

    async def create_user(self, name: str, password_hash: str | None, *, role: str = "user", sso: bool = False) -> User:
        """A new user; the first admin instead takes over the owner account (and the conversations made before
        accounts). IntegrityError when the name is taken."""
        made = User(new_id(), name, password_hash, role, False, sso, None, None, None, now_ms(), None)

        def query(conn: Connection) -> User:
            if role == "admin" and password_hash is not None:
                claimed = conn.execute(
                    update(users).where(_UNCLAIMED).values(name=name, password_hash=password_hash, disabled=False)
                ).rowcount
                owner = _one(conn, OWNER_ID) if claimed else None
                if owner is not None:
                    return owner
            conn.execute(users.insert().values(**as_row(made)))
            return made

        return await self.write(query)

    async def get_user(self, user_id: str) -> User | None:
        return await self.read(lambda conn: _one(conn, user_id))

    async def user_by_name(self, name: str) -> User | None:
        def query(conn: Connection) -> User | None:
            found = conn.execute(select(users).where(users.c.name == name)).first()
            return User(*found) if found else None

        return await self.read(query)

    async def list_users(self) -> list[User]:
        def query(conn: Connection) -> list[User]:
            listed = select(users).where(~_UNCLAIMED).order_by(users.c.name)
            return [User(*row) for row in conn.execute(listed)]

        return await self.read(query)

    async def update_user(self, user_id: str, **fields: Any) -> User | None:
        """Change a user. A disabled user's sessions stay, answering "disabled" (so their open page can say why),
        and end when the user is enabled again: enabling never revives a session from before."""
        if "models" in fields and fields["models"] is not None:
            fields["models"] = orjson.dumps(sorted(set(fields["models"]))).decode()

        def query(conn: Connection) -> User | None:
            before = _one(conn, user_id) if fields.get("disabled") is False else None
            conn.execute(update(users).where(users.c.id == user_id).values(**fields))
            if fields.get("disabled") is False and before is not None and before.disabled:
                conn.execute(delete(sessions).where(sessions.c.user_id == user_id))
            return _one(conn, user_id)

        return await self.write(query)

    async def sso_user(self, name: str) -> User:
        """The user a trusted proxy names, created (role user) the first time it names them."""
        found = await self.user_by_name(name)
        if found is not None and unclaimed(found):  # the built-in owner is an admin: only setup may claim it
            raise Forbidden(f"the name {name!r} is reserved until the first admin is set up", "reserved_name")
        if found is not None:
            return found
        try:
            return await self.create_user(name, None, sso=True)
        except IntegrityError:  # created by a concurrent request a moment ago: read theirs
            again = await self.user_by_name(name)
            if again is None:
                raise
            return again

    # ---- sessions ------------------------------------------------------------------------------------------
    async def start_session(self, user_id: str, lifetime_s: float) -> tuple[str, Session]:
        """A new session: the cookie's token (given out once) and the stored session."""
        token, stamp = secrets.token_urlsafe(32), now_ms()
        made = Session(digest(token), user_id, secrets.token_urlsafe(32), stamp, stamp + int(lifetime_s * 1000))

        def query(conn: Connection) -> None:
            conn.execute(sessions.delete().where(sessions.c.expires_at < stamp))  # sweep the expired ones
            conn.execute(sessions.insert().values(**as_row(made)))
            conn.execute(update(users).where(users.c.id == user_id).values(last_login_at=stamp))

        await self.write(query)
        return token, made

    async def session(self, session_id: str) -> tuple[Session, User] | None:
        """The unexpired session with this id (the digest of its cookie token) and its user, who may be disabled."""
        stamp = now_ms()

        def query(conn: Connection) -> tuple[Session, User] | None:
            found = conn.execute(select(sessions).where(sessions.c.id == session_id)).first()
            if found is None or found.expires_at <= stamp:
                return None
            user = _one(conn, found.user_id)
            return (Session(*found), user) if user else None

        return await self.read(query)

    async def end_sessions(self, user_id: str, *, only: str | None = None, keep: str | None = None) -> None:
        """Delete the user's session `only`, or all of them but `keep`."""
        where = sessions.c.user_id == user_id
        if only is not None:
            where &= sessions.c.id == only
        if keep is not None:
            where &= sessions.c.id != keep

        def query(conn: Connection) -> None:
            conn.execute(delete(sessions).where(where))

        await self.write(query)

    # ---- API keys ------------------------------------------------------------------------------------------
    async def create_key(self, user_id: str, name: str) -> tuple[str, ApiKey]:
        """A new key: its secret (given out once) and the stored key."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        made = ApiKey(new_id(), user_id, name, secret[: len(KEY_PREFIX) + 6], digest(secret), now_ms(), None)

        def query(conn: Connection) -> None:
            conn.execute(api_keys.insert().values(**as_row(made)))

        await self.write(query)
        return secret, made

    async def keys(self, user_id: str) -> list[ApiKey]:
        query = select(api_keys).where(api_keys.c.user_id == user_id).order_by(api_keys.c.created_at)
        return await self.read(lambda conn: [ApiKey(*row) for row in conn.execute(query)])

    async def add_setup_token(self, token_digest: str) -> None:
        """Keep a setup link's digest (and forget links past SETUP_TOKEN_DAYS)."""
        now = now_ms()

        def query(conn: Connection) -> None:
            conn.execute(delete(setup_tokens).where(setup_tokens.c.created_at < now - SETUP_TOKEN_DAYS * 86_400_000))
            conn.execute(setup_tokens.insert().values(digest=token_digest, created_at=now))

        await self.write(query)

    async def take_setup_token(self, token_digest: str) -> bool:
        """Use a setup link up: True for the one request that finds it (whichever process printed it)."""
        horizon = now_ms() - SETUP_TOKEN_DAYS * 86_400_000
        mine = (setup_tokens.c.digest == token_digest) & (setup_tokens.c.created_at >= horizon)
        return await self.write(lambda conn: bool(conn.execute(delete(setup_tokens).where(mine)).rowcount))

    async def revoke_key(self, user_id: str, key_id: str) -> bool:
        """Delete one of the user's keys; False if the user has no such key."""

        def query(conn: Connection) -> bool:
            mine = (api_keys.c.id == key_id) & (api_keys.c.user_id == user_id)
            return bool(conn.execute(delete(api_keys).where(mine)).rowcount)

        return await self.write(query)

    async def key_user(self, secret_hash: str) -> tuple[ApiKey, User] | None:
        """The key with this secret's digest, and its enabled user."""

        def query(conn: Connection) -> tuple[ApiKey, User] | None:
            found = conn.execute(select(api_keys).where(api_keys.c.secret_hash == secret_hash)).first()
            if found is None:
                return None
            user = _one(conn, found.user_id)
            return (ApiKey(*found), user) if user and not user.disabled else None

        return await self.read(query)

    async def touch_key(self, key_id: str) -> None:
        def query(conn: Connection) -> None:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now_ms()))

        await self.write(query)


def _one(conn: Connection, user_id: str) -> User | None:
    found = conn.execute(select(users).where(users.c.id == user_id)).first()
    return User(*found) if found else None
