"""The accounts API under /chat/api/: sign-in and sessions, first-admin setup, passwords, API keys, and the admin's
user management (docs/accounts.md)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy.exc import IntegrityError

from ..auth.accounts import NAME, PASSWORD_CHARS, Accounts, unclaimed
from ..auth.service import disabled
from ..auth.state import Ended
from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..identity import Actor
from .authenticate import AUTH, GATE, PUBLIC, SESSION_COOKIE, current
from .http import Strict, json, parse
from .shapes import public_key, public_user

ACCOUNTS: web.AppKey[Accounts] = web.AppKey("accounts", Accounts)
Name = Annotated[str, Field(pattern=NAME)]
Password = Annotated[str, Field(min_length=PASSWORD_CHARS[0], max_length=PASSWORD_CHARS[1])]
_MAX_KEYS = 100


class SignIn(Strict):
    name: str = Field(max_length=64)
    password: str = Field(max_length=PASSWORD_CHARS[1])


class Setup(Strict):
    token: str = Field(max_length=200)
    name: Name
    password: Password


class PasswordChange(Strict):
    current: str = Field(max_length=PASSWORD_CHARS[1])
    new: Password


class NewKey(Strict):
    name: str = Field(min_length=1, max_length=100)


class NewUser(Strict):
    name: Name
    password: Password
    role: Literal["admin", "user"] = "user"


class UserChange(Strict):
    disabled: bool | None = None
    role: Literal["admin", "user"] | None = None
    max_running: int | None = Field(None, ge=1, le=10_000)
    requests_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    tokens_per_day: int | None = Field(None, ge=1, le=10**15)
    tokens_per_month: int | None = Field(None, ge=1, le=10**15)
    models: list[str] | None = Field(None, max_length=200)
    password: Password | None = None


def routes(app: web.Application) -> None:
    app[PUBLIC].routes.update(
        [("GET", "/chat/api/session"), ("POST", "/chat/api/session"), ("POST", "/chat/api/setup")]
    )
    r = app.router
    r.add_get("/chat/api/session", session_state, allow_head=False)
    r.add_post("/chat/api/session", sign_in)
    r.add_delete("/chat/api/session", sign_out)
    r.add_post("/chat/api/setup", setup)
    r.add_post("/chat/api/password", change_password)
    r.add_get("/chat/api/keys", list_keys, allow_head=False)
    r.add_post("/chat/api/keys", create_key)
    r.add_delete("/chat/api/keys/{id}", revoke_key)
    r.add_get("/chat/api/users", list_users, allow_head=False)
    r.add_post("/chat/api/users", create_user)
    r.add_patch("/chat/api/users/{id}", change_user)


# ---- sessions ------------------------------------------------------------------------------------------------
async def session_state(request: web.Request) -> web.Response:
    actor: Actor | None = request.get("actor")
    if actor is None:
        if request.get("disabled"):
            raise disabled()
        setup = not await request.app[ACCOUNTS].has_admin()
        return json({"error": "not signed in", "code": "unauthenticated", "setup": setup}, 401)
    user = await request.app[ACCOUNTS].get_user(actor.id)
    if user is None:  # cannot happen for a user the middleware found a moment ago, unless deleted since
        raise NotFound("this account no longer exists")
    return json({"user": public_user(user), "csrf_token": actor.csrf_token, "via": actor.via})


async def sign_in(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    if not auth.enabled:
        raise BadRequest("accounts are off (--no-auth): there is nothing to sign in to")
    given = await parse(request, SignIn)
    address = request.app[GATE].proxies.client(request)
    token, session, user = await auth.sign_in(given.name.strip().lower(), given.password, address)
    response = json({"user": public_user(user), "csrf_token": session.csrf_token})
    _set_cookie(request, response, token)
    return response


async def sign_out(request: web.Request) -> web.Response:
    actor = current(request)
    if actor.session is not None:
        await request.app[ACCOUNTS].end_sessions(actor.id, only=actor.session)
        await request.app[AUTH].forget(actor.id, Ended(session=actor.session))
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def setup(request: web.Request) -> web.Response:
    """The first admin, from the one-time link printed at startup; signed in at once."""
    auth, accounts = request.app[AUTH], request.app[ACCOUNTS]
    given = await parse(request, Setup)
    await auth.take_setup_token(given.token)  # used up now, so two requests with it cannot both make an admin
    try:
        if await accounts.has_admin():
            raise Forbidden("an admin exists already; sign in", "setup_closed")
        user = await accounts.create_user(given.name.lower(), await auth.passwords.hash(given.password), role="admin")
    except BaseException:
        await asyncio.shield(auth.give_back_setup_token(given.token))
        raise
    token, session = await accounts.start_session(user.id, auth.settings.session_hours * 3600)
    response = json({"user": public_user(user), "csrf_token": session.csrf_token}, 201)
    _set_cookie(request, response, token)
    return response


async def change_password(request: web.Request) -> web.Response:
    auth, accounts, actor = request.app[AUTH], request.app[ACCOUNTS], current(request)
    given = await parse(request, PasswordChange)
    user = await accounts.get_user(actor.id)
    if user is None or not await auth.passwords.check(user.password_hash, given.current):
        raise Forbidden("the current password is wrong", "bad_credentials")
    await accounts.update_user(actor.id, password_hash=await auth.passwords.hash(given.new))
    await accounts.end_sessions(actor.id, keep=actor.session)  # whoever knew the old password is signed out
    await auth.forget(actor.id, Ended(via="session", but_session=actor.session))
    return web.Response(status=204)


def _set_cookie(request: web.Request, response: web.Response, token: str) -> None:
    auth = request.app[AUTH]
    forwarded = request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    forwarded_tls = forwarded and request.app[GATE].proxies.trusted(request.remote or "")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(auth.settings.session_hours * 3600),
        path="/",
        httponly=True,  # no script, even one that got in, can read it
        samesite="Lax",
        secure=request.secure or forwarded_tls,
    )


# ---- API keys ------------------------------------------------------------------------------------------------
async def list_keys(request: web.Request) -> web.Response:
    return json({"keys": [public_key(key) for key in await request.app[ACCOUNTS].keys(current(request).id)]})


async def create_key(request: web.Request) -> web.Response:
    accounts, actor = request.app[ACCOUNTS], current(request)
    given = await parse(request, NewKey)
    if len(await accounts.keys(actor.id)) >= _MAX_KEYS:
        raise BadRequest(f"you have {_MAX_KEYS} keys already; revoke one first")
    secret, key = await accounts.create_key(actor.id, given.name.strip() or "key")
    return json({"key": public_key(key), "secret": secret}, 201)


async def revoke_key(request: web.Request) -> web.Response:
    actor = current(request)
    key_id = request.match_info["id"]
    if not await request.app[ACCOUNTS].revoke_key(actor.id, key_id):
        raise NotFound(f"you have no key {key_id}")
    await request.app[AUTH].forget(actor.id, Ended(key=key_id))
    return web.Response(status=204)


# ---- the admin's -------------------------------------------------------------------------------------------
def _admin(request: web.Request) -> Actor:
    actor = current(request)
    if not actor.admin:
        raise Forbidden("only an admin may manage users")
    return actor


async def list_users(request: web.Request) -> web.Response:
    _admin(request)
    return json({"users": [public_user(user) for user in await request.app[ACCOUNTS].list_users()]})


async def create_user(request: web.Request) -> web.Response:
    _admin(request)
    given = await parse(request, NewUser)
    auth, accounts = request.app[AUTH], request.app[ACCOUNTS]
    name = given.name.lower()
    if await accounts.user_by_name(name) is not None:
        raise _taken(name)
    try:
        user = await accounts.create_user(name, await auth.passwords.hash(given.password), role=given.role)
    except IntegrityError:
        raise _taken(name) from None
    return json({"user": public_user(user)}, 201)


async def change_user(request: web.Request) -> web.Response:
    admin = _admin(request)
    auth, accounts = request.app[AUTH], request.app[ACCOUNTS]
    user_id = request.match_info["id"]
    change: dict[str, Any] = (await parse(request, UserChange)).model_dump(exclude_unset=True)
    found = await accounts.get_user(user_id) if len(user_id) <= 36 else None
    if found is None or unclaimed(found):
        raise NotFound(f"no user {user_id}")
    if user_id == admin.id and (change.get("disabled") or change.get("role") == "user"):
        raise BadRequest("you cannot disable yourself or take away your own admin role")
    for key in ("disabled", "role"):
        if key in change and change[key] is None:
            raise BadRequest(f"invalid request: {key}: may not be null")
    if change.get("password") is not None:
        change["password_hash"] = await auth.passwords.hash(change.pop("password"))
    change.pop("password", None)
    if not change:  # nothing to change ({} or only a null password): the user as they are
        return json({"user": public_user(found)})
    user = await accounts.update_user(user_id, **change)
    if change.get("disabled"):
        await auth.forget(user_id, Ended())
    elif "password_hash" in change:
        await accounts.end_sessions(user_id)
        await auth.forget(user_id, Ended(via="session"))
    else:
        await auth.forget(user_id)  # new limits, role or models: their sockets reconnect with them
    return json({"user": public_user(user) if user else {"models": None}})  # gone meanwhile: as it always was


def _taken(name: str) -> Conflict:
    error = Conflict(f"there is a user {name} already")
    error.code = "name_taken"
    return error
