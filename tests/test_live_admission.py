"""Admission across gateway replicas sharing Redis: each backend's slots, the fair queue, the queue's limits and
per-user caps and rates count once for the whole deployment, whichever replica a request comes through; a replica
that dies gives its slots back within a few seconds.

Two replicas (a third for the kill) in front of one simulator that would run eight generations at once, while the
gateways may run two: what the simulator runs is the proof. Users are API keys (accounts on), so that one user's
requests through either replica are the same user's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio

from accounts_support import PASSWORD, Gateway, bearer, close_clients, new_key, sign_in
from chat_support import ChatApi
from conftest import Server, start_gateway, start_simulator
from fleet_support import HOLD, MODEL, hold_forever
from live_support import OwnRedis, deployment, start_replica

pytestmark = pytest.mark.timeout(120)
SLOTS = 2
GATEWAY_ARGS = ("--auth", "--max-running", str(SLOTS), "--max-queue", "4", "--max-queue-per-user", "3")
GATEWAY_ARGS += ("--no-model-titles",)


@dataclass
class Site:
    replicas: list[Server]
    database: str
    prefix: str
    keys: dict[str, str]


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "20")
    hold_forever(server)
    yield server
    server.stop()


def _user(root: httpx.Client, name: str, **limits: int) -> str:
    """A user the admin makes (with limits), and an API key of theirs."""
    made = root.post("/chat/api/users", json={"name": name, "password": PASSWORD})
    assert made.status_code == 201, made.text
    if limits:
        changed = root.patch(f"/chat/api/users/{made.json()['user']['id']}", json=limits)
        assert changed.status_code == 200, changed.text
    return new_key(sign_in(str(root.base_url), name))


@pytest.fixture(scope="module")
def site(sim: Server) -> Iterator[Site]:
    with deployment() as (database, prefix):
        replicas = [start_replica(sim.url, database, prefix, *GATEWAY_ARGS) for _ in range(2)]
        try:
            Gateway(replicas[0], "", database).add_user("root", admin=True)
            root = sign_in(replicas[0].url, "root")
            keys = {name: _user(root, name) for name in ("ana", "bo", "cy")}
            keys["capped"] = _user(root, "capped", max_running=1)
            keys["metered"] = _user(root, "metered", requests_per_minute=3)
            yield Site(replicas, database, prefix, keys)
        finally:
            close_clients()
            for replica in replicas:
                replica.stop()


@dataclass
class Streams:
    """Raw /api/chat streams that never end by themselves, each sent at once in a task of its own: `admitted` lists
    them in the order their headers came (each holds a slot from then until closed), `refused` the others."""

    sim: Server
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=60))
    admitted: list[str] = field(default_factory=list)
    refused: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    open: dict[str, httpx.Response] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    reading: dict[str, AsyncIterator[bytes]] = field(default_factory=dict)
    most_running: int = 0  # the most generations the simulator ran at once, sampled

    def send(self, name: str, replica: Server, key: str | None = None) -> None:
        async def run() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"{HOLD} {name}"}]}
            headers = bearer(key) if key else {}
            request = self.client.build_request("POST", replica.url + "/api/chat", json=body, headers=headers)
            response = await self.client.send(request, stream=True)
            if response.status_code == 200:
                self.open[name] = response
                self.admitted.append(name)
            else:
                body = await response.aread()
                found = {**json.loads(body), "retry_after_header": response.headers.get("Retry-After")}
                self.refused[name] = (response.status_code, found)

        self.tasks.append(asyncio.create_task(run()))

    async def close(self, name: str) -> None:
        await self.open.pop(name).aclose()

    async def streaming(self, name: str) -> bool:
        """Whether the stream still brings bytes (its iterator is kept: one dropped would close the stream)."""
        chunks = self.reading.setdefault(name, self.open[name].aiter_raw())
        return bool(await asyncio.wait_for(anext(chunks), 5))

    async def running(self) -> int:
        state = (await self.client.get(f"{self.sim.url}/_sim/state")).json()
        active: int = state["runners"].get(MODEL, {}).get("active", 0)
        return active

    async def watch(self) -> None:
        while True:
            self.most_running = max(self.most_running, await self.running())
            await asyncio.sleep(0.05)

    async def until(self, check: Callable[[], bool], what: str, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: admitted {self.admitted}"
            await asyncio.sleep(0.05)

    async def stays(self, check: Callable[[], bool], what: str, seconds: float = 1.5) -> None:
        """`check` holds now and for `seconds` more (what must not happen does not, given time to)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert check(), f"{what}: admitted {self.admitted}"
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def streams(sim: Server) -> AsyncIterator[Streams]:
    found = Streams(sim)
    watching = asyncio.create_task(found.watch())
    try:
        yield found
    finally:
        watching.cancel()
        for task in found.tasks:
            task.cancel()
        await asyncio.gather(watching, *found.tasks, return_exceptions=True)
        for response in found.open.values():
            await response.aclose()
        for _ in range(150):  # the next test starts with the backend idle
            if not await found.running():
                break
            await asyncio.sleep(0.1)
        await found.client.aclose()


