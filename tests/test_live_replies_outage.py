"""Running replies across gateway processes while Redis goes away: a new turn is refused (503, it cannot be checked
against the other processes), the reply being written goes on, and once Redis is back, empty, its writer takes
its lease back and no sweep interrupts it.

The test runs a Redis of its own, so that stopping it disturbs no other test.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from chat_support import chat_api, wait_until
from conftest import Server, start_gateway, start_simulator
from live_support import OwnRedis, deployment
from replies_support import GRACE_S, LEASE_S, SWEEP_S, TOKENS, ended, reply_row, start_writing


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "8", "--tokens-per-second", str(TOKENS))
    yield server
    server.stop()


def test_redis_outage_refuses_new_turns_and_a_restarted_empty_redis_interrupts_no_live_reply(
    simulator: Server,
) -> None:
    with deployment() as (database, _), contextlib.ExitStack() as stack:
        own = OwnRedis().start()
        stack.callback(own.stop)
        args = ("--database-url", database, "--redis-url", own.url, "--redis-prefix", "outage")
        a, b = start_gateway(simulator.url, *args), start_gateway(simulator.url, *args)
        try:
            with chat_api(a.url) as on_a, chat_api(b.url) as on_b:
                idle = on_b.create()["id"]
                conversation, sent = start_writing(on_a, simulator, 60, "outage")
                reply_id = sent["reply"]["id"]
                own.stop()
                refused = on_b.http.post(f"/conversations/{idle}/messages", json={"content": "now?"})
                assert refused.status_code == 503, refused.text
                assert "Redis" in refused.json()["error"]
                time.sleep(6)  # past every lease: a Redis that came back now would have none
                own.start()  # empty: the writer re-asserts its lease, the sweeps find an unfinished reply
                wait_until(lambda: httpx.get(f"{b.url}/readyz").status_code == 200, "B to see Redis", timeout=10)
                busy = on_b.http.post(f"/conversations/{conversation}/messages", json={"content": "me too"})
                assert busy.status_code == 409, busy.text  # the writer holds the conversation again
                assert busy.json()["reply_id"] == reply_id
                time.sleep(LEASE_S + GRACE_S + 2 * SWEEP_S)  # when a reply without a lease would be swept
                assert reply_row(on_b, conversation, reply_id)["status"] == "writing"  # still: never interrupted
                assert on_b.http.post(f"/conversations/{conversation}/stop").json() == {"stopping": reply_id}
                assert ended(on_b, conversation, reply_id, timeout=10)["status"] == "stopped"
                ended(on_b, idle, on_b.send(idle, "now?")["reply"]["id"], timeout=10)
        finally:
            a.stop()
            b.stop()
