"""Every route, tried as nobody and as another user: the table below names each one the app has (a new route
fails `test_every_route_is_in_the_table` until it is placed), and each id-addressed route is tried with another
user's ids — REST, WebSocket commands (resume and stop included) and both event streams — while the reply is in
the event log and again after a restart, when only the database knows it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from accounts_support import Gateway, accounts_gateway, bearer, close_clients, new_key, sign_in
from chat_support import ChatApi, Socket
from clawdbot.settings import Settings
from clawdbot.web.app import create_app
from conftest import Server, start_gateway

PUBLIC = "public"  # anyone: health, metrics, the document, the page and its assets, sign-in and setup
SIGNED_IN = "signed in"  # any user; nothing of anyone else's is addressed
OWN = "own"  # addresses something by id: only its owner's ids work
ADMIN = "admin"
RAW = "raw"  # the passthrough: a key

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("HEAD", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("HEAD", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("*", "/api/{tail}"): RAW,
    ("*", "/v1/{tail}"): RAW,
    ("GET", "/chat/api/models"): SIGNED_IN,
    ("GET", "/chat/api/conversations"): SIGNED_IN,
    ("POST", "/chat/api/conversations"): SIGNED_IN,
    ("GET", "/chat/api/conversations/{id}"): OWN,
    ("PATCH", "/chat/api/conversations/{id}"): OWN,
    ("DELETE", "/chat/api/conversations/{id}"): OWN,
    ("GET", "/chat/api/conversations/{id}/export"): OWN,
    ("POST", "/chat/api/conversations/{id}/messages"): OWN,
    ("POST", "/chat/api/conversations/{id}/regenerate"): OWN,
    ("POST", "/chat/api/conversations/{id}/edit"): OWN,
    ("POST", "/chat/api/conversations/{id}/continue"): OWN,
    ("POST", "/chat/api/conversations/{id}/versions"): OWN,
    ("POST", "/chat/api/conversations/{id}/stop"): OWN,
    ("GET", "/chat/api/conversations/{id}/events"): OWN,
    ("GET", "/chat/api/generations/{id}"): OWN,
    ("GET", "/chat/api/generations/{id}/events"): OWN,
    ("GET", "/chat/api/search"): SIGNED_IN,
    ("GET", "/chat/api/usage"): SIGNED_IN,
    ("GET", "/chat/api/session"): PUBLIC,
    ("POST", "/chat/api/session"): PUBLIC,
    ("DELETE", "/chat/api/session"): SIGNED_IN,
    ("POST", "/chat/api/setup"): PUBLIC,
    ("POST", "/chat/api/password"): SIGNED_IN,
    ("GET", "/chat/api/keys"): SIGNED_IN,
    ("POST", "/chat/api/keys"): SIGNED_IN,
    ("DELETE", "/chat/api/keys/{id}"): OWN,
    ("GET", "/chat/api/users"): ADMIN,
    ("POST", "/chat/api/users"): ADMIN,
    ("PATCH", "/chat/api/users/{id}"): ADMIN,
    ("GET", "/chat/api/admin/settings"): ADMIN,
    ("GET", "/chat/api/admin/usage"): ADMIN,
    ("GET", "/chat/api/admin/monitor"): ADMIN,
    ("GET", "/chat/api/admin/monitor/events"): ADMIN,
    ("PATCH", "/chat/api/admin/settings"): ADMIN,
    ("GET", "/chat/api/admin/backends"): ADMIN,
    ("PATCH", "/chat/api/admin/backends/{name}"): ADMIN,
    ("GET", "/chat/api/ws"): SIGNED_IN,
    **{
        (method, page): PUBLIC
        for page in ("/", "/chat", "/chat/", "/chat/login", "/chat/setup", "/chat/admin")
        for method in ("GET", "HEAD")
    },
    ("GET", "/chat/assets/{name}"): PUBLIC,
    ("HEAD", "/chat/assets/{name}"): PUBLIC,
}


def test_every_route_is_in_the_table() -> None:
    app = create_app(Settings())
    routed = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        routed.add((route.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}", info.get("path") or info.get("formatter", ""))))
    assert routed == set(ROUTES), f"unplaced: {routed - set(ROUTES)}; gone: {set(ROUTES) - routed}"


# ---- the world the tests look at ----------------------------------------------------------------------------
class World:
    """Ana's conversation with a finished reply, Ana's key; Bo as the other user, and an admin."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ana_key = new_key(sign_in(gateway.url, "ana"))
        self.bo_key = new_key(sign_in(gateway.url, "bo"))
        self.ana = ChatApi(gateway.url, bearer(self.ana_key))
        self.conversation = self.ana.create(title="ana's secret plans")["id"]
        self.reply = self.ana.turn(self.conversation, "the word is zanzibar")["id"]
        self.key_id = sign_in(gateway.url, "ana").get("/chat/api/keys").json()["keys"][0]["id"]
        bo = sign_in(gateway.url, "bo")
        self.bo_id = bo.get("/chat/api/session").json()["user"]["id"]
        # Bo's other way in: the page's session cookie, with its CSRF token (both credential paths get one check)
        self.bo_cookie = {
            "Cookie": f"clawdbot_session={bo.cookies['clawdbot_session']}",
            "X-CSRF-Token": bo.headers["X-CSRF-Token"],
        }

    def url(self, path: str) -> str:
        ids = {"/chat/api/generations/{id}": self.reply, "/chat/api/keys/{id}": self.key_id}
        ids["/chat/api/users/{id}"] = self.bo_id
        found = next((value for prefix, value in ids.items() if path.startswith(prefix)), self.conversation)
        if path.startswith("/chat/api/admin/backends/"):  # a backend that exists: a refusal must not drain it
            return self.gateway.url + path.replace("{name}", self.backend())
        return self.gateway.url + path.replace("{id}", found).replace("{tail}", "tags").replace("{name}", "x.js")

    def backend(self) -> str:
        return str(httpx.get(self.gateway.url + "/readyz").json()["backends"][0]["name"])

    def untouched(self) -> None:
        view = self.ana.view(self.conversation)
        assert view["conversation"]["title"] == "ana's secret plans"
        assert [m["role"] for m in view["messages"]] == ["user", "assistant"]
        assert view["messages"][1]["id"] == self.reply
        assert view["active"] is None
        assert httpx.get(f"{self.gateway.url}/api/tags", headers=bearer(self.ana_key)).status_code == 200


