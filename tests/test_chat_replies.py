"""Replies over plain HTTP: what is stored and when, what the model is sent, and what Stop, Regenerate, Edit,
Delete and backend failures leave behind.

The gateway talks to the simulator through a `Spy` that records every request body and response, so a test
can compare the stored reply with exactly what the model was asked and what it answered. The simulator writes
40 tokens a second per stream, so a long reply is still in flight when a test acts on it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat_support import ChatApi, Spy, chat_api, sim_runner, wait_until
from conftest import Server, script, start_gateway, start_simulator

LONG = " ".join(f"word{i}" for i in range(300))  # 7.5 s at 40 tokens a second: long enough to act on
SHORT: dict[str, object] = {"reply": "Noted.", "thinking": ""}  # the simulator's own replies take seconds at this pace


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "40")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def database() -> Path:
    return Path(tempfile.mkdtemp(prefix="clawdbot-chat-")) / "chat.db"


@pytest.fixture(scope="module")
def spy(simulator: Server, database: Path) -> Iterator[Spy]:
    server = Spy(simulator.url, on_chat=lambda: rows(database, "SELECT role, status, content FROM messages"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(spy: Spy, database: Path) -> Iterator[Server]:
    server = start_gateway(spy.url, "--idle-timeout", "1", "--database-url", f"sqlite:///{database}")
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server) -> Iterator[ChatApi]:
    with chat_api(gateway.url) as client:
        yield client


def rows(database: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the gateway's database directly (SQLite in WAL mode lets another process read alongside)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, params).fetchall()


def stored(database: Path, conversation_id: str) -> list[tuple[Any, ...]]:
    """(role, content, status, superseded) of every message of a conversation, superseded ones included."""
    return rows(
        database,
        "SELECT role, content, status, superseded FROM messages WHERE conversation_id = ? ORDER BY created_at, id",
        conversation_id,
    )


def streaming(spy: Spy, chunks: int = 3) -> None:
    """Wait until the newest backend request has streamed some of its answer."""
    wait_until(lambda: spy.chats() and len(spy.chats()[-1].response.splitlines()) >= chunks, "the reply to stream")


def assert_conflict(response: httpx.Response, conversation_id: str, reply_id: str) -> None:
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["code"] == "conflict"
    assert body["reply_id"] == reply_id
    assert body["events"] == f"/chat/api/generations/{reply_id}/events"  # where to attach
    assert body["conversation_events"] == f"/chat/api/conversations/{conversation_id}/events"
    assert "reply" in body["error"]


# ---- what is stored, and when --------------------------------------------------------------------------------------
def test_the_message_and_the_reply_row_are_stored_before_the_model_is_asked(
    api: ChatApi, spy: Spy, simulator: Server
) -> None:
    conversation = api.create()
    script(simulator, SHORT)
    sent = api.send(conversation["id"], "is this stored first?", client_id="tab-1:42")
    assert sent["message"]["status"] == "sent"
    assert sent["message"]["client_id"] == "tab-1:42"
    assert (sent["reply"]["status"], sent["reply"]["role"], sent["reply"]["content"]) == ("waiting", "assistant", "")
    api.wait_reply(conversation["id"], sent["reply"]["id"])
    at_arrival = spy.last_chat().seen
    assert isinstance(at_arrival, list)
    assert ("user", "sent", "is this stored first?") in at_arrival
    assert ("assistant", "waiting", "") in at_arrival


def test_a_finished_reply_has_its_text_and_ollamas_own_numbers(api: ChatApi, spy: Spy, simulator: Server) -> None:
    conversation = api.create()
    script(simulator, {"reply": "The answer is forty-two.", "thinking": "Let me count the towels."})
    sent = api.send(conversation["id"], "What is the answer?")
    reply = api.wait_reply(conversation["id"], sent["reply"]["id"])
    exchange = spy.last_chat()
    final = exchange.final()
    assert reply["status"] == "done"
    assert reply["content"] == "The answer is forty-two." == exchange.text("content")
    assert reply["thinking"] == "Let me count the towels." == exchange.text("thinking")
    assert reply["prompt_tokens"] == final["prompt_eval_count"]
    assert reply["output_tokens"] == final["eval_count"]
    assert reply["eval_ms"] == round(final["eval_duration"] / 1e6)
    assert reply["done_reason"] == final["done_reason"] == "stop"
    assert (reply["model"], reply["error"], reply["superseded"]) == ("qwen3:32b", None, False)
    assert reply["ttft_ms"] > 0
    assert reply["thinking_ms"] > 0  # four thinking tokens at 40 a second
    assert reply["total_ms"] + 2 >= reply["ttft_ms"] + reply["thinking_ms"]
    assert reply["finished_at"] >= reply["created_at"]
    view = api.view(conversation["id"])
    assert [m["id"] for m in view["messages"]] == [sent["message"]["id"], reply["id"]]
    assert view["context"]["in_use"] == final["prompt_eval_count"] + final["eval_count"]


def test_the_model_gets_the_history_in_ollamas_format_without_thinking(
    api: ChatApi, spy: Spy, simulator: Server
) -> None:
    conversation = api.create(system_prompt="Be terse.", temperature=0.3, num_ctx=4096, think=True, num_predict=512)
    script(
        simulator,
        {"reply": "Paris.", "thinking": "The capital of France is Paris."},
        {"reply": "Berlin.", "thinking": "Germany: Berlin."},
    )
    api.turn(conversation["id"], "Capital of France?")
    api.turn(conversation["id"], "And Germany?")
    assert spy.last_chat().body == {
        "model": "qwen3:32b",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And Germany?"},
        ],
        "stream": True,
        "options": {"num_ctx": 4096, "num_predict": 512, "temperature": 0.3},
        "think": True,
    }


def test_a_conversation_without_settings_sends_the_servers_defaults(api: ChatApi, spy: Spy, simulator: Server) -> None:
    conversation = api.create()
    script(simulator, SHORT)
    api.turn(conversation["id"], "defaults please")
    body = spy.last_chat().body
    assert body["options"] == {"num_ctx": 8192, "num_predict": 4096}  # --num-ctx and --num-predict
    assert "think" not in body
    assert body["messages"] == [{"role": "user", "content": "defaults please"}]


def test_think_false_reaches_the_model(api: ChatApi, spy: Spy, simulator: Server) -> None:
    conversation = api.create(think=False)
    script(simulator, {"reply": "Fine.", "thinking": "Thoughts the model must not have."})
    reply = api.turn(conversation["id"], "no thinking")
    assert spy.last_chat().body["think"] is False
    assert (reply["thinking"], reply["content"]) == ("", "Fine.")


BAD_MESSAGES = [
    ({"content": "   \n"}, "empty"),
    ({}, "content"),
    ({"content": 5}, "content"),
    ({"content": "hi", "client_id": "no spaces allowed"}, "client_id"),
    ({"content": "hi", "role": "system"}, "role"),
]


@pytest.mark.parametrize(("body", "words"), BAD_MESSAGES, ids=[w for _, w in BAD_MESSAGES])
def test_a_bad_message_is_a_400_and_stores_nothing(
    api: ChatApi, spy: Spy, database: Path, body: dict[str, object], words: str
) -> None:
    conversation = api.create()
    asked = len(spy.chats())
    response = api.http.post(f"/conversations/{conversation['id']}/messages", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request"
    assert words in response.json()["error"]
    assert stored(database, conversation["id"]) == []
    assert len(spy.chats()) == asked


def test_a_message_over_the_limit_is_a_413_and_stores_nothing(api: ChatApi, spy: Spy, database: Path) -> None:
    conversation = api.create()
    asked = len(spy.chats())
    response = api.http.post(f"/conversations/{conversation['id']}/messages", json={"content": "x" * 100_001})
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert "100000" in response.json()["error"]
    assert stored(database, conversation["id"]) == []
    assert len(spy.chats()) == asked


# ---- one reply at a time, and Stop -----------------------------------------------------------------------------
def test_while_a_reply_is_written_sending_editing_and_regenerating_are_409s(
    api: ChatApi, spy: Spy, simulator: Server, database: Path
) -> None:
    conversation = api.create()
    script(simulator, {"reply": LONG, "thinking": ""})
    reply = api.send(conversation["id"], "write a lot")["reply"]
    streaming(spy)
    before = stored(database, conversation["id"])
    path = f"/conversations/{conversation['id']}"
    assert_conflict(api.http.post(path + "/messages", json={"content": "more"}), conversation["id"], reply["id"])
    assert_conflict(api.http.post(path + "/edit", json={"content": "other"}), conversation["id"], reply["id"])
    assert_conflict(api.http.post(path + "/regenerate"), conversation["id"], reply["id"])
    assert stored(database, conversation["id"]) == before
    assert api.view(conversation["id"])["active"]["id"] == reply["id"]
    assert api.http.post(path + "/stop").json() == {"stopping": reply["id"]}
    assert api.wait_reply(conversation["id"], reply["id"])["status"] == "stopped"
    script(simulator, SHORT)
    assert api.turn(conversation["id"], "and now?")["status"] == "done"


def test_stop_keeps_the_partial_text_and_frees_the_models_slot_at_once(
    api: ChatApi, spy: Spy, simulator: Server
) -> None:
    conversation = api.create()
    script(simulator, {"reply": LONG, "thinking": ""})
    reply_id = api.send(conversation["id"], "write a lot")["reply"]["id"]
    streaming(spy, chunks=5)
    assert sim_runner(simulator.url)["active"] == 1
    cancelled = sim_runner(simulator.url)["cancelled_total"]
    assert api.http.post(f"/conversations/{conversation['id']}/stop").json() == {"stopping": reply_id}
    wait_until(lambda: sim_runner(simulator.url)["active"] == 0, "the simulator's slot to be freed", timeout=2)
    assert sim_runner(simulator.url)["cancelled_total"] == cancelled + 1
    reply = api.wait_reply(conversation["id"], reply_id)
    assert reply["status"] == "stopped"
    assert reply["error"] is None
    assert reply["content"].startswith("word0 word1")
    assert LONG.startswith(reply["content"])
    assert spy.last_chat().text().startswith(reply["content"])
    assert len(reply["content"]) < len(LONG)
    assert reply["finished_at"] is not None
    assert api.http.post(f"/conversations/{conversation['id']}/stop").json() == {"stopping": None}


def test_deleting_a_conversation_stops_its_reply(api: ChatApi, spy: Spy, simulator: Server, database: Path) -> None:
    conversation = api.create()
    script(simulator, {"reply": LONG, "thinking": ""})
    api.send(conversation["id"], "write a lot")
    streaming(spy)
    assert api.http.delete(f"/conversations/{conversation['id']}").status_code == 204
    wait_until(lambda: sim_runner(simulator.url)["active"] == 0, "the simulator's slot to be freed", timeout=2)
    assert api.http.get(f"/conversations/{conversation['id']}").status_code == 404
    assert stored(database, conversation["id"]) == []


# ---- regenerate and edit ---------------------------------------------------------------------------------------
def test_regenerate_supersedes_the_last_reply_and_keeps_it(
    api: ChatApi, spy: Spy, simulator: Server, database: Path
) -> None:
    conversation = api.create()
    script(simulator, {"reply": "First try.", "thinking": ""}, {"reply": "Second try.", "thinking": ""})
    first = api.turn(conversation["id"], "try")
    answer = api.post(conversation["id"], "regenerate")["reply"]
    assert answer["status"] == "waiting"
    second = api.wait_reply(conversation["id"], answer["id"])
    assert second["content"] == "Second try."
    assert [m["content"] for m in api.view(conversation["id"])["messages"]] == ["try", "Second try."]
    assert stored(database, conversation["id"]) == [
        ("user", "try", "sent", 0),
        ("assistant", "First try.", "done", 1),
        ("assistant", "Second try.", "done", 0),
    ]
    assert spy.last_chat().body["messages"] == [{"role": "user", "content": "try"}]
    assert first["id"] not in [m["id"] for m in api.view(conversation["id"])["messages"]]


def test_edit_supersedes_the_last_message_and_its_reply(
    api: ChatApi, spy: Spy, simulator: Server, database: Path
) -> None:
    conversation = api.create()
    script(
        simulator,
        {"reply": "One.", "thinking": ""},
        {"reply": "Two.", "thinking": ""},
        {"reply": "Two, again.", "thinking": ""},
    )
    api.turn(conversation["id"], "first")
    api.turn(conversation["id"], "second")
    edited = api.post(conversation["id"], "edit", {"content": "second, rephrased"})
    assert edited["message"]["content"] == "second, rephrased"
    api.wait_reply(conversation["id"], edited["reply"]["id"])
    shown = [m["content"] for m in api.view(conversation["id"])["messages"]]
    assert shown == ["first", "One.", "second, rephrased", "Two, again."]
    assert [(r[0], r[1], r[3]) for r in stored(database, conversation["id"])] == [
        ("user", "first", 0),
        ("assistant", "One.", 0),
        ("user", "second", 1),
        ("assistant", "Two.", 1),
        ("user", "second, rephrased", 0),
        ("assistant", "Two, again.", 0),
    ]
    assert spy.last_chat().body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "second, rephrased"},
    ]


def test_editing_the_only_message_retitles_the_conversation(api: ChatApi, simulator: Server) -> None:
    conversation = api.create()
    script(simulator, {**SHORT, "times": 2})
    api.turn(conversation["id"], "Typo in teh title")
    edited = api.post(conversation["id"], "edit", {"content": "Typo in the title"})
    api.wait_reply(conversation["id"], edited["reply"]["id"])
    assert api.view(conversation["id"])["conversation"]["title"] == "Typo in the title"


@pytest.mark.parametrize(("action", "body"), [("regenerate", None), ("edit", {"content": "x"})])
def test_regenerate_and_edit_need_a_message(api: ChatApi, action: str, body: object) -> None:
    conversation = api.create()
    response = api.http.post(f"/conversations/{conversation['id']}/{action}", json=body)
    assert response.status_code == 400
    assert "no message" in response.json()["error"]


# ---- when the backend fails ---------------------------------------------------------------------------------------
FAULTS: list[tuple[dict[str, Any], str, list[str], int]] = [
    ({"kind": "http_500"}, "http_500", ["HTTP 500", "model runner has unexpectedly stopped"], 0),
    ({"kind": "error_line", "after": 3}, "error_line", ["The model stopped with an error", "CUDA error"], 3),
    ({"kind": "stall", "after": 3, "seconds": 5}, "idle_timeout", ["stopped sending in the middle of the reply"], 3),
    ({"kind": "drop", "after": 3}, "reset_mid_stream", ["closed the connection in the middle of the reply"], 3),
    ({"kind": "malformed", "after": 3}, "malformed", ["not Ollama's streaming format"], 3),
]


@pytest.mark.parametrize(("fault", "kind", "words", "kept"), FAULTS, ids=[str(f[0]["kind"]) for f in FAULTS])
def test_a_backend_failure_fails_the_reply_with_a_reason_and_keeps_its_text(
    api: ChatApi, spy: Spy, simulator: Server, fault: dict[str, object], kind: str, words: list[str], kept: int
) -> None:
    conversation = api.create()
    # A failure before any text is retried once, unseen: it must happen twice to reach the user.
    times = 1 if kept else 2
    script(simulator, {"reply": "alpha beta gamma delta epsilon zeta", "thinking": "", "fault": fault, "times": times})
    reply = api.turn(conversation["id"], "fail please")
    assert (reply["status"], reply["error_kind"]) == ("failed", kind)
    for word in words:
        assert word in reply["error"]
    received = spy.last_chat().text()
    assert reply["content"] == received
    assert len(received.split()) == kept  # what came before the fault is kept
    script(simulator, SHORT)
    assert api.turn(conversation["id"], "and now?")["status"] == "done"


def test_an_unreachable_backend_fails_the_reply_and_the_next_send_is_accepted(down_gateway: Server) -> None:
    with chat_api(down_gateway.url) as api:
        conversation = api.create()
        assert conversation["model"] == "qwen3:32b"  # no model list to choose from: the documented default
        for text in ("hello?", "anyone?"):
            reply = api.turn(conversation["id"], text)
            assert reply["status"] == "failed"
            assert "could not be reached (connection refused)" in reply["error"]
            assert reply["error_kind"] == "connect_refused"
            assert reply["content"] == ""
        assert api.http.get("/models").json()["reachable"] is False
