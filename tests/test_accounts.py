"""Accounts over HTTP: the setup link, `clawdbot user add`, sign-in and sessions, throttling, API keys (with the
official clients), single sign-on, --no-auth, CSRF and Origin, headers, size limits, and what reaches the log."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import ollama
import openai
import pytest

from accounts_support import OPEN, PASSWORD, Gateway, accounts_gateway, bearer, close_clients, new_key, sign_in
from chat_support import ChatApi, postgres_database
from clawdbot.auth.passwords import hashing_slots
from conftest import Server, start_gateway, start_process


@pytest.fixture(scope="module")
def site(simulator: Server) -> Iterator[Gateway]:
    gateway = accounts_gateway(simulator.url)
    gateway.add_user("admin", admin=True)
    gateway.add_user("ana")
    gateway.add_user("bo")
    yield gateway
    gateway.stop()


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_clients()


def _database(gateway: Gateway) -> sqlite3.Connection:
    return sqlite3.connect(Path(gateway.data_dir) / "clawdbot.db")


# ---- the first admin -------------------------------------------------------------------------------------------
def test_the_setup_link_makes_the_first_admin_once_and_keeps_earlier_chats(simulator: Server) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="clawdbot-data-"))
    before = start_gateway(simulator.url, "--data-dir", str(data_dir))  # --no-auth: the owner's chats
    made = httpx.post(f"{before.url}/chat/api/conversations", json={"title": "from before"}).json()["conversation"]
    before.stop()
    gateway = Gateway(start_gateway(simulator.url, "--auth", "--data-dir", str(data_dir)), str(data_dir))
    try:
        token = gateway.setup_token()
        state = httpx.get(f"{gateway.url}/chat/api/session")
        assert state.status_code == 401
        assert state.json()["setup"] is True
        wrong = httpx.post(
            f"{gateway.url}/chat/api/setup", json={"token": "x" * 43, "name": "eve", "password": PASSWORD}
        )
        assert (wrong.status_code, wrong.json()["code"]) == (403, "bad_token")
        client = httpx.Client(base_url=gateway.url)
        OPEN.append(client)
        done = client.post("/chat/api/setup", json={"token": token, "name": "Root", "password": PASSWORD})
        assert done.status_code == 201, done.text
        assert done.json()["user"]["role"] == "admin"
        assert done.json()["user"]["name"] == "root"
        mine = client.get("/chat/api/conversations").json()["conversations"]  # signed in by the setup itself
        assert [c["id"] for c in mine] == [made["id"]]
        again = httpx.post(f"{gateway.url}/chat/api/setup", json={"token": token, "name": "eve", "password": PASSWORD})
        assert (again.status_code, again.json()["code"]) == (403, "setup_closed")
        assert httpx.get(f"{gateway.url}/chat/api/session").json()["setup"] is False
    finally:
        gateway.stop()


def test_user_add_refuses_bad_names_short_passwords_and_taken_names(site: Gateway) -> None:
    def add(name: str, password: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "clawdbot", "user", "add", name, "--data-dir", site.data_dir]
        return subprocess.run(args, input=password + "\n", capture_output=True, text=True, timeout=60)

    assert "letters, digits" in add("no spaces", PASSWORD).stderr
    assert "8 to 1024" in add("shorty", "short").stderr
    assert "already" in add("ANA", PASSWORD).stderr
    listed = subprocess.run(
        [sys.executable, "-m", "clawdbot", "user", "list", "--data-dir", site.data_dir],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "admin" in listed
    assert "ana" in listed
    assert "shorty" not in listed


# ---- sessions --------------------------------------------------------------------------------------------------
def test_sign_in_sets_an_httponly_samesite_cookie_stored_server_side_and_sign_out_ends_it(site: Gateway) -> None:
    answer = httpx.post(f"{site.url}/chat/api/session", json={"name": "Ana", "password": PASSWORD})
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie
    assert "Max-Age=" in cookie
    client = sign_in(site.url, "ana")
    assert client.get("/chat/api/session").json()["user"]["name"] == "ana"
    with _database(site) as db:  # only the token's hash is kept
        token = client.cookies["clawdbot_session"]
        assert not db.execute("SELECT 1 FROM sessions WHERE id = ?", (token,)).fetchall()
        hashes = [row[0] for row in db.execute("SELECT password_hash FROM users WHERE name = 'ana'")]
        assert hashes[0].startswith("$argon2id$")
    assert client.delete("/chat/api/session").status_code == 204
    client.cookies.set("clawdbot_session", token)
    assert client.get("/chat/api/conversations").status_code == 401


def test_behind_tls_the_cookie_is_secure(site: Gateway) -> None:
    answer = httpx.post(
        f"{site.url}/chat/api/session",
        json={"name": "ana", "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},  # from a trusted proxy (loopback)
    )
    assert "Secure" in answer.headers["set-cookie"]


def test_failed_sign_ins_are_slowed_per_account_and_the_right_password_then_waits_too(site: Gateway) -> None:
    site.add_user("target")
    codes = []
    for attempt in range(8):
        answer = httpx.post(
            f"{site.url}/chat/api/session",
            json={"name": "target", "password": f"wrong {attempt}"},
            headers={"X-Forwarded-For": f"198.51.100.{attempt}"},  # a different address each time
        )
        codes.append(answer.status_code)
    assert codes[:5] == [401] * 5, codes  # 5 failures for one account, then a wait
    assert codes[5:] == [429, 429, 429], codes
    blocked = httpx.post(f"{site.url}/chat/api/session", json={"name": "target", "password": PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) >= 1
    assert blocked.json()["code"] == "too_many_attempts"


def test_failed_sign_ins_are_slowed_per_address_across_accounts(site: Gateway) -> None:
    codes = [
        httpx.post(
            f"{site.url}/chat/api/session",
            json={"name": f"nobody{n}", "password": "wrong password"},
            headers={"X-Forwarded-For": "192.0.2.77"},
        ).status_code
        for n in range(23)
    ]
    assert codes[:20] == [401] * 20, codes  # 20 failures from one address, then a wait
    assert codes[20:] == [429, 429, 429], codes
    other = httpx.post(
        f"{site.url}/chat/api/session",
        json={"name": "bo", "password": PASSWORD},
        headers={"X-Forwarded-For": "192.0.2.78"},
    )
    assert other.status_code == 200


def test_a_changed_password_signs_out_other_sessions(site: Gateway) -> None:
    site.add_user("changer")
    first, second = sign_in(site.url, "changer"), sign_in(site.url, "changer")
    wrong = first.post("/chat/api/password", json={"current": "not it at all", "new": "a new password"})
    assert wrong.status_code == 403
    assert first.post("/chat/api/password", json={"current": PASSWORD, "new": "a new password"}).status_code == 204
    assert first.get("/chat/api/conversations").status_code == 200
    assert second.get("/chat/api/conversations").status_code == 401
    sign_in(site.url, "changer", "a new password")


# ---- API keys --------------------------------------------------------------------------------------------------
def test_api_keys_are_shown_once_stored_hashed_and_revoked_at_once(site: Gateway) -> None:
    client = sign_in(site.url, "ana")
    key = new_key(client, "laptop")
    listed = client.get("/chat/api/keys").json()["keys"]
    assert any(k["name"] == "laptop" and key.startswith(k["prefix"]) for k in listed)
    assert all("secret" not in k and "secret_hash" not in k for k in listed)
    with _database(site) as db:
        assert not db.execute("SELECT 1 FROM api_keys WHERE secret_hash = ?", (key,)).fetchall()
    assert httpx.get(f"{site.url}/api/tags", headers=bearer(key)).status_code == 200
    assert httpx.get(f"{site.url}/chat/api/conversations", headers=bearer(key)).status_code == 200
    key_id = next(k["id"] for k in listed if k["name"] == "laptop")
    assert client.delete(f"/chat/api/keys/{key_id}").status_code == 204
    assert httpx.get(f"{site.url}/api/tags", headers=bearer(key)).status_code == 401
    bo = sign_in(site.url, "bo")
    assert bo.delete(f"/chat/api/keys/{key_id}").status_code == 404


def test_the_raw_api_needs_a_key_and_takes_no_cookie(site: Gateway) -> None:
    assert httpx.get(f"{site.url}/api/tags").status_code == 401
    unauthorized = httpx.post(f"{site.url}/v1/chat/completions", json={"model": "qwen3:32b", "messages": []})
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "unauthenticated"
    client = sign_in(site.url, "ana")
    assert client.get("/api/tags").status_code == 401  # a cookie is for the page: a site could ride it here
    assert httpx.get(f"{site.url}/api/tags", headers=bearer("cbk_made_up")).status_code == 401


def test_the_official_ollama_and_openai_clients_work_with_a_key(site: Gateway) -> None:
    key = new_key(sign_in(site.url, "ana"), "clients")
    with ollama.Client(host=site.url, headers=bearer(key)) as client:
        reply = client.chat(model="qwen3:32b", messages=[{"role": "user", "content": "hi"}], think=False)
    assert reply.message.content
    with openai.OpenAI(base_url=f"{site.url}/v1", api_key=key, max_retries=0) as openai_client:
        done = openai_client.chat.completions.create(model="qwen3:32b", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content
    with (
        openai.OpenAI(base_url=f"{site.url}/v1", api_key="ollama", max_retries=0) as placeholder,
        pytest.raises(openai.AuthenticationError),
    ):
        placeholder.models.list()


def test_only_an_admins_key_may_manage_models(site: Gateway) -> None:
    user_key = new_key(sign_in(site.url, "ana"))
    admin_key = new_key(sign_in(site.url, "admin"))
    denied = httpx.post(f"{site.url}/api/delete", json={"model": "qwen3:32b"}, headers=bearer(user_key))
    assert denied.status_code == 403
    copied = httpx.post(
        f"{site.url}/api/copy", json={"source": "qwen3:32b", "destination": "qwen3:copy"}, headers=bearer(admin_key)
    )
    assert copied.status_code != 403


def test_open_api_lets_the_passthrough_through_without_a_key(simulator: Server) -> None:
    gateway = accounts_gateway(simulator.url, "--open-api")
    try:
        assert httpx.get(f"{gateway.url}/api/tags").status_code == 200
        placeholder = httpx.get(f"{gateway.url}/v1/models", headers=bearer("ollama"))  # what SDKs need set
        assert placeholder.status_code == 200
        assert httpx.get(f"{gateway.url}/chat/api/conversations").status_code == 401
        assert httpx.post(f"{gateway.url}/api/pull", json={"model": "x"}).status_code == 403
    finally:
        gateway.stop()


# ---- single sign-on ----------------------------------------------------------------------------------------
def test_the_sso_header_is_believed_only_from_the_configured_proxies(simulator: Server) -> None:
    trusted = accounts_gateway(simulator.url, "--sso-header", "X-Forwarded-User", "--sso-proxies", "127.0.0.1/32")
    untrusted = accounts_gateway(simulator.url, "--sso-header", "X-Forwarded-User", "--sso-proxies", "10.9.0.0/16")
    try:
        who = {"X-Forwarded-User": "Carol@Example.com"}
        state = httpx.get(f"{trusted.url}/chat/api/session", headers=who).json()
        assert state["via"] == "sso"
        assert state["user"]["name"] == "carol@example.com"
        assert state["user"]["sso"]
        made = httpx.post(f"{trusted.url}/chat/api/conversations", json={}, headers=who)
        assert made.status_code == 201  # no CSRF token: the proxy vouches for every request, no cookie rides along
        other = {"X-Forwarded-User": "dave"}
        assert httpx.get(f"{trusted.url}/chat/api/conversations", headers=other).json()["conversations"] == []
        assert httpx.get(f"{untrusted.url}/chat/api/conversations", headers=who).status_code == 401
        # Before setup, the built-in owner (an admin, named "local") is no name a proxy can hand out.
        for path in ("/chat/api/session", "/chat/api/users"):
            owner = httpx.get(f"{trusted.url}{path}", headers={"X-Forwarded-User": "local"})
            assert (owner.status_code, owner.json()["code"]) == (403, "reserved_name"), path
    finally:
        trusted.stop()
        untrusted.stop()


# ---- --no-auth and --demo ------------------------------------------------------------------------------------
def test_no_auth_is_refused_off_loopback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clawdbot", "--no-auth", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--no-auth" in done.stderr
    assert "loopback" in done.stderr.replace("\n", " ")


def test_demo_on_loopback_opens_straight_into_a_chat_unless_auth_is_asked_for() -> None:
    demo = start_process(["--demo", "--demo-profile", "instant", "--port", "0", "--data-dir", _tmp()])
    asked = start_process(["--demo", "--demo-profile", "instant", "--port", "0", "--auth", "--data-dir", _tmp()])
    try:
        assert httpx.get(f"{demo.url}/chat/api/session").json()["via"] == "none"
        assert httpx.post(f"{demo.url}/chat/api/conversations", json={}).status_code == 201
        assert httpx.get(f"{asked.url}/chat/api/conversations").status_code == 401
    finally:
        demo.stop()
        asked.stop()


def test_without_accounts_only_localhost_names_are_answered(gateway: Server) -> None:
    assert httpx.get(f"{gateway.url}/chat/api/conversations", headers={"Host": "localhost"}).status_code == 200
    rebound = httpx.get(f"{gateway.url}/chat/api/conversations", headers={"Host": "attacker.example"})
    assert (rebound.status_code, rebound.json()["code"]) == (403, "bad_host")


# ---- cross-site requests -------------------------------------------------------------------------------------
def test_cookie_changes_need_the_csrf_token(site: Gateway) -> None:
    client = sign_in(site.url, "ana")
    token = client.headers.pop("X-CSRF-Token")
    refused = client.post("/chat/api/conversations", json={})
    assert (refused.status_code, refused.json()["code"]) == (403, "csrf")
    assert client.get("/chat/api/conversations").status_code == 200  # reading needs none
    assert client.post("/chat/api/conversations", json={}, headers={"X-CSRF-Token": token}).status_code == 201


def test_another_sites_origin_may_not_change_anything_or_open_a_websocket(site: Gateway) -> None:
    client = sign_in(site.url, "ana")
    evil = client.post("/chat/api/conversations", json={}, headers={"Origin": "https://evil.example"})
    assert (evil.status_code, evil.json()["code"]) == (403, "bad_origin")
    port = site.server.port
    same = client.post("/chat/api/conversations", json={}, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status_code == 201

    async def upgrade(origin: str) -> int:
        async with aiohttp.ClientSession(cookies=dict(client.cookies)) as session:
            try:
                async with session.ws_connect(f"{site.url}/chat/api/ws", headers={"Origin": origin}) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    assert asyncio.run(upgrade("https://evil.example")) == 403
    assert asyncio.run(upgrade(f"http://127.0.0.1:{port}")) == 101


def test_every_response_carries_the_security_headers(site: Gateway) -> None:
    for path in ("/chat", "/chat/api/session", "/healthz", "/api/tags"):
        headers = httpx.get(site.url + path).headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
    page = httpx.get(site.url + "/chat").headers["Content-Security-Policy"]
    assert "script-src 'self'" in page
    assert "unsafe-inline" not in page


def test_oversized_bodies_and_messages_get_413(site: Gateway) -> None:
    client = sign_in(site.url, "ana")
    conversation = client.post("/chat/api/conversations", json={}).json()["conversation"]
    long = client.post(f"/chat/api/conversations/{conversation['id']}/messages", json={"content": "x" * 100_001})
    assert (long.status_code, long.json()["code"]) == (413, "payload_too_large")
    huge = client.post("/chat/api/conversations", content=b'{"title": "' + b"y" * 1_000_000 + b'"}')
    assert huge.status_code == 413
    assert client.get(f"/chat/api/conversations/{conversation['id']}").json()["messages"] == []


def test_no_password_key_token_or_message_text_reaches_the_log(site: Gateway) -> None:
    client = sign_in(site.url, "ana")
    key = new_key(client)
    httpx.post(f"{site.url}/chat/api/session", json={"name": "ana", "password": "a wrong secret guess"})
    conversation = client.post("/chat/api/conversations", json={}).json()["conversation"]
    client.post(f"/chat/api/conversations/{conversation['id']}/messages", json={"content": "my very private words"})
    httpx.get(f"{site.url}/api/tags", headers=bearer(key))
    time.sleep(0.5)
    log = site.server.logs()
    for secret in (PASSWORD, "a wrong secret guess", key, client.cookies["clawdbot_session"], "private words"):
        assert secret not in log
    assert "failed sign-in" in log


def _tmp() -> str:
    return tempfile.mkdtemp(prefix="clawdbot-data-")


def test_header_bytes_that_are_not_utf8_get_a_clear_4xx_and_the_log_goes_on(site: Gateway) -> None:
    client = sign_in(site.url, "ana")
    odd_origin = client.post("/chat/api/conversations", json={}, headers={"Origin": b"http://\xff\xfe.example"})
    assert (odd_origin.status_code, odd_origin.json()["code"]) == (403, "bad_origin")
    odd_key = {"Authorization": b"Bearer cbk_\xff"}
    assert httpx.get(f"{site.url}/healthz", headers=odd_key).status_code == 200  # public: a bad key is ignored
    assert httpx.get(f"{site.url}/chat/api/conversations", headers=odd_key).status_code == 401
    odd_cookie = {"Cookie": b"clawdbot_session=\xff"}
    assert httpx.get(f"{site.url}/chat/api/conversations", headers=odd_cookie).status_code == 401
    marker = "after-odd-bytes-1"
    httpx.get(f"{site.url}/healthz", headers={"X-Request-ID": marker})
    deadline = time.monotonic() + 5
    while marker not in site.server.logs():  # the log writer survived the odd text
        assert time.monotonic() < deadline, "the access log stopped"
        time.sleep(0.05)


def test_accounts_keys_and_isolation_on_postgresql(simulator: Server) -> None:
    with postgres_database() as url:
        gateway = accounts_gateway(simulator.url, database_url=url)
        try:
            token = gateway.setup_token()
            first = httpx.post(
                f"{gateway.url}/chat/api/setup", json={"token": token, "name": "boss", "password": PASSWORD}
            )
            assert first.status_code == 201, first.text
            gateway.add_user("worker")  # the CLI on the same PostgreSQL database
            boss, worker = new_key(sign_in(gateway.url, "boss")), new_key(sign_in(gateway.url, "worker"))
            with ChatApi(gateway.url, bearer(boss)) as api:
                conversation = api.create(title="quarterly numbers")["id"]
                reply = api.turn(conversation, "the figure is 4711")["id"]
            for path in (
                f"conversations/{conversation}",
                f"generations/{reply}",
                f"conversations/{conversation}/export",
            ):
                assert httpx.get(f"{gateway.url}/chat/api/{path}", headers=bearer(worker)).status_code == 404
            found = httpx.get(f"{gateway.url}/chat/api/search", params={"q": "4711"}, headers=bearer(worker))
            assert found.json()["results"] == []
            users = httpx.get(f"{gateway.url}/chat/api/users", headers=bearer(boss)).json()["users"]
            assert {u["name"] for u in users} == {"boss", "worker"}
        finally:
            gateway.stop()


def test_a_session_expires_on_the_server_whatever_the_cookie_says(simulator: Server) -> None:
    gateway = accounts_gateway(simulator.url, "--session-hours", "0.0005")  # 1.8 s
    try:
        gateway.add_user("brief")
        client = sign_in(gateway.url, "brief")
        assert client.get("/chat/api/conversations").status_code == 200
        token = client.cookies["clawdbot_session"]

        async def socket_until_expiry() -> object:
            cookies = {"clawdbot_session": token}
            async with (
                aiohttp.ClientSession(cookies=cookies) as session,
                session.ws_connect(f"{gateway.url}/chat/api/ws") as ws,
            ):
                while (message := await ws.receive(5)).type == aiohttp.WSMsgType.TEXT:
                    pass  # hello and heartbeats, until the session ends
                return message.data

        assert asyncio.run(socket_until_expiry()) == 1008  # the open socket ends with its session
        stale = httpx.get(f"{gateway.url}/chat/api/conversations", cookies={"clawdbot_session": token})
        assert stale.status_code == 401
    finally:
        gateway.stop()


def test_sign_ins_and_refusals_are_counted_in_the_metrics(site: Gateway) -> None:
    def count(line_start: str) -> float:
        text = httpx.get(f"{site.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))

    wrong, refused_csrf = (
        'clawdbot_sign_ins_total{outcome="bad_credentials"}',
        'clawdbot_requests_refused_total{code="csrf"}',
    )
    before = count(wrong), count(refused_csrf)
    httpx.post(f"{site.url}/chat/api/session", json={"name": "ana", "password": "not the password"})
    client = sign_in(site.url, "ana")
    client.post("/chat/api/conversations", json={}, headers={"X-CSRF-Token": "stale"})
    assert (count(wrong), count(refused_csrf)) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(("cores", "slots"), [(1, 1), (2, 1), (4, 1), (8, 1), (9, 2), (16, 3), (64, 4)])
def test_password_hashes_leave_a_core_to_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, cores: int, slots: int
) -> None:
    """Each Argon2id hash runs 4 threads: hashes at once are what fits in the cores but one (BENCHMARKS.md §6)."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert hashing_slots() == slots
