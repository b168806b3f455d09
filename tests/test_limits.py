"""Platform limits: one context size per model for every request that sets none (raw API and chat page alike, so
they share one loaded model), a cap on each reply's length that a conversation may lower or raise up to the admin's
limit, and the gateway's own guard that cuts off a reply that never ends and lets Continue go on from it.

The gateway talks to the simulator through the `Spy`, which keeps the exact bytes of every request body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from chat_support import ChatApi, Socket, Spy, chat_api, done_of, postgres_database, sim_runner, wait_until
from clawdbot.gateway import rawdefaults
from clawdbot.settings import Settings
from clawdbot.store import migrations
from clawdbot.store.conversations import Store
from clawdbot.store.database import Database
from clawdbot.store.limits import Limits
from conftest import Server, script, start_gateway, start_simulator

MODEL = "qwen3:32b"
NUM_CTX = 6144  # the gateway's --num-ctx: not the simulator's own default (40960 on the instant profile)
MAX_TOKENS = 500  # --max-num-predict
ENDLESS = {"match": "loop", "reply": "again and ", "thinking": "", "endless": True, "times": -1}


@pytest.fixture(scope="module")
def spy(simulator: Server) -> Iterator[Spy]:
    recording = Spy(simulator.url)
    yield recording
    recording.stop()


@pytest.fixture(scope="module")
def gateway(spy: Spy) -> Iterator[Server]:
    server = start_gateway(
        spy.url,
        *("--num-ctx", str(NUM_CTX), "--num-predict", "100", "--max-num-predict", str(MAX_TOKENS)),
        *("--health-interval", "0.3", "--idle-timeout", "5"),
    )
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server) -> Iterator[ChatApi]:
    with chat_api(gateway.url) as client:
        yield client


@pytest.fixture
def admin(gateway: Server) -> Iterator[httpx.Client]:
    """The platform settings (with --no-auth the machine's owner is the admin); put back after each test."""
    client = httpx.Client(base_url=gateway.url + "/chat/api/admin", timeout=15)
    yield client
    reset = {"num_predict": None, "max_num_predict": None, "max_reply_seconds": None, "model_titles": None}
    client.patch("/settings", json={**reset, "num_ctx": {MODEL: None}}).raise_for_status()
    client.close()


def raw(gateway: Server, path: str, body: bytes) -> httpx.Response:
    return httpx.post(gateway.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=15)


def sent(spy: Spy, path: str) -> Any:
    """The newest request the gateway sent to `path`, once it has ended."""
    wait_until(lambda: any(e.path == path for e in spy.exchanges), f"a request to {path}")
    exchange = [e for e in spy.exchanges if e.path == path][-1]
    assert exchange.finished.wait(10)
    return exchange


# ---- the defaults a raw body gets, as bytes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "sent"),
    [
        ("/api/generate", b"{}", b'{"options":{"num_ctx":6144,"num_predict":500}}'),
        (
            "/api/generate",
            b'{"model":"qwen3:32b"} \r\n',
            b'{"model":"qwen3:32b","options":{"num_ctx":6144,"num_predict":500}}',
        ),
        ("/api/embed", b'{"model":"qwen3:32b" }', b'{"model":"qwen3:32b" ,"options":{"num_ctx":6144}}'),
        (
            "/api/chat",
            b'{"Model":"x","Options":{"num_ctx":1}}',
            b'{"Model":"x","Options":{"num_ctx":1,"num_predict":500}}',
        ),
        ("/api/chat", b'{"model":"x","options":null}', b'{"model":"x","options":{"num_ctx":6144,"num_predict":500}}'),
        ("/api/chat", b'{"options":"fast"}', b'{"options":"fast"}'),  # not options Ollama reads: its own 400
        ("/api/chat", b"[1, 2]", b"[1, 2]"),
        ("/api/chat", b"not json", b"not json"),
        ("/api/show", b'{"model":"qwen3:32b"}', b'{"model":"qwen3:32b"}'),
        ("/v1/chat/completions", b'{"model":"qwen3:32b"}', b'{"model":"qwen3:32b"}'),
    ],
)
def test_the_defaults_go_where_they_are_missing_and_nowhere_else(path: str, body: bytes, sent: bytes) -> None:
    limits = Limits(Settings(num_ctx=NUM_CTX, num_predict=100, max_num_predict=MAX_TOKENS))
    assert rawdefaults.with_defaults(path, body, rawdefaults.parse(body), limits) == sent