@pytest.mark.asyncio
async def test_a_backend_never_runs_more_than_its_slots_whichever_replicas_admit(site: Site, streams: Streams) -> None:
    a, b = site.replicas
    users = ["ana", "bo", "cy"]
    for i in range(6):  # two of each user, alternately through each replica: two run, four wait (the queue's size)
        streams.send(f"s{i}", (a, b)[i % 2], site.keys[users[i % 3]])
    await streams.until(lambda: len(streams.admitted) == SLOTS, "the slots to be taken")
    await streams.stays(lambda: len(streams.admitted) == SLOTS, "a third was let in while two ran")
    assert await streams.running() == SLOTS
    for done in range(4):  # each one closed lets one more in, through whichever replica it waits on
        await streams.close(streams.admitted[done])
        await streams.until(lambda done=done: len(streams.admitted) == SLOTS + done + 1, "a waiting one to run")
    await streams.stays(lambda: len(streams.admitted) == 6, "the count to settle", seconds=0.5)
    assert streams.most_running == SLOTS
    assert not streams.refused


@pytest.mark.asyncio
async def test_a_flood_through_one_replica_holds_up_another_users_turn_through_the_other_by_one_turn(
    site: Site, streams: Streams
) -> None:
    a, b = site.replicas
    for name in ("a0", "a1"):  # ana takes both slots through replica a…
        streams.send(name, a, site.keys["ana"])
    await streams.until(lambda: len(streams.admitted) == SLOTS, "ana's first two to run")
    for name in ("a2", "a3", "a4"):  # …and queues three more there
        streams.send(name, a, site.keys["ana"])
        await asyncio.sleep(0.1)  # in this order
    with ChatApi(b.url, bearer(site.keys["bo"])) as bo:  # bo sends one reply through replica b, after them
        conversation = bo.create()["id"]
        reply = bo.send(conversation, f"{HOLD} bo")["reply"]["id"]

        def generation() -> dict[str, Any]:
            found: dict[str, Any] = bo.http.get(f"/generations/{reply}").json()["generation"]
            return found

        # Fleet-wide order: ana's next, then bo's (the next round), then ana's others.
        await streams.until(lambda: generation()["queue_position"] == 2, "bo's reply to be second in line")
        await streams.close("a0")
        await streams.until(lambda: streams.admitted[-1:] == ["a2"], "ana's next to run")
        await streams.until(lambda: generation()["queue_position"] == 1, "bo's reply to be next")
        await streams.close("a1")
        await streams.until(lambda: generation()["snapshot"]["status"] != "waiting", "bo's reply to start")
        # a0 and a1 were sent at once: either may have been admitted first.
        await streams.stays(
            lambda: sorted(streams.admitted[:2]) == ["a0", "a1"] and streams.admitted[2:] == ["a2"],
            "ana's later ones ran before bo's",
        )
        assert bo.http.post(f"/conversations/{conversation}/stop").status_code in (200, 202)
        await streams.until(lambda: streams.admitted[-1:] == ["a3"], "ana's next once bo's reply stopped")
    assert streams.most_running == SLOTS


