"""The page when its gateway's Redis falters, in a real browser:

- after a gap in the gateway's link to the other processes (Redis pub/sub), what was published meanwhile never
  arrives, so the gateway tells the page to read its conversation again, and the page shows what changed without a
  reload by its user;
- a message sent while Redis is away is refused (503, nothing stored); the page says so and sends it again, the
  same message (its client id), until Redis is back.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from browser_support import chromium, create, last_reply, new_page, open_chat, send, view
from conftest import Server, script, start_gateway, start_simulator
from live_support import REDIS_URL, OwnRedis, deployment, kill_pubsub, redis_or_skip, start_replica


@pytest.fixture(scope="module")
def database_and_gateway(simulator: Server) -> Iterator[tuple[str, Server]]:
    redis_or_skip()
    with deployment() as (database, prefix):
        gateway = start_replica(simulator.url, database, prefix)
        try:
            yield database, gateway
        finally:
            gateway.stop()


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def on_own_redis(simulator: Server, own_redis: OwnRedis) -> Iterator[Server]:
    """A gateway on a Redis that the test stops and starts again."""
    server = start_gateway(simulator.url, "--redis-url", own_redis.url, "--heartbeat", "0.5")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


def opened(browser: Browser, gateway: Server) -> Iterator[Page]:
    problems: list[str] = []
    tab = new_page(browser, gateway, problems)
    yield tab
    tab.context.close()
    assert not problems, problems


@pytest.fixture
def page(database_and_gateway: tuple[str, Server], browser: Browser) -> Iterator[Page]:  # PostgreSQL first
    yield from opened(browser, database_and_gateway[1])


@pytest.fixture
def own_page(on_own_redis: Server, browser: Browser) -> Iterator[Page]:
    yield from opened(browser, on_own_redis)


def test_after_a_pub_sub_gap_the_page_reads_its_conversation_again(
    page: Page, database_and_gateway: tuple[str, Server]
) -> None:
    database, gateway = database_and_gateway
    conversation = create(gateway, "Before the gap")
    open_chat(page, f"/chat#c={conversation}")
    sidebar = page.get_by_test_id("sidebar")
    expect(sidebar).to_contain_text("Before the gap")
    # A change whose event this gateway never got, as one published by another process during the gap.
    renamed = "UPDATE conversations SET title = 'Renamed elsewhere' WHERE id = $1"
    with ThreadPoolExecutor(1) as thread:  # Playwright's loop runs in this one
        thread.submit(asyncio.run, _execute(database, renamed, conversation)).result()
    assert kill_pubsub(REDIS_URL) >= 1
    expect(sidebar).to_contain_text("Renamed elsewhere")


def test_a_message_refused_for_want_of_redis_is_sent_again_once_it_is_back(
    own_page: Page, on_own_redis: Server, own_redis: OwnRedis, simulator: Server
) -> None:
    script(simulator, {"match": "while redis was away", "reply": "Got it after all.", "thinking": ""})
    conversation = create(on_own_redis, "Through a Redis restart")
    open_chat(own_page, f"/chat#c={conversation}")
    own_redis.stop()
    _until_ready(on_own_redis, "unavailable")
    send(own_page, "sent while redis was away")
    alert = own_page.get_by_test_id("error")
    expect(alert).to_contain_text("Redis is unavailable")
    expect(alert).to_contain_text(re.compile(r"Not sent yet\. Redis is unavailable: .*\. Sending it again in \d+ s…"))
    own_redis.start()
    expect(last_reply(own_page)).to_contain_text("Got it after all.", timeout=60_000)
    expect(alert).to_be_hidden()
    sent = [m for m in view(on_own_redis, conversation)["messages"] if m["role"] == "user"]
    assert [m["content"] for m in sent] == ["sent while redis was away"]  # once, however often it was sent


def _until_ready(gateway: Server, status: str) -> None:
    deadline = time.monotonic() + 15
    while httpx.get(f"{gateway.url}/readyz").json()["redis"]["status"] != status:
        assert time.monotonic() < deadline, f"Redis did not become {status} for the gateway"
        time.sleep(0.1)


async def _execute(database: str, statement: str, *args: object) -> None:
    connection = await asyncpg.connect(database)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()
