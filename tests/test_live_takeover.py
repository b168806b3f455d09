"""A replica dying mid-reply loses nothing: another takes the reply over from its last event, as the same reply.

Two replicas on one PostgreSQL database and one Redis. A reply streams from replica A to a tab on A; A is killed
with SIGKILL; the tab reconnects to B and resumes from the last seq it had. The reply goes on (B's sweep finds it
orphaned, takes it over, and the model continues its own last message) with the same id and the seq going on, and
the text the tab ends up with is the whole reply: nothing lost, nothing twice. The stored row is the same reply,
done, with that text.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from chat_support import chat_api, connect, done_of
from conftest import Server, script, start_simulator
from live_support import deployment, start_replica

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "judge"]
ANSWER = " ".join(WORDS[i % len(WORDS)] for i in range(160))  # a token a word: 8 s at 20 tokens/s
THOUGHT = "Let me think about foxes."


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "20")
    yield server
    server.stop()


@pytest.fixture
def replicas(simulator: Server) -> Iterator[tuple[Server, Server]]:
    with deployment() as (database, prefix):
        a = start_replica(simulator.url, database, prefix, "--heartbeat", "0.5")
        b = start_replica(simulator.url, database, prefix, "--heartbeat", "0.5")
        try:
            yield a, b
        finally:
            a.stop()
            b.stop()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as client:
        yield client


def text_of(events: list[dict[str, Any]], reply_id: str, kind: str) -> str:
    return "".join(e.get(kind, "") for e in events if e["type"] == "reply.delta" and e["id"] == reply_id)


def numbered(events: list[dict[str, Any]], reply_id: str) -> list[int]:
    return [e["seq"] for e in events if e.get("id") == reply_id and "seq" in e and e["type"] != "reply.snapshot"]


async def goes_on_elsewhere(
    session: aiohttp.ClientSession, simulator: Server, replicas: tuple[Server, Server], end: Callable[[Server], None]
) -> float:
    """A reply streams from A; `end` ends A; a tab resumes on B from the last seq it had and gets the rest. Checks
    that nothing was lost or repeated and the stored row is the same reply, done; the longest pause the tab saw."""
    a, b = replicas
    with chat_api(a.url) as api:
        conversation = api.create()["id"]
    # Twice: the request of the replica that ends, and the one that continues the reply.
    script(simulator, {"match": "tell me", "reply": ANSWER, "thinking": THOUGHT, "times": 2})
    tab = await connect(session, a.url)
    ack = await tab.command("send", conversation_id=conversation, content="tell me about foxes")
    assert ack["type"] == "ack", ack
    reply_id = ack["reply"]["id"]
    await tab.until(lambda e: e["type"] == "reply.delta" and "content" in e and e["seq"] >= 15)
    end(a)
    with contextlib.suppress(AssertionError):  # what A sent before its socket closed (SIGTERM closes it: 1001)
        await tab.until(lambda e: False, within=1.0)
    before = [e for e in tab.seen if e.get("id") == reply_id]
    last = max(numbered(before, reply_id))
    paused_from = time.monotonic()

    resumed = await connect(session, b.url)  # as the page does through the proxy: to a live replica
    answer = await resumed.command("resume", reply_id=reply_id, **{"from": last + 1})
    assert answer["type"] == "ack", answer
    first_new = await resumed.until(lambda e: e.get("id") == reply_id and e.get("seq", 0) > last, within=60)
    pause = time.monotonic() - paused_from
    assert first_new
    await resumed.until(done_of(reply_id), within=60)
    after = [e for e in resumed.seen if e.get("id") == reply_id]

    everything = before + after
    assert numbered(everything, reply_id) == list(range(1, numbered(everything, reply_id)[-1] + 1))
    assert text_of(everything, reply_id, "thinking") == THOUGHT
    assert text_of(everything, reply_id, "content") == ANSWER
    done = everything[-1]
    assert done["type"] == "reply.done"
    assert done["message"]["id"] == reply_id
    assert done["message"]["status"] == "done"

    with chat_api(b.url) as api:
        stored = api.view(conversation)["messages"]
    assert [m["id"] for m in stored][-1] == reply_id  # the same row, not a new version
    assert (stored[-1]["status"], stored[-1]["content"], stored[-1]["thinking"]) == ("done", ANSWER, THOUGHT)
    await asyncio.gather(tab.ws.close(), resumed.ws.close())
    return pause


@pytest.mark.asyncio
async def test_a_reply_goes_on_as_itself_after_its_replica_is_killed(
    session: aiohttp.ClientSession, simulator: Server, replicas: tuple[Server, Server]
) -> None:
    await goes_on_elsewhere(session, simulator, replicas, lambda a: a.kill())  # SIGKILL: no shutdown, no last write


@pytest.mark.asyncio
async def test_a_rolling_restart_hands_the_reply_over_without_waiting_for_a_lease(
    session: aiohttp.ClientSession, simulator: Server, replicas: tuple[Server, Server]
) -> None:
    def stop(a: Server) -> None:  # SIGTERM, as systemd or a rolling upgrade stops a replica
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=30) == 0

    pause = await goes_on_elsewhere(session, simulator, replicas, stop)
    # Handed over: the next sweep takes it (every 2 s), not the 5 s lease plus the quiet spell of a dead writer's.
    assert pause < 5.0, pause
