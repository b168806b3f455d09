"""Live events: the chat WebSocket (commands with ack/error, heartbeats, reply events with contiguous sequence
numbers, snapshots for late subscribers, replies that outlive their socket) and the SSE fallback.

The simulator writes 80 tokens a second per stream, so a reply is still being written when a second client
arrives; the gateway sends a heartbeat every 0.3 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio

from chat_support import ChatApi, Socket, chat_api, connect, done_of, sim_runner, wait_until
from conftest import Server, script, start_gateway, start_simulator

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "judge"]
THOUGHT = " ".join(WORDS[:8])
ANSWER = " ".join(WORDS[i % len(WORDS)] for i in range(40))  # a token a word: half a second


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "80")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = start_gateway(simulator.url, "--heartbeat", "0.3", "--idle-timeout", "5")
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server) -> Iterator[ChatApi]:
    with chat_api(gateway.url) as client:
        yield client


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


def deltas(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e.get(kind, "") for e in events if e["type"] == "reply.delta")


def seqs(events: list[dict[str, Any]]) -> list[int]:
    """The sequence numbers of a reply's numbered events (all but snapshots and queue positions)."""
    return [e["seq"] for e in events if e["type"].startswith("reply.") and e["type"] != "reply.snapshot" and "seq" in e]


def squeezed(events: list[dict[str, Any]]) -> list[str]:
    """Event types with each run of deltas shown once, and statuses spelled out."""
    names: list[str] = []
    for event in events:
        name = event["type"] + (f":{event['status']}" if event["type"] == "reply.status" else "")
        if not names or names[-1] != name or name != "reply.delta":
            names.append(name)
    return names


# ---- the socket ----------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_hello_names_the_heartbeat_and_heartbeats_follow(session: aiohttp.ClientSession, gateway: Server) -> None:
    socket = Socket(await session.ws_connect(gateway.url + "/chat/api/ws"))
    hello = await socket.next()
    assert hello["type"] == "hello"
    assert hello["heartbeat"] == 0.3
    assert isinstance(hello["version"], str)
    assert [(await socket.next(within=3))["type"] for _ in range(3)] == ["heartbeat"] * 3
    assert (await socket.command("ping")) == {"type": "pong", "ref": "r1"}
    await socket.ws.close()

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("route") == "/chat/api/ws"]

    await asyncio.to_thread(wait_until, logged, "the socket's access-log line")
    assert logged()[-1]["status"] == 499  # the client closed it: not an error of ours


