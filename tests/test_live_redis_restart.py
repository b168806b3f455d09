"""Redis restarted empty while replies stream: nothing is lost that a live process still holds.

Two replicas on one PostgreSQL database and a Redis of the test's own (no persistence: a restart loses every key).
A reply that streams on replica A through the restart is written to Redis again whole by A (its hash, its row,
every event), so when A is later killed, B takes it over from its last event and the tab that resumes there gets
the whole text, as if Redis had never gone. A reply whose writer died while Redis was down is in neither Redis
nor any process: until the sweep ends it, a resume is answered 503 (try again), never a `reply.done` that would
tell the page a reply still `writing` has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio

from chat_support import chat_api, connect, done_of, postgres_database
from conftest import Server, script, start_gateway, start_simulator
from live_support import OwnRedis
from test_live_takeover import ANSWER, THOUGHT, numbered, text_of


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "20")
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replicas(simulator: Server, own_redis: OwnRedis) -> Iterator[tuple[Server, Server]]:
    with postgres_database() as database:
        shared = ("--database-url", database, "--redis-url", own_redis.url, "--heartbeat", "0.5")
        a, b = start_gateway(simulator.url, *shared), start_gateway(simulator.url, *shared)
        try:
            yield a, b
        finally:
            a.stop()
            b.stop()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as client:
        yield client


def redis_ok(*servers: Server) -> None:
    deadline = time.monotonic() + 15
    while any(httpx.get(f"{s.url}/readyz").json()["redis"]["status"] != "ok" for s in servers):
        assert time.monotonic() < deadline, "a replica did not see Redis back"
        time.sleep(0.1)


async def streaming_on_a(session: aiohttp.ClientSession, simulator: Server, a: Server) -> tuple[Any, str, str]:
    """A reply streaming from A to a tab on A, 15 events in: (the tab, the conversation, the reply)."""
    with chat_api(a.url) as api:
        conversation = api.create()["id"]
    script(simulator, {"match": "tell me", "reply": ANSWER, "thinking": THOUGHT, "times": 2})
    tab = await connect(session, a.url)
    ack = await tab.command("send", conversation_id=conversation, content="tell me about foxes")
    assert ack["type"] == "ack", ack
    reply_id = ack["reply"]["id"]
    await tab.until(lambda e: e["type"] == "reply.delta" and "content" in e and e["seq"] >= 15)
    return tab, conversation, reply_id


async def resume(session: aiohttp.ClientSession, url: str, reply_id: str, start: int) -> tuple[Any, dict[str, Any]]:
    tab = await connect(session, url)
    return tab, await tab.command("resume", reply_id=reply_id, **{"from": start})


@pytest.mark.asyncio
async def test_a_reply_redis_lost_is_written_again_and_taken_over_whole(
    session: aiohttp.ClientSession, simulator: Server, replicas: tuple[Server, Server], own_redis: OwnRedis
) -> None:
    a, b = replicas
    tab, conversation, reply_id = await streaming_on_a(session, simulator, a)
    own_redis.stop()
    await asyncio.sleep(1.0)
    own_redis.start()  # empty: the reply's hash and stream are gone
    await asyncio.to_thread(redis_ok, a, b)
    await tab.until(lambda e: e.get("id") == reply_id and e.get("seq", 0) >= 40, within=20)  # goes on on A
    await asyncio.sleep(2.0)  # A notices the loss (it checks each second) and writes the reply again

    a.kill()  # SIGKILL: B must take over from what Redis has of the reply
    with contextlib.suppress(AssertionError):
        await tab.until(lambda e: False, within=1.0)
    before = [e for e in tab.seen if e.get("id") == reply_id]
    last = max(numbered(before, reply_id))
    resumed, answer = await resume(session, b.url, reply_id, last + 1)
    assert answer["type"] == "ack", answer  # Redis has the reply: resumable at once, whoever writes it
    await resumed.until(done_of(reply_id), within=60)
    everything = before + [e for e in resumed.seen if e.get("id") == reply_id]
    assert numbered(everything, reply_id) == list(range(1, numbered(everything, reply_id)[-1] + 1))
    assert text_of(everything, reply_id, "thinking") == THOUGHT
    assert text_of(everything, reply_id, "content") == ANSWER
    assert everything[-1]["message"]["status"] == "done"
    with chat_api(b.url) as api:
        stored = api.view(conversation)["messages"][-1]
    assert (stored["id"], stored["status"], stored["content"]) == (reply_id, "done", ANSWER)
    assert "took over a reply whose writer is gone" in b.logs()
    await asyncio.gather(tab.ws.close(), resumed.ws.close())


@pytest.mark.asyncio
async def test_a_reply_whose_writer_died_while_redis_was_down_is_503_until_the_sweep_ends_it(
    session: aiohttp.ClientSession, simulator: Server, replicas: tuple[Server, Server], own_redis: OwnRedis
) -> None:
    a, b = replicas
    tab, conversation, reply_id = await streaming_on_a(session, simulator, a)
    own_redis.stop()
    await asyncio.sleep(1.5)  # A checkpoints the text to the database meanwhile
    a.kill()
    own_redis.start()  # empty, and A is gone: no process and no key has the reply
    await asyncio.to_thread(redis_ok, b)

    again, answer = await resume(session, b.url, reply_id, 1)
    assert (answer["type"], answer.get("code")) == ("error", "redis_unavailable"), answer
    assert not [e for e in again.seen if e["type"] == "reply.done"]  # its row says writing: not an ending
    deadline = time.monotonic() + 40
    while True:  # the sweep finds it (the database scan after Redis lost its data), past its lease and quiet spell
        await again.ws.close()
        again, answer = await resume(session, b.url, reply_id, 1)
        if answer["type"] == "ack":
            break
        assert answer.get("code") == "redis_unavailable", answer
        assert time.monotonic() < deadline, "the sweep did not end the reply"
        await asyncio.sleep(1.0)
    done = [e for e in again.seen if done_of(reply_id)(e)]  # the stored row comes before the ack
    assert [(e["seq"], e["message"]["status"]) for e in done] == [(None, "interrupted")], again.seen
    with chat_api(b.url) as api:
        stored = api.view(conversation)["messages"][-1]
    assert (stored["id"], stored["status"]) == (reply_id, "interrupted")
    assert stored["content"]  # the checkpointed text, kept
    assert ANSWER.startswith(stored["content"])
    await asyncio.gather(tab.ws.close(), again.ws.close())