# ---- the context size: one per model, for the page and every API client ------------------------------------------
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/embed"])
def test_a_raw_request_without_num_ctx_gets_the_models_size_and_keeps_its_own_bytes(
    gateway: Server, spy: Spy, path: str
) -> None:
    field = {"/api/chat": '"messages": [{"role": "user", "content": "\\u4f60\\u597d"}]', "/api/embed": '"input": "x"'}
    body = ('{ "stream" : false, "model": "qwen3:32b", ' + field.get(path, '"prompt": "hi"') + " }\n").encode()
    raw(gateway, path, body)
    forwarded = sent(spy, path).raw
    # The client's bytes up to its closing brace are sent as they were, the defaults after them.
    assert forwarded.startswith(body.rstrip()[:-1].rstrip())
    options = json.loads(forwarded)["options"]
    wanted = {"num_ctx": NUM_CTX} if path == "/api/embed" else {"num_ctx": NUM_CTX, "num_predict": MAX_TOKENS}
    assert options == wanted


def test_a_raw_request_that_sets_its_own_sizes_is_sent_as_it_came(gateway: Server, spy: Spy) -> None:
    body = b'{"model":"qwen3:32b","options":{"num_predict":7,"num_ctx":2048},"prompt":"hi","stream":false}'
    assert raw(gateway, "/api/generate", body).status_code == 200
    assert sent(spy, "/api/generate").raw == body


def test_a_raw_request_keeps_its_options_and_their_order_when_one_is_added(gateway: Server, spy: Spy) -> None:
    body = b'{"model":"qwen3:32b","options":{"temperature":0.25,"num_ctx":3072,"seed":5},"prompt":"x","stream":false}'
    assert raw(gateway, "/api/generate", body).status_code == 200
    forwarded = json.loads(sent(spy, "/api/generate").raw)
    assert list(forwarded) == ["model", "options", "prompt", "stream"]
    assert list(forwarded["options"].items()) == [
        ("temperature", 0.25),
        ("num_ctx", 3072),  # the client's own: never replaced
        ("seed", 5),
        ("num_predict", MAX_TOKENS),
    ]


def test_openai_requests_are_never_rewritten(gateway: Server, spy: Spy) -> None:
    body = b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"stream":false}'
    assert raw(gateway, "/v1/chat/completions", body).status_code == 200
    assert sent(spy, "/v1/chat/completions").raw == body


