"""deploy/: the seed's nginx snippet, the recommended nginx config and the Caddyfile, run through the real proxies.

Each proxy runs in the foreground on a free port (tests/deploy_support.py), in front of a real gateway and simulator.
The configs are read out of deploy/ at test time, so editing them there changes what is tested.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import aiohttp
import httpx
import pytest

from accounts_support import PASSWORD, Gateway, accounts_gateway
from clawdbot.cli import main as cli
from clawdbot.settings import Settings, env_name
from clawdbot.simulator.settings import SimulatorSettings
from conftest import Server, start_gateway, start_simulator
from deploy_support import (
    CADDY,
    DEPLOY,
    ROOT,
    SQLITE,
    Proxy,
    between,
    binary,
    new_conversation,
    receive,
    script,
    seed_snippet,
    send_turn,
    start_caddy,
    start_nginx,
    stored,
    words,
    ws_url,
)

# The snippet as the seed article prints it (on one line), to hold deploy/nginx.conf to it.
SEED = (
    "server { listen 8080; server_name _; location /chat { proxy_pass http://127.0.0.1:18789; "
    "proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr; proxy_set_header Upgrade $http_upgrade; "
    'proxy_set_header Connection "upgrade"; proxy_http_version 1.1; } }'
)
HEARTBEAT = 0.5  # the gateway's --heartbeat here
SEED_READ_TIMEOUT = 2  # nginx's proxy_read_timeout around the seed's snippet (60 s by default), so a test outlasts it
TOKENS_PER_SECOND = 40


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    """Tokens at a steady 40/s, so a stream that streams is told apart from one delivered at the end."""
    server = start_simulator(
        "--profile", "instant", "--num-parallel", "8", "--tokens-per-second", str(TOKENS_PER_SECOND)
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = start_gateway(simulator.url, "--heartbeat", str(HEARTBEAT))
    yield server
    server.stop()


def _upstream(text: str, gateway: Server) -> str:
    return text.replace("127.0.0.1:18789", f"127.0.0.1:{gateway.port}")


@pytest.fixture(scope="module")
def seed_nginx(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    # The snippet stays verbatim; it inherits the shorter read timeout from the http block around it.
    proxy = start_nginx(
        tmp_path_factory.mktemp("nginx-seed"),
        _upstream(seed_snippet(), gateway),
        f"proxy_read_timeout {SEED_READ_TIMEOUT}s;",
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def nginx(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    proxy = start_nginx(
        tmp_path_factory.mktemp("nginx"), _upstream((DEPLOY / "nginx.conf").read_text(encoding="utf-8"), gateway)
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def caddy(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    site = between((DEPLOY / "Caddyfile").read_text(encoding="utf-8"), "proxy begin", "proxy end")
    proxy = start_caddy(tmp_path_factory.mktemp("caddy"), _upstream(site, gateway))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module", params=["seed_nginx", "nginx", "caddy"])
def proxy(request: pytest.FixtureRequest) -> Proxy:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def full_proxy(request: pytest.FixtureRequest) -> Proxy:
    """The recommended configurations, which also forward Ollama's /api."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def site(simulator: Server) -> Iterator[Gateway]:
    """A gateway with accounts on, as deployed for a team."""
    gateway = accounts_gateway(simulator.url, "--heartbeat", str(HEARTBEAT))
    gateway.add_user("ana")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module", params=["nginx", "caddy"])