@pytest.fixture(scope="module")
def world(simulator: Server) -> Iterator[World]:
    gateway = accounts_gateway(simulator.url, "--heartbeat", "0.5")
    for name in ("ana", "bo"):
        gateway.add_user(name)
    gateway.add_user("root", admin=True)
    found = World(gateway)
    yield found
    found.ana.close()
    close_clients()
    gateway.stop()


BODIES: dict[str, Any] = {"messages": {"content": "hijack"}, "edit": {"content": "hijack"}}
BODIES["conversations/{id}"] = {"title": "pwned"}
BODIES["versions"] = {"message_id": "{reply}"}  # Ana's own reply: only the conversation is someone else's
BODIES["admin/settings"] = {"model_titles": True, "num_ctx": {"qwen3:32b": 256}}
BODIES["admin/backends/{name}"] = {"draining": True}


def _body(path: str, world: World) -> Any:
    body = next((body for suffix, body in BODIES.items() if path.endswith(suffix)), {})
    return {
        key: value.replace("{reply}", world.reply) if isinstance(value, str) else value for key, value in body.items()
    }


def _http(world: World, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method in ("GET", "HEAD", "DELETE"):
        return httpx.request(method, world.url(path), headers=headers, timeout=10)
    return httpx.request(method, world.url(path), headers=headers, json=_body(path, world), timeout=10)


STREAMS = {"/chat/api/ws", "/chat/api/conversations/{id}/events", "/chat/api/generations/{id}/events"}


@pytest.mark.parametrize(("method", "path"), [key for key, kind in ROUTES.items() if kind != PUBLIC])
def test_nobody_gets_401_and_changes_nothing(world: World, method: str, path: str) -> None:
    if method == "*":
        for verb in ("GET", "POST"):
            assert _http(world, verb, path, {}).status_code == 401
        return
    answer = _http(world, method, path, {})
    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "unauthenticated"
    world.untouched()


@pytest.mark.parametrize("way", ["key", "cookie"])
@pytest.mark.parametrize(("method", "path"), [key for key, kind in ROUTES.items() if kind == OWN])
def test_another_user_gets_404_and_changes_nothing(world: World, method: str, path: str, way: str) -> None:
    answer = _http(world, method, path, bearer(world.bo_key) if way == "key" else world.bo_cookie)
    assert answer.status_code == 404, answer.text  # as if it did not exist: ids are not confirmed to others
    assert "zanzibar" not in answer.text
    world.untouched()


@pytest.mark.parametrize(("method", "path"), [key for key, kind in ROUTES.items() if kind == ADMIN])
def test_a_user_is_not_an_admin(world: World, method: str, path: str) -> None:
    answer = _http(world, method, path, bearer(world.bo_key))
    assert answer.status_code == 403
    root = bearer(new_key(sign_in(world.gateway.url, "root")))
    users = httpx.get(world.gateway.url + "/chat/api/users", headers=root)
    assert {u["name"] for u in users.json()["users"]} >= {"ana", "bo", "root"}
    platform = httpx.get(world.gateway.url + "/chat/api/admin/settings", headers=root).json()
    assert not platform["settings"]["model_titles"]["saved"]
    assert not any(model["saved"] for model in platform["models"])
    assert [b["state"] for b in httpx.get(world.gateway.url + "/readyz").json()["backends"]] == ["healthy"]


def test_lists_and_search_show_only_ones_own(world: World) -> None:
    bo = ChatApi(world.gateway.url, bearer(world.bo_key))
    try:
        assert bo.http.get("/conversations").json()["conversations"] == []
        assert bo.search("zanzibar") == []
        assert bo.search("secret plans") == []
    finally:
        bo.close()
    assert [r["conversation"]["id"] for r in world.ana.search("zanzibar")] == [world.conversation]


def test_another_users_message_is_no_version_in_ones_own_conversation(world: World) -> None:
    bo = ChatApi(world.gateway.url, bearer(world.bo_key))
    try:
        own = bo.create()["id"]
        answer = bo.http.post(f"/conversations/{own}/versions", json={"message_id": world.reply})
        assert answer.status_code == 404, answer.text
        assert "zanzibar" not in answer.text
    finally:
        bo.close()
    world.untouched()


def test_websocket_commands_on_another_users_ids_are_not_found(world: World) -> None:
    asyncio.run(_websocket_as_bo(world))
    world.untouched()


async def _websocket_as_bo(world: World) -> None:
    async with (
        aiohttp.ClientSession(headers=bearer(world.bo_key)) as session,
        session.ws_connect(f"{world.gateway.url}/chat/api/ws") as ws,
    ):
        socket = Socket(ws)
        assert (await socket.next())["type"] == "hello"
        for kind, fields in [
            ("subscribe", {"conversation_id": world.conversation}),
            ("send", {"conversation_id": world.conversation, "content": "hijack"}),
            ("regenerate", {"conversation_id": world.conversation}),
            ("edit", {"conversation_id": world.conversation, "content": "hijack"}),
            ("continue", {"conversation_id": world.conversation}),
            ("switch", {"conversation_id": world.conversation, "message_id": world.reply}),
            ("stop", {"conversation_id": world.conversation}),
            ("resume", {"reply_id": world.reply, "from": 1}),
        ]:
            answer = await socket.command(kind, **fields)
            assert (answer["type"], answer["status"]) == ("error", 404), (kind, answer)
        watching = await socket.command("monitor", hours=1)  # the operations view is an admin's
        assert (watching["type"], watching["status"]) == ("error", 403), watching
        await asyncio.sleep(0.3)  # nothing of Ana's arrives afterwards either, and no view
        assert (await socket.command("ping"))["type"] == "pong"
        assert all("zanzibar" not in json.dumps(e) for e in socket.seen)
        assert all(e["type"] != "monitor" for e in socket.seen)


def test_after_a_restart_only_the_database_knows_the_reply_and_still_only_for_its_owner(
    world: World, simulator: Server
) -> None:
    world.gateway.server.stop()  # the event log is gone; the reply's row stays
    args = world.gateway.server.args
    world.gateway.server = start_gateway(simulator.url, *args[args.index("--auth") :])
    for path in ("/chat/api/generations/{id}", "/chat/api/generations/{id}/events"):
        assert _http(world, "GET", path, bearer(world.bo_key)).status_code == 404
        assert _http(world, "GET", path, {}).status_code == 401
    mine = httpx.get(world.url("/chat/api/generations/{id}"), headers=bearer(world.ana_key)).json()
    assert mine["generation"]["message"]["content"]
    asyncio.run(_resume_as_bo(world))


async def _resume_as_bo(world: World) -> None:
    async with (
        aiohttp.ClientSession(headers=bearer(world.bo_key)) as session,
        session.ws_connect(f"{world.gateway.url}/chat/api/ws") as ws,
    ):
        socket = Socket(ws)
        await socket.next()
        answer = await socket.command("resume", reply_id=world.reply, **{"from": 1})
        assert answer["status"] == 404
