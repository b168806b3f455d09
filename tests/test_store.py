"""The conversation store on SQLite and on PostgreSQL: the same conversation flow, search and concurrency
against both, migrations applied at start, and the single writer's group commit.

PostgreSQL runs at 127.0.0.1:5432 with trust auth; each run gets a fresh database, dropped at the end. Without
PostgreSQL its half is skipped, unless CI=true.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.exc import IntegrityError

from chat_support import ChatApi, chat_api, postgres_database, wait_until
from clawdbot.auth.accounts import api_keys, sessions, users
from clawdbot.store import migrations
from clawdbot.store.conversations import Store
from clawdbot.store.database import driver_url
from clawdbot.store.records import ApiKey, Conversation, Message, Outcome, Session, User, new_id, new_message
from clawdbot.store.tables import conversations, messages
from conftest import Server, script, start_gateway

# Short replies with nothing a search could trip on (the simulator's own replies hold code, "_" and "%").
OK: dict[str, object] = {"reply": "ok", "thinking": "", "times": -1}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tempfile.mkdtemp(prefix='clawdbot-store-')}/chat.db"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="module")
def gateway(simulator: Server, database_url: str) -> Iterator[Server]:
    server = start_gateway(simulator.url, "--database-url", database_url)
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server, simulator: Server) -> Iterator[ChatApi]:
    script(simulator, OK)
    with chat_api(gateway.url) as client:
        yield client


async def _query(url: str, sql: str | TextClause, **params: object) -> list[tuple[Any, ...]]:
    store = Store(url)
    statement = text(sql) if isinstance(sql, str) else sql
    try:
        return await store.read(lambda conn: [tuple(row) for row in conn.execute(statement, params)])
    finally:
        await store.close()


def query(url: str, sql: str | TextClause, **params: object) -> list[tuple[Any, ...]]:
    """Read the gateway's database directly, whichever it is."""
    return asyncio.run(_query(url, sql, **params))


@pytest.mark.parametrize(
    ("record", "table"),
    [(Conversation, conversations), (Message, messages), (User, users), (Session, sessions), (ApiKey, api_keys)],
)
def test_a_record_has_its_tables_columns_in_their_order(record: type, table: Any) -> None:
    """A record is built from a row by position, and the API sends its fields in order: both rest on this."""
    assert [field.name for field in fields(record)] == [column.name for column in table.columns]


def answer(simulator: Server, *replies: str) -> None:
    """The next replies, in order, then short ones again."""
    httpx.delete(f"{simulator.url}/_sim/script").raise_for_status()
    entries: list[dict[str, object]] = [{"reply": reply, "thinking": ""} for reply in replies]
    script(simulator, *entries, OK)


def found(api: ChatApi, needle: str) -> set[str]:
    return {r["conversation"]["id"] for r in api.search(needle)}


# ---- the flow ------------------------------------------------------------------------------------------------------
def test_a_conversation_is_kept_message_by_message(api: ChatApi, simulator: Server, database_url: str) -> None:
    conversation = api.create(system_prompt="Be kind.", temperature=0.5, num_ctx=4096, think=False)
    answer(simulator, "One.", "Two.")
    first = api.turn(conversation["id"], "first question")
    second = api.send(conversation["id"], "second question")
    api.wait_reply(conversation["id"], second["reply"]["id"])
    regenerated = api.post(conversation["id"], "regenerate")["reply"]
    api.wait_reply(conversation["id"], regenerated["id"])
    edited = api.post(conversation["id"], "edit", {"content": "second, again"})
    api.wait_reply(conversation["id"], edited["reply"]["id"])
    api.patch(conversation["id"], title="Kept", pinned=True, temperature=None)

    view = api.view(conversation["id"])
    assert [(m["role"], m["content"]) for m in view["messages"]] == [
        ("user", "first question"),
        ("assistant", "One."),
        ("user", "second, again"),
        ("assistant", "ok"),
    ]
    assert view["messages"][1] == first
    assert first["prompt_tokens"] > 0
    assert first["output_tokens"] > 0
    assert (view["conversation"]["title"], view["conversation"]["pinned"]) == ("Kept", True)
    assert (view["conversation"]["temperature"], view["conversation"]["num_ctx"]) == (None, 4096)
    rows = query(
        database_url,
        "SELECT id, superseded FROM messages WHERE conversation_id = :c ORDER BY created_at, id",
        c=conversation["id"],
    )
    assert len(rows) == 7  # nothing is ever rewritten away
    assert {row[0] for row in rows if row[1]} == {second["message"]["id"], second["reply"]["id"], regenerated["id"]}

    assert api.http.delete(f"/conversations/{conversation['id']}").status_code == 204
    left = query(database_url, "SELECT count(*) FROM messages WHERE conversation_id = :c", c=conversation["id"])
    assert left == [(0,)]