def team_proxy(
    request: pytest.FixtureRequest, site: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp(f"{request.param}-accounts")
    if request.param == "nginx":
        proxy = start_nginx(tmp, _upstream((DEPLOY / "nginx.conf").read_text(encoding="utf-8"), site.server))
    else:
        block = between((DEPLOY / "Caddyfile").read_text(encoding="utf-8"), "proxy begin", "proxy end")
        proxy = start_caddy(tmp, _upstream(block, site.server))
    yield proxy
    proxy.stop()


@pytest.mark.asyncio
async def test_signed_in_through_the_proxy_the_origin_check_knows_its_own_site(team_proxy: Proxy) -> None:
    """nginx's `Host $host` drops the port the browser used; the page's own Origin must still pass, another's not."""
    own = {"Origin": team_proxy.url}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # cookies for an IP
        sign_in = {"name": "ana", "password": PASSWORD}
        async with session.post(f"{team_proxy.url}/chat/api/session", json=sign_in, headers=own) as response:
            assert response.status == 200, await response.text()
            assert "HttpOnly" in response.headers["Set-Cookie"]
            csrf = (await response.json())["csrf_token"]
        changes = {**own, "X-CSRF-Token": csrf}
        async with session.post(f"{team_proxy.url}/chat/api/conversations", json={}, headers=changes) as response:
            assert response.status == 201, await response.text()
        async with session.ws_connect(f"{ws_url(team_proxy)}/chat/api/ws", headers=own) as ws:
            assert (await receive(ws))["type"] == "hello"
        evil = {"Origin": "http://evil.example", "X-CSRF-Token": csrf}
        async with session.post(f"{team_proxy.url}/chat/api/conversations", json={}, headers=evil) as response:
            assert response.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{ws_url(team_proxy)}/chat/api/ws", headers=evil)
        assert refused.value.status == 403
    async with aiohttp.ClientSession() as nobody, nobody.get(f"{team_proxy.url}/chat/api/conversations") as response:
        assert response.status == 401


@pytest.mark.asyncio
async def test_page_and_assets(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.url}/chat") as response:
            assert response.status == 200, f"{proxy.name}: {await response.text()}"
            assert response.content_type == "text/html"
            page = await response.text()
        assets = re.findall(r'(?:src|href)="(/chat/assets/[^"]+)"', page)
        assert {Path(a).suffix for a in assets} >= {".js", ".css"}, page
        for path in assets:
            async with session.get(proxy.url + path) as response:
                assert response.status == 200, path
                assert response.content_type != "application/octet-stream", path
                assert await response.read()


@pytest.mark.asyncio
async def test_conversation_over_websocket(proxy: Proxy, simulator: Server) -> None:
    """Two turns of one conversation over the page's WebSocket; what was streamed is what was stored."""
    async with aiohttp.ClientSession() as session:
        conversation_id = await new_conversation(session, proxy)
        async with session.ws_connect(f"{ws_url(proxy)}/chat/api/ws") as ws:
            assert (await receive(ws))["type"] == "hello"
            replies = []
            for number in (1, 2):
                await script(
                    session, simulator, {"match": f"turn {number}", "reply": words(8), "thinking": "Let me see."}
                )
                turn = await send_turn(ws, conversation_id, f"turn {number}, through {proxy.name}")
                assert [event["message"]["status"] for _, event in turn.of("reply.start")] == ["waiting"]
                assert len(turn.of("reply.delta")) >= 8
                numbered = [
                    event["seq"] for _, event in turn.events if "seq" in event and event["type"] != "reply.snapshot"
                ]
                assert numbered == list(range(1, len(numbered) + 1))  # every event of the reply, none lost
                assert turn.final["status"] == "done"
                assert turn.text("content") == words(8)
                replies.append(turn)
        messages = await stored(session, proxy, conversation_id)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    for turn, message in zip(replies, messages[1::2], strict=True):
        assert message["id"] == turn.reply_id
        assert (message["content"], message["thinking"]) == (turn.text("content"), turn.text("thinking"))
        assert message["status"] == "done"


@pytest.mark.asyncio
async def test_heartbeats_keep_the_socket_open_while_the_model_is_silent(seed_nginx: Proxy, simulator: Server) -> None:
    """The model says nothing for twice nginx's read timeout; the gateway's heartbeats keep nginx from hanging up."""
    silence = 2 * SEED_READ_TIMEOUT
    async with aiohttp.ClientSession() as session:
        conversation_id = await new_conversation(session, seed_nginx)
        await script(
            session,
            simulator,
            {"match": "ponder", "reply": words(5), "thinking": "", "fault": {"kind": "slow_first", "seconds": silence}},
        )
        async with session.ws_connect(f"{ws_url(seed_nginx)}/chat/api/ws") as ws:
            assert (await receive(ws))["type"] == "hello"
            turn = await send_turn(ws, conversation_id, "ponder this")
    first_delta = turn.of("reply.delta")[0][0]
    assert first_delta > silence - 0.5
    beats = [at for at, _ in turn.of("heartbeat") if at < first_delta]
    assert len(beats) >= silence / HEARTBEAT / 2
    assert turn.final["status"] == "done"
    assert turn.text("content") == words(5)


def test_without_heartbeats_nginx_hangs_up(simulator: Server, tmp_path: Path) -> None:
    """The other side of the test above: heartbeats further apart than nginx's read timeout lose the socket."""
    gateway = start_gateway(simulator.url, "--heartbeat", "30")
    proxy = start_nginx(tmp_path, _upstream(seed_snippet(), gateway), f"proxy_read_timeout {SEED_READ_TIMEOUT}s;")
    try:
        asyncio.run(_idle_socket_closes(proxy))
    finally:
        proxy.stop()
        gateway.stop()


async def _idle_socket_closes(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{ws_url(proxy)}/chat/api/ws") as ws:
        assert (await receive(ws))["type"] == "hello"
        async with asyncio.timeout(SEED_READ_TIMEOUT + 5):
            message = await ws.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message


def spread(times: list[float]) -> float:
    return max(times) - min(times)


# About 0.8 s of tokens at 40 tokens/s; a reply held back by the proxy would arrive all at once.
STREAMED = words(30)
MIN_SPREAD = 0.4


@pytest.mark.asyncio
async def test_websocket_deltas_arrive_as_they_are_made(full_proxy: Proxy, simulator: Server) -> None:
    async with aiohttp.ClientSession() as session:
        conversation_id = await new_conversation(session, full_proxy)
        await script(session, simulator, {"match": "stream", "reply": STREAMED, "thinking": ""})
        async with session.ws_connect(f"{ws_url(full_proxy)}/chat/api/ws") as ws:
            assert (await receive(ws))["type"] == "hello"
            turn = await send_turn(ws, conversation_id, "stream please")
    assert turn.text("content") == STREAMED
    assert spread([at for at, _ in turn.of("reply.delta")]) > MIN_SPREAD


@pytest.mark.asyncio
async def test_event_stream_arrives_as_it_is_made(proxy: Proxy, simulator: Server) -> None:
    """The page's SSE fallback: text/event-stream must pass unbuffered and uncompressed."""
    async with aiohttp.ClientSession() as session:
        conversation_id = await new_conversation(session, proxy)
        await script(session, simulator, {"match": "sse", "reply": STREAMED, "thinking": ""})
        url = f"{proxy.url}/chat/api/conversations/{conversation_id}/events"
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as events:
            assert events.status == 200
            assert events.content_type == "text/event-stream"
            assert events.headers.get("Content-Encoding") is None
            async with session.post(
                f"{proxy.url}/chat/api/conversations/{conversation_id}/messages", json={"content": "sse please"}
            ) as response:
                assert response.status == 202
            started, deltas = time.monotonic(), []
            async with asyncio.timeout(20):
                async for line in events.content:
                    if not line.startswith(b"data: "):
                        continue
                    event = json.loads(line[len(b"data: ") :])
                    if event["type"] == "reply.delta":
                        deltas.append((time.monotonic() - started, event))
                    elif event["type"] == "reply.done":
                        break
    assert "".join(event.get("content", "") for _, event in deltas) == STREAMED
    assert spread([at for at, _ in deltas]) > MIN_SPREAD


@pytest.mark.asyncio
async def test_ollama_api_streams_through(full_proxy: Proxy, simulator: Server) -> None:
    body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "ndjson please"}], "think": False}
    async with aiohttp.ClientSession() as session:
        await script(session, simulator, {"match": "ndjson", "reply": STREAMED, "thinking": ""})
        arrivals, text = [], ""
        started = time.monotonic()
        async with session.post(
            f"{full_proxy.url}/api/chat", json=body, headers={"Accept-Encoding": "gzip"}
        ) as response:
            assert response.status == 200
            assert response.headers.get("Content-Encoding") is None
            async for line in response.content:
                chunk = json.loads(line)
                arrivals.append(time.monotonic() - started)
                text += chunk["message"]["content"]
    assert text == STREAMED
    assert spread(arrivals) > MIN_SPREAD


