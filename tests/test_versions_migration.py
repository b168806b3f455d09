"""Migration 0004 on SQLite and PostgreSQL: a database from before versions (where Regenerate, Edit and Continue
marked what they replaced superseded) is placed in the tree of versions, and the page's API shows and switches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from chat_support import ChatApi, chat_api, postgres_database
from clawdbot.store import migrations
from clawdbot.store.conversations import Store
from conftest import Server, script, start_gateway


def shown(api: ChatApi, conversation_id: str) -> list[str]:
    return [m["content"] for m in api.view(conversation_id)["messages"]]


def switch(api: ChatApi, conversation_id: str, message_id: str) -> dict[str, Any]:
    response = api.http.post(f"/conversations/{conversation_id}/versions", json={"message_id": message_id})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


OWNER = "00000000-0000-7000-8000-000000000001"  # migration 0003's built-in owner, whom --no-auth acts as
# A conversation as the gateway stored it before versions: Regenerate and Edit superseded what they replaced, and
# Continue superseded the stopped reply with one that starts with its text.
BEFORE = [
    ("u1", "user", "question", "sent", False),
    ("r1", "assistant", "answer", "done", True),  # regenerated
    ("r2", "assistant", "another answer", "done", False),
    ("u2", "user", "follow-up", "sent", True),  # edited, with its reply
    ("r3", "assistant", "to the follow-up", "done", True),
    ("u3", "user", "follow-up, rephrased", "sent", False),
    ("r4", "assistant", "partly", "stopped", True),  # continued
    ("r5", "assistant", "partly, and the rest", "done", False),
]


def _old_id(number: int) -> str:
    return f"00000000-0000-7000-8000-{number:012x}"


def _old_ids() -> dict[str, str]:
    return {name: _old_id(index + 1) for index, (name, *_) in enumerate(BEFORE)}


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: pytest.FixtureRequest) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp(prefix='clawdbot-versions-')}/chat.db"
        else:
            url = stack.enter_context(postgres_database())
        asyncio.run(_store_as_before_versions(url))
        yield url


async def _store_as_before_versions(url: str) -> str:
    store = Store(url)
    await store.db.open(lambda conn: command.upgrade(migrations.config(conn), "0003_accounts"))
    ids = _old_ids()
    conversation = _old_id(99)
    columns = ("id", "conversation_id", "role", "content", "thinking", "status", "superseded", "created_at")
    messages = sa.table("messages", *(sa.column(name) for name in columns))
    fields = {"user_id": OWNER, "title": "question", "title_set": False, "model": "qwen3:32b", "system_prompt": ""}
    fields.update(pinned=False, created_at=1, updated_at=2000)
    conversations = sa.table("conversations", *(sa.column(name) for name in ("id", *fields)))
    rows = [
        dict(zip(columns, (ids[name], conversation, role, content, "", status, hidden, 1000 + n), strict=True))
        for n, (name, role, content, status, hidden) in enumerate(BEFORE)
    ]

    def insert(conn: Any) -> None:
        conn.execute(sa.insert(conversations), {"id": conversation, **fields})
        conn.execute(sa.insert(messages), rows)

    try:
        await store.write(insert)
    finally:
        await store.close()
    return conversation


def test_a_database_from_before_versions_gets_its_earlier_messages_as_versions(
    old_database: str, simulator: Server
) -> None:
    gateway = start_gateway(simulator.url, "--database-url", old_database)
    ids, conversation_id = _old_ids(), _old_id(99)
    try:
        # The gateway migrated the database as it started.
        stored = _read(old_database, "SELECT id, parent_id, chosen, continued_by FROM messages ORDER BY created_at")
        placed = {row[0]: (row[1], bool(row[2]), row[3]) for row in stored}
        assert placed[ids["r4"]] == (ids["u3"], False, ids["r5"])
        assert placed[ids["r5"]] == (ids["u3"], True, None)
        assert placed[ids["u3"]] == (ids["r2"], True, None)
        assert placed[ids["u2"]] == (ids["r2"], False, None)
        assert placed[ids["r3"]] == (ids["u2"], True, None)
        with chat_api(gateway.url) as api:
            view = api.view(conversation_id)
            assert [m["id"] for m in view["messages"]] == [ids["u1"], ids["r2"], ids["u3"], ids["r5"]]
            assert view["versions"] == {ids["r2"]: [ids["r1"], ids["r2"]], ids["u3"]: [ids["u2"], ids["u3"]]}
            back = switch(api, conversation_id, ids["u2"])
            assert [m["id"] for m in back["messages"]] == [ids["u2"], ids["r3"]]  # the edited message's own reply
            switch(api, conversation_id, ids["r1"])
            assert shown(api, conversation_id) == ["question", "answer"]
            refused = api.http.post(f"/conversations/{conversation_id}/versions", json={"message_id": ids["r4"]})
            assert refused.status_code == 404  # the continued reply is no version
            script(simulator, {"reply": "fine", "thinking": ""})
            api.turn(conversation_id, "next")
            assert shown(api, conversation_id) == ["question", "answer", "next", "fine"]
    finally:
        gateway.stop()


def _read(url: str, sql: str) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        store = Store(url)
        try:
            return await store.read(lambda conn: [tuple(row) for row in conn.execute(sa.text(sql))])
        finally:
            await store.close()

    return asyncio.run(run())