def test_the_page_and_a_raw_client_share_one_loaded_model(api: ChatApi, gateway: Server, simulator: Server) -> None:
    conversation = api.create()["id"]
    assert api.turn(conversation, "first, from the page")["status"] == "done"
    loads = sim_runner(simulator.url)["loads_total"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert raw(gateway, "/api/chat", json.dumps(body).encode()).status_code == 200
    assert api.turn(conversation, "and again from the page")["status"] == "done"
    # Without the gateway's num_ctx the raw request would have loaded the model with Ollama's own default, and the
    # page's next turn loaded it back: two reloads (9 s each on a 4090).
    assert sim_runner(simulator.url)["loads_total"] == loads
    assert sim_runner(simulator.url)["num_ctx"] == NUM_CTX


def test_an_admins_size_for_a_model_applies_at_once_everywhere(
    api: ChatApi, admin: httpx.Client, gateway: Server, spy: Spy
) -> None:
    changed = admin.patch("/settings", json={"num_ctx": {"QWEN3:32b": 3072}})  # any spelling of the name
    assert changed.status_code == 200, changed.text
    assert {"name": MODEL, "num_ctx": 3072, "own": None, "saved": True} in changed.json()["models"]
    assert httpx.get(gateway.url + "/readyz").json()["context"]["models"] == {MODEL: 3072}
    picker = api.http.get("/models").json()
    assert [m["num_ctx"] for m in picker["models"] if m["name"] == MODEL] == [3072]

    conversation = api.create()["id"]
    api.turn(conversation, "hello")
    assert spy.last_chat().body["options"]["num_ctx"] == 3072
    assert api.view(conversation)["context"]["num_ctx"] == 3072
    raw(gateway, "/api/generate", b'{"model":"qwen3:32b","prompt":"hi","stream":false}')
    assert json.loads(sent(spy, "/api/generate").raw)["options"]["num_ctx"] == 3072

    api.patch(conversation, num_ctx=4096)  # a conversation's own size is its user's choice, and wins
    api.turn(conversation, "again")
    assert spy.last_chat().body["options"]["num_ctx"] == 4096

    admin.patch("/settings", json={"num_ctx": {MODEL: None}}).raise_for_status()  # back to --num-ctx
    raw(gateway, "/api/generate", b'{"model":"qwen3:32b","prompt":"hi","stream":false}')
    assert json.loads(sent(spy, "/api/generate").raw)["options"]["num_ctx"] == NUM_CTX


def test_readyz_warns_when_an_openai_request_loaded_the_model_with_another_size(gateway: Server) -> None:
    body = b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"stream":false}'
    assert raw(gateway, "/v1/chat/completions", body).status_code == 200  # the server's default: 40960

    def warned() -> list[str]:
        return list(httpx.get(gateway.url + "/readyz").json()["context"]["warnings"])

    wait_until(warned, "a warning on /readyz")
    assert f"OLLAMA_CONTEXT_LENGTH={NUM_CTX}" in warned()[0]
    raw(gateway, "/api/chat", b'{"model":"qwen3:32b","messages":[],"stream":false}')  # loads it with the right size
    wait_until(lambda: not warned(), "the warning to go")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_predict": 600}, "above max_num_predict 500"),
        ({"max_num_predict": 50}, "above max_num_predict 50"),
        ({"num_ctx": {MODEL: 100}}, "num_ctx.qwen3:32b: must be from 256"),
        ({"num_ctx": {"": 4096}}, "is no model name"),
        ({"max_reply_seconds": 0}, "max_reply_seconds"),
        ({"model_titles": "yes"}, "model_titles"),
        ({"shout": True}, "shout"),
    ],
)
def test_a_bad_platform_change_is_refused_and_changes_nothing(
    admin: httpx.Client, change: dict[str, Any], message: str
) -> None:
    before = admin.get("/settings").json()
    refused = admin.patch("/settings", json=change)
    assert refused.status_code == 400, refused.text
    assert message in refused.json()["error"]
    assert admin.get("/settings").json() == before


# ---- a reply's length ------------------------------------------------------------------------------------------
def test_a_conversation_may_set_its_reply_length_up_to_the_admins_limit(
    api: ChatApi, admin: httpx.Client, spy: Spy, simulator: Server
) -> None:
    script(simulator, {"reply": "word " * 200, "thinking": "", "times": -1})
    conversation = api.create(num_predict=20)
    reply = api.turn(conversation["id"], "say a lot")
    assert spy.last_chat().body["options"]["num_predict"] == 20
    assert (reply["done_reason"], reply["output_tokens"]) == ("length", 20)  # Ollama's own stop

    over = api.http.patch(f"/conversations/{conversation['id']}", json={"num_predict": MAX_TOKENS + 1})
    assert over.status_code == 400
    assert f"limit of {MAX_TOKENS} tokens" in over.json()["error"]
    assert api.http.post("/conversations", json={"num_predict": MAX_TOKENS + 1}).status_code == 400
    assert api.view(conversation["id"])["conversation"]["num_predict"] == 20

    api.patch(conversation["id"], num_predict=None)  # the platform's default
    api.turn(conversation["id"], "again")
    assert spy.last_chat().body["options"]["num_predict"] == 100
    admin.patch("/settings", json={"num_predict": 30}).raise_for_status()  # an admin's new default, at once
    api.turn(conversation["id"], "and again")
    assert spy.last_chat().body["options"]["num_predict"] == 30

    api.patch(conversation["id"], num_predict=400)
    admin.patch("/settings", json={"max_num_predict": 40}).raise_for_status()  # lowered below its choice
    api.turn(conversation["id"], "once more")
    assert spy.last_chat().body["options"]["num_predict"] == 40


