"""The page after a gap in its gateway's link to the other processes (Redis pub/sub), in a real browser: what was
published meanwhile never arrives, so the gateway tells the page to read its conversation again, and the page shows
what changed without a reload by its user.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
from playwright.sync_api import Browser, Page, expect

from browser_support import chromium, create, new_page, open_chat
from conftest import Server, start_simulator
from live_support import REDIS_URL, deployment, kill_pubsub, redis_or_skip, start_replica


@pytest.fixture(scope="module")
def database_and_gateway() -> Iterator[tuple[str, Server]]:
    redis_or_skip()
    simulator = start_simulator("--profile", "instant")
    try:
        with deployment() as (database, prefix):
            gateway = start_replica(simulator.url, database, prefix)
            try:
                yield database, gateway
            finally:
                gateway.stop()
    finally:
        simulator.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from chromium()


@pytest.fixture
def page(database_and_gateway: tuple[str, Server], browser: Browser) -> Iterator[Page]:  # PostgreSQL first
    problems: list[str] = []
    tab = new_page(browser, database_and_gateway[1], problems)
    yield tab
    tab.context.close()
    assert not problems, problems


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


async def _execute(database: str, statement: str, *args: object) -> None:
    connection = await asyncpg.connect(database)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()