def test_malformed_ids_are_404s_on_every_store(api: ChatApi) -> None:
    for quoted in ("x" * 100, "bad%00id", "%27%3B%20--", "%F0%9F%98%80", "%FF"):
        response = api.http.get("/conversations/" + quoted)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"


def test_text_with_a_nul_character_is_a_400_on_every_store(api: ChatApi) -> None:
    conversation = api.create()
    for method, path, body in [
        ("POST", "/conversations", {"title": "a\u0000b"}),
        ("PATCH", f"/conversations/{conversation['id']}", {"system_prompt": "a\u0000b"}),
        ("POST", f"/conversations/{conversation['id']}/messages", {"content": "a\u0000b"}),
    ]:
        response = api.http.request(method, path, json=body)
        assert response.status_code == 400, response.text
        assert "NUL" in response.json()["error"]
    view = api.view(conversation["id"])
    assert view["conversation"] == conversation  # nothing changed
    assert view["messages"] == []
    assert api.http.get("/search", params={"q": "a\u0000b"}).status_code == 400


# ---- search --------------------------------------------------------------------------------------------------------
def test_search_finds_titles_and_text_in_any_case_and_script(api: ChatApi) -> None:
    titled = api.create(title="Über Straße und Café")["id"]
    french = api.create()["id"]
    api.turn(french, "Une crème brûlée au CAFÉ de Zürich")
    chinese = api.create()["id"]
    api.turn(chinese, "我们来测试中文搜索功能")
    for needle in ("über", "ÜBER", "straße", "café", "CAFÉ", "Üb"):
        assert titled in found(api, needle), needle
    for needle in ("CRÈME", "brûlée", "zürich", "ZÜRICH", "é", "É", "rè", "CRÈME BRÛLÉE AU"):
        assert french in found(api, needle), needle
    for needle in ("中文搜索", "搜索", "搜", "测试中"):
        assert chinese in found(api, needle), needle
    assert french not in found(api, "crème fraîche")
    hit = next(r for r in api.search("brûlée") if r["conversation"]["id"] == french)
    assert "brûlée" in hit["snippet"]
    assert hit["message_id"] == api.view(french)["messages"][0]["id"]
    assert hit["conversation"] == api.view(french)["conversation"]


def test_search_treats_percent_and_underscore_literally(api: ChatApi) -> None:
    percent = api.create()["id"]
    api.turn(percent, "I am 100% sure")
    digits = api.create()["id"]
    api.turn(digits, "I am 1000 sure")
    underscore = api.create()["id"]
    api.turn(underscore, "call snake_case here")
    letters = api.create()["id"]
    api.turn(letters, "call snakeXcase here")
    for needle in ("%", "0%", "100% s"):
        hits = found(api, needle)
        assert percent in hits, needle
        assert digits not in hits, needle
    for needle in ("_", "e_", "snake_case"):
        hits = found(api, needle)
        assert underscore in hits, needle
        assert letters not in hits, needle
    assert underscore not in found(api, "\\")  # the escape character is literal too


def test_search_shows_only_what_exists_and_is_shown(api: ChatApi, simulator: Server) -> None:
    tag = uuid.uuid4().hex[:10]
    kept, deleted = api.create(title=f"kept {tag}")["id"], api.create()["id"]
    api.turn(deleted, f"soon gone {tag}")
    assert found(api, tag) == {kept, deleted}
    assert api.http.delete(f"/conversations/{deleted}").status_code == 204
    assert found(api, tag) == {kept}

    regenerated = api.create()["id"]
    answer(simulator, f"first answer {tag}x")
    api.turn(regenerated, "question")
    assert regenerated in found(api, f"{tag}x")
    api.wait_reply(regenerated, api.post(regenerated, "regenerate")["reply"]["id"])
    assert regenerated not in found(api, f"{tag}x")  # the superseded reply is kept, but not shown

    assert api.search("") == api.search("   ") == []
    response = api.http.get("/search", params={"q": "x" * 201})
    assert response.status_code == 400


