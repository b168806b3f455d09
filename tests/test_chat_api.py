"""The chat page's conversations over plain HTTP: create, list, read, change, delete and export them, with strict
validation (a 400 naming the field, and nothing changed) and JSON 404s for ids that do not exist.

Replies themselves are in test_chat_replies.py; search and the PostgreSQL store in test_store.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chat_support import ChatApi, chat_api
from conftest import Server, script, start_gateway

UUID7 = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = start_gateway(simulator.url)
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server) -> Iterator[ChatApi]:
    with chat_api(gateway.url) as client:
        yield client


def ids(api: ChatApi) -> list[str]:
    response = api.http.get("/conversations")
    assert response.status_code == 200
    return [c["id"] for c in response.json()["conversations"]]


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    for word in words:
        assert word in body["error"], body
    return body


def after(stamp_ms: int) -> None:
    """Let the millisecond clock pass `stamp_ms`, so "most recently active" has a strict order."""
    deadline = time.monotonic() + 1
    while time.time_ns() // 1_000_000 <= stamp_ms and time.monotonic() < deadline:
        time.sleep(0.001)


# ---- create --------------------------------------------------------------------------------------------------------
def test_a_new_conversation_has_the_servers_defaults(api: ChatApi) -> None:
    conversation = api.create()
    assert re.match(UUID7, conversation["id"])
    assert conversation["model"] == "qwen3:32b"  # the first (only) model the backend lists
    assert conversation["title"] == ""
    assert conversation["title_set"] is False
    assert conversation["system_prompt"] == ""
    assert (conversation["temperature"], conversation["num_ctx"], conversation["think"]) == (None, None, None)
    assert conversation["pinned"] is False
    assert conversation["created_at"] == conversation["updated_at"]
    assert abs(conversation["created_at"] - time.time() * 1000) < 60_000


def test_a_new_conversation_keeps_what_it_is_given(api: ChatApi) -> None:
    fields = {
        "model": "qwen3:32b",
        "title": "Trip planning",
        "system_prompt": "Answer in French.",
        "temperature": 0.2,
        "num_ctx": 4096,
        "think": False,
    }
    conversation = api.create(**fields)
    assert {k: conversation[k] for k in fields} == fields
    assert conversation["title_set"] is True
    assert api.view(conversation["id"])["conversation"] == conversation


BAD_NEW = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "warm"}, "temperature"),
    ({"num_ctx": 100}, "num_ctx"),
    ({"num_ctx": 4096.5}, "num_ctx"),
    ({"model": ""}, "model"),
    ({"think": "yes"}, "think"),
    ({"title": 42}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"system_prompt": None}, "system_prompt"),
    ({"colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("body", "field"), BAD_NEW, ids=[f for _, f in BAD_NEW])
def test_a_bad_new_conversation_is_a_400_naming_the_field_and_creates_nothing(
    api: ChatApi, body: dict[str, object], field: str
) -> None:
    before = ids(api)
    assert_error(api.http.post("/conversations", json=body), 400, "bad_request", field)
    assert ids(api) == before


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"{", "not valid JSON"), (b"[]", "body"), (b'"hello"', "body"), (b"\xff\xfe", "not valid JSON")],
)
def test_a_body_that_is_not_a_json_object_is_a_400(api: ChatApi, raw: bytes, words: str) -> None:
    before = ids(api)
    response = api.http.post("/conversations", content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "bad_request", words)
    assert ids(api) == before


# ---- list and read -------------------------------------------------------------------------------------------------
def test_the_list_shows_pinned_first_then_the_most_recently_active(api: ChatApi, simulator: Server) -> None:
    older, newer, busy = api.create(title="older"), api.create(title="newer"), api.create(title="busy")
    after(busy["created_at"])
    script(simulator, {"reply": "ok", "thinking": ""})
    api.turn(older["id"], "bring this one to the top")
    mine = [older["id"], newer["id"], busy["id"]]
    assert [i for i in ids(api) if i in mine] == [older["id"], busy["id"], newer["id"]]
    api.patch(newer["id"], pinned=True)
    assert [i for i in ids(api) if i in mine] == [newer["id"], older["id"], busy["id"]]
    api.patch(newer["id"], pinned=False)
    assert [i for i in ids(api) if i in mine] == [older["id"], busy["id"], newer["id"]]


def test_reading_a_new_conversation(api: ChatApi) -> None:
    conversation = api.create(num_ctx=2048)
    view = api.view(conversation["id"])
    assert view == {
        "conversation": conversation,
        "messages": [],
        "versions": {},
        "active": None,
        "context": {"in_use": None, "num_ctx": 2048, "omitted_turns": 0},
    }
    assert api.view(api.create()["id"])["context"]["num_ctx"] == 8192  # the server's --num-ctx


def test_models_lists_the_backends_models(api: ChatApi) -> None:
    body = api.http.get("/models").json()
    assert [m["name"] for m in body["models"]] == ["qwen3:32b"]
    assert body["default"] == "qwen3:32b"
    assert (body["num_ctx"], body["reachable"], body["simulated"]) == (8192, True, False)


# ---- change --------------------------------------------------------------------------------------------------------
def test_the_title_follows_the_first_message_until_renamed(api: ChatApi, simulator: Server) -> None:
    conversation = api.create()
    script(simulator, {"reply": "Sure.", "thinking": "", "times": 2})
    api.turn(conversation["id"], "\n  How do tides work?\nAnd why twice a day?")
    assert api.view(conversation["id"])["conversation"]["title"] == "How do tides work?"
    renamed = api.patch(conversation["id"], title="  Tides  ")
    assert (renamed["title"], renamed["title_set"]) == ("Tides", True)
    api.turn(conversation["id"], "Another question")
    assert api.view(conversation["id"])["conversation"]["title"] == "Tides"
    reset = api.patch(conversation["id"], title="")
    assert (reset["title"], reset["title_set"]) == ("How do tides work?", False)
    long = api.create()
    script(simulator, {"reply": "Sure.", "thinking": ""})
    api.turn(long["id"], "word " * 40)
    title = api.view(long["id"])["conversation"]["title"]
    assert len(title) <= 60
    assert title.endswith("…")


def test_settings_are_set_and_reset_to_the_default_with_null(api: ChatApi) -> None:
    conversation = api.create()
    changed = api.patch(
        conversation["id"],
        pinned=True,
        model="qwen3:8b",
        system_prompt="Be brief.",
        temperature=1.5,
        num_ctx=16384,
        think=False,
    )
    expected = {"pinned": True, "model": "qwen3:8b", "system_prompt": "Be brief."}
    assert {k: changed[k] for k in expected} == expected
    assert (changed["temperature"], changed["num_ctx"], changed["think"]) == (1.5, 16384, False)
    assert api.view(conversation["id"])["context"]["num_ctx"] == 16384
    reset = api.patch(conversation["id"], temperature=None, num_ctx=None, think=None)
    assert (reset["temperature"], reset["num_ctx"], reset["think"]) == (None, None, None)
    assert {k: reset[k] for k in expected} == expected  # fields not named are left alone
    assert api.patch(conversation["id"])["pinned"] is True  # an empty change changes nothing


BAD_CHANGE = [
    ({"pinned": None}, "pinned"),
    ({"pinned": "yes"}, "pinned"),
    ({"model": None}, "model"),
    ({"system_prompt": None}, "system_prompt"),
    ({"temperature": -0.1}, "temperature"),
    ({"num_ctx": 2_000_000}, "num_ctx"),
    ({"think": 1}, "think"),
    ({"id": "01234567-89ab-7def-8123-456789abcdef"}, "id"),
    ({"title": "ok", "created_at": 0}, "created_at"),
]


@pytest.mark.parametrize(("body", "field"), BAD_CHANGE, ids=[f for _, f in BAD_CHANGE])
def test_a_bad_change_is_a_400_naming_the_field_and_changes_nothing(
    api: ChatApi, body: dict[str, object], field: str
) -> None:
    conversation = api.create(title="as it was", temperature=0.7)
    response = api.http.patch(f"/conversations/{conversation['id']}", json=body)
    assert_error(response, 400, "bad_request", field)
    assert api.view(conversation["id"])["conversation"] == conversation


# ---- delete and unknown ids ----------------------------------------------------------------------------------------
def test_delete_removes_the_conversation_and_its_messages(api: ChatApi, simulator: Server) -> None:
    conversation = api.create()
    script(simulator, {"reply": "Gone soon.", "thinking": ""})
    api.turn(conversation["id"], "remember me")
    response = api.http.delete(f"/conversations/{conversation['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert conversation["id"] not in ids(api)
    assert_error(api.http.get(f"/conversations/{conversation['id']}"), 404, "not_found", conversation["id"])
    assert_error(api.http.delete(f"/conversations/{conversation['id']}"), 404, "not_found")


UNKNOWN = ["01234567-89ab-7def-8123-456789abcdef", "not-an-id", "x" * 300, "'; DROP TABLE conversations; --", "会话"]


@pytest.mark.parametrize("conversation_id", UNKNOWN, ids=["uuid", "word", "long", "sql", "cjk"])
def test_unknown_and_malformed_ids_are_json_404s(api: ChatApi, conversation_id: str) -> None:
    path = "/conversations/" + httpx.URL(conversation_id).raw_path.decode()
    for method, suffix, body in [
        ("GET", "", None),
        ("PATCH", "", {"title": "x"}),
        ("DELETE", "", None),
        ("GET", "/export?format=json", None),
        ("GET", "/events", None),
        ("POST", "/messages", {"content": "hello"}),
        ("POST", "/regenerate", None),
        ("POST", "/edit", {"content": "hello"}),
        ("POST", "/stop", None),
    ]:
        response = api.http.request(method, path + suffix, json=body)
        assert_error(response, 404, "not_found")
    assert api.create()["id"] in ids(api)  # the table is still there


# ---- export --------------------------------------------------------------------------------------------------------
def test_exports_are_downloads_with_every_message_and_its_numbers(api: ChatApi, simulator: Server) -> None:
    conversation = api.create(title="Export me", system_prompt="You are terse.")
    script(
        simulator,
        {"reply": "First answer.", "thinking": "Ponder one."},
        {"reply": "Second answer.", "thinking": ""},
    )
    api.turn(conversation["id"], "first question")
    api.turn(conversation["id"], "second question")
    stored = api.view(conversation["id"])["messages"]

    response = api.http.get(f"/conversations/{conversation['id']}/export", params={"format": "json"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert 'filename="Export me.json"' in disposition
    exported = json.loads(response.content)
    assert exported["conversation"]["title"] == "Export me"
    assert exported["messages"] == stored
    replies = [m for m in exported["messages"] if m["role"] == "assistant"]
    assert [r["content"] for r in replies] == ["First answer.", "Second answer."]
    assert all(r["prompt_tokens"] and r["output_tokens"] and r["total_ms"] is not None for r in replies)

    response = api.http.get(f"/conversations/{conversation['id']}/export")  # markdown is the default
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/markdown")
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert '.md"' in response.headers["Content-Disposition"]
    markdown = response.text
    assert markdown.startswith("# Export me")
    assert "You are terse." in markdown
    for text in ("first question", "First answer.", "Ponder one.", "second question", "Second answer."):
        assert text in markdown
    assert markdown.index("first question") < markdown.index("First answer.") < markdown.index("second question")


def test_an_unknown_export_format_is_a_400(api: ChatApi) -> None:
    conversation = api.create()
    response = api.http.get(f"/conversations/{conversation['id']}/export", params={"format": "pdf"})
    assert_error(response, 400, "bad_request", "markdown or json")
