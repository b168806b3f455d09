"""A fleet of two simulators behind one gateway (repeated --ollama-url, two slots each), as a user meets it: work
spread by slots, conversations kept on one backend across turns, drain, and model management named by backend.

Both simulators stream at a fixed rate, so a stream that never ends (fleet_support.HOLD) holds a slot cheaply."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator

import httpx
import pytest

from accounts_support import accounts_gateway, close_clients, sign_in
from chat_support import ChatApi
from conftest import Server, start_gateway, start_simulator
from fleet_support import BACKEND, Held, ask, backends, chat, hold, hold_forever, name_of, wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Server, Server]]:
    args = ("--profile", "instant", "--num-parallel", "2", "--tokens-per-second", "50")
    pair = [start_simulator(*args) for _ in range(2)]
    yield pair[0], pair[1]
    for sim in pair:
        sim.stop()


@pytest.fixture(scope="module")
def gateway(sims: tuple[Server, Server]) -> Iterator[Server]:
    a, b = sims
    server = start_gateway(
        a.url, "--ollama-url", b.url, "--max-running", "2", "--health-interval", "1", "--no-model-titles"
    )
    try:
        # Both backends serve once and so have the model loaded: the choice among idle backends is then by
        # configuration order, which a conversation's affinity must overrule.
        held = [hold(server) for _ in range(4)]
        for stream in held:
            stream.close()
        wait_until(lambda: all(b["loaded"] for b in backends(server).values()), "both backends to load the model")
        yield server
    finally:
        server.stop()


@pytest.fixture
def names(sims: tuple[Server, Server], gateway: Server) -> Iterator[tuple[str, str]]:
    hold_forever(*sims)
    yield name_of(sims[0]), name_of(sims[1])
    wait_until(lambda: all(b["running"] == 0 for b in backends(gateway).values()), "every slot to be free")


def close(*held: Held) -> None:
    for stream in held:
        stream.close()


def test_streams_spread_over_the_backends_by_slots(
    sims: tuple[Server, Server], gateway: Server, names: tuple[str, str]
) -> None:
    """Four streams, two slots on each of two backends: all four run at once, two on each."""
    held = []
    try:
        for _ in range(4):
            held.append(hold(gateway))  # the third would wait for a free slot if slots were not counted per backend
        assert sorted(h.backend for h in held) == sorted([names[0], names[0], names[1], names[1]])
        report = backends(gateway)
        assert [report[name]["running"] for name in names] == [2, 2]
        assert [report[name]["queued"] for name in names] == [0, 0]
        for sim in sims:
            runner = httpx.get(f"{sim.url}/_sim/state").json()["runners"]["qwen3:32b"]
            assert (runner["active"], runner["waiting"]) == (2, 0)
    finally:
        close(*held)


def test_raw_turns_stay_on_their_backend(gateway: Server, names: tuple[str, str]) -> None:
    """The next turn of a raw conversation (same first message, or same X-Clawdbot-Session) goes where the last one
    went, though both backends are idle and the first in order would be chosen otherwise."""
    first, second = names
    history = [{"role": "user", "content": "plan my trip"}, {"role": "assistant", "content": "Where to?"}]
    busy = hold(gateway)
    try:
        assert busy.backend == first
        turn1 = ask(gateway, chat("plan my trip"))
        session1 = ask(gateway, chat("hello there"), **{"X-Clawdbot-Session": "raw-session"})
    finally:
        close(busy)
    assert (turn1.status_code, turn1.headers[BACKEND]) == (200, second)
    assert session1.headers[BACKEND] == second
    turn2 = ask(gateway, chat("Paris", *history))
    assert (turn2.status_code, turn2.headers[BACKEND]) == (200, second)
    session2 = ask(gateway, chat("something else entirely"), **{"X-Clawdbot-Session": "raw-session"})
    assert session2.headers[BACKEND] == second
    other = ask(gateway, chat("a different conversation"))
    assert other.headers[BACKEND] == first
    hits = _affinity(gateway)
    assert hits[(second, "hit")] >= 2  # the two turns that came back to it, counted where they were at home


def _affinity(gateway: Server) -> dict[tuple[str, str], float]:
    found = {}
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        match = re.fullmatch(r'clawdbot_backend_affinity_total\{backend="([^"]+)",result="(\w+)"\} (\S+)', line)
        if match:
            found[(match[1], match[2])] = float(match[3])
    return found


def test_chat_turns_stay_on_their_backend_until_it_is_full(gateway: Server, names: tuple[str, str]) -> None:
    first, second = names
    with ChatApi(gateway.url) as api:
        one, two = api.create(), api.create()
        busy = hold(gateway)
        try:
            assert busy.backend == first
            assert api.turn(two["id"], "hello")["backend"] == second  # the first backend was busy
            assert ask(gateway, chat("pin"), **{"X-Clawdbot-Session": "fill-second"}).headers[BACKEND] == second
        finally:
            close(busy)
        assert api.turn(one["id"], "hi")["backend"] == first
        assert api.turn(two["id"], "and again")["backend"] == second  # both idle: its own backend
        assert api.turn(one["id"], "hi again")["backend"] == first

        # Its backend full and another free: the turn goes to the free one at once rather than wait.
        full = [hold(gateway, session="fill-second") for _ in range(2)]
        try:
            assert [h.backend for h in full] == [second, second]
            reply = api.turn(two["id"], "third turn")
        finally:
            close(*full)
        assert (reply["status"], reply["backend"]) == ("done", first)
    assert _affinity(gateway)[(second, "miss")] >= 1  # counted against the backend it would rather have had


def test_a_drained_backend_takes_no_new_work_and_finishes_what_runs(
    sims: tuple[Server, Server], gateway: Server, names: tuple[str, str]
) -> None:
    first, second = names
    hold_forever(*sims, reply=" ".join(["word"] * 60))  # about a second at 50 tokens/s
    admin = httpx.Client(base_url=gateway.url + "/chat/api/admin", timeout=10)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    held: list[Held] = []
    try:
        client = httpx.Client(timeout=15)
        running = client.send(
            client.build_request("POST", gateway.url + "/api/chat", json=chat("a long one", stream=True)), stream=True
        )
        assert running.headers[BACKEND] == first
        drained = admin.patch(f"/backends/{first}", json={"draining": True})
        assert drained.status_code == 200, drained.text
        assert (drained.json()["name"], drained.json()["state"]) == (first, "draining")
        held = [hold(gateway), hold(gateway)]
        assert [h.backend for h in held] == [second, second]
        waiting = pool.submit(hold, gateway)  # the second is full, the first drained: it waits
        wait_until(lambda: backends(gateway)[second]["queued"] == 1, "the third stream to queue")

        lines = [line for line in running.iter_lines() if line]  # what ran on the drained backend finishes
        running.close()
        client.close()
        assert '"done":true' in lines[-1]
        wait_until(lambda: backends(gateway)[first]["running"] == 0, "the drained backend to be idle")
        assert not waiting.done()
        assert backends(gateway)[second]["queued"] == 1

        undrained = admin.patch(f"/backends/{first}", json={"draining": False})
        assert undrained.json()["state"] == "healthy"
        held.append(waiting.result(timeout=10))
        assert held[-1].backend == first  # it takes work again
    finally:
        close(*held)
        admin.patch(f"/backends/{first}", json={"draining": False})
        admin.close()
        pool.shutdown()

    unknown = httpx.patch(f"{gateway.url}/chat/api/admin/backends/nowhere", json={"draining": True})
    assert unknown.status_code == 404
    assert first in unknown.json()["error"]
    listed = httpx.get(f"{gateway.url}/chat/api/admin/backends").json()["backends"]
    assert [b["name"] for b in listed] == [first, second]


def test_model_management_names_its_backend(
    sims: tuple[Server, Server], gateway: Server, names: tuple[str, str]
) -> None:
    """A pull changes one backend's models: with two, the request must say which."""
    unnamed = httpx.post(f"{gateway.url}/api/pull", json={"model": "qwen3:32b", "stream": False}, timeout=10)
    assert unnamed.status_code == 400
    assert "X-Clawdbot-Backend" in unnamed.json()["error"]
    for name in names:
        named = httpx.post(
            f"{gateway.url}/api/pull", json={"model": "qwen3:32b", "stream": False}, headers={BACKEND: name}, timeout=10
        )
        assert (named.status_code, named.headers[BACKEND]) == (200, name), named.text
    by_query = httpx.post(
        f"{gateway.url}/api/pull", params={"backend": names[1]}, json={"model": "qwen3:32b", "stream": False}
    )
    assert (by_query.status_code, by_query.headers[BACKEND]) == (200, names[1])


def test_only_an_admin_sees_or_drains_the_backends(sims: tuple[Server, Server]) -> None:
    a, b = sims
    gateway = accounts_gateway(a.url, "--ollama-url", b.url)
    try:
        gateway.add_user("admin", admin=True)
        gateway.add_user("bob")
        bob, admin = sign_in(gateway.url, "bob"), sign_in(gateway.url, "admin")
        assert bob.get("/chat/api/admin/backends").status_code == 403
        assert bob.patch(f"/chat/api/admin/backends/{name_of(a)}", json={"draining": True}).status_code == 403
        assert admin.get("/chat/api/admin/backends").json()["backends"][0]["state"] == "healthy"  # bob changed nothing
        drained = admin.patch(f"/chat/api/admin/backends/{name_of(a)}", json={"draining": True})
        assert (drained.status_code, drained.json()["state"]) == (200, "draining")
    finally:
        close_clients()
        gateway.stop()