def test_a_reply_that_never_ends_is_cut_off_its_slot_freed_and_continue_goes_on(
    api: ChatApi, simulator: Server
) -> None:
    script(simulator, ENDLESS)
    conversation = api.create()["id"]
    cancelled = sim_runner(simulator.url)["cancelled_total"]
    cut = api.turn(conversation, "loop for ever")
    assert (cut["status"], cut["done_reason"]) == ("done", "length")
    # Lines of text as the guard counts them: it stops at the first piece past the limit (one read of the stream).
    assert cut["output_tokens"] > MAX_TOKENS
    assert cut["content"].startswith("again and again and")
    wait_until(lambda: sim_runner(simulator.url)["active"] == 0, "the backend's slot to be freed")
    assert sim_runner(simulator.url)["cancelled_total"] == cancelled + 1  # the backend request was closed
    metrics = httpx.get(str(api.http.base_url).removesuffix("/chat/api/") + "/metrics").text
    assert 'clawdbot_chat_replies_cut_total{reason="length"}' in metrics

    continued = api.post(conversation, "continue")["reply"]
    assert continued["content"] == cut["content"]  # it starts with the text so far
    again = api.wait_reply(conversation, continued["id"])
    assert again["done_reason"] == "length"
    assert again["content"].startswith(cut["content"])
    assert len(again["content"]) > len(cut["content"])
    assert [m["id"] for m in api.view(conversation)["messages"]][-1] == continued["id"]


@pytest.mark.asyncio
async def test_a_cut_off_reply_says_so_on_the_websocket_and_continues_there(gateway: Server, simulator: Server) -> None:
    script(simulator, ENDLESS)
    with chat_api(gateway.url) as api:
        conversation = api.create()["id"]
    ws_url = gateway.url.replace("http", "ws") + "/chat/api/ws"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        socket = Socket(ws)
        await socket.next()  # hello
        ack = await socket.command("send", conversation_id=conversation, content="loop")
        events = await socket.until(done_of(ack["reply"]["id"]))
        stats = next(e for e in events if e["type"] == "reply.stats")
        assert stats["done_reason"] == "length"
        assert stats["output_tokens"] > MAX_TOKENS
        assert events[-1]["message"]["done_reason"] == "length"
        ack = await socket.command("continue", conversation_id=conversation)
        assert ack["type"] == "ack", ack
        events = await socket.until(done_of(ack["reply"]["id"]))
        assert events[-1]["message"]["status"] == "done"


# ---- the time limit: on the page and on the raw API --------------------------------------------------------------
@pytest.fixture(scope="module")
def slow() -> Iterator[tuple[Server, Server]]:
    """A backend at 50 tokens a second, and a gateway whose replies may take 1.5 s."""
    simulator = start_simulator("--profile", "instant", "--tokens-per-second", "50", "--num-parallel", "0")
    gateway = start_gateway(simulator.url, "--max-reply-seconds", "1.5")
    yield simulator, gateway
    gateway.stop()
    simulator.stop()


def test_a_reply_past_the_time_limit_is_cut_off_and_can_be_continued(slow: tuple[Server, Server]) -> None:
    simulator, gateway = slow
    script(simulator, ENDLESS)
    with chat_api(gateway.url) as api:
        conversation = api.create()["id"]
        started = time.monotonic()
        cut = api.turn(conversation, "loop")
        assert 1.5 <= time.monotonic() - started < 5
        assert (cut["status"], cut["done_reason"]) == ("done", "time_limit")
        assert cut["content"].startswith("again and")
        wait_until(lambda: sim_runner(simulator.url)["active"] == 0, "the backend's slot to be freed")
        assert api.post(conversation, "continue")["reply"]["content"] == cut["content"]