# ---- many at once ------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_fifty_conversations_sending_at_once_all_get_their_reply(gateway: Server, database_url: str) -> None:
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=gateway.url + "/chat/api", timeout=30, limits=limits) as http:
        created = await asyncio.gather(*(http.post("/conversations", json={}) for _ in range(50)))
        assert [r.status_code for r in created] == [201] * 50
        ids = [r.json()["conversation"]["id"] for r in created]
        sent = await asyncio.gather(
            *(http.post(f"/conversations/{i}/messages", json={"content": f"hello {n}"}) for n, i in enumerate(ids))
        )
        assert [r.status_code for r in sent] == [202] * 50
        for _ in range(200):
            views = await asyncio.gather(*(http.get(f"/conversations/{i}") for i in ids))
            statuses = [v.json()["messages"][-1]["status"] for v in views]
            if all(s not in ("waiting", "thinking", "writing") for s in statuses):
                break
            await asyncio.sleep(0.05)
        assert statuses == ["done"] * 50
    counts = await _query(
        database_url,
        text(
            "SELECT role, status, count(*) FROM messages WHERE conversation_id IN :ids GROUP BY role, status"
        ).bindparams(bindparam("ids", expanding=True)),
        ids=ids,
    )
    assert sorted(counts) == [("assistant", "done", 50), ("user", "sent", 50)]
    assert '"level":"error"' not in gateway.logs()


def test_a_client_id_is_taken_once_even_after_its_message_was_edited_away(api: ChatApi, database_url: str) -> None:
    conversation_id = api.create()["id"]
    api.turn(conversation_id, "first try")  # no client id: any number of those
    original = api.send(conversation_id, "with an id", client_id="tab-7")
    api.wait_reply(conversation_id, original["reply"]["id"])
    edited = api.post(conversation_id, "edit", {"content": "edited"})
    api.wait_reply(conversation_id, edited["reply"]["id"])
    # The retry's message is no longer shown; the database's unique index still recognises it.
    again = api.http.post(
        f"/conversations/{conversation_id}/messages", json={"content": "with an id", "client_id": "tab-7"}
    )
    assert again.status_code == 200, again.text
    assert (again.json()["duplicate"], again.json()["message"]["id"]) == (True, original["message"]["id"])
    counted = query(
        database_url,
        "SELECT count(*) FROM messages WHERE conversation_id = :cid AND role = 'user'",
        cid=conversation_id,
    )
    assert counted == [(3,)]  # first try, with an id (superseded), edited


# ---- migrations and the writer -------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_schema_is_at_head_and_opening_again_changes_nothing(gateway: Server, database_url: str) -> None:
    head = ScriptDirectory.from_config(migrations.config()).get_current_head()
    before = await _query(database_url, "SELECT count(*) FROM conversations")
    for _ in range(2):  # the gateway already migrated this database at its start
        store = Store(database_url)
        await store.open()
        try:
            assert await store.read(migrations.current) == head
        finally:
            await store.close()
    assert await _query(database_url, "SELECT version_num FROM alembic_version") == [(head,)]
    assert await _query(database_url, "SELECT count(*) FROM conversations") == before
    if database_url.startswith("sqlite"):
        assert await _query(database_url, "SELECT name FROM sqlite_master WHERE name = 'messages_fts'")
    else:
        assert await _query(database_url, "SELECT indexname FROM pg_indexes WHERE indexname = 'messages_content_trgm'")


@pytest.mark.asyncio
async def test_writes_queued_together_commit_together_and_one_failure_spares_the_rest(database_url: str) -> None:
    store = Store(database_url)
    await store.open()
    ids = [new_id(), new_id()]
    seen_by_a_reader: list[int] = []

    def insert(conversation_id: str) -> Any:
        def op(conn: Any) -> None:
            row = {"title": "", "title_set": False, "model": "m", "system_prompt": "", "pinned": False}
            conn.execute(conversations.insert().values(id=conversation_id, created_at=1, updated_at=1, **row))

        return op

    def peek(conn: Any) -> None:
        # Another connection, in another thread, must not see the group half-done.
        sql = "SELECT count(*) FROM conversations WHERE id = :i"
        with ThreadPoolExecutor(1) as elsewhere:
            seen_by_a_reader.append(int(elsewhere.submit(query, database_url, sql, i=ids[0]).result()[0][0]))

    try:
        results = await asyncio.gather(
            store.write(insert(ids[0])),
            store.write(peek),
            store.write(insert(ids[0])),  # a duplicate key: fails alone
            store.write(insert(ids[1])),
            return_exceptions=True,
        )
        assert results[0] is None
        assert results[1] is None
        assert isinstance(results[2], Exception)
        assert results[3] is None
        # The group failed and was rolled back (the reader saw none of it), then each write ran on its own.
        assert seen_by_a_reader == [0, 1]
        for conversation_id in ids:
            assert await store.get_conversation(conversation_id) is not None
            await store.delete_conversation(conversation_id)
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_turn_reads_back_as_sqlalchemy_reads_it_and_a_taken_id_is_an_integrity_error(database_url: str) -> None:
    """The turn's statements run on the driver on SQLite (prepared.py): booleans, JSON and NULLs come back as
    SQLAlchemy's own reads give them, and a driver error is SQLAlchemy's exception, as the service expects."""
    store = Store(database_url)
    await store.open()
    try:
        made = await store.create_conversation(user_id="u-prepared", model="m", title="named", think=False)
        sent = new_message(made.id, "user", "question", status="done", client_id="tab-1")
        reply = new_message(made.id, "assistant", status="waiting", model="m", parent_id=sent.id)
        await store.record_turn(made.id, [sent, reply], title="ignored: the user named it")
        switches = [{"from": "a", "to": "b", "at": 3}]
        outcome = Outcome("done", "answer", "", 5, None, None, 40, None, 90, backend="b", switches=switches)
        await store.finish_reply(reply.id, outcome)

        conversation, shown = await store.conversation_and_messages(made.id, "u-prepared")
        by_sqlalchemy = await store.read(
            lambda conn: [
                Message(*row) for row in conn.execute(select(messages).order_by(messages.c.created_at, messages.c.id))
            ]
        )
        mine = [m for m in by_sqlalchemy if m.conversation_id == made.id]
        assert shown == mine
        assert conversation == replace(made, updated_at=conversation.updated_at)  # the turn touched it, kept its title
        assert (conversation.title_set, conversation.think, conversation.pinned) == (True, False, False)
        assert [type(m.superseded) for m in shown] == [bool, bool]
        assert (shown[1].switches, shown[1].content, shown[1].error) == (switches, "answer", None)
        assert await store.conversation_and_messages(made.id, "someone else") == (None, [])

        duplicate = new_message(made.id, "user", "again", status="done", client_id="tab-1")
        with pytest.raises(IntegrityError):
            await store.record_turn(made.id, [duplicate])
        assert len(await store.messages(made.id)) == 2  # nothing of the failed turn was kept
        await store.delete_conversation(made.id)
    finally:
        await store.close()


