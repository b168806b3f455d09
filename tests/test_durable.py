"""Durable generations: replies outlive connections and the gateway itself.

Resuming from any sequence number over the WebSocket and SSE (no gap, no repeat), clients that drop at random
moments, idempotent sends, checkpoints that survive kill -9, Continue, and every backend fault kind: retried
once unseen before the first token, reported with its cause after it, and counted in /metrics.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio

from chat_support import ChatApi, Socket, Spy, chat_api, done_of, wait_until
from conftest import Server, script, start_gateway, start_simulator

LONG = " ".join(f"w{i}" for i in range(120))  # 3 s at 40 tokens a second
THOUGHT = " ".join(f"t{i}" for i in range(20))


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "40")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def spy(simulator: Server) -> Iterator[Spy]:
    server = Spy(simulator.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def database() -> Path:
    return Path(tempfile.mkdtemp(prefix="clawdbot-durable-")) / "chat.db"


@pytest.fixture(scope="module")
def gateway(spy: Spy, database: Path) -> Iterator[Server]:
    server = start_gateway(
        spy.url, "--idle-timeout", "1", "--heartbeat", "0.5", "--database-url", f"sqlite:///{database}"
    )
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server, simulator: Server) -> Iterator[ChatApi]:
    httpx.delete(f"{simulator.url}/_sim/script")
    with chat_api(gateway.url) as client:
        yield client


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


async def connect(session: aiohttp.ClientSession, url: str) -> Socket:
    socket = Socket(await session.ws_connect(url + "/chat/api/ws"))
    assert (await socket.next())["type"] == "hello"
    return socket


def rows(database: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute(sql, params).fetchall()


class Reassembly:
    """A reply rebuilt from numbered events, as a client must: repeats dropped, a gap is a failure."""

    def __init__(self, reply_id: str) -> None:
        self.reply_id, self.seq = reply_id, 0
        self.content, self.thinking = "", ""
        self.final: dict[str, Any] | None = None
        self.repeats = 0

    def take(self, event: dict[str, Any]) -> None:
        if event.get("id") != self.reply_id or not event["type"].startswith("reply."):
            return
        if event["type"] == "reply.done" and event.get("seq") is None:  # the stored row: authoritative
            self.final = event["message"]
            return
        if event["type"] == "reply.snapshot":
            if event["seq"] >= self.seq:
                self.content, self.thinking, self.seq = event["content"], event["thinking"], event["seq"]
            return
        if "seq" not in event:  # reply.queue
            return
        if event["seq"] <= self.seq:
            self.repeats += 1
            return
        assert event["seq"] == self.seq + 1, f"gap: had {self.seq}, got {event['seq']} ({event['type']})"
        self.seq = event["seq"]
        if event["type"] == "reply.start":
            self.content, self.thinking = event["message"]["content"], event["message"]["thinking"]
        elif event["type"] == "reply.delta":
            self.content += event.get("content", "")
            self.thinking += event.get("thinking", "")
        elif event["type"] == "reply.done":
            self.final = event["message"]


# ---- resuming ------------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_resume_from_any_seq_replays_without_gap_or_repeat_then_goes_live(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": LONG, "thinking": THOUGHT})
    first = await connect(session, gateway.url)
    reply_id = (await first.command("send", conversation_id=conversation["id"], content="go"))["reply"]["id"]
    await first.until(lambda e: e["type"] == "reply.delta" and "content" in e)
    await first.ws.close()  # the reply goes on without its client

    for start in (1, 2, 7, 20):
        again = await connect(session, gateway.url)
        ack = await again.command("resume", reply_id=reply_id, **{"from": start})
        assert (ack["type"], ack["conversation_id"]) == ("ack", conversation["id"]), ack
        replayed = [e for e in again.seen if e["type"] != "ack"]
        assert replayed[0]["seq"] == start, replayed[0]
        rebuilt = Reassembly(reply_id)
        rebuilt.seq = start - 1
        for event in replayed:
            rebuilt.take(event)
        if rebuilt.final is None:  # still running: the live events follow the replay
            assert ack["live"] is True
            for event in await again.until(done_of(reply_id)):
                rebuilt.take(event)
        assert rebuilt.repeats == 0
        assert rebuilt.final is not None
        stored = api.wait_reply(conversation["id"], reply_id)
        assert stored["status"] == "done"
        if start == 1:
            assert (rebuilt.content, rebuilt.thinking) == (stored["content"], stored["thinking"]) == (LONG, THOUGHT)
        await again.ws.close()


@pytest.mark.asyncio
async def test_clients_that_drop_at_random_moments_reassemble_exactly_the_stored_replies(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    rng = random.Random(4)
    conversations = [api.create()["id"] for _ in range(6)]
    script(simulator, *[{"match": f"#{i}", "reply": LONG, "thinking": THOUGHT} for i in range(6)])

    async def one(index: int, conversation_id: str) -> tuple[Reassembly, int]:
        socket = await connect(session, gateway.url)
        ack = await socket.command("send", conversation_id=conversation_id, content=f"drop test #{index}")
        rebuilt, drops = Reassembly(ack["reply"]["id"]), 0
        for event in socket.seen:
            rebuilt.take(event)
        while rebuilt.final is None:
            budget = rng.randint(1, 40)  # events until this client drops its connection
            try:
                while rebuilt.final is None and budget > 0:
                    event = await socket.next(within=10)
                    rebuilt.take(event)
                    budget -= event["type"] != "heartbeat"
            finally:
                if rebuilt.final is None:
                    await socket.ws.close()
            if rebuilt.final is None:
                drops += 1
                await asyncio.sleep(rng.uniform(0, 0.3))  # the reply moves on while nobody listens
                socket = await connect(session, gateway.url)
                await socket.command("resume", reply_id=rebuilt.reply_id, **{"from": rebuilt.seq + 1})
                for event in socket.seen:
                    rebuilt.take(event)
        await socket.ws.close()
        return rebuilt, drops

    results = await asyncio.gather(*(one(i, cid) for i, cid in enumerate(conversations)))
    assert sum(drops for _, drops in results) >= 12  # it did drop, many times
    for conversation_id, (rebuilt, _) in zip(conversations, results, strict=True):
        stored = api.view(conversation_id)["messages"][-1]
        assert stored["id"] == rebuilt.reply_id
        assert stored["status"] == "done"
        assert rebuilt.final is not None
        assert rebuilt.final["status"] == "done"
        assert (rebuilt.content, rebuilt.thinking) == (stored["content"], stored["thinking"]) == (LONG, THOUGHT)
        assert rebuilt.repeats == 0


@pytest.mark.asyncio
async def test_resuming_an_unknown_reply_says_so_and_starts_nothing(
    session: aiohttp.ClientSession, gateway: Server, spy: Spy, api: ChatApi
) -> None:
    conversation = api.create()
    asked = len(spy.chats())
    socket = await connect(session, gateway.url)
    for unknown in ("01a20000-0000-7000-8000-000000000000", "nope", conversation["id"]):
        error = await socket.command("resume", reply_id=unknown, **{"from": 1})
        assert (error["type"], error["code"], error["status"]) == ("error", "not_found", 404)
        assert "no reply" in error["message"]
        response = await asyncio.to_thread(httpx.get, f"{gateway.url}/chat/api/generations/{unknown}/events")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        assert (await asyncio.to_thread(httpx.get, f"{gateway.url}/chat/api/generations/{unknown}")).status_code == 404
    bad = await socket.command("resume", reply_id=conversation["id"], **{"from": "soon"})
    assert (bad["code"], bad["status"]) == ("bad_request", 400)
    assert len(spy.chats()) == asked
    assert api.view(conversation["id"])["messages"] == []


class Sse:
    """A raw SSE response: events with their `id:` lines (hello and heartbeats left out)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def events(
        self, until: Callable[[dict[str, Any]], bool] = lambda _: False
    ) -> list[tuple[str | None, dict[str, Any]]]:
        """Events up to the first for which `until` is true, or until the server ends the stream."""
        out: list[tuple[str | None, dict[str, Any]]] = []
        ident: str | None = None
        async with asyncio.timeout(20):
            async for raw in self.response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] not in ("heartbeat", "hello"):
                        out.append((ident, event))
                        if until(event):
                            break
                    ident = None
        self.response.close()
        return out