async def cancelled(session: aiohttp.ClientSession, simulator: Server) -> int:
    async with session.get(f"{simulator.url}/_sim/state") as response:
        runner = (await response.json())["runners"].get("qwen3:32b", {})  # absent until the model is first used
        return runner.get("cancelled_total", 0)  # type: ignore[no-any-return]


@pytest.mark.asyncio
async def test_a_client_that_hangs_up_frees_the_model(full_proxy: Proxy, simulator: Server) -> None:
    """A client gives up on a reply that is not streamed (nothing flows until it is complete): the proxy must pass
    the hang-up on at once, so the gateway cancels the generation. Caddy's flush_interval -1 would not."""
    body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hang up"}], "stream": False}
    async with aiohttp.ClientSession() as session:
        await script(session, simulator, {"match": "hang up", "reply": words(400), "thinking": ""})  # about 10 s
        before = await cancelled(session, simulator)
        with pytest.raises(TimeoutError):
            await session.post(f"{full_proxy.url}/api/chat", json=body, timeout=aiohttp.ClientTimeout(total=0.5))
        for _ in range(100):  # 5 s at most, half the reply's length
            if await cancelled(session, simulator) > before:
                break
            await asyncio.sleep(0.05)
        assert await cancelled(session, simulator) == before + 1