def test_ids_are_uuid7_and_sort_in_the_order_they_were_made() -> None:
    made = [new_id() for _ in range(5000)]
    assert sorted(made) == made
    assert len(set(made)) == len(made)
    assert all(uuid.UUID(i).version == 7 for i in made[:100])


def test_database_urls_name_the_driver() -> None:
    assert driver_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert driver_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert driver_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert driver_url("sqlite+aiosqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert driver_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"


# ---- restarts ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_replies_cut_off_by_a_stop_or_a_crash_are_kept_as_interrupted(simulator: Server, kind: str) -> None:
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp(prefix='clawdbot-restart-')}/chat.db"
        else:
            url = stack.enter_context(postgres_database())
        _cut_off_replies_are_kept(simulator, url)


def _cut_off_replies_are_kept(simulator: Server, url: str) -> None:
    stalled: dict[str, object] = {
        "reply": "one two three four five",
        "thinking": "",
        "fault": {"kind": "stall", "after": 3, "seconds": 30},
    }

    def start_a_reply(server: Server) -> tuple[str, str]:
        with chat_api(server.url) as api:
            conversation_id: str = api.create()["id"]
            script(simulator, stalled)
            reply_id: str = api.send(conversation_id, "go")["reply"]["id"]

            def stalled_after_three() -> bool:
                return bool((api.view(conversation_id)["active"] or {}).get("content") == "one two three")

            wait_until(stalled_after_three, "the reply to stall")
        return conversation_id, reply_id

    first = start_gateway(simulator.url, "--database-url", url)
    try:
        stopped, stopped_reply = start_a_reply(first)
    finally:
        first.stop()  # SIGTERM: the gateway stores what it has before it exits

    second = start_gateway(simulator.url, "--database-url", url, "--checkpoint-interval", "0.1")
    try:
        crashed, crashed_reply = start_a_reply(second)
        saved = "SELECT content FROM reply_checkpoints"
        wait_until(lambda: query(url, saved) == [("one two three",)], "the text to be checkpointed")
    finally:
        second.kill()  # SIGKILL: nothing more is stored on the way out; the next start must clean up

    third = start_gateway(simulator.url, "--database-url", url)
    try:
        with chat_api(third.url) as api:
            for conversation_id, reply_id, error in [
                (stopped, stopped_reply, "The gateway stopped while this reply was being written"),
                (crashed, crashed_reply, "the text so far is kept"),
            ]:
                view = api.view(conversation_id)
                assert view["active"] is None
                reply = view["messages"][-1]
                assert reply["id"] == reply_id
                assert (reply["status"], reply["content"]) == ("interrupted", "one two three")
                assert reply["error_kind"] == "gateway_stopped"
                assert error in reply["error"]
                assert reply["finished_at"] is not None
            assert query(url, "SELECT count(*) FROM reply_checkpoints") == [(0,)]
            script(simulator, OK)
            assert api.turn(stopped, "and now?")["status"] == "done"
    finally:
        third.stop()