@pytest.mark.asyncio
async def test_a_whole_reply_over_the_socket(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": ANSWER, "thinking": THOUGHT})
    socket = await connect(session, gateway.url)
    ack = await socket.command("send", conversation_id=conversation["id"], content="talk to me", client_id="c1")
    assert (ack["type"], ack["command"]) == ("ack", "send")
    assert (ack["message"]["content"], ack["message"]["client_id"]) == ("talk to me", "c1")
    reply_id = ack["reply"]["id"]
    await socket.until(done_of(reply_id))
    events = socket.seen
    assert squeezed(events) == [
        "message.new",
        "reply.start",
        "ack",
        "reply.status:thinking",
        "reply.delta",
        "reply.status:writing",
        "reply.delta",
        "reply.stats",
        "reply.done",
    ]
    assert events[0]["message"] == ack["message"]
    assert events[1]["message"]["id"] == reply_id
    assert events[1]["message"]["status"] == "waiting"
    assert all(e["conversation_id"] == conversation["id"] for e in events if e["type"] != "ack")
    assert seqs(events) == list(range(1, len(seqs(events)) + 1))
    stored = api.view(conversation["id"])["messages"][-1]
    assert stored["status"] == "done"
    assert deltas(events, "thinking") == stored["thinking"] == THOUGHT
    assert deltas(events, "content") == stored["content"] == ANSWER
    assert events[-1]["message"] == stored


@pytest.mark.asyncio
async def test_events_of_every_size_arrive_whole_and_uncompressed_even_when_the_client_offers_deflate(
    session: aiohttp.ClientSession,
) -> None:
    """The gateway writes its text frames itself: a head of 2, 4 or 10 bytes by the event's size in bytes (not
    characters). A client that offers permessage-deflate (as browsers do) is not given it: frames of a token each
    gain nothing from zlib but its CPU. A simulator and gateway of its own: prompts this long keep a simulator busy
    for a while after their replies are stopped."""
    simulator = start_simulator("--profile", "instant", "--tokens-per-second", "80")
    gateway = start_gateway(simulator.url)
    try:
        socket = Socket(await session.ws_connect(gateway.url + "/chat/api/ws", compress=15))
        assert socket.ws.compress == 0  # the extension was not agreed
        assert (await socket.next())["type"] == "hello"
        assert await socket.command("ping") == {"type": "pong", "ref": "r1"}  # under 126 bytes
        with chat_api(gateway.url) as api:
            for content in ("short, with é and 字", "é" * 20_000 + "字" * 5_000, "é" * 30_000 + "字" * 5_000):
                # ~300 bytes, 55,000 bytes (a 16-bit length), 75,000 bytes in 35,000 characters (a 64-bit length)
                conversation = api.create()["id"]
                ack = await socket.command("send", conversation_id=conversation, content=content)
                assert ack["message"]["content"] == content
                sent = ack["message"]["id"]
                news = [e for e in socket.seen if e["type"] == "message.new" and e["message"]["id"] == sent]
                assert [e["message"]["content"] for e in news] == [content]  # sent before the ack
                await socket.command("stop", conversation_id=conversation)  # the reply is not what this is about
                await socket.until(done_of(ack["reply"]["id"]))
        await socket.ws.close()
    finally:
        gateway.stop()
        simulator.stop()


@pytest.mark.asyncio
async def test_a_late_subscriber_gets_a_snapshot_then_the_rest_without_gap_or_repeat(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": ANSWER, "thinking": THOUGHT})
    first = await connect(session, gateway.url)
    reply_id = (await first.command("send", conversation_id=conversation["id"], content="go"))["reply"]["id"]
    await first.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= 5)  # still thinking

    late = await connect(session, gateway.url)
    ack = await late.command("subscribe", conversation_id=conversation["id"])
    assert ack == {"type": "ack", "ref": "r1", "command": "subscribe", "conversation_id": conversation["id"]}
    snapshot = late.seen[0]
    assert snapshot["type"] == "reply.snapshot"
    assert (snapshot["id"], snapshot["conversation_id"]) == (reply_id, conversation["id"])
    assert snapshot["seq"] >= 5
    assert snapshot["status"] in ("thinking", "writing")
    assert THOUGHT.startswith(snapshot["thinking"])
    assert snapshot["message"]["id"] == reply_id

    done = (await late.until(done_of(reply_id)))[-1]
    rest = late.seen[1:]
    assert seqs(rest) == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(seqs(rest))))
    assert snapshot["thinking"] + deltas(rest, "thinking") == THOUGHT
    assert snapshot["content"] + deltas(rest, "content") == ANSWER

    await first.until(done_of(reply_id))  # the first socket got all of it too
    assert seqs(first.seen) == list(range(1, len(seqs(first.seen)) + 1))
    assert deltas(first.seen, "content") == ANSWER
    assert first.seen[-1]["message"] == done["message"]
    assert done["message"]["status"] == "done"