@pytest.mark.asyncio
async def test_the_queues_limits_count_every_replicas_waiting(site: Site, streams: Streams) -> None:
    a, b = site.replicas
    for name in ("a0", "a1"):
        streams.send(name, a, site.keys["ana"])
    await streams.until(lambda: len(streams.admitted) == SLOTS, "ana's first two to run")
    for name, replica in (("a2", a), ("a3", b), ("a4", a)):  # three waiting, ana's limit, through both replicas
        streams.send(name, replica, site.keys["ana"])
        await asyncio.sleep(0.2)
    streams.send("a5", b, site.keys["ana"])
    await streams.until(lambda: "a5" in streams.refused, "ana's fourth waiting to be refused")
    status, body = streams.refused["a5"]
    assert (status, body["code"]) == (429, "too_many_waiting")
    streams.send("b0", b, site.keys["bo"])  # the fourth waiting: the queue is full
    await asyncio.sleep(0.3)
    streams.send("c0", a, site.keys["cy"])
    await streams.until(lambda: "c0" in streams.refused, "cy to be refused")
    status, body = streams.refused["c0"]
    assert (status, body["code"]) == (503, "overloaded")
    assert int(body["retry_after_header"]) >= 1
    assert sorted(streams.admitted) == ["a0", "a1"]
    assert "b0" not in streams.refused


@pytest.mark.asyncio
async def test_a_users_cap_and_rate_count_their_requests_on_every_replica(site: Site, streams: Streams) -> None:
    a, b = site.replicas
    streams.send("c0", a, site.keys["capped"])
    await streams.until(lambda: streams.admitted == ["c0"], "capped's first to run")
    streams.send("c1", b, site.keys["capped"])  # a slot is free, but capped has one running already (through a)
    await asyncio.sleep(0.3)
    streams.send("n0", b, site.keys["bo"])
    await streams.until(lambda: streams.admitted == ["c0", "n0"], "another user's to take the free slot")
    await streams.close("n0")
    await streams.stays(lambda: streams.admitted == ["c0", "n0"], "capped's second ran beside its first")
    await streams.close("c0")
    await streams.until(lambda: streams.admitted[-1:] == ["c1"], "capped's second to run once the first ended")
    await streams.close("c1")

    async def ask(replica: Server) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        return await streams.client.post(replica.url + "/api/chat", json=body, headers=bearer(site.keys["metered"]))

    for replica in (a, b, a):  # three a minute, through both replicas
        assert (await ask(replica)).status_code == 200
    refused = await ask(b)
    assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


@pytest.mark.asyncio
async def test_a_replica_killed_while_holding_slots_gives_them_back_within_seconds(
    site: Site, streams: Streams, sim: Server
) -> None:
    doomed = start_replica(sim.url, site.database, site.prefix, *GATEWAY_ARGS)
    try:
        for name in ("k0", "k1"):
            streams.send(name, doomed, site.keys["ana"])
        await streams.until(lambda: len(streams.admitted) == SLOTS, "the doomed replica's two to run")
        streams.send("b0", site.replicas[0], site.keys["bo"])
        await streams.stays(lambda: "b0" not in streams.admitted, "bo's ran while both slots were held")
        killed = time.monotonic()
        doomed.kill()  # SIGKILL: nothing given back on the way out
        await streams.until(lambda: "b0" in streams.admitted, "the dead replica's slots to come back", within=15)
        assert time.monotonic() - killed < 10
    finally:
        doomed.stop()


def tickets(own: OwnRedis) -> int:
    """Generations the private Redis counts as running."""
    with own.client() as client:
        return int(client.hlen("clawdbot:{admission}:tickets"))


@pytest.mark.asyncio
async def test_without_redis_a_new_generation_gets_503_one_running_goes_on_and_counts_again_once_it_is_back(
    sim: Server, streams: Streams
) -> None:
    own = OwnRedis()
    own.start()
    gateway = start_gateway(sim.url, "--redis-url", own.url, "--max-running", str(SLOTS), "--no-model-titles")
    try:
        streams.send("h0", gateway)
        await streams.until(lambda: streams.admitted == ["h0"], "the first to run")
        own.stop()
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        refused = await streams.client.post(gateway.url + "/api/chat", json=body)
        assert (refused.status_code, refused.json()["code"]) == (503, "redis_unavailable")
        assert await streams.streaming("h0")  # what runs goes on
        own.start()  # empty: the gateway registers the generation it still runs again
        await streams.until(lambda: tickets(own) == 1, "the running generation to be counted again")
        streams.send("h1", gateway)
        await streams.until(lambda: streams.admitted == ["h0", "h1"], "a new one to run once Redis is back")
        streams.send("h2", gateway)
        await streams.stays(lambda: "h2" not in streams.admitted, "a third ran beside two")
        await streams.close("h0")
        await streams.until(lambda: streams.admitted[-1:] == ["h2"], "the third to run once the first ended")
    finally:
        gateway.stop()
        own.stop()
