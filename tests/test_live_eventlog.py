"""Replies' event logs across gateway processes (Redis streams and channels): a reply written by one process is
followed live, resumed from any seq and read over SSE on another, a conversation's own events (new messages,
titles, queue positions) reach its tabs on every process, the keys are a reply's own and expire once it has
ended, and a process that loses Redis keeps streaming to its own clients and catches Redis up afterwards.

Two replicas of one deployment (tests/live_support.py): A, with one generation at a time and model-written titles,
writes the replies; B is where the other tab is. The simulator writes 40 tokens a second, so a reply lasts about
three seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import pytest_asyncio
import redis

from chat_support import ChatApi, Socket, chat_api, connect, done_of, wait_until
from clawdbot.chat.eventlog import Job
from clawdbot.live.connection import Live
from clawdbot.live.eventlog import RedisLog
from clawdbot.store.records import new_message
from conftest import Server, script, start_gateway, start_simulator
from live_support import REDIS_URL, deployment, keys, kill_pubsub, redis_or_skip, redis_prefix, start_replica
from test_chat_realtime import EventStream, deltas, seqs, squeezed

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "judge"]
THOUGHT = " ".join(WORDS[:8])
ANSWER = " ".join(WORDS[i % len(WORDS)] for i in range(110))  # a token a word: near three seconds
ASKED = "Title of this conversation"  # in a title request's prompt


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "40")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(simulator: Server) -> Iterator[tuple[Server, Server, str]]:
    """(A, B, the deployment's Redis key prefix)."""
    with deployment() as (database, prefix):
        a = start_replica(simulator.url, database, prefix, "--heartbeat", "0.5", "--max-running", "1", "--model-titles")
        b = start_replica(simulator.url, database, prefix, "--heartbeat", "0.5")
        try:
            yield a, b, prefix
        finally:
            a.stop()
            b.stop()


@pytest.fixture
def a(cluster: tuple[Server, Server, str]) -> Server:
    return cluster[0]


@pytest.fixture
def b(cluster: tuple[Server, Server, str]) -> Server:
    return cluster[1]


@pytest.fixture
def api(a: Server) -> Iterator[ChatApi]:
    with chat_api(a.url) as client:
        yield client


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


def reply_events(events: list[dict[str, Any]], reply_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"].startswith("reply.") and e.get("id") == reply_id and "seq" in e]


def whole(events: list[dict[str, Any]], answer: str = ANSWER) -> None:
    """A reply's events from seq 1 to its end: each once, in order."""
    assert seqs(events) == list(range(1, len(events) + 1))
    assert deltas(events, "thinking") == THOUGHT
    assert deltas(events, "content") == answer


async def sending(session: aiohttp.ClientSession, server: Server, conversation_id: str, content: str) -> Socket:
    """A socket on `server` that has sent a message (its reply's id in `socket.reply_id`)."""
    sender = await connect(session, server.url)
    ack = await sender.command("send", conversation_id=conversation_id, content=content)
    assert ack["type"] == "ack", ack
    sender.reply_id = ack["reply"]["id"]  # type: ignore[attr-defined]
    return sender


async def to_the_end(socket: Socket, reply_id: str) -> None:
    """Until the reply's reply.done, which may have come before the ack of the command that asked for it."""
    if not any(done_of(reply_id)(e) for e in socket.seen):
        await socket.until(done_of(reply_id))


async def generation(session: aiohttp.ClientSession, server: Server, reply_id: str) -> dict[str, Any]:
    async with session.get(f"{server.url}/chat/api/generations/{reply_id}") as response:
        assert response.status == 200, await response.text()
        return (await response.json())["generation"]  # type: ignore[no-any-return]


def unheard(server: Server) -> float:
    """Channel messages the writer did not send because no other process listened (its /metrics)."""
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('clawdbot_reply_log_mirror_total{what="unheard"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no unheard count in /metrics")


# ---- WebSocket ----------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_reply_written_on_one_process_is_followed_live_on_another(
    session: aiohttp.ClientSession, a: Server, b: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()["id"]
    script(simulator, {"match": "follow me", "reply": ANSWER, "thinking": THOUGHT})
    tab = await connect(session, b.url)
    assert (await tab.command("subscribe", conversation_id=conversation))["type"] == "ack"
    writer = await sending(session, a, conversation, "follow me")
    reply_id = writer.reply_id  # type: ignore[attr-defined]

    first = await tab.until(lambda e: e["type"] == "reply.delta")
    state = await generation(session, a, reply_id)
    assert state["live"] is True  # B had text while A was still writing
    events = first + await tab.until(done_of(reply_id))
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
    assert events[0]["message"]["content"] == "follow me"
    whole(reply_events(events, reply_id))
    await writer.until(done_of(reply_id))
    assert reply_events(writer.seen, reply_id) == reply_events(events, reply_id)  # the very same events
    stored = api.wait_reply(conversation, reply_id)
    assert events[-1]["message"] == stored


@pytest.mark.asyncio
async def test_a_reply_is_resumed_on_another_process_from_any_seq_while_it_runs_and_after_it_ended(
    session: aiohttp.ClientSession, a: Server, b: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()["id"]
    script(simulator, {"match": "resume me", "reply": ANSWER, "thinking": THOUGHT})
    writer = await sending(session, a, conversation, "resume me")
    reply_id = writer.reply_id  # type: ignore[attr-defined]
    await writer.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= 12)

    from_start, from_middle = await connect(session, b.url), await connect(session, b.url)
    ack = await from_start.command("resume", reply_id=reply_id, **{"from": 1})
    assert (ack["type"], ack["conversation_id"], ack["live"]) == ("ack", conversation, True)
    assert 1 <= ack["seq"] <= 12 + 40  # as far as Redis had it: a tick behind the writer at most
    ack = await from_middle.command("resume", reply_id=reply_id, **{"from": 7})
    assert (ack["type"], ack["live"]) == ("ack", True)
    live = await generation(session, b, reply_id)
    assert (live["live"], live["conversation_id"]) == (True, conversation)
    assert live["snapshot"]["seq"] >= 1
    assert THOUGHT.startswith(live["snapshot"]["thinking"])

    await to_the_end(from_start, reply_id)
    await to_the_end(from_middle, reply_id)
    whole(reply_events(from_start.seen, reply_id))
    middle = reply_events(from_middle.seen, reply_id)
    assert seqs(middle) == list(range(7, 7 + len(middle)))
    assert seqs(middle)[-1] == seqs(reply_events(from_start.seen, reply_id))[-1]
    await writer.until(done_of(reply_id))
    everything = reply_events(writer.seen, reply_id)
    assert reply_events(from_start.seen, reply_id) == everything

    after = await connect(session, b.url)  # ended, still kept (a minute): the events, not the stored row
    ack = await after.command("resume", reply_id=reply_id, **{"from": 1})
    assert (ack["live"], ack["seq"]) == (False, len(everything))
    await to_the_end(after, reply_id)
    assert reply_events(after.seen, reply_id) == everything
    tail = await connect(session, b.url)
    await tail.command("resume", reply_id=reply_id, **{"from": len(everything) - 1})
    await to_the_end(tail, reply_id)
    assert reply_events(tail.seen, reply_id) == everything[-2:]
    ended = await generation(session, b, reply_id)
    assert (ended["live"], ended["seq"], ended["snapshot"]["content"]) == (False, len(everything), ANSWER)

    unknown = await connect(session, b.url)
    error = await unknown.command("resume", reply_id="0190b0c0-0000-7000-8000-000000000000", **{"from": 1})
    assert (error["type"], error["code"]) == ("error", "not_found")


@pytest.mark.asyncio
async def test_a_second_tab_on_another_process_sees_new_messages_titles_and_queue_positions(
    session: aiohttp.ClientSession, a: Server, b: Server, simulator: Server, api: ChatApi
) -> None:
    script(
        simulator,
        {"match": "the first", "reply": ANSWER, "thinking": ""},
        {"match": "the second", "reply": "Short.", "thinking": ""},
        {"match": ASKED, "reply": "Told Everywhere", "thinking": "", "times": -1},
    )
    first, second = api.create()["id"], api.create()["id"]
    tab = await connect(session, b.url)
    for conversation in (first, second):
        await tab.command("subscribe", conversation_id=conversation)
    running = api.send(first, "the first")["reply"]["id"]
    waiting = api.send(second, "the second")["reply"]["id"]  # A runs one at a time: this one waits
    queued = (await tab.until(lambda e: e["type"] == "reply.queue" and e["id"] == waiting))[-1]
    assert (queued["conversation_id"], queued["queue_position"]) == (second, 1)
    state = await generation(session, b, waiting)
    assert (state["live"], state["queue_position"]) == (True, 1)
    await tab.until(done_of(waiting))
    titles = {e["conversation_id"]: e["title"] for e in await tab.until(lambda e: e["type"] == "conversation.title")}
    if len(titles) < 2:
        titles.update(
            (e["conversation_id"], e["title"]) for e in await tab.until(lambda e: e["type"] == "conversation.title")
        )
    assert titles == {first: "Told Everywhere", second: "Told Everywhere"}
    news = [e for e in tab.seen if e["type"] == "message.new"]
    assert [(e["conversation_id"], e["message"]["content"]) for e in news] == [
        (first, "the first"),
        (second, "the second"),
    ]
    done = {e["id"] for e in tab.seen if e["type"] == "reply.done"}
    assert done == {running, waiting}


# ---- SSE ----------------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_both_event_streams_work_on_another_process(
    session: aiohttp.ClientSession, a: Server, b: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()["id"]
    script(simulator, {"match": "over sse", "reply": ANSWER, "thinking": THOUGHT})
    response = await session.get(f"{b.url}/chat/api/conversations/{conversation}/events")
    stream = EventStream(response)
    assert (await stream.next())["type"] == "hello"
    reply_id = api.send(conversation, "over sse")["reply"]["id"]
    events = await stream.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= 10)
    assert events[0]["type"] == "message.new"
    last_id = stream.last_id
    assert last_id == f"{reply_id}:{events[-1]['seq']}"
    response.close()

    # The reply's own stream, from the start, on B: everything, then it ends.
    async with session.get(f"{b.url}/chat/api/generations/{reply_id}/events", params={"from": "1"}) as own:
        reply_stream = EventStream(own)
        assert (await reply_stream.next())["type"] == "hello"
        whole(await reply_stream.until(done_of(reply_id)))
        assert (await own.content.read()).strip() == b""  # and the stream ended

    # A conversation stream that reconnects with Last-Event-ID gets the rest of that reply, not a snapshot.
    async with session.get(
        f"{b.url}/chat/api/conversations/{conversation}/events", headers={"Last-Event-ID": last_id or ""}
    ) as again:
        rest_stream = EventStream(again)
        assert (await rest_stream.next())["type"] == "hello"
        rest = await rest_stream.until(done_of(reply_id))
    assert seqs(rest) == list(range(events[-1]["seq"] + 1, events[-1]["seq"] + 1 + len(rest)))
    assert deltas(events, "thinking") + deltas(rest, "thinking") == THOUGHT
    assert deltas(events, "content") + deltas(rest, "content") == ANSWER


# ---- keys ---------------------------------------------------------------------------------------------------------
def test_a_replys_keys_carry_its_id_as_hash_tag_and_expire_once_it_has_ended(
    cluster: tuple[Server, Server, str], a: Server, simulator: Server, api: ChatApi
) -> None:
    prefix = cluster[2]
    conversation = api.create()["id"]
    script(simulator, {"match": "keys", "reply": ANSWER, "thinking": ""})
    reply_id = api.send(conversation, "keys")["reply"]["id"]
    stream, registry = f"{prefix}:{{{reply_id}}}:log", f"{prefix}:{{{reply_id}}}:job"
    client = redis_or_skip()
    try:
        wait_until(lambda: client.xlen(stream) >= 5, "the reply's first events in Redis")
        assert client.type(stream) == b"stream"
        assert client.type(registry) == b"hash"
        assert 60 < client.ttl(stream) <= 3600  # while it runs: only a dead writer's keys expire
        node = httpx.get(f"{a.url}/readyz").json()["redis"]["node"]
        assert client.hget(registry, "node") == node.encode()
        assert client.hget(registry, "finished") is None
        stored = api.wait_reply(conversation, reply_id)
        wait_until(lambda: client.hget(registry, "finished") == b"1", "the reply's end in Redis")
        fields = client.hgetall(registry)
        seq = int(fields[b"seq"])
        assert (fields[b"status"], fields[b"conversation"]) == (b"done", conversation.encode())
        assert fields[b"message"].startswith(b'{"id":"' + reply_id.encode())
        assert b'"status":"done"' in fields[b"message"]
        entries = client.xrange(stream)
        assert [e[0] for e in entries] == [f"{n}-0".encode() for n in range(1, seq + 1)]
        assert stored["content"] in entries[-1][1][b"d"].decode()  # reply.done carries the stored row
        assert 0 < client.ttl(stream) <= 60
        assert 0 < client.ttl(registry) <= 60
        ours = [k for k in keys(prefix) if reply_id in k]
        assert sorted(ours) == sorted([stream, registry])
    finally:
        client.close()


# ---- without Redis ------------------------------------------------------------------------------------------------
class Cut:
    """A TCP forwarder in front of Redis that can drop every connection and refuse new ones, then let them in."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.open = threading.Event()
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.links += [client, upstream]
            for one, other in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(one, other), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for link in self.links:
                with contextlib.suppress(OSError):
                    link.shutdown(socket.SHUT_RDWR)
                link.close()
            self.links.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.mark.asyncio
async def test_without_redis_replies_stream_here_and_redis_catches_up_when_it_is_back(
    session: aiohttp.ClientSession, cluster: tuple[Server, Server, str], b: Server, simulator: Server
) -> None:
    prefix = cluster[2]
    parsed = redis.connection.parse_url(REDIS_URL)
    cut = Cut(parsed.get("host", "127.0.0.1"), int(parsed.get("port", 6379)))
    database = next(arg for i, arg in enumerate(b.args) if b.args[i - 1] == "--database-url")
    url = f"redis://127.0.0.1:{cut.port}/{parsed.get('db', 0)}"
    flaky = start_gateway(simulator.url, "--database-url", database, "--redis-url", url, "--redis-prefix", prefix)
    try:
        with chat_api(flaky.url) as api:
            conversation = api.create()["id"]
        # Twice as long as the others (about 5.5 s): it must outlast the outage's detection (/readyz, ~1 s).
        long_answer = f"{ANSWER} {ANSWER}"
        script(simulator, {"match": "no redis", "reply": long_answer, "thinking": THOUGHT})
        tab = await connect(session, flaky.url)
        await tab.command("subscribe", conversation_id=conversation)
        # A new turn needs Redis (the 409 across processes): the reply starts, then Redis goes away mid-reply.
        writer = await sending(session, flaky, conversation, "no redis")
        reply_id = writer.reply_id  # type: ignore[attr-defined]
        await writer.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= 4)
        cut.cut()
        wait_until(lambda: httpx.get(f"{flaky.url}/readyz").json()["redis"]["status"] == "unavailable", "/readyz")
        cut_at = max(e.get("seq", 0) for e in writer.seen)
        await writer.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= cut_at + 8)
        await tab.until(lambda e: e["type"] == "reply.delta" and e["seq"] >= cut_at + 8)  # the other tab here too
        cut.restore()
        await writer.until(done_of(reply_id), within=20)
        await tab.until(done_of(reply_id))
        whole(reply_events(writer.seen, reply_id), long_answer)
        whole(reply_events(tab.seen, reply_id), long_answer)
        client = redis_or_skip()
        stream = f"{prefix}:{{{reply_id}}}:log"
        last = reply_events(writer.seen, reply_id)[-1]["seq"]
        wait_until(lambda: client.xlen(stream) == last, "the stream to catch up", timeout=10)
        client.close()
        caught_up = await connect(session, b.url)
        await caught_up.command("resume", reply_id=reply_id, **{"from": 1})
        await to_the_end(caught_up, reply_id)
        assert reply_events(caught_up.seen, reply_id) == reply_events(writer.seen, reply_id)
    finally:
        flaky.stop()
        cut.close()


# ---- past the caps ------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_past_the_caps_redis_keeps_a_folded_base_and_any_process_replays_and_follows_the_whole_reply() -> None:
    """Two processes' logs on one Redis, without gateways: the writer's caps fold old events (in a burst before they
    were sent, and bit by bit), the stream is trimmed to the folded base, and the other process still replays the
    whole reply (a snapshot, then the events), follows it without gap or repeat, and reads its state for a
    takeover."""
    with redis_prefix() as prefix:
        lives = [Live(REDIS_URL, prefix), Live(REDIS_URL, prefix)]
        for live in lives:
            await live.open()
        writer, reader = (RedisLog(live, max_events=16, gap=0.001) for live in lives)
        message = new_message("c1", "assistant", status="waiting")
        reply_id = message.id
        writer.register(Job(reply_id, "c1", "someone", message))
        writer.append(reply_id, {"type": "reply.start", "conversation_id": "c1", "id": reply_id, "message": message})
        pieces = [f"{i} " for i in range(300)]

        def write(some: list[str]) -> None:
            for piece in some:
                writer.append(
                    reply_id, {"type": "reply.delta", "conversation_id": "c1", "id": reply_id, "content": piece}
                )

        write(pieces[:100])  # in one go: most are folded before they reach Redis
        await writer.mirror.flush()
        for start in range(100, 200, 5):  # bit by bit
            write(pieces[start : start + 5])
            await asyncio.sleep(0.003)
        await writer.mirror.flush()
        client = redis_or_skip()
        stream, registry = f"{prefix}:{{{reply_id}}}:log", f"{prefix}:{{{reply_id}}}:job"
        try:
            base = int(client.hget(registry, "base_seq") or 0)
            assert 100 < base <= 201 - 16
            assert client.xlen(stream) <= 16 + 16 + 100  # the base moves along; trimming is approximate
        finally:
            client.close()

        events = [orjson.loads(data) for data in await reader.replay(reply_id, 1) or []]
        assert (events[0]["type"], events[0]["seq"]) == ("reply.snapshot", base)
        assert [e["seq"] for e in events[1:]] == list(range(base + 1, 202))
        assert events[0]["content"] + deltas(events[1:], "content") == "".join(pieces[:200])

        follower = Collected(until=301)
        assert await reader.follow(reply_id, 190, follower)
        write(pieces[200:])
        writer.finish(reply_id)
        await writer.mirror.flush()
        async with asyncio.timeout(5):
            await follower.complete.wait()
        assert [e["seq"] for e in follower.events] == list(range(190, 302))
        assert deltas(follower.events, "content") == "".join(pieces[188:])
        reader.unfollow(reply_id, follower)
        assert not reader.handlers  # nobody here listens: the channel is left

        state = await reader.state(reply_id)
        assert state is not None
        assert (state["seq"], state["content"], state["finished"]) == (301, "".join(pieces), True)
        assert (state["node"], state["owner"], state["message"].id) == (lives[0].node, "someone", reply_id)
        assert await reader.state("0190b0c0-0000-7000-8000-000000000000") is None
        for log, live in zip((writer, reader), lives, strict=True):
            await log.close()
            await live.close()


class Collected:
    def __init__(self, until: int) -> None:
        self.events: list[dict[str, Any]] = []
        self.until, self.complete = until, asyncio.Event()

    def push(self, data: bytes) -> None:
        self.events.append(orjson.loads(data))
        if self.events[-1].get("seq", 0) >= self.until:
            self.complete.set()


@pytest.mark.asyncio
async def test_a_reply_nobody_elsewhere_follows_is_not_published_and_one_somebody_does_is(
    session: aiohttp.ClientSession, a: Server, b: Server, simulator: Server, api: ChatApi
) -> None:
    conversation = api.create()["id"]
    script(simulator, {"match": "only here", "reply": ANSWER, "thinking": THOUGHT})
    own = await connect(session, a.url)  # a tab on the writer's process only
    assert (await own.command("subscribe", conversation_id=conversation))["type"] == "ack"
    before = unheard(a)
    writer = await sending(session, a, conversation, "only here")
    await to_the_end(own, writer.reply_id)  # type: ignore[attr-defined]
    alone = unheard(a) - before
    assert alone >= 10  # its events went to its own tab, not over Redis back to itself

    tab = await connect(session, b.url)  # now a tab elsewhere too: every event must reach it
    assert (await tab.command("subscribe", conversation_id=conversation))["type"] == "ack"
    script(simulator, {"match": "seen there", "reply": ANSWER, "thinking": THOUGHT})
    before = unheard(a)
    writer = await sending(session, a, conversation, "seen there")
    reply_id = writer.reply_id  # type: ignore[attr-defined]
    whole(reply_events(await tab.until(done_of(reply_id)), reply_id))
    assert unheard(a) == before


# Last in the module: on a Redis Cluster, B's pub/sub may be made again a second time a second or so after the
# kill, and the resync it then sends would land among a later test's events on these module-scoped replicas.
@pytest.mark.asyncio
async def test_after_a_gap_in_a_processs_channels_its_tabs_are_told_to_read_their_conversations_again(
    session: aiohttp.ClientSession, a: Server, b: Server, simulator: Server, api: ChatApi
) -> None:
    """What was published while a process's pub/sub link was down never reaches it; a reply's events show that by
    their seq, a conversation's own (a new message, a title) would not. Its tabs are told to read again instead."""
    script(simulator, {"match": "after the gap", "reply": "Fine.", "thinking": ""})
    conversation = api.create()["id"]
    tab = await connect(session, b.url)
    await tab.command("subscribe", conversation_id=conversation)
    idle = await connect(session, b.url)  # follows no conversation: nothing to read again
    assert kill_pubsub(REDIS_URL) >= 2  # A's link and B's: both make it again
    told = (await tab.until(lambda e: e["type"] == "conversation.resync", within=20))[-1]
    assert told == {"type": "conversation.resync", "conversation_id": conversation}
    assert (await idle.command("ping"))["type"] == "pong"
    assert not [e for e in idle.seen if e["type"] == "conversation.resync"]
    # B listens on the channel again: what A publishes from now on reaches the tab, or, where B's channels had
    # another gap meanwhile (a Redis Cluster's pub/sub may be made again twice), the tab is told again.
    reply = api.send(conversation, "after the gap")["reply"]["id"]
    await tab.until(done_of(reply), within=20)
    after = [e["type"] for e in tab.seen[tab.seen.index(told) + 1 :]]
    news = [e["message"]["content"] for e in tab.seen if e["type"] == "message.new"]
    assert news == ["after the gap"] or "conversation.resync" in after, after