@pytest.mark.asyncio
async def test_closing_the_socket_does_not_stop_the_reply(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": ANSWER, "thinking": ""})
    cancelled = sim_runner(simulator.url)["cancelled_total"]
    socket = await connect(session, gateway.url)
    reply_id = (await socket.command("send", conversation_id=conversation["id"], content="go on"))["reply"]["id"]
    await socket.until(lambda e: e["type"] == "reply.delta")
    await socket.ws.close()
    reply = api.wait_reply(conversation["id"], reply_id)
    assert (reply["status"], reply["content"]) == ("done", ANSWER)
    assert sim_runner(simulator.url)["cancelled_total"] == cancelled


@pytest.mark.asyncio
async def test_stop_and_conflicts_over_the_socket(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": ANSWER, "thinking": ""})
    socket = await connect(session, gateway.url)
    reply_id = (await socket.command("send", conversation_id=conversation["id"], content="go"))["reply"]["id"]
    await socket.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= 3)
    for kind, fields in [("send", {"content": "again"}), ("edit", {"content": "other"}), ("regenerate", {})]:
        error = await socket.command(kind, conversation_id=conversation["id"], **fields)
        assert (error["type"], error["code"], error["status"]) == ("error", "conflict", 409)
        assert error["reply_id"] == reply_id
        assert error["events"] == f"/chat/api/generations/{reply_id}/events"
        assert error["conversation_events"] == f"/chat/api/conversations/{conversation['id']}/events"
    ack = await socket.command("stop", conversation_id=conversation["id"])
    assert (ack["command"], ack["stopping"]) == ("stop", reply_id)
    done = (await socket.until(done_of(reply_id)))[-1]["message"]
    assert done["status"] == "stopped"
    assert done["content"] == deltas(socket.seen, "content")
    assert ANSWER.startswith(done["content"])
    assert len(done["content"]) < len(ANSWER)


@pytest.mark.asyncio
async def test_regenerate_and_edit_over_the_socket_announce_what_they_supersede(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    entries: list[dict[str, object]] = [{"reply": f"answer {i}", "thinking": ""} for i in range(3)]
    script(simulator, *entries)
    socket = await connect(session, gateway.url)
    sent = await socket.command("send", conversation_id=conversation["id"], content="question")
    await socket.until(done_of(sent["reply"]["id"]))

    again = await socket.command("regenerate", conversation_id=conversation["id"])
    assert again["command"] == "regenerate"
    await socket.until(done_of(again["reply"]["id"]))
    superseded = [e for e in socket.seen if e["type"] == "messages.superseded"]
    assert [e["ids"] for e in superseded] == [[sent["reply"]["id"]]]

    edited = await socket.command("edit", conversation_id=conversation["id"], content="question, better")
    assert edited["message"]["content"] == "question, better"
    await socket.until(done_of(edited["reply"]["id"]))
    superseded = [e for e in socket.seen if e["type"] == "messages.superseded"]
    assert superseded[-1]["ids"] == [sent["message"]["id"], again["reply"]["id"]]
    shown = [m["content"] for m in api.view(conversation["id"])["messages"]]
    assert shown == ["question, better", "answer 2"]


@pytest.mark.asyncio
async def test_after_unsubscribe_no_events_of_that_conversation_arrive(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": "quiet", "thinking": ""})
    socket = await connect(session, gateway.url)
    await socket.command("subscribe", conversation_id=conversation["id"])
    assert (await socket.command("unsubscribe", conversation_id=conversation["id"]))["type"] == "ack"
    api.turn(conversation["id"], "anyone listening?")
    await socket.command("ping")
    assert [e["type"] for e in socket.seen] == ["ack", "ack", "pong"]


BAD_COMMANDS: list[tuple[object, str, int, str]] = [
    ("not json at all", "bad_request", 400, "JSON"),
    ([1, 2], "bad_request", 400, "type"),
    ({"ref": "x"}, "bad_request", 400, "type"),
    ({"type": "send", "ref": "x", "content": "hi"}, "bad_request", 400, "conversation_id"),
    ({"type": "subscribe", "ref": "x", "conversation_id": "nope"}, "not_found", 404, "nope"),
    ({"type": "dance", "ref": "x", "conversation_id": "{cid}"}, "bad_request", 400, "unknown command"),
    ({"type": "send", "ref": "x", "conversation_id": "{cid}", "content": " "}, "bad_request", 400, "empty"),
    ({"type": "send", "ref": "x", "conversation_id": "{cid}", "content": 7}, "bad_request", 400, "content"),
    ({"type": "edit", "ref": "x", "conversation_id": "{cid}"}, "bad_request", 400, "content"),
]


@pytest.mark.asyncio
async def test_bad_commands_get_an_error_and_the_socket_stays_open(
    session: aiohttp.ClientSession, gateway: Server, api: ChatApi
) -> None:
    conversation_id = api.create()["id"]
    socket = await connect(session, gateway.url)
    for command, code, status, words in BAD_COMMANDS:
        raw = command if isinstance(command, str) else json.dumps(command).replace("{cid}", conversation_id)
        await socket.ws.send_str(raw)
        error = (await socket.until(lambda e: e["type"] == "error"))[-1]
        assert error["code"] == code, (command, error)
        assert words in error["message"], (command, error)
        ref = command.get("ref") if isinstance(command, dict) else None
        assert (error["status"], error["ref"]) == (status, ref)
    send = {"type": "send", "ref": "b", "conversation_id": conversation_id, "content": "in a binary frame"}
    await socket.ws.send_bytes(json.dumps(send).encode())
    error = (await socket.until(lambda e: e["type"] == "error"))[-1]
    assert (error["status"], error["code"]) == (400, "bad_request")
    assert "text frames" in error["message"]
    assert (await socket.command("ping"))["type"] == "pong"
    assert api.view(conversation_id)["messages"] == []


# ---- Server-Sent Events -------------------------------------------------------------------------------------------
class EventStream:
    """An SSE response read event by event: each is one `data:` line and a blank line."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.heartbeats = 0
        self.last_id: str | None = None

    async def read(self, within: float = 5.0) -> dict[str, Any]:
        """The next event; its `id:` line, if any, is kept in `last_id` (and checked against the event)."""
        ident = None
        async with asyncio.timeout(within):
            line = b""
            while not line.strip() or line.startswith(b"id: "):
                if line.startswith(b"id: "):
                    ident = line[len(b"id: ") :].strip().decode()
                line = await self.response.content.readline()
                assert line, "the event stream ended"
        assert line.startswith(b"data: "), line
        event: dict[str, Any] = json.loads(line[len(b"data: ") :])
        if ident is not None:
            self.last_id = ident
            assert ident.rpartition(":")[2] == str(event["seq"]), (ident, event)
        else:
            assert event.get("seq") is None or event["type"] == "reply.snapshot", event
        return event

    async def next(self) -> dict[str, Any]:
        """The next event but heartbeats, which are counted."""
        while (event := await self.read())["type"] == "heartbeat":
            self.heartbeats += 1
        return event

    async def heartbeat(self) -> None:
        """Wait for a heartbeat, unless one came already."""
        while self.heartbeats == 0:
            self.heartbeats += (await self.read(within=3))["type"] == "heartbeat"

    async def until(self, done: Any) -> list[dict[str, Any]]:
        events = [await self.next()]
        while not done(events[-1]):
            assert len(events) < 10_000
            events.append(await self.next())
        return events


async def open_events(session: aiohttp.ClientSession, gateway: Server, conversation_id: str) -> EventStream:
    response = await session.get(f"{gateway.url}/chat/api/conversations/{conversation_id}/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    stream = EventStream(response)
    hello = await stream.next()
    assert (hello["type"], hello["heartbeat"]) == ("hello", 0.3)
    return stream


@pytest.mark.asyncio
async def test_a_whole_reply_through_sse_and_post(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": ANSWER, "thinking": THOUGHT})
    stream = await open_events(session, gateway, conversation["id"])
    async with session.post(
        f"{gateway.url}/chat/api/conversations/{conversation['id']}/messages", json={"content": "over SSE"}
    ) as posted:
        assert posted.status == 202
        reply_id = (await posted.json())["reply"]["id"]
    events = await stream.until(done_of(reply_id))
    assert squeezed(events) == [
        "message.new",
        "reply.start",
        "reply.status:thinking",
        "reply.delta",
        "reply.status:writing",
        "reply.delta",
        "reply.stats",
        "reply.done",
    ]
    assert seqs(events) == list(range(1, len(seqs(events)) + 1))
    stored = api.view(conversation["id"])["messages"][-1]
    assert deltas(events, "thinking") == stored["thinking"] == THOUGHT
    assert deltas(events, "content") == stored["content"] == ANSWER
    assert events[-1]["message"] == stored
    await stream.heartbeat()
    stream.response.close()


@pytest.mark.asyncio
async def test_sse_opened_mid_reply_starts_with_a_snapshot(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()
    script(simulator, {"reply": ANSWER, "thinking": ""})
    first = await open_events(session, gateway, conversation["id"])
    reply_id = api.send(conversation["id"], "snapshot me")["reply"]["id"]
    await first.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= 5)
    late = await open_events(session, gateway, conversation["id"])
    snapshot = await late.next()
    assert (snapshot["type"], snapshot["id"]) == ("reply.snapshot", reply_id)
    rest = await late.until(done_of(reply_id))
    assert seqs(rest)[0] == snapshot["seq"] + 1
    assert seqs(rest) == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(seqs(rest))))
    assert snapshot["content"] + deltas(rest, "content") == ANSWER
    first.response.close()
    late.response.close()


def test_events_of_an_unknown_conversation_are_a_json_404(gateway: Server) -> None:
    response = httpx.get(f"{gateway.url}/chat/api/conversations/nope/events")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
