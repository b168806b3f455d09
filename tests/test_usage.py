"""Usage rollups (store/usage.py, web/usage.py) on SQLite and PostgreSQL: after a mixed run of chat replies and raw
requests from two users (one through an API key), some of them failing, the rollups equal a direct count of what
was stored and sent, by user, key, source and model; each user sees only their own; the numbers survive a restart;
the CSV says the same."""

from __future__ import annotations

import csv
import io
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from accounts_support import PASSWORD, Gateway, bearer, close_clients, new_key, sign_in
from chat_support import postgres_database, wait_until
from conftest import Server, script, start_gateway, start_simulator
from test_store import query

FAIL = {"kind": "error_line", "after": 2, "message": "out of memory"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tempfile.mkdtemp(prefix='clawdbot-usage-')}/chat.db"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="module")
def usage_simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8")
    yield server
    server.stop()


def start(simulator: Server, data_dir: str, database_url: str) -> Gateway:
    args = ("--auth", "--data-dir", data_dir, "--database-url", database_url)
    return Gateway(start_gateway(simulator.url, *args), data_dir, database_url)


@pytest.fixture(autouse=True)
def _clients() -> Iterator[None]:
    yield
    close_clients()


def report(client: httpx.Client, path: str, **params: object) -> dict[str, Any]:
    answer = client.get(path, params={"from": 0, "to": int(time.time() * 1000) + 3_600_000, **params})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def chat_turn(client: httpx.Client, content: str) -> dict[str, Any]:
    conversation = client.post("/chat/api/conversations", json={"num_predict": 12, "think": False}).json()
    conversation_id = conversation["conversation"]["id"]
    reply_id = client.post(f"/chat/api/conversations/{conversation_id}/messages", json={"content": content}).json()[
        "reply"
    ]["id"]
    found: dict[str, Any] = {}

    def finished() -> bool:
        view = client.get(f"/chat/api/conversations/{conversation_id}").json()
        found.update(next(m for m in view["messages"] if m["id"] == reply_id))
        return found["status"] not in ("waiting", "thinking", "writing") and view["active"] is None

    wait_until(finished, "the reply", timeout=15)
    return found


