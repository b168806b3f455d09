"""The OpenAPI document in the package matches the routes the app really has, and is served."""

from __future__ import annotations

import asyncio
import json
import re
from importlib import resources

import httpx
import pytest
from aiohttp.test_utils import make_mocked_request

from clawdbot.settings import Settings
from clawdbot.web.app import create_app
from conftest import start_gateway

SPEC = json.loads(resources.files("clawdbot").joinpath("openapi.json").read_text(encoding="utf-8"))
METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def _normal(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _app_routes() -> set[tuple[str, str]]:
    app = create_app(Settings())
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
        routes.add((route.method.lower(), _normal(path)))
    return routes


def test_every_route_is_documented() -> None:
    documented = {(m, _normal(p)) for p, item in SPEC["paths"].items() for m in item if m in METHODS}
    for method, path in _app_routes():
        if method == "*":
            assert any(p == path for _, p in documented), f"{path} (any method) is not in openapi.json"
        else:
            assert (method, path) in documented, f"{method.upper()} {path} is not in openapi.json"


@pytest.mark.parametrize("path", list(SPEC["paths"]))
def test_every_documented_path_is_routed(path: str) -> None:
    app = create_app(Settings())
    concrete = re.sub(r"\{(\w+)\}", r"\1-1", path.replace("{path}", "embed").replace("{model}", "qwen3:32b"))
    for method in (m for m in SPEC["paths"][path] if m in METHODS):
        request = make_mocked_request(method.upper(), concrete, app=app)
        match = asyncio.run(app.router.resolve(request))
        assert match.http_exception is None, f"{method.upper()} {concrete} is documented but not routed"


def test_the_document_is_served() -> None:
    gateway = start_gateway("http://127.0.0.1:9")
    try:
        served = httpx.get(f"{gateway.url}/openapi.json")
    finally:
        gateway.stop()
    assert served.status_code == 200
    assert served.json() == SPEC


CHAT_BODIES = ["NewConversation", "ConversationChange", "NewMessage", "EditedMessage", "ShownVersion"]


@pytest.mark.parametrize("name", CHAT_BODIES)
def test_chat_request_bodies_match_the_validating_models(name: str) -> None:
    from clawdbot.web import chatapi

    model = getattr(chatapi, name)
    documented = SPEC["components"]["schemas"][name]
    assert set(documented["properties"]) == set(model.model_fields)
    assert set(documented.get("required", [])) == {n for n, f in model.model_fields.items() if f.is_required()}
    assert documented.get("additionalProperties") is False


@pytest.mark.parametrize(("name", "table"), [("Conversation", "conversations"), ("Message", "messages")])
def test_chat_objects_match_the_stored_columns(name: str, table: str) -> None:
    from clawdbot.store import conversations as store

    columns = {column.name for column in getattr(store, table).columns}
    assert set(SPEC["components"]["schemas"][name]["properties"]) == columns


@pytest.mark.parametrize(
    ("name", "table", "hidden"),
    [("User", "users", {"password_hash"}), ("ApiKey", "api_keys", {"secret_hash", "user_id"})],
)
def test_account_objects_are_their_columns_less_the_secrets(name: str, table: str, hidden: set[str]) -> None:
    from clawdbot.auth import accounts

    columns = {column.name for column in getattr(accounts, table).columns}
    assert set(SPEC["components"]["schemas"][name]["properties"]) == columns - hidden


@pytest.mark.parametrize("name", ["SignIn", "Setup", "PasswordChange", "NewKey", "NewUser", "UserChange"])
def test_account_request_bodies_match_the_validating_models(name: str) -> None:
    from clawdbot.web import authapi

    model = getattr(authapi, name)
    documented = SPEC["components"]["schemas"][name]
    assert set(documented["properties"]) == set(model.model_fields)
    assert set(documented.get("required", [])) == {n for n, f in model.model_fields.items() if f.is_required()}
