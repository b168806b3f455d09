"""Backends that fail and come back: a backend killed in the middle of chat replies (each goes on elsewhere as the
same reply), one restarted on its port (half-open, then healthy), and raw requests retried on another backend
before their first byte."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import httpx
import pytest

from chat_support import ChatApi, connect, done_of
from conftest import Server, script, start_gateway, start_process, start_simulator
from fleet_support import (
    BACKEND,
    ask,
    backends,
    backends_toml,
    chat,
    hold,
    hold_forever,
    name_of,
    start_fleet,
    wait_state,
)

pytestmark = pytest.mark.timeout(120)

# Scripted on both simulators: the one that takes over continues it from the partial text, so a reply that moved
# reads as this text whole. About 150 tokens: three seconds at 50 tokens/s.
ANSWER = " ".join(f"Step {n} of the plan is to check the part numbered {n}." for n in range(1, 13))
REPLIES = 10


async def converse(
    session: aiohttp.ClientSession, gateway: Server, conversation_id: str, started: asyncio.Event
) -> Any:
    """Send one message over a socket of its own; every event of its reply up to reply.done."""
    socket = await connect(session, gateway.url)
    ack = await socket.command("send", conversation_id=conversation_id, content="make a plan")
    reply_id = ack["reply"]["id"]
    await socket.until(lambda e: e["type"] == "reply.delta" and e.get("content"))
    started.set()
    await socket.until(done_of(reply_id), within=60)
    await socket.ws.close()
    return reply_id, [e for e in socket.seen if e.get("id") == reply_id or e.get("message", {}).get("id") == reply_id]


@pytest.mark.asyncio
async def test_a_backend_killed_mid_reply_loses_no_reply() -> None:
    args = ("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "50")
    a, b = start_simulator(*args), start_simulator(*args)
    for sim in (a, b):
        script(sim, {"reply": ANSWER, "thinking": "", "times": -1})
    config = backends_toml({"name": "a", "url": a.url, "slots": 8}, {"name": "b", "url": b.url, "slots": 8})
    gateway = start_fleet(config, "--health-interval", "1", "--no-model-titles")
    api = ChatApi(gateway.url)
    try:
        conversations = [api.create()["id"] for _ in range(REPLIES)]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
            started = [asyncio.Event() for _ in conversations]
            tasks = [
                asyncio.create_task(converse(session, gateway, cid, event))
                for cid, event in zip(conversations, started, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 20)  # every reply is writing
            assert backends(gateway)["a"]["running"] > 0
            await asyncio.to_thread(a.kill)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)

        moved = 0
        for cid, (reply_id, events) in zip(conversations, results, strict=True):
            stored = next(m for m in api.view(cid)["messages"] if m["id"] == reply_id)
            streamed = "".join(e.get("content", "") for e in events if e["type"] == "reply.delta")
            assert stored["status"] == "done"
            assert stored["content"] == streamed == ANSWER
            seqs = [e["seq"] for e in events if e["type"].startswith("reply.") and "seq" in e]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat across the switch
            switches = [e for e in events if e["type"] == "reply.switch"]
            if stored["backend"] == "b":
                assert (switches, stored["switches"]) == ([], None)
                continue
            moved += 1
            assert stored["backend"] == "a,b"
            assert len(switches) == 1
            switch = {k: switches[0][k] for k in ("from", "to", "at")}
            assert switch["from"] == "a"
            assert switch["to"] == "b"
            assert stored["switches"] == [switch]
            before = events[: events.index(switches[0])]
            assert switch["at"] == len("".join(e.get("content", "") for e in before if e["type"] == "reply.delta"))
            assert 0 < switch["at"] < len(ANSWER)
        assert moved > 0
        wait_state(gateway, "a", "out", timeout=5)
        assert "Traceback" not in gateway.logs()
    finally:
        api.close()
        for server in (gateway, a, b):
            server.stop()


def test_a_backend_back_on_its_port_rejoins() -> None:
    """Out while nothing listens; when it answers its health check again, half-open; after a reply, healthy."""
    a, b = (start_simulator("--profile", "instant", "--num-parallel", "1", "--tokens-per-second", "50") for _ in "ab")
    gateway = start_gateway(a.url, "--ollama-url", b.url, "--max-running", "1", "--health-interval", "1")
    back: Server | None = None
    try:
        first, second = name_of(a), name_of(b)
        a.kill()
        wait_state(gateway, first, "out", timeout=5)
        assert ask(gateway, chat("while it is away")).headers[BACKEND] == second  # the second has it loaded now

        back = start_process(["simulate", "--port", str(a.port), "--profile", "instant", "--tokens-per-second", "50"])
        hold_forever(back, b)
        report = wait_state(gateway, first, "half_open", timeout=5)
        assert report["reachable"] is True
        busy = hold(gateway)
        try:
            assert busy.backend == second
            answer = ask(gateway, chat("the trial request"))  # the second is busy: the one on trial takes it
        finally:
            busy.close()
        assert (answer.status_code, answer.headers[BACKEND]) == (200, first)
        wait_state(gateway, first, "healthy", timeout=2)
    finally:
        for server in (gateway, a, b, back):
            if server is not None:
                server.stop()


@pytest.mark.parametrize("fault", ["refused", "http_500"])
def test_a_raw_request_fails_over_before_its_first_byte(fault: str) -> None:
    a, b = (start_simulator("--profile", "instant", "--num-parallel", "2") for _ in "ab")
    # Health checks far apart: the request itself finds the fault, not a check before it.
    gateway = start_gateway(a.url, "--ollama-url", b.url, "--max-running", "2", "--health-interval", "60")
    try:
        paths = {"/api/chat": chat("the fault"), "/v1/chat/completions": chat("the fault", stream=True)}
        pinned = {ask(gateway, chat("where do I go?"), **{"X-Clawdbot-Session": p}).headers[BACKEND] for p in paths}
        assert len(pinned) == 1
        sim, other = (a, b) if pinned == {name_of(a)} else (b, a)
        if fault == "refused":
            sim.kill()
        else:
            script(sim, {"match": "the fault", "fault": {"kind": "http_500"}, "times": 2})
        for path, body in paths.items():
            response = httpx.post(gateway.url + path, json=body, headers={"X-Clawdbot-Session": path}, timeout=15)
            assert (response.status_code, response.headers[BACKEND]) == (200, name_of(other)), response.text
        if fault == "refused":
            assert backends(gateway)[name_of(sim)]["state"] == "out"  # a refused connection takes it out at once
    finally:
        for server in (gateway, a, b):
            server.stop()