@pytest.mark.asyncio
async def test_model_management_is_not_public(full_proxy: Proxy, simulator: Server) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/blobs/sha256:00"):
            async with session.post(full_proxy.url + path, json={"model": "qwen3:32b"}) as response:
                assert response.status == 403, path
        async with session.get(f"{full_proxy.url}/api/tags") as response:
            assert response.status == 200
            assert [m["name"] for m in (await response.json())["models"]] == ["qwen3:32b"]


@pytest.mark.asyncio
async def test_root_redirects_and_operations_stay_private(full_proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{full_proxy.url}/", allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"].endswith("/chat")
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(full_proxy.url + path) as response:
                assert response.status == 404, path


@pytest.mark.asyncio
async def test_request_ids_pass_through(full_proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{full_proxy.url}/chat/api/models", headers={"X-Request-ID": "deploy-42"}) as response:
            assert response.status == 200
            assert response.headers["X-Request-ID"] == "deploy-42"
        async with session.get(f"{full_proxy.url}/chat/api/models") as response:
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


@pytest.mark.asyncio
async def test_large_bodies_reach_the_gateway(nginx: Proxy) -> None:
    """Images travel inline in /api/chat: nginx's 1 MiB default would refuse them before the gateway sees them."""
    body = io.BytesIO(json.dumps({"model": "qwen3:32b", "padding": "x" * (3 * 1024 * 1024)}).encode())
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{nginx.url}/api/show", data=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()


# ---- the files themselves -----------------------------------------------------------------------------------------
def test_minimal_block_is_the_seed_snippet_verbatim() -> None:
    assert " ".join(seed_snippet().split()) == SEED


def _code_lines(markdown: str) -> Iterator[str]:
    """Lines of fenced and indented code blocks, and inline code that starts with `clawdbot `."""
    yield from re.findall(r"`(clawdbot [^`]+)`", markdown)
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            yield line


_OPERATORS = ("&&", "||", "|", ";", "&")


def _invocations(lines: Iterable[str]) -> list[list[str]]:
    """The arguments of every `clawdbot …` command in these lines (up to a shell operator)."""
    found = []
    for line in lines:
        tokens = shlex.split(line.removeprefix("ExecStart="), comments=True)
        for i, token in enumerate(tokens):
            is_command = i == 0 or tokens[i - 1] in ("sudo", *_OPERATORS)
            if is_command and (token == "clawdbot" or token.endswith("/bin/clawdbot")):
                found.append(list(itertools.takewhile(lambda t: t not in _OPERATORS, tokens[i + 1 :])))
    return found


def test_commands_in_the_guide_and_the_unit_exist() -> None:
    """Every `clawdbot` command and CLAWDBOT_ variable in the guide and the unit is one the code accepts."""
    guide = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    unit = (DEPLOY / "clawdbot.service").read_text(encoding="utf-8")
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    invocations = _invocations([*_code_lines(guide), *exec_start])
    assert len(invocations) >= 5
    for args in invocations:
        name = args[0] if args and args[0] in cli.commands else "serve"
        rest = args[1:] if args and args[0] == name else args
        cli.commands[name].make_context(name, rest)  # raises on an unknown option, a missing value or a stray word
    known = {env_name(cls, field) for cls in (Settings, SimulatorSettings) for field in cls.model_fields}
    mentioned = set(re.findall(r"\bCLAWDBOT_[A-Z_]+\b", guide + unit))
    assert mentioned - known - {"CLAWDBOT_CONFIG"} == set()


def test_unit_file_is_valid(tmp_path: Path) -> None:
    unit = (DEPLOY / "clawdbot.service").read_text(encoding="utf-8")
    for line in ("User=clawdbot", "StateDirectory=clawdbot", "Restart=on-failure", "ProtectSystem=strict"):
        assert line in unit.splitlines()
    assert "--data-dir /var/lib/clawdbot" in unit
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed")
    # It checks that ExecStart's program exists: point it at this checkout's clawdbot.
    here = Path(sys.executable).with_name("clawdbot")
    (tmp_path / "clawdbot.service").write_text(unit.replace("/opt/clawdbot/bin/clawdbot", str(here)))
    result = subprocess.run([verify, "verify", "clawdbot.service"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "clawdbot.service" not in result.stdout + result.stderr  # unknown or bad settings are only warnings


def test_backup_command_copies_a_live_database(gateway: Server, tmp_path: Path) -> None:
    """The guide's online backup, taken while the gateway runs, holds what the gateway has stored."""
    sqlite = binary(SQLITE)
    created = httpx.post(f"{gateway.url}/chat/api/conversations", json={"title": "keep me"})
    assert created.status_code == 201
    data_dir = Path(gateway.args[gateway.args.index("--data-dir") + 1])
    backup = tmp_path / "clawdbot.db"
    subprocess.run([sqlite, str(data_dir / "clawdbot.db"), f".backup {backup}"], check=True, timeout=30)
    with closing(sqlite3.connect(backup)) as db:
        rows = db.execute("SELECT title FROM conversations WHERE id = ?", (created.json()["conversation"]["id"],))
        assert rows.fetchall() == [("keep me",)]


def test_caddyfile_is_formatted_and_valid(tmp_path: Path) -> None:
    caddy = binary(CADDY)
    path = DEPLOY / "Caddyfile"
    formatted = subprocess.run([caddy, "fmt", str(path)], capture_output=True, text=True, check=True).stdout
    assert formatted == path.read_text(encoding="utf-8"), "run: caddy fmt --overwrite deploy/Caddyfile"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [caddy, "validate", "--adapter", "caddyfile", "--config", str(path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
