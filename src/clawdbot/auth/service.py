"""Who is asking (docs/accounts.md): sign-in with its throttles, the one-time setup link, and the user behind an
API key, a session or a trusted proxy's name, looked up with a short cache that a change to the user clears. The
throttles and the cache are interfaces (state.py), so that several gateway processes can share them.

The HTTP side (which header or cookie names whom, Origin and CSRF checks) is web/authenticate.py's.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from ..errors import Forbidden, Overloaded, Unauthenticated
from ..identity import Actor
from ..logs import LOG
from ..settings import Settings
from ..store.records import Session, User
from .accounts import Accounts, actor, digest
from .passwords import Passwords
from .state import CredentialCache, Ended, Throttle

_CACHE_S = 5.0  # how long a key's or a session's lookup is reused; a revocation here clears it at once


def disabled() -> Forbidden:
    return Forbidden("this account is disabled; ask an admin", "disabled")


class Auth:
    def __init__(
        self,
        accounts: Accounts,
        settings: Settings,
        *,
        cache: CredentialCache,
        by_account: Throttle,
        by_address: Throttle,
    ) -> None:
        self.accounts, self.settings = accounts, settings
        self.enabled = settings.accounts
        self.passwords = Passwords()
        self.by_account, self.by_address = by_account, by_address  # failed sign-ins per account, per address
        # For /metrics: sign-ins by outcome, and requests refused by why (brute force and probing show here).
        self.sign_ins: dict[str, int] = {"ok": 0, "bad_credentials": 0, "throttled": 0, "disabled": 0}
        self.refused: dict[str, int] = {}
        self.cache = cache
        cache.changed.append(self._changed)
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Told when a user's open connections in this process must end: (user id, which of them, the close code and
        # reason); whichever process made the change.
        self.closing: list[Callable[[str, Ended, tuple[int, bytes]], None]] = []

    async def close(self) -> None:
        """Before the database closes: let the last key-use notes finish."""
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.cache.close()

    async def setup_link_token(self) -> str | None:
        """With accounts on and no admin yet, a new one-time setup token (only its digest is kept)."""
        if not self.enabled or await self.accounts.has_admin():
            return None
        token = secrets.token_urlsafe(32)
        await self.accounts.add_setup_token(digest(token))
        return token

    async def sign_in(self, name: str, password: str, address: str) -> tuple[str, Session, User]:
        """Check a name and password; the new session's token, the session and the user. Failures are throttled per
        account and per address, before the password is even looked at."""
        wait = max(await self.by_account.wait(name), await self.by_address.wait(address))
        if wait > 0:
            self.sign_ins["throttled"] += 1
            raise Overloaded(
                f"too many failed sign-ins; try again in {int(wait) + 1} s",
                retry_after=int(wait) + 1,
                status=429,
                code="too_many_attempts",
            )
        user = await self.accounts.user_by_name(name)
        if not await self.passwords.check(user.password_hash if user else None, password) or user is None:
            self.sign_ins["bad_credentials"] += 1
            await self.by_account.failed(name)
            await self.by_address.failed(address)
            LOG.warning("failed sign-in", extra={"account": name if user else None, "address": address})
            wrong = Unauthenticated("wrong name or password")
            wrong.code = "bad_credentials"
            raise wrong
        if user.disabled:
            self.sign_ins["disabled"] += 1
            raise disabled()
        self.sign_ins["ok"] += 1
        await self.by_account.succeeded(name)
        await self.by_address.succeeded(address)
        token, session = await self.accounts.start_session(user.id, self.settings.session_hours * 3600)
        return token, session, user

    async def take_setup_token(self, token: str) -> None:
        """Use up a setup token: it works once, on whichever process serves the request."""
        if not await self.accounts.take_setup_token(digest(token)):
            if await self.accounts.has_admin():
                raise Forbidden("this gateway is already set up; sign in", "setup_closed")
            raise Forbidden("the setup link is not valid; use the one clawdbot printed at its last start", "bad_token")

    async def give_back_setup_token(self, token: str) -> None:
        """The setup failed after the token was taken: it works again."""
        await self.accounts.add_setup_token(digest(token))

    async def by_key(self, secret: str) -> Actor:
        key_hash = digest(secret)
        found = await self.cache.get(key_hash, lambda: self._key_actor(key_hash))
        if found is None:
            raise Unauthenticated("this API key is not valid: revoked, mistyped, or its user disabled")
        return found

    async def by_session(self, token: str) -> Actor:
        session_hash = digest(token)
        found = await self.cache.get(session_hash, lambda: self._session_actor(session_hash))
        if found is None:
            raise Unauthenticated("the session has ended; sign in again")
        return found

    async def by_sso(self, name: str) -> Actor:
        found = await self.cache.get("sso:" + name, lambda: self._sso_actor(name))
        assert found is not None  # a trusted proxy's name always is someone (made on first sight)
        return found

    async def _key_actor(self, key_hash: str) -> tuple[Actor | None, float]:
        pair = await self.accounts.key_user(key_hash)
        if pair is None:
            return None, time.time() + _CACHE_S
        record, user = pair
        self._touch_key(record.id, time.monotonic())
        return actor(user, "key", key=record.id), time.time() + _CACHE_S

    async def _session_actor(self, session_hash: str) -> tuple[Actor | None, float]:
        pair = await self.accounts.session(session_hash)
        if pair is None:
            return None, time.time() + _CACHE_S
        record, user = pair
        if user.disabled:  # not cached: an admin enabling them again ends this session anyway
            raise disabled()
        return actor(user, "session", session=record), min(time.time() + _CACHE_S, record.expires_at / 1000)

    async def _sso_actor(self, name: str) -> tuple[Actor | None, float]:
        user = await self.accounts.sso_user(name[:64])
        if user.disabled:
            raise disabled()
        return actor(user, "sso"), time.time() + _CACHE_S

    def _touch_key(self, key_id: str, now: float) -> None:
        """Note a key's use at most once a minute, without making its request wait for the write."""
        if now - self._touched.get(key_id, -60.0) < 60.0:
            return
        self._touched[key_id] = now
        task = asyncio.create_task(self.accounts.touch_key(key_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def forget(self, user_id: str, ended: Ended | None = None) -> None:
        """A user changed: drop what was cached, in every gateway process. Their open connections that `ended` names
        (signed out, disabled, revoked) close with 1008; without `ended`, all of them close with 1012 and reconnect
        as the user is now (new limits apply to sockets too)."""
        await self.cache.forget(user_id, ended)

    def _changed(self, user_id: str, ended: Ended | None) -> None:
        why = (1008, b"signed out") if ended is not None else (1012, b"your account changed; reconnect")
        for listener in self.closing:
            listener(user_id, ended or Ended(), why)
