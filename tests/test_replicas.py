"""deploy/nginx-replicas.conf through a real nginx, in front of two replicas sharing one PostgreSQL database and one
Redis: requests spread over both, a conversation started through one replica goes on through the other, and when a
replica dies nginx sends the next requests (a new conversation's POST included) to the live one."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from conftest import Server, access_log, start_simulator, wait_for
from deploy_support import DEPLOY, Proxy, new_conversation, receive, send_turn, start_nginx, stored, words, ws_url
from deploy_support import script as sim_script
from live_support import deployment, start_replica, start_replicas


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", "200")
    yield server
    server.stop()


@pytest.fixture
def replicas(simulator: Server) -> Iterator[list[Server]]:
    with deployment() as (database, prefix):
        servers = start_replicas(2, simulator.url, database, prefix)
        yield servers
        for server in servers:
            server.stop()


@pytest.fixture
def nginx(replicas: list[Server], tmp_path: Path) -> Iterator[Proxy]:
    conf = (DEPLOY / "nginx-replicas.conf").read_text(encoding="utf-8")
    addresses = iter(f"127.0.0.1:{server.port}" for server in replicas)
    upstreams = re.findall(r"^    server 10\.0\.0\.\d+:18789 .*$", conf, flags=re.M)
    assert len(upstreams) == 3
    conf = conf.replace(upstreams[2] + "\n", "")  # two replicas here
    conf = re.sub(r"10\.0\.0\.\d+:18789", lambda _: next(addresses), conf)
    proxy = start_nginx(tmp_path, conf)
    yield proxy
    proxy.stop()


def served_by(replicas: list[Server], request_id: str) -> list[int]:
    """Which replicas logged the request id."""
    return [
        n for n, server in enumerate(replicas) if any(e.get("request_id") == request_id for e in access_log(server))
    ]


@pytest.mark.asyncio
async def test_requests_spread_and_a_conversation_goes_on_through_either(
    nginx: Proxy, replicas: list[Server], simulator: Server
) -> None:
    async with aiohttp.ClientSession() as session:
        ids = []
        for _ in range(6):  # least_conn with idle replicas: nginx takes them in turn
            rid = uuid.uuid4().hex
            ids.append(rid)
            async with session.get(f"{nginx.url}/chat/api/conversations", headers={"X-Request-ID": rid}) as r:
                assert r.status == 200
        wait_for(lambda: all(served_by(replicas, rid) for rid in ids), timeout=10)  # logged just after answering
        assert {n for rid in ids for n in served_by(replicas, rid)} == {0, 1}

        conversation_id = await new_conversation(session, nginx)
        for number in (1, 2, 3):  # each WebSocket may land on either replica
            await sim_script(session, simulator, {"match": f"turn {number}", "reply": words(6)})
            async with session.ws_connect(f"{ws_url(nginx)}/chat/api/ws") as ws:
                assert (await receive(ws))["type"] == "hello"
                turn = await send_turn(ws, conversation_id, f"turn {number}")
                assert turn.final["status"] == "done"
        messages = await stored(session, nginx, conversation_id)
    assert [m["content"] for m in messages[1::2]] == [words(6)] * 3


@pytest.mark.asyncio
async def test_a_dead_replica_is_passed_over(nginx: Proxy, replicas: list[Server], simulator: Server) -> None:
    replicas[0].kill()
    async with aiohttp.ClientSession() as session:
        for _ in range(4):  # nginx finds the dead one refusing connections and goes on to the live one
            conversation_id = await new_conversation(session, nginx)
        await sim_script(session, simulator, {"match": "after", "reply": words(5)})
        async with session.ws_connect(f"{ws_url(nginx)}/chat/api/ws") as ws:
            assert (await receive(ws))["type"] == "hello"
            turn = await send_turn(ws, conversation_id, "after the crash")
        assert turn.final["status"] == "done"
        assert (await stored(session, nginx, conversation_id))[-1]["content"] == words(5)


def setup_token(server: Server) -> str:
    assert server.proc.stdout is not None
    found = re.search(r"/chat/setup#token=(\S+)", server.proc.stdout.readline())
    assert found
    return found.group(1)


def test_a_setup_link_one_replica_printed_works_on_another(simulator: Server) -> None:
    with deployment() as (database, prefix):
        first = start_replica(simulator.url, database, prefix, "--auth")
        second = start_replica(simulator.url, database, prefix, "--auth")
        try:
            printed_by_first, printed_by_second = setup_token(first), setup_token(second)
            body = {"token": printed_by_first, "name": "root", "password": "correct horse battery"}
            made = httpx.post(f"{second.url}/chat/api/setup", json=body, headers={"Origin": second.url})
            assert made.status_code == 201, made.text
            again = httpx.post(f"{first.url}/chat/api/setup", json=body, headers={"Origin": first.url})
            assert (again.status_code, again.json()["code"]) == (403, "setup_closed")  # used up, wherever
            other = {**body, "token": printed_by_second, "name": "root2"}
            late = httpx.post(f"{first.url}/chat/api/setup", json=other, headers={"Origin": first.url})
            assert (late.status_code, late.json()["code"]) == (403, "setup_closed")  # an admin exists now
        finally:
            first.stop()
            second.stop()
