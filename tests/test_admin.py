"""The admin's user management over HTTP: listing, creating, disabling (which stops the user's sessions, keys and
open sockets at once), and per-user limits the admission control enforces: generations at once, generations per
minute, and which models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from accounts_support import PASSWORD, Gateway, accounts_gateway, bearer, close_clients, new_key, sign_in
from chat_support import ChatApi, wait_until
from conftest import Server, script, start_simulator

SMALL = "qwen3:0.6b"


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    """Two models, so that a user can be limited to one of them."""
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--models", "qwen3:32b", "--models", SMALL)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(simulator: Server) -> Iterator[Gateway]:
    gateway = accounts_gateway(simulator.url)
    gateway.add_user("root", admin=True)
    yield gateway
    close_clients()
    gateway.stop()


@pytest.fixture
def root(site: Gateway) -> httpx.Client:
    return sign_in(site.url, "root")


def _new_user(root: httpx.Client, name: str, **limits: Any) -> tuple[str, str]:
    """A user made by the admin, with limits; their id and an API key of theirs."""
    made = root.post("/chat/api/users", json={"name": name, "password": PASSWORD})
    assert made.status_code == 201, made.text
    user_id: str = made.json()["user"]["id"]
    if limits:
        changed = root.patch(f"/chat/api/users/{user_id}", json=limits)
        assert changed.status_code == 200, changed.text
        for key, value in limits.items():
            assert changed.json()["user"][key] == value
    return user_id, new_key(sign_in(str(root.base_url), name))


def test_the_admin_lists_and_creates_users_and_names_are_unique(root: httpx.Client) -> None:
    _new_user(root, "listed")
    again = root.post("/chat/api/users", json={"name": "LISTED", "password": PASSWORD})
    assert (again.status_code, again.json()["code"]) == (409, "name_taken")
    users = root.get("/chat/api/users").json()["users"]
    assert {"root", "listed"} <= {u["name"] for u in users}
    assert all("password_hash" not in u for u in users)
    short = root.post("/chat/api/users", json={"name": "x", "password": "short"})
    assert short.status_code == 400


def test_an_empty_change_changes_nothing(root: httpx.Client) -> None:
    user_id, _ = _new_user(root, "unchanged", max_running=2)
    for empty in ({}, {"password": None}):
        answer = root.patch(f"/chat/api/users/{user_id}", json=empty)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["user"]["name"], answer.json()["user"]["max_running"]) == ("unchanged", 2)


def test_an_admin_cannot_lock_themselves_out(root: httpx.Client) -> None:
    me = root.get("/chat/api/session").json()["user"]["id"]
    assert root.patch(f"/chat/api/users/{me}", json={"disabled": True}).status_code == 400
    assert root.patch(f"/chat/api/users/{me}", json={"role": "user"}).status_code == 400


def test_disabling_a_user_stops_their_sessions_keys_and_sockets_at_once(site: Gateway, root: httpx.Client) -> None:
    user_id, key = _new_user(root, "leaver")
    session = sign_in(site.url, "leaver")
    session_cookie = session.cookies["clawdbot_session"]

    async def run() -> tuple[int | None, int]:
        async with (
            aiohttp.ClientSession(cookies=dict(session.cookies)) as http,
            http.ws_connect(f"{site.url}/chat/api/ws") as ws,
        ):
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
            changed = await asyncio.to_thread(root.patch, f"/chat/api/users/{user_id}", json={"disabled": True})
            while (message := await ws.receive(5)).type == aiohttp.WSMsgType.TEXT:
                pass  # heartbeats, until the close
            assert message.type == aiohttp.WSMsgType.CLOSE
            return message.data, changed.status_code

    code, status = asyncio.run(run())  # the close frame's code
    assert (status, code) == (200, 1008)
    assert httpx.get(f"{site.url}/api/tags", headers=bearer(key)).status_code == 401
    for path in ("/chat/api/conversations", "/chat/api/session"):  # the open page learns why it was signed out
        answer = session.get(path)
        assert (answer.status_code, answer.json()["code"]) == (403, "disabled"), path
    refused = httpx.post(f"{site.url}/chat/api/session", json={"name": "leaver", "password": PASSWORD})
    assert (refused.status_code, refused.json()["code"]) == (403, "disabled")
    _new_user(root, "colleague")  # someone else signs in on the same browser, its stale cookie notwithstanding
    other = session.post("/chat/api/session", json={"name": "colleague", "password": PASSWORD})
    assert other.status_code == 200, other.text

    assert root.patch(f"/chat/api/users/{user_id}", json={"disabled": False}).status_code == 200
    assert httpx.get(f"{site.url}/api/tags", headers=bearer(key)).status_code == 200
    stale = httpx.get(f"{site.url}/chat/api/session", cookies={"clawdbot_session": session_cookie})
    assert stale.status_code == 401  # enabling again does not revive a session from before
    sign_in(site.url, "leaver")


def test_a_password_reset_by_the_admin_signs_the_user_out(site: Gateway, root: httpx.Client) -> None:
    user_id, _ = _new_user(root, "forgetful")
    session = sign_in(site.url, "forgetful")
    assert root.patch(f"/chat/api/users/{user_id}", json={"password": "brand new secret"}).status_code == 200
    assert session.get("/chat/api/conversations").status_code == 401
    sign_in(site.url, "forgetful", "brand new secret")


def test_generations_at_once_are_capped_per_user_while_others_go_on(
    site: Gateway, root: httpx.Client, simulator: Server
) -> None:
    _, capped_key = _new_user(root, "capped", max_running=1)
    _, free_key = _new_user(root, "free")
    script(
        simulator,
        {"match": "hold", "reply": "held " * 20, "fault": {"kind": "stall", "after": 1, "seconds": 2}, "times": -1},
    )
    capped, free = ChatApi(site.url, bearer(capped_key)), ChatApi(site.url, bearer(free_key))
    try:
        first = capped.send(capped.create()["id"], "hold one")["reply"]["id"]
        second = capped.send(capped.create()["id"], "hold two")["reply"]["id"]
        other = free.send(free.create()["id"], "hold three")["reply"]["id"]

        def state(api: ChatApi, reply_id: str) -> dict[str, Any]:
            found: dict[str, Any] = api.http.get(f"/generations/{reply_id}").json()["generation"]
            return found

        wait_until(lambda: state(capped, first)["snapshot"]["status"] != "waiting", "the first reply to start")
        assert state(capped, second)["queue_position"] == 1  # a free slot, but not for this user
        wait_until(lambda: state(free, other)["snapshot"]["status"] != "waiting", "another user's reply to start")
        assert state(capped, second)["queue_position"] == 1
        wait_until(lambda: not state(capped, second)["live"], "the second reply to end", timeout=15)
        assert state(capped, second)["snapshot"]["status"] == "done"
    finally:
        capped.close()
        free.close()


def test_generations_per_minute_are_capped_per_user_across_the_page_and_the_raw_api(
    site: Gateway, root: httpx.Client
) -> None:
    _, key = _new_user(root, "metered", requests_per_minute=3)
    api = ChatApi(site.url, bearer(key))
    try:
        conversation = api.create()["id"]
        api.turn(conversation, "one")
        api.turn(conversation, "two")
        raw = httpx.post(
            f"{site.url}/api/chat",
            headers=bearer(key),
            json={"model": "qwen3:32b", "messages": [{"role": "user", "content": "three"}], "stream": False},
        )
        assert raw.status_code == 200
        refused = api.http.post(f"/conversations/{conversation}/messages", json={"content": "four"})
        assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert len(api.view(conversation)["messages"]) == 4  # the refused message was not stored
        started = time.monotonic()
        raw_refused = httpx.post(f"{site.url}/v1/chat/completions", headers=bearer(key), json={"model": "qwen3:32b"})
        assert raw_refused.status_code == 429
        assert time.monotonic() - started < 5
    finally:
        api.close()


def test_a_user_limited_to_some_models_sees_and_uses_only_those(site: Gateway, root: httpx.Client) -> None:
    _, key = _new_user(root, "small", models=[SMALL])
    api = ChatApi(site.url, bearer(key))
    try:
        listed = api.http.get("/models").json()
        assert [m["name"] for m in listed["models"]] == [SMALL]
        assert listed["default"] == SMALL
        conversation = api.create()
        assert conversation["model"] == SMALL
        assert api.turn(conversation["id"], "hi")["status"] == "done"
        denied = api.http.post("/conversations", json={"model": "qwen3:32b"})
        assert (denied.status_code, denied.json()["code"]) == (403, "model_not_allowed")
        switched = api.http.patch(f"/conversations/{conversation['id']}", json={"model": "qwen3:32b"})
        assert switched.status_code == 403
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
        raw = httpx.post(f"{site.url}/api/chat", headers=bearer(key), json={**body, "model": "qwen3:32b"})
        assert (raw.status_code, raw.json()["code"]) == (403, "model_not_allowed")
        assert httpx.post(f"{site.url}/api/chat", headers=bearer(key), json={**body, "model": SMALL}).status_code == 200
        for spelling in ("Model", "MODEL", "name"):  # Go's encoding/json, which Ollama reads with, takes them all
            sneaky = httpx.post(f"{site.url}/api/chat", headers=bearer(key), json={**body, spelling: "qwen3:32b"})
            assert sneaky.status_code == 403, spelling
        openai_style = httpx.get(f"{site.url}/v1/models/qwen3:32b", headers=bearer(key))
        assert openai_style.status_code == 403
        tags = httpx.get(f"{site.url}/api/tags", headers=bearer(key)).json()["models"]
        assert [m["name"] for m in tags] == [SMALL]
        assert [m["id"] for m in httpx.get(f"{site.url}/v1/models", headers=bearer(key)).json()["data"]] == [SMALL]
    finally:
        api.close()
