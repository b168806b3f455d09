"""Running replies across gateway processes (Redis): the 409, a retried send, Stop and Delete reach the process
writing the reply, and only replies whose writer is gone are ended (a restart of another replica does not
interrupt a reply being written; kill -9 of its writer leaves it to the sweep, which ends it within seconds).
Redis going away: tests/test_live_replies_outage.py.

Every test runs real gateway processes on one PostgreSQL database and one Redis (tests/live_support.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from chat_support import ChatApi, chat_api, sim_runner, wait_until
from conftest import Server, start_simulator
from live_support import deployment, keys, start_replica, start_replicas
from replies_support import TOKENS, ended, reply_row, start_writing, text


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", str(TOKENS))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[str, str]]:
    with deployment() as found:
        yield found


@pytest.fixture(scope="module")
def replicas(simulator: Server, shared: tuple[str, str]) -> Iterator[list[Server]]:
    servers = start_replicas(2, simulator.url, *shared)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def apis(replicas: list[Server]) -> Iterator[tuple[ChatApi, ChatApi]]:
    with chat_api(replicas[0].url) as a, chat_api(replicas[1].url) as b:
        yield a, b


def test_a_send_on_another_replica_gets_409_and_a_retried_one_gets_the_first_answer(
    apis: tuple[ChatApi, ChatApi], simulator: Server
) -> None:
    a, b = apis
    conversation, sent = start_writing(a, simulator, 8, "first-send")
    reply_id = sent["reply"]["id"]

    other = b.http.post(f"/conversations/{conversation}/messages", json={"content": "me too", "client_id": "other"})
    assert other.status_code == 409, other.text
    body = other.json()
    assert (body["code"], body["reply_id"]) == ("conflict", reply_id)
    assert body["events"] == f"/chat/api/generations/{reply_id}/events"

    again = b.http.post(
        f"/conversations/{conversation}/messages", json={"content": "write at length", "client_id": "first-send"}
    )
    assert again.status_code == 200, again.text  # that send was already taken: not a second turn
    answer = again.json()
    assert answer["duplicate"] is True
    assert (answer["message"]["id"], answer["reply"]["id"]) == (sent["message"]["id"], reply_id)
    regenerate = b.http.post(f"/conversations/{conversation}/regenerate")
    assert regenerate.status_code == 409, regenerate.text

    a.http.post(f"/conversations/{conversation}/stop")
    ended(a, conversation, reply_id, timeout=10)
    shown = b.view(conversation)["messages"]
    assert [m["id"] for m in shown] == [sent["message"]["id"], reply_id]  # one message, one reply
    free = b.send(conversation, "and now?")  # the conversation is free everywhere once the reply is stored
    ended(b, conversation, free["reply"]["id"], timeout=10)


@pytest.mark.asyncio
async def test_a_send_retried_on_another_replica_while_the_first_is_starting_waits_for_its_answer(
    replicas: list[Server], shared: tuple[str, str]
) -> None:
    a, b = (f"{server.url}/chat/api/conversations" for server in replicas)
    async with httpx.AsyncClient(timeout=30) as http:
        conversation = (await http.post(a, json={})).json()["conversation"]["id"]
        send = {"content": "slow to start", "client_id": "starting"}
        # The first send's write waits for this lock: its turn stays starting on A meanwhile.
        database = await asyncpg.connect(shared[0])
        try:
            locked = database.transaction()
            await locked.start()
            await database.execute("SELECT id FROM conversations WHERE id = $1 FOR UPDATE", conversation)
            first = asyncio.create_task(http.post(f"{a}/{conversation}/messages", json=send))
            await asyncio.to_thread(
                wait_until, lambda: f"{shared[1]}:{{{conversation}}}:turn" in keys(shared[1]), "the turn to start"
            )
            other = await http.post(f"{b}/{conversation}/messages", json={"content": "me too"})
            assert other.status_code == 409, other.text  # a turn is starting there: no reply to name yet
            assert "reply_id" not in other.json()
            retried = asyncio.create_task(http.post(f"{b}/{conversation}/messages", json=send))
            await asyncio.sleep(1)
            assert not retried.done()  # it waits for the first one's answer
            await locked.commit()
        finally:
            await database.close()
        answered, again = await first, await retried
    assert answered.status_code == 202, answered.text
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["message"]["id"] == answered.json()["message"]["id"]
    assert again.json()["reply"]["id"] == answered.json()["reply"]["id"]


def test_stop_on_another_replica_stops_the_writer(apis: tuple[ChatApi, ChatApi], simulator: Server) -> None:
    a, b = apis
    cancelled = sim_runner(simulator.url)["cancelled_total"]
    long = text(20)
    conversation, sent = start_writing(a, simulator, 20, "stop-me")
    reply_id = sent["reply"]["id"]

    stopping = b.http.post(f"/conversations/{conversation}/stop")
    assert stopping.status_code == 200, stopping.text
    assert stopping.json() == {"stopping": reply_id}
    row = ended(b, conversation, reply_id, timeout=10)
    assert row["status"] == "stopped"
    assert row["content"]
    assert long.startswith(row["content"])
    assert len(row["content"]) < len(long)
    wait_until(lambda: sim_runner(simulator.url)["cancelled_total"] > cancelled, "the backend request to close")
    assert b.http.post(f"/conversations/{conversation}/stop").json() == {"stopping": None}


def test_delete_on_another_replica_stops_the_reply_and_deletes(
    apis: tuple[ChatApi, ChatApi], simulator: Server, shared: tuple[str, str]
) -> None:
    a, b = apis
    cancelled = sim_runner(simulator.url)["cancelled_total"]
    conversation, _ = start_writing(a, simulator, 20, "delete-me")
    assert any(f"{{{conversation}}}:reply" in key for key in keys(shared[1]))

    deleted = b.http.delete(f"/conversations/{conversation}")
    assert deleted.status_code == 204, deleted.text
    wait_until(lambda: sim_runner(simulator.url)["cancelled_total"] > cancelled, "the backend request to close")
    assert a.http.get(f"/conversations/{conversation}").status_code == 404
    wait_until(
        lambda: not any(f"{{{conversation}}}" in key for key in keys(shared[1])), "the conversation's keys to go"
    )


def test_a_replica_restarting_does_not_interrupt_another_ones_reply(
    apis: tuple[ChatApi, ChatApi], simulator: Server, shared: tuple[str, str]
) -> None:
    a, _ = apis
    long = text(8)
    other = start_replica(simulator.url, *shared)
    conversation, sent = start_writing(a, simulator, 8, "keep-going")
    other.stop()
    restarted = start_replica(simulator.url, *shared)  # a new process: its startup sweeps
    try:
        with chat_api(restarted.url) as c:
            assert reply_row(c, conversation, sent["reply"]["id"])["status"] == "writing"
            busy = c.http.post(f"/conversations/{conversation}/messages", json={"content": "hello"})
            assert busy.status_code == 409, busy.text
            row = ended(c, conversation, sent["reply"]["id"], timeout=30)
        assert (row["status"], row["content"]) == ("done", long)
    finally:
        restarted.stop()


def test_kill_9_of_the_writer_leaves_its_reply_to_the_sweep_and_a_stop_need_not_wait_for_it(
    apis: tuple[ChatApi, ChatApi], simulator: Server, shared: tuple[str, str]
) -> None:
    _, b = apis
    long = text(30)
    doomed = start_replica(simulator.url, *shared)
    with chat_api(doomed.url) as c:
        conversation, sent = start_writing(c, simulator, 30, "crash")
        stopped, to_stop = start_writing(c, simulator, 30, "crash-and-stop")
        reply_id = sent["reply"]["id"]
    time.sleep(1.5)  # more checkpointed text
    doomed.kill()
    killed_at = time.monotonic()
    at_kill = reply_row(b, conversation, reply_id)
    assert at_kill["status"] == "writing"  # nobody ended it for the dead writer

    # A Stop does not wait for the sweep: once the writer is known gone (its lease ran out while it never heard),
    # the reply is stored as stopped, with its checkpointed text.
    stopping = b.http.post(f"/conversations/{stopped}/stop")
    assert stopping.json() == {"stopping": to_stop["reply"]["id"]}
    row = reply_row(b, stopped, to_stop["reply"]["id"])
    assert (row["status"], row["error_kind"]) == ("stopped", None)
    assert row["content"]
    assert long.startswith(row["content"])

    # The sweep finds it orphaned and a live replica takes it over (test_live_takeover.py checks the text to the
    # character): it goes on from where it was and ends done, as the same reply.
    row = ended(b, conversation, reply_id, timeout=40)
    assert (row["status"], row["error_kind"]) == ("done", None)
    assert row["content"].startswith(at_kill["content"])
    assert len(row["content"]) > len(at_kill["content"])
    assert time.monotonic() - killed_at > 4  # not before its lease ran out
    assert b.send(conversation, "go on")["reply"]["id"]  # the conversation is free again
    assert reply_row(b, stopped, to_stop["reply"]["id"])["status"] == "stopped"  # the sweep left it so