def test_a_raw_stream_past_the_time_limit_ends_with_an_error_line(slow: tuple[Server, Server]) -> None:
    simulator, gateway = slow
    script(simulator, ENDLESS)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "loop"}]}
    started = time.monotonic()
    with httpx.stream("POST", gateway.url + "/api/chat", json=body, timeout=15) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert 1.5 <= time.monotonic() - started < 5
    assert lines[0]["message"]["content"]
    assert "error" not in lines[0]
    assert "limit of 1.5 s" in lines[-1]["error"]  # the official clients raise on it, as for a backend failure
    wait_until(lambda: sim_runner(simulator.url)["active"] == 0, "the backend's slot to be freed")


# ---- the schema: migration 0005 ------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/chat.db"
    else:
        with postgres_database() as url:
            yield url


@pytest.mark.asyncio
async def test_migration_0004_adds_the_limits_and_keeps_what_was_there(empty_database: str) -> None:
    older = Database(empty_database)
    await older.open(lambda conn: command.upgrade(migrations.config(conn), "0003_accounts"))
    values = {**dict.fromkeys(("title", "model", "system_prompt"), "x"), "created_at": 1, "updated_at": 1}
    await older.write(
        lambda conn: conn.execute(
            text(
                "INSERT INTO conversations (id, title, title_set, model, system_prompt, pinned, created_at, "
                "updated_at) VALUES ('c1', :title, false, :model, :system_prompt, false, :created_at, :updated_at)"
            ),
            values,
        )
    )
    await older.close()

    store = Store(empty_database)  # migrates to the newest revision at open, as the gateway does
    await store.open()
    try:

        def schema(conn: Connection) -> dict[str, dict[str, bool]]:
            found = inspect(conn)
            tables = ("conversations", "platform_settings", "model_settings")
            return {t: {c["name"]: bool(c["nullable"]) for c in found.get_columns(t)} for t in tables}

        columns = await store.read(schema)
        assert columns["conversations"]["num_predict"] is True  # nullable: the platform's default
        assert columns["platform_settings"] == {"name": False, "value": False, "updated_at": False}
        assert columns["model_settings"] == {"model": False, "num_ctx": False, "updated_at": False}
        kept = await store.get_conversation("c1")
        assert kept is not None
        assert (kept.title, kept.num_predict) == ("x", None)
        limits = Limits(Settings(num_ctx=5000))
        await limits.open(store.db)  # a new table is empty: the command line's defaults
        assert (limits.num_ctx("qwen3:32b"), limits.num_predict, limits.model_titles) == (5000, 4096, False)
        await limits.save({"model_titles": True}, {"Qwen3": 2048})
        again = Limits(Settings())
        await again.open(store.db)  # what another gateway on the same database reads
        assert (again.model_titles, again.num_ctx("qwen3:latest"), again.num_ctx("qwen3:32b")) == (True, 2048, 8192)
    finally:
        await store.close()


# ---- a model's own parameters ----------------------------------------------------------------------------------
def test_a_models_modelfile_parameters_are_read_and_give_way_only_to_an_admin() -> None:
    from clawdbot.backends.ollama import _parameters
    from clawdbot.settings import Settings
    from clawdbot.store.limits import Limits

    shown = 'num_ctx                        32768\nstop                           "<end_of_turn>"\nnum_predict -1\n'
    assert _parameters(shown) == {"num_ctx": 32768}  # -1: no cap of its own
    assert _parameters("num_predict 64\nnum_ctx junk") == {"num_predict": 64}
    assert _parameters(None) == {}
    limits = Limits(Settings(num_ctx=8192, num_predict=4096))
    limits.own_of = lambda: {"base:latest": {"num_ctx": 32768, "num_predict": 64}, "qwen3:32b": {}}
    assert limits.num_ctx("Base") == 32768  # the model's own, found however the request spells it
    assert limits.num_ctx("qwen3:32b") == 8192
    limits.contexts = {"base:latest": 4096}
    assert limits.num_ctx("base") == 4096  # an admin's wins
    assert limits.reply_tokens(None, "base") == 64  # the model's own cap, lower than the default
    assert limits.reply_tokens(None, "qwen3:32b") == 4096
    assert limits.reply_tokens(200, "base") == 200  # a conversation's own choice
    assert limits.own_num_predict("qwen3:32b") is None