@pytest.mark.asyncio
async def test_a_replys_sse_stream_resumes_from_query_or_last_event_id_and_ends_with_it(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": LONG, "thinking": ""})
    reply_id = api.send(conversation["id"], "stream me")["reply"]["id"]
    url = f"{gateway.url}/chat/api/generations/{reply_id}/events"
    whole = await Sse(await session.get(url)).events()  # from the start, live to the end
    assert [ident for ident, _ in whole] == [str(e["seq"]) for _, e in whole]
    assert [e["seq"] for _, e in whole] == list(range(1, len(whole) + 1))
    assert (whole[0][1]["type"], whole[-1][1]["type"]) == ("reply.start", "reply.done")
    stored = api.wait_reply(conversation["id"], reply_id)
    assert "".join(e.get("content", "") for _, e in whole) == stored["content"] == LONG

    # Finished, still in the log: the same events again, from wherever the client asks.
    tail = await Sse(await session.get(url, params={"from": "10"})).events()
    assert [e for _, e in tail] == [e for _, e in whole][9:]
    after = await Sse(await session.get(url, headers={"Last-Event-ID": "10"})).events()
    assert [e for _, e in after] == [e for _, e in whole][10:]

    status = (await asyncio.to_thread(httpx.get, f"{gateway.url}/chat/api/generations/{reply_id}")).json()["generation"]
    assert (status["live"], status["seq"], status["snapshot"]["content"]) == (False, len(whole), LONG)
    for bad in ("-1", "ten"):
        assert (await asyncio.to_thread(httpx.get, url, params={"from": bad})).status_code == 400


@pytest.mark.asyncio
async def test_a_conversations_sse_stream_picks_up_after_last_event_id(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": LONG, "thinking": ""})
    reply_id = api.send(conversation["id"], "and over SSE")["reply"]["id"]
    url = f"{gateway.url}/chat/api/conversations/{conversation['id']}/events"
    # Read a few numbered events, then drop the stream; then come back with the last id seen.
    seen = await Sse(await session.get(url)).events(until=lambda e: e.get("seq", 0) >= 5)
    numbered_seen = [(ident, e) for ident, e in seen if "seq" in e and e["type"] != "reply.snapshot"]
    assert all(ident == f"{reply_id}:{e['seq']}" for ident, e in numbered_seen)
    last = numbered_seen[-1][0]
    assert last is not None
    again = await Sse(await session.get(url, headers={"Last-Event-ID": last})).events(
        until=lambda e: e["type"] == "reply.done"
    )
    rest = [e for _, e in again]
    assert all(e["type"] != "reply.snapshot" for e in rest)  # the rest of the reply, not a snapshot
    numbered = [e for e in rest if "seq" in e]
    assert numbered[0]["seq"] == numbered_seen[-1][1]["seq"] + 1
    assert [e["seq"] for e in numbered] == list(range(numbered[0]["seq"], numbered[0]["seq"] + len(numbered)))
    text = "".join(e.get("content", "") for _, e in numbered_seen) + "".join(e.get("content", "") for e in rest)
    assert text == api.wait_reply(conversation["id"], reply_id)["content"] == LONG


# ---- idempotent sends ----------------------------------------------------------------------------------------------
def test_a_send_retried_with_its_client_id_never_makes_a_second_message_or_generation(
    api: ChatApi, simulator: Server, spy: Spy, database: Path
) -> None:
    conversation = api.create()
    script(simulator, {"reply": LONG, "thinking": ""})
    asked = len(spy.chats())
    path = f"/conversations/{conversation['id']}/messages"
    first = api.http.post(path, json={"content": "once", "client_id": "tab1-msg1"})
    assert first.status_code == 202
    again = api.http.post(path, json={"content": "once", "client_id": "tab1-msg1"})  # while the reply runs
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert (again.json()["message"]["id"], again.json()["reply"]["id"]) == (
        first.json()["message"]["id"],
        first.json()["reply"]["id"],
    )
    other = api.http.post(path, json={"content": "another", "client_id": "tab1-msg2"})
    assert other.status_code == 409
    assert other.json()["events"] == f"/chat/api/generations/{first.json()['reply']['id']}/events"
    api.wait_reply(conversation["id"], first.json()["reply"]["id"])
    late = api.http.post(path, json={"content": "once", "client_id": "tab1-msg1"})  # after it finished
    assert (late.status_code, late.json()["reply"]["status"]) == (200, "done")
    assert len(spy.chats()) == asked + 1
    assert rows(database, "SELECT count(*) FROM messages WHERE conversation_id = ?", conversation["id"]) == [(2,)]


def test_concurrent_retries_of_one_send_store_it_once(api: ChatApi, gateway: Server, database: Path) -> None:
    conversation = api.create()
    path = f"{gateway.url}/chat/api/conversations/{conversation['id']}/messages"
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(httpx.post(path, json={"content": "racing", "client_id": "same"}, timeout=15))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in answers) == [200] * 7 + [202], [r.text for r in answers]
    assert len({r.json()["message"]["id"] for r in answers}) == 1
    assert len({r.json()["reply"]["id"] for r in answers}) == 1
    users = rows(
        database, "SELECT count(*) FROM messages WHERE conversation_id = ? AND role = 'user'", conversation["id"]
    )
    assert users == [(1,)]
    # Its reply ends before the next test scripts the simulator: a late request there would take that script.
    api.wait_reply(conversation["id"], answers[0].json()["reply"]["id"])


def test_a_send_whose_client_leaves_while_it_is_stored_still_gets_its_reply(
    api: ChatApi, gateway: Server, simulator: Server, database: Path
) -> None:
    """aiohttp cancels a handler whose client left; the turn it started must still store and start its reply."""
    conversation = api.create()
    script(simulator, {"reply": "answered all the same", "thinking": ""})
    lock = sqlite3.connect(database, timeout=0, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the gateway's write waits for this lock (its busy timeout is 10 s)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{gateway.url}/chat/api/conversations/{conversation['id']}/messages",
                json={"content": "are you there?", "client_id": "leaving-1"},
                timeout=0.5,
            )
        time.sleep(0.5)  # the client is gone and its handler cancelled, with the turn's write still waiting
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    def answered() -> bool:
        messages = api.view(conversation["id"])["messages"]
        return len(messages) == 2 and messages[1]["status"] == "done"

    wait_until(answered, "the turn to be stored and answered", timeout=10)
    user, reply = api.view(conversation["id"])["messages"]
    assert (user["client_id"], reply["content"]) == ("leaving-1", "answered all the same")


# ---- backend faults ------------------------------------------------------------------------------------------------
def metric(gateway: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


BEFORE_TEXT: list[tuple[dict[str, Any], str, str]] = [
    ({"kind": "http_500"}, "http_500", "HTTP 500"),
    ({"kind": "busy"}, "http_503", "busy"),
    ({"kind": "reset"}, "reset", "closed the connection before answering"),
    ({"kind": "error_line", "after": 0}, "error_line", "The model stopped with an error"),
    ({"kind": "malformed", "after": 0}, "malformed", "not Ollama's streaming format"),
    ({"kind": "drop", "after": 0}, "reset", "closed the connection before answering"),
]
# A stall before the first token is not here: until then the backend may be loading the model or reading the
# prompt, which --first-byte-timeout bounds; a stall after text is test_chat_replies' idle_timeout case.


@pytest.mark.parametrize(("fault", "cause", "words"), BEFORE_TEXT, ids=[str(f[0]["kind"]) for f in BEFORE_TEXT])
def test_a_failure_before_the_first_token_is_retried_once_unseen(
    api: ChatApi, gateway: Server, simulator: Server, spy: Spy, fault: dict[str, Any], cause: str, words: str
) -> None:
    conversation = api.create()
    retried = metric(gateway, "clawdbot_chat_reply_retries_total", cause=cause)
    failed = metric(gateway, "clawdbot_chat_reply_failures_total", cause=cause)
    asked = len(spy.chats())
    script(simulator, {"reply": "fine after all", "thinking": "", "fault": fault}, {"reply": "fine after all"})
    reply = api.turn(conversation["id"], "once unlucky")
    assert (reply["status"], reply["content"], reply["error"]) == ("done", "fine after all", None)
    assert len(spy.chats()) == asked + 2
    assert metric(gateway, "clawdbot_chat_reply_retries_total", cause=cause) == retried + 1

    # Twice unlucky: the user is told why, in words, and the cause is counted.
    script(simulator, {"reply": "never", "thinking": "", "fault": fault, "times": 2})
    reply = api.turn(conversation["id"], "twice unlucky")
    assert (reply["status"], reply["error_kind"], reply["content"]) == ("failed", cause, "")
    assert words in reply["error"]
    assert metric(gateway, "clawdbot_chat_reply_failures_total", cause=cause) == failed + 1


def test_after_text_was_shown_a_failure_is_not_retried(
    api: ChatApi, gateway: Server, simulator: Server, spy: Spy
) -> None:
    conversation = api.create()
    asked = len(spy.chats())
    script(simulator, {"reply": "one two three four five six", "thinking": "", "fault": {"kind": "drop", "after": 3}})
    reply = api.turn(conversation["id"], "break in the middle")
    assert (reply["status"], reply["error_kind"]) == ("failed", "reset_mid_stream")
    assert reply["content"] == spy.last_chat().text() != ""
    assert len(spy.chats()) == asked + 1


def test_a_refusing_backend_is_retried_then_reported(tmp_path: Path) -> None:
    """Refused connections, with a backend that is down and then comes back."""
    down = start_gateway("http://127.0.0.1:9", "--data-dir", str(tmp_path))
    try:
        with chat_api(down.url) as api:
            conversation = api.create()
            reply = api.turn(conversation["id"], "hello?")
            assert (reply["status"], reply["error_kind"]) == ("failed", "connect_refused")
            assert "could not be reached" in reply["error"]
            assert metric(down, "clawdbot_chat_reply_retries_total", cause="connect_refused") == 1
            assert metric(down, "clawdbot_chat_reply_failures_total", cause="connect_refused") == 1
            assert metric(down, "clawdbot_chat_replies_total", status="failed") == 1
    finally:
        down.stop()


def test_a_reply_that_checkpointed_leaves_no_checkpoint_once_it_is_stored(
    simulator: Server, spy: Spy, tmp_path: Path
) -> None:
    """A reply's checkpoint goes when its final row is stored (a reply that never checkpointed skips that
    statement, so this is the case that must not)."""
    database = tmp_path / "done.db"
    httpx.delete(f"{simulator.url}/_sim/script")
    script(simulator, {"reply": LONG, "thinking": ""})
    gateway = start_gateway(spy.url, "--database-url", f"sqlite:///{database}", "--checkpoint-interval", "0.2")
    try:
        with chat_api(gateway.url) as api:
            conversation = api.create()
            reply_id = api.send(conversation["id"], "write for a while")["reply"]["id"]
            checkpoints = "SELECT count(*) FROM reply_checkpoints WHERE id = ?"
            wait_until(lambda: rows(database, checkpoints, reply_id) == [(1,)], "a checkpoint", timeout=10)
            stored = lambda: api.view(conversation["id"])["messages"][-1]["status"]  # noqa: E731
            wait_until(lambda: stored() == "done", "the reply stored", timeout=30)
            assert rows(database, "SELECT count(*) FROM reply_checkpoints") == [(0,)]
    finally:
        gateway.stop()


# ---- a crash ---------------------------------------------------------------------------------------------------------
def test_kill_9_keeps_the_checkpointed_text_and_continue_goes_on_from_it(
    simulator: Server, spy: Spy, tmp_path: Path
) -> None:
    database = tmp_path / "crash.db"
    url = f"sqlite:///{database}"
    httpx.delete(f"{simulator.url}/_sim/script")
    script(simulator, {"reply": LONG, "thinking": ""}, {"reply": " and the rest.", "thinking": ""})
    gateway = start_gateway(spy.url, "--database-url", url, "--checkpoint-interval", "0.2")
    with chat_api(gateway.url) as api:
        conversation = api.create()
        sent = api.send(conversation["id"], "write, and survive", client_id="crash-1")
        reply_id = sent["reply"]["id"]

        def saved() -> str:
            found = rows(database, "SELECT content FROM reply_checkpoints WHERE id = ?", reply_id)
            return str(found[0][0]) if found else ""

        wait_until(lambda: len(saved().split()) >= 10, "a checkpoint with text", timeout=10)
    gateway.kill()  # SIGKILL: no chance to store anything more
    checkpointed = saved()

    restarted = start_gateway(spy.url, "--database-url", url)
    try:
        with chat_api(restarted.url) as api:
            view = api.view(conversation["id"])
            assert view["active"] is None
            user, reply = view["messages"]
            assert (user["content"], user["client_id"]) == ("write, and survive", "crash-1")
            assert (reply["id"], reply["status"], reply["error_kind"]) == (reply_id, "interrupted", "gateway_stopped")
            assert reply["content"].startswith(checkpointed)
            assert LONG.startswith(reply["content"])
            assert len(reply["content"].split()) >= 10
            assert rows(database, "SELECT count(*) FROM reply_checkpoints") == [(0,)]

            # The same send retried after the crash is recognised, not stored again.
            again = api.http.post(
                f"/conversations/{conversation['id']}/messages",
                json={"content": "write, and survive", "client_id": "crash-1"},
            )
            assert (again.status_code, again.json()["reply"]["id"]) == (200, reply_id)

            resumed = httpx.get(f"{restarted.url}/chat/api/generations/{reply_id}").json()["generation"]
            assert (resumed["live"], resumed["message"]["status"]) == (False, "interrupted")

            continued = api.post(conversation["id"], "continue")["reply"]
            assert continued["content"] == reply["content"]
            final = api.wait_reply(conversation["id"], continued["id"])
            assert (final["status"], final["content"]) == ("done", reply["content"] + " and the rest.")
            asked = spy.last_chat().body["messages"]
            assert asked[-1] == {"role": "assistant", "content": reply["content"]}  # the model goes on from it
            shown = [m["id"] for m in api.view(conversation["id"])["messages"]]
            assert shown == [user["id"], continued["id"]]  # the interrupted reply is superseded, still stored
            assert rows(database, "SELECT superseded FROM messages WHERE id = ?", reply_id) == [(1,)]
            refused = api.http.post(f"/conversations/{conversation['id']}/continue")
            assert refused.status_code == 400
            assert "interrupted, failed, stopped or cut off" in refused.json()["error"]
    finally:
        restarted.stop()


@pytest.mark.asyncio
async def test_sigterm_with_clients_attached_ends_their_streams_and_stores_the_reply_in_flight(
    session: aiohttp.ClientSession, simulator: Server, spy: Spy, tmp_path: Path
) -> None:
    database = tmp_path / "term.db"
    gateway = start_gateway(spy.url, "--database-url", f"sqlite:///{database}")
    with chat_api(gateway.url) as api:
        conversation = api.create()
        script(simulator, {"reply": LONG, "thinking": ""})
        socket = await connect(session, gateway.url)
        reply_id = (await socket.command("send", conversation_id=conversation["id"], content="go"))["reply"]["id"]
        events = await session.get(f"{gateway.url}/chat/api/generations/{reply_id}/events")
        await socket.until(lambda e: e["type"] == "reply.delta")
    await asyncio.to_thread(gateway.stop)  # SIGTERM, then SIGKILL after 10 s if it has not exited
    assert gateway.proc.returncode == 0  # it did not wait for the open WebSocket and event stream
    closed = await socket.ws.receive(timeout=5)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    await asyncio.wait_for(events.read(), timeout=5)  # the event stream ended too
    stored = rows(database, "SELECT status, content FROM messages WHERE id = ?", reply_id)
    assert stored[0][0] == "interrupted"
    assert stored[0][1]
    assert LONG.startswith(stored[0][1])