def test_rollups_equal_what_was_stored_and_sent_and_survive_a_restart(
    usage_simulator: Server, database_url: str
) -> None:
    gateway = start(usage_simulator, tempfile.mkdtemp(prefix="clawdbot-data-"), database_url)
    gateway.add_user("ada", admin=True)
    gateway.add_user("bob")
    ada, bob = sign_in(gateway.url, "ada"), sign_in(gateway.url, "bob")
    key = new_key(bob, "script")
    key_id = next(k["id"] for k in bob.get("/chat/api/keys").json()["keys"] if k["name"] == "script")
    ada_id, bob_id = (
        ada.get("/chat/api/session").json()["user"]["id"],
        bob.get("/chat/api/session").json()["user"]["id"],
    )

    script(usage_simulator, {"match": "break", "fault": FAIL, "times": -1})
    replies = [chat_turn(ada, f"question {n}") for n in range(3)] + [chat_turn(ada, "break, please")]
    replies += [chat_turn(bob, "from bob")]
    assert [r["status"] for r in replies] == ["done", "done", "done", "failed", "done"]
    raw = []
    for content in ("raw one", "raw two", "break it"):
        body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": content}], "options": {"num_predict": 9}}
        answer = httpx.post(f"{gateway.url}/api/chat", json=body, headers=bearer(key), timeout=30)
        assert answer.status_code == 200
        raw.append([line for line in answer.text.splitlines() if line][-1])
    finals = [httpx.Response(200, text=line).json() for line in raw[:2]]

    everyone = report(ada, "/chat/api/admin/usage", group="user,key,source,model,backend")
    rows = {(r["user"], r["key"], r["source"]): r for r in everyone["rows"]}
    assert set(rows) == {(ada_id, "", "chat"), (bob_id, "", "chat"), (bob_id, key_id, "raw")}
    assert {r["model"] for r in everyone["rows"]} == {"qwen3:32b"}
    assert all(r["backend"] for r in everyone["rows"])
    ada_chat, bob_raw = rows[ada_id, "", "chat"], rows[bob_id, key_id, "raw"]
    assert (ada_chat["requests"], ada_chat["failures"]) == (4, 1)
    assert ada_chat["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in replies[:4])
    assert ada_chat["output_tokens"] == sum(r["output_tokens"] or 0 for r in replies[:4])
    assert (bob_raw["requests"], bob_raw["failures"]) == (3, 1)
    assert bob_raw["prompt_tokens"] == sum(f["prompt_eval_count"] for f in finals)
    assert bob_raw["output_tokens"] == sum(f["eval_count"] for f in finals)
    assert everyone["names"] == {
        "users": {ada_id: "ada", bob_id: "bob"},
        "keys": {key_id: everyone["names"]["keys"][key_id]},
    }
    assert everyone["names"]["keys"][key_id].startswith("script (")

    # The chat rows against a direct count of the stored replies.
    stored = query(
        database_url,
        "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(output_tokens), 0) FROM messages "
        "WHERE role = 'assistant'",
    )
    chat_rows = [r for r in everyone["rows"] if r["source"] == "chat"]
    assert stored == [
        (
            sum(r["requests"] for r in chat_rows),
            sum(r["prompt_tokens"] for r in chat_rows),
            sum(r["output_tokens"] for r in chat_rows),
        )
    ]
    assert everyone["totals"]["requests"] == 8

    # Each user sees their own only; the admin report is an admin's.
    mine = report(bob, "/chat/api/usage", group="source")
    assert {(r["source"], r["requests"]) for r in mine["rows"]} == {("chat", 1), ("raw", 3)}
    assert bob.get("/chat/api/admin/usage").status_code == 403
    assert report(ada, "/chat/api/usage", group="")["totals"]["requests"] == 4

    # The CSV says the same.
    answer = ada.get("/chat/api/admin/usage", params={"from": 0, "group": "user,source", "format": "csv"})
    assert answer.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert {(row["user_name"], row["source"], int(row["requests"])) for row in table} == {
        ("ada", "chat", 4),
        ("bob", "chat", 1),
        ("bob", "raw", 3),
    }

    gateway.stop()
    again = start(usage_simulator, gateway.data_dir, database_url)
    admin = sign_in(again.url, "ada", PASSWORD)
    after = report(admin, "/chat/api/admin/usage", group="user,key,source,model,backend")
    assert after["rows"] == everyone["rows"]
    again.stop()


def test_a_report_by_hour_and_bad_parameters(usage_simulator: Server, database_url: str) -> None:
    gateway = start(usage_simulator, tempfile.mkdtemp(prefix="clawdbot-data-"), database_url)
    try:
        gateway.add_user("cy", admin=True)
        cy = sign_in(gateway.url, "cy")
        chat_turn(cy, "hello")
        now = int(time.time() * 1000)
        hourly = report(cy, "/chat/api/usage", by="hour", group="", **{"from": now - 3_600_000 * 2})
        assert [r["requests"] for r in hourly["rows"]] == [1]
        assert hourly["rows"][0]["bucket"] % 3_600_000 == 0
        daily = report(cy, "/chat/api/usage", by="day", group="model", offset=120)
        assert (daily["rows"][0]["bucket"] + 120 * 60_000) % 86_400_000 == 0  # local midnight, two hours ahead of UTC
        for params in (
            {"by": "week"},
            {"group": "colour"},
            {"from": "yesterday"},
            {"from": 10, "to": 5},
            {"by": "hour", "from": 0},
            {"offset": 100_000},
            {"format": "xml"},
        ):
            answer = cy.get("/chat/api/usage", params=params)
            assert answer.status_code == 400, (params, answer.text)
            assert answer.json()["error"]
    finally:
        gateway.stop()


def test_a_token_quota_refuses_chat_and_raw_once_used_up_and_an_admin_lifts_it(
    usage_simulator: Server, database_url: str
) -> None:
    gateway = start(usage_simulator, tempfile.mkdtemp(prefix="clawdbot-data-"), database_url)
    try:
        gateway.add_user("dee", admin=True)
        gateway.add_user("eve")
        dee, eve = sign_in(gateway.url, "dee"), sign_in(gateway.url, "eve")
        eve_id = eve.get("/chat/api/session").json()["user"]["id"]
        key = new_key(eve, "script")
        changed = dee.patch(f"/chat/api/users/{eve_id}", json={"tokens_per_day": 20})
        assert changed.status_code == 200, changed.text
        assert (changed.json()["user"]["tokens_per_day"], changed.json()["user"]["tokens_per_month"]) == (20, None)

        first = chat_turn(eve, "a question that uses some tokens")  # under the quota when sent
        assert first["status"] == "done"
        assert (first["prompt_tokens"] or 0) + (first["output_tokens"] or 0) >= 20

        conversation = eve.post("/chat/api/conversations", json={"num_predict": 5}).json()["conversation"]["id"]
        refused = eve.post(f"/chat/api/conversations/{conversation}/messages", json={"content": "one more"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "quota_reached"
        assert "quota of 20 tokens today" in refused.json()["error"]
        assert 0 < int(refused.headers["Retry-After"]) <= 86_400
        assert eve.get(f"/chat/api/conversations/{conversation}").json()["messages"] == []  # nothing stored

        body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}
        raw = httpx.post(f"{gateway.url}/api/chat", json=body, headers=bearer(key), timeout=30)
        assert raw.status_code == 429
        assert "quota" in raw.json()["error"]
        # Others are not held back by eve's quota.
        assert chat_turn(dee, "and mine")["status"] == "done"

        assert dee.patch(f"/chat/api/users/{eve_id}", json={"tokens_per_day": None}).status_code == 200
        again = eve.post(f"/chat/api/conversations/{conversation}/messages", json={"content": "one more"})
        assert again.status_code == 202, again.text
        monthly = dee.patch(f"/chat/api/users/{eve_id}", json={"tokens_per_month": 1})
        assert monthly.status_code == 200
        wait_until(lambda: eve.get(f"/chat/api/conversations/{conversation}").json()["active"] is None, "the reply", 15)
        refused = eve.post(f"/chat/api/conversations/{conversation}/messages", json={"content": "and more"})
        assert refused.status_code == 429
        assert "this month" in refused.json()["error"]
        assert dee.patch(f"/chat/api/users/{eve_id}", json={"tokens_per_day": 0}).status_code == 400
    finally:
        gateway.stop()
