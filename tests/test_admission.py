"""Admission control: K generations at once per backend, a bounded queue that is round-robin between users,
queue positions on the page's events, and 429/503 with Retry-After when the queue is full, on every API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
import pytest
import pytest_asyncio

from chat_support import ChatApi, Socket, chat_api, done_of, sim_runner, wait_until
from clawdbot.backends.admission import MemoryAdmission, Ticket
from clawdbot.errors import Overloaded
from conftest import Server, script, start_gateway, start_simulator

LONG = " ".join(f"w{i}" for i in range(60))  # 1.5 s at 40 tokens a second


# ---- the queue itself ----------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_greedy_user_does_not_hold_up_others_round_robin() -> None:
    admission = MemoryAdmission(1, max_queue=100, max_queue_per_user=100)
    running = await admission.enter("greedy")
    greedy = [await admission.enter("greedy") for _ in range(50)]
    light = [await admission.enter(f"light{i}") for i in range(3)]
    served: list[Ticket] = []
    admission.release(running)
    for _ in range(8):
        ticket = next(t for t in [*greedy, *light] if t.running and t not in served)
        served.append(ticket)
        admission.release(ticket)
    users = [t.user for t in served]
    # Each light user waited for at most one greedy turn per user ahead of it, not for fifty.
    assert users == ["greedy", "light0", "light1", "light2", "greedy", "greedy", "greedy", "greedy"]


@pytest.mark.asyncio
async def test_queue_positions_follow_the_order_of_service_and_are_told_as_they_change() -> None:
    admission = MemoryAdmission(1, max_queue=100, max_queue_per_user=100)
    running = await admission.enter("a")
    told: dict[str, list[int]] = {}

    async def enter(user: str, name: str) -> Ticket:
        return await admission.enter(user, lambda position: told.setdefault(name, []).append(position))

    a1, a2, b1 = await enter("a", "a1"), await enter("a", "a2"), await enter("b", "b1")
    await asyncio.sleep(0)  # positions are told once per loop turn, however many changed
    assert [t.position for t in admission.order()] == [1, 2, 3]
    assert admission.order() == [a1, b1, a2]
    assert told == {"a1": [1], "b1": [2], "a2": [3]}
    admission.release(running)  # a1 runs; b1 and a2 move up
    await asyncio.sleep(0)
    assert a1.running
    assert told == {"a1": [1], "b1": [2, 1], "a2": [3, 2]}


@pytest.mark.asyncio
async def test_a_waiter_that_is_cancelled_leaves_the_queue_and_never_holds_a_slot() -> None:
    admission = MemoryAdmission(1, max_queue=10, max_queue_per_user=10)
    running = await admission.enter("a")
    waiting = await admission.enter("b")
    task = asyncio.create_task(admission.wait(waiting))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (admission.queued, admission.running) == (0, 1)
    admission.release(running)
    assert (admission.queued, admission.running, waiting.running) == (0, 0, False)
    admission.release(running)  # twice is once
    assert admission.running == 0


@pytest.mark.asyncio
async def test_a_full_queue_refuses_at_once_with_advice_on_when_to_retry() -> None:
    admission = MemoryAdmission(2, max_queue=3, max_queue_per_user=2)
    for user in ("a", "b"):
        await admission.enter(user)
    await admission.enter("a"), await admission.enter("a")
    with pytest.raises(Overloaded) as per_user:
        await admission.enter("a")
    assert (per_user.value.status, per_user.value.code) == (429, "too_many_waiting")
    await admission.enter("b")
    with pytest.raises(Overloaded) as everyone:
        await admission.enter("c")
    assert (everyone.value.status, everyone.value.code) == (503, "overloaded")
    assert everyone.value.retry_after >= 1
    assert admission.rejected == {"user_queue_full": 1, "queue_full": 1, "rate_limited": 0}
    assert admission.queued == 3


@pytest.mark.asyncio
async def test_a_free_slot_goes_to_a_new_user_while_the_queue_holds_only_a_capped_users_requests() -> None:
    admission = MemoryAdmission(2, max_queue=2, max_queue_per_user=5)
    capped = [await admission.enter("a", max_running=1) for _ in range(3)]  # one runs, two wait: the queue is full
    assert [t.running for t in capped] == [True, False, False]
    other = await admission.enter("b")  # a slot is free and b has no cap: it runs, nothing is refused
    assert other.running
    assert admission.queued == 2
    assert admission.rejected["queue_full"] == 0


# ---- through the gateway -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "4", "--tokens-per-second", "40")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = start_gateway(
        simulator.url, "--max-running", "1", "--max-queue", "3", "--max-queue-per-user", "2", "--heartbeat", "0.5"
    )
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server, simulator: Server) -> Iterator[ChatApi]:
    httpx.delete(f"{simulator.url}/_sim/script")
    with chat_api(gateway.url) as client:
        yield client
    wait_until(lambda: sim_runner(simulator.url)["active"] == 0, "the backend to be idle", timeout=15)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


def as_user(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}  # from a trusted proxy (loopback by default): that client is the user


@pytest.mark.asyncio
async def test_one_generation_at_a_time_the_rest_wait_with_their_position_shown(
    session: aiohttp.ClientSession, gateway: Server, simulator: Server, api: ChatApi
) -> None:
    script(simulator, {"reply": LONG, "thinking": "", "times": 3})
    first, second, third = (api.create()["id"] for _ in range(3))
    running = api.send(first, "one")["reply"]
    socket = Socket(await session.ws_connect(gateway.url + "/chat/api/ws", headers=as_user("10.0.0.2")))
    await socket.next()
    waiting = (await socket.command("send", conversation_id=second, content="two"))["reply"]
    # The position may come before the ack or after it: the turn runs in a task of its own.
    told = [e for e in socket.seen if e["type"] == "reply.queue"]
    queued = told[-1] if told else (await socket.until(lambda e: e["type"] == "reply.queue"))[-1]
    assert (queued["id"], queued["queue_position"]) == (waiting["id"], 1)
    assert "seq" not in queued  # a position is state, not part of the reply
    view = api.view(second)
    assert (view["active"]["status"], view["active"]["queue_position"]) == ("waiting", 1)
    status = (await asyncio.to_thread(httpx.get, f"{gateway.url}/chat/api/generations/{waiting['id']}")).json()[
        "generation"
    ]
    assert (status["live"], status["queue_position"]) == (True, 1)
    assert sim_runner(simulator.url)["active"] == 1  # the backend has four slots; the gateway lets one be used
    await socket.until(lambda e: e["type"] == "reply.status" and e["id"] == waiting["id"])  # its turn came
    assert api.wait_reply(first, running["id"])["status"] == "done"
    assert api.view(second)["active"]["queue_position"] is None
    await socket.until(done_of(waiting["id"]))
    assert api.turn(third, "three")["status"] == "done"


def test_a_full_queue_answers_429_or_503_with_retry_after_and_stores_nothing(
    api: ChatApi, gateway: Server, simulator: Server
) -> None:
    script(simulator, {"reply": LONG, "thinking": "", "times": 4})
    conversations = [api.create()["id"] for _ in range(6)]
    http = api.http
    assert http.post(f"/conversations/{conversations[0]}/messages", json={"content": "runs"}).status_code == 202
    for cid in conversations[1:3]:  # user a: two waiting, its limit
        response = http.post(f"/conversations/{cid}/messages", json={"content": "waits"}, headers=as_user("10.0.0.1"))
        assert response.status_code == 202
    over = http.post(f"/conversations/{conversations[3]}/messages", json={"content": "x"}, headers=as_user("10.0.0.1"))
    assert over.status_code == 429
    assert (over.json()["code"], int(over.headers["Retry-After"])) == ("too_many_waiting", over.json()["retry_after"])
    assert "retry in" in over.json()["error"]
    assert (
        http.post(
            f"/conversations/{conversations[3]}/messages", json={"content": "b waits"}, headers=as_user("10.0.0.2")
        ).status_code
        == 202
    )
    full = http.post(f"/conversations/{conversations[4]}/messages", json={"content": "y"}, headers=as_user("10.0.0.3"))
    assert (full.status_code, full.json()["code"]) == (503, "overloaded")
    assert int(full.headers["Retry-After"]) >= 1
    for refused in conversations[4:]:
        assert api.view(refused)["messages"] == []  # nothing stored for a refused send
    raw = httpx.post(
        f"{gateway.url}/api/chat",
        json={"model": "qwen3:32b", "messages": [{"role": "user", "content": "raw"}]},
        headers=as_user("10.0.0.4"),
    )
    assert (raw.status_code, raw.json()["code"]) == (503, "overloaded")  # the raw API shares the queue
    assert "Retry-After" in raw.headers
    openai = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "qwen3:32b", "messages": [{"role": "user", "content": "raw"}]},
        headers=as_user("10.0.0.4"),
    )
    assert (openai.status_code, openai.json()["error"]["code"]) == (503, "overloaded")
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'clawdbot_generations_rejected_total{reason="user_queue_full"}' in metrics
    assert "clawdbot_generations_queued 3.0" in metrics
    assert 'clawdbot_queue_wait_seconds_count{api="chat"}' in metrics  # the first reply took a slot at once
    for cid in conversations[:4]:
        view = api.view(cid)
        if view["active"] is not None:
            http.post(f"/conversations/{cid}/stop")  # Stop while waiting: leaves the queue, stored as stopped
            reply = api.wait_reply(cid, view["active"]["id"], timeout=15)
            assert reply["status"] == "stopped"


def test_raw_api_requests_wait_their_turn_fairly_too(api: ChatApi, gateway: Server, simulator: Server) -> None:
    """A script hitting /api/chat from one address and a person from another: round-robin between them."""
    order: list[str] = []

    async def main() -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:

            async def chat(user: str, tag: str, delay: float) -> None:
                await asyncio.sleep(delay)
                body = {"model": "qwen3:32b", "stream": False, "messages": [{"role": "user", "content": tag}]}
                response = await client.post("/api/chat", json=body, headers=as_user(user))
                assert response.status_code == 200, response.text
                order.append(tag)

            script(simulator, {"reply": LONG, "thinking": "", "times": 4})
            await asyncio.gather(
                chat("10.0.0.1", "greedy-1", 0),
                chat("10.0.0.1", "greedy-2", 0.1),
                chat("10.0.0.1", "greedy-3", 0.15),
                chat("10.0.0.9", "light", 0.3),
            )

    asyncio.run(main())
    # greedy-1 runs; greedy-2 and greedy-3 wait, then light: the ring serves greedy-2, light, greedy-3.
    assert order == ["greedy-1", "greedy-2", "light", "greedy-3"]
    waits = httpx.get(f"{gateway.url}/metrics").text
    assert 'clawdbot_queue_wait_seconds_count{api="raw"} 4.0' in waits
