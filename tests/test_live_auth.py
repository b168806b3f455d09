"""Accounts across gateway processes sharing Redis and PostgreSQL (--redis-url): failed sign-ins counted once for
the deployment, and a change to a user made on one process (a revoked key, a sign-out, a disabled user, new limits)
in force on the others by the time its request is answered, their open WebSockets and event streams included.
Without Redis, sign-in goes on, throttled by the process alone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest

from accounts_support import PASSWORD, Gateway, bearer, close_clients, sign_in
from chat_support import ChatApi, postgres_database, wait_until
from conftest import Server, start_gateway
from live_support import REDIS_URL, OwnRedis, deployment, keys, start_replica, start_replicas

SESSION = "clawdbot_session"


@dataclass
class Site:
    a: Server
    b: Server
    database: str
    prefix: str
    root: httpx.Client  # the admin, signed in on A


@pytest.fixture(scope="module")
def site(simulator: Server) -> Iterator[Site]:
    with deployment() as (database, prefix):
        a, b = start_replicas(2, simulator.url, database, prefix, "--auth")
        try:
            Gateway(a, tempfile.mkdtemp(prefix="clawdbot-data-"), database).add_user("root", admin=True)
            root = sign_in(a.url, "root")
            yield Site(a, b, database, prefix, root)
        finally:
            close_clients()
            a.stop()
            b.stop()


def _user(site: Site, name: str) -> str:
    made = site.root.post("/chat/api/users", json={"name": name, "password": PASSWORD})
    assert made.status_code == 201, made.text
    user_id: str = made.json()["user"]["id"]
    return user_id


def _key(client: httpx.Client, name: str) -> tuple[str, str]:
    """A new API key's id and secret."""
    made = client.post("/chat/api/keys", json={"name": name})
    assert made.status_code == 201, made.text
    return made.json()["key"]["id"], made.json()["secret"]


async def _closed(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The close code, once the server closes the socket (heartbeats until then)."""
    while (message := await ws.receive(10)).type == aiohttp.WSMsgType.TEXT:
        pass
    assert message.type == aiohttp.WSMsgType.CLOSE, message
    return message.data


async def _still_open(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "ping", "ref": "still there?"})
    while (await ws.receive_json(timeout=10))["type"] != "pong":
        pass


def test_failed_sign_ins_on_either_replica_are_counted_once(site: Site) -> None:
    _user(site, "target")
    codes = []
    for attempt in range(5):  # alternating replicas, each from another address: only the account's count grows
        answer = httpx.post(
            f"{(site.a, site.b)[attempt % 2].url}/chat/api/session",
            json={"name": "target", "password": f"wrong {attempt}"},
            headers={"X-Forwarded-For": f"198.51.100.{attempt}"},
        )
        codes.append(answer.status_code)
    assert codes == [401] * 5
    for replica in (site.b, site.a):  # the sixth attempt waits on either, right password or not
        blocked = httpx.post(f"{replica.url}/chat/api/session", json={"name": "target", "password": PASSWORD})
        assert (blocked.status_code, blocked.json()["code"]) == (429, "too_many_attempts"), blocked.text
        assert int(blocked.headers["Retry-After"]) >= 1
    throttles = [key for key in keys(site.prefix) if ":{signin:" in key]
    assert throttles, keys(site.prefix)
    assert not any("target" in key or "198.51.100" in key for key in throttles)  # names are hashed


def test_a_key_revoked_on_one_replica_is_refused_on_the_other_at_once(site: Site) -> None:
    _user(site, "keeper")
    owner = sign_in(site.a.url, "keeper")
    for round_ in range(3):
        key_id, secret = _key(owner, f"laptop {round_}")
        for _ in range(2):  # B now keeps who is behind the key for a few seconds
            assert httpx.get(f"{site.b.url}/api/tags", headers=bearer(secret)).status_code == 200
        assert owner.delete(f"/chat/api/keys/{key_id}").status_code == 204
        refused = httpx.get(f"{site.b.url}/api/tags", headers=bearer(secret))
        assert refused.status_code == 401, round_


def test_a_revoked_keys_event_stream_on_the_other_replica_ends(site: Site) -> None:
    _user(site, "streamer")
    owner = sign_in(site.a.url, "streamer")
    key_id, secret = _key(owner, "script")
    with ChatApi(site.b.url, bearer(secret)) as api:
        conversation = api.create(title="watched")["id"]

    async def run() -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession(headers=bearer(secret)) as http,
            http.get(f"{site.b.url}/chat/api/conversations/{conversation}/events") as stream,
        ):
            assert stream.status == 200
            assert b'"hello"' in await asyncio.wait_for(stream.content.readline(), 10)
            revoked = await asyncio.to_thread(owner.delete, f"/chat/api/keys/{key_id}")
            rest = await asyncio.wait_for(stream.content.read(), 10)  # the stream ends
            return revoked.status_code, rest

    status, _ = asyncio.run(run())
    assert status == 204


def test_a_user_disabled_on_one_replica_loses_their_socket_and_key_on_the_other(site: Site) -> None:
    user_id = _user(site, "leaver")
    session = sign_in(site.b.url, "leaver")
    _, secret = _key(session, "laptop")
    assert httpx.get(f"{site.b.url}/api/tags", headers=bearer(secret)).status_code == 200

    async def run() -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(cookies={SESSION: session.cookies[SESSION]}) as http,
            http.ws_connect(f"{site.b.url}/chat/api/ws") as ws,
        ):
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
            changed = await asyncio.to_thread(site.root.patch, f"/chat/api/users/{user_id}", json={"disabled": True})
            return changed.status_code, await _closed(ws)

    assert asyncio.run(run()) == (200, 1008)
    assert httpx.get(f"{site.b.url}/api/tags", headers=bearer(secret)).status_code == 401
    assert session.get("/chat/api/conversations").json()["code"] == "disabled"


def test_signing_out_on_one_replica_closes_that_sessions_socket_on_the_other_and_new_limits_reconnect_the_rest(
    site: Site,
) -> None:
    user_id = _user(site, "walker")
    leaving, staying = sign_in(site.a.url, "walker"), sign_in(site.a.url, "walker")

    async def run() -> tuple[Any, Any]:
        async with (
            aiohttp.ClientSession(cookies={SESSION: leaving.cookies[SESSION]}) as first,
            aiohttp.ClientSession(cookies={SESSION: staying.cookies[SESSION]}) as second,
            first.ws_connect(f"{site.b.url}/chat/api/ws") as gone,
            second.ws_connect(f"{site.b.url}/chat/api/ws") as kept,
        ):
            for ws in (gone, kept):
                assert (await ws.receive_json(timeout=10))["type"] == "hello"
            assert (await asyncio.to_thread(leaving.delete, "/chat/api/session")).status_code == 204
            signed_out = await _closed(gone)
            await _still_open(kept)  # the other session's socket is not the one that signed out
            limited = await asyncio.to_thread(site.root.patch, f"/chat/api/users/{user_id}", json={"max_running": 2})
            assert limited.status_code == 200
            return signed_out, await _closed(kept)

    assert asyncio.run(run()) == (1008, 1012)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_without_redis_sign_in_works_throttled_by_the_process_alone(site: Site, simulator: Server) -> None:
    lonely = start_gateway(
        simulator.url,
        "--auth",
        "--database-url",
        site.database,
        "--redis-url",
        f"redis://127.0.0.1:{_closed_port()}/0",
        "--redis-prefix",
        site.prefix,
    )
    try:
        ready = httpx.get(f"{lonely.url}/readyz")
        assert (ready.status_code, ready.json()["redis"]["status"]) == (503, "unavailable")
        _user(site, "islander")
        owner = sign_in(lonely.url, "islander")
        codes = [
            httpx.post(
                f"{lonely.url}/chat/api/session",
                json={"name": "islander", "password": f"wrong {attempt}"},
                headers={"X-Forwarded-For": f"203.0.113.{attempt}"},
            ).status_code
            for attempt in range(6)
        ]
        assert codes == [401] * 5 + [429], codes
        # Changes still count at once on this process: it keeps nothing while it cannot hear of them.
        key_id, secret = _key(owner, "laptop")
        assert httpx.get(f"{lonely.url}/api/tags", headers=bearer(secret)).status_code == 200
        assert owner.delete(f"/chat/api/keys/{key_id}").status_code == 204
        assert httpx.get(f"{lonely.url}/api/tags", headers=bearer(secret)).status_code == 401
        wait_until(lambda: "counted by this process alone" in lonely.logs(), "the fallback to be logged")
    finally:
        lonely.stop()


def _redis_status(*servers: Server, status: str) -> None:
    deadline = time.monotonic() + 15
    while any(httpx.get(f"{server.url}/readyz").json()["redis"]["status"] != status for server in servers):
        assert time.monotonic() < deadline, f"/readyz did not say redis {status}: {[s.logs()[-2000:] for s in servers]}"
        time.sleep(0.1)


def test_a_change_made_while_redis_is_down_reaches_the_other_replica_when_it_is_back(simulator: Server) -> None:
    port = _closed_port()
    args = ("--auth", "--redis-url", f"redis://127.0.0.1:{port}/0", "--redis-prefix", "outage")
    with postgres_database() as database, contextlib.ExitStack() as stack:
        own = OwnRedis(port).start()
        stack.callback(own.stop)
        a, b = (start_gateway(simulator.url, "--database-url", database, *args) for _ in range(2))
        stack.callback(a.stop)
        stack.callback(b.stop)
        stack.callback(close_clients)
        Gateway(a, tempfile.mkdtemp(prefix="clawdbot-data-"), database).add_user("root", admin=True)
        root = sign_in(a.url, "root")
        made = root.post("/chat/api/users", json={"name": "mover", "password": PASSWORD})
        user_id = made.json()["user"]["id"]
        session = sign_in(b.url, "mover")
        _, secret = _key(session, "laptop")
        _redis_status(a, b, status="ok")
        assert httpx.get(f"{b.url}/api/tags", headers=bearer(secret)).status_code == 200  # kept on B

        async def run() -> Any:
            async with (
                aiohttp.ClientSession(cookies={SESSION: session.cookies[SESSION]}) as http,
                http.ws_connect(f"{b.url}/chat/api/ws") as ws,
            ):
                assert (await ws.receive_json(timeout=10))["type"] == "hello"
                own.stop()
                await asyncio.to_thread(_redis_status, a, b, status="unavailable")
                disabled = await asyncio.to_thread(root.patch, f"/chat/api/users/{user_id}", json={"disabled": True})
                assert disabled.status_code == 200
                # B keeps nothing while it cannot hear of changes: the key is refused there at once...
                refused = await asyncio.to_thread(httpx.get, f"{b.url}/api/tags", headers=bearer(secret))
                assert refused.status_code == 401
                await asyncio.to_thread(sign_in, a.url, "root")  # sign-in goes on (sign_in checks the 200)
                own.start()
                return await _closed(ws)  # ...and the socket there closes once Redis is back

        assert asyncio.run(run()) == 1008
        _redis_status(a, b, status="ok")
        wait_until(lambda: "published" in a.logs(), "A to log that it published the change")
        again = sign_in(a.url, "root")
        key_id, secret = _key(again, "after")
        for _ in range(2):
            assert httpx.get(f"{b.url}/api/tags", headers=bearer(secret)).status_code == 200
        assert again.delete(f"/chat/api/keys/{key_id}").status_code == 204
        assert httpx.get(f"{b.url}/api/tags", headers=bearer(secret)).status_code == 401


class _Cable:
    """A TCP relay to the test Redis that a test can cut (its connections dropped, new ones refused) and mend: one
    process losing Redis while the others keep it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.port = upstream, _closed_port()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.open = threading.Event()
        self.mend()

    def mend(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.05)
        self.open.set()
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        self.open.clear()
        self.listener.close()  # refused from now on
        with self.lock:
            for end in self.sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self.open.is_set():
            try:
                near, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by cut()
                return
            near.settimeout(None)
            far = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def test_a_replica_that_lost_redis_alone_catches_up_on_the_changes_it_missed(simulator: Server) -> None:
    host, _, port = REDIS_URL.removeprefix("redis://").partition("/")[0].partition(":")
    cable = _Cable((host, int(port)))
    with deployment() as (database, prefix), contextlib.ExitStack() as stack:
        a = start_replica(simulator.url, database, prefix, "--auth")
        stack.callback(a.stop)
        b = start_gateway(
            simulator.url,
            "--auth",
            "--database-url",
            database,
            "--redis-url",
            f"redis://127.0.0.1:{cable.port}/0",
            "--redis-prefix",
            prefix,
        )
        stack.callback(b.stop)
        stack.callback(cable.cut)
        stack.callback(close_clients)
        Gateway(a, tempfile.mkdtemp(prefix="clawdbot-data-"), database).add_user("root", admin=True)
        root = sign_in(a.url, "root")
        made = root.post("/chat/api/users", json={"name": "hermit", "password": PASSWORD})
        user_id = made.json()["user"]["id"]
        session = sign_in(b.url, "hermit")
        _redis_status(a, b, status="ok")

        async def run() -> Any:
            async with (
                aiohttp.ClientSession(cookies={SESSION: session.cookies[SESSION]}) as http,
                http.ws_connect(f"{b.url}/chat/api/ws") as ws,
            ):
                assert (await ws.receive_json(timeout=10))["type"] == "hello"
                cable.cut()
                await asyncio.to_thread(_redis_status, b, status="unavailable")
                disabled = await asyncio.to_thread(root.patch, f"/chat/api/users/{user_id}", json={"disabled": True})
                assert disabled.status_code == 200  # A still has Redis: published, and B was not listening
                cable.mend()
                return await _closed(ws)  # B reads what it missed once it is back

        assert asyncio.run(run()) == 1008
        wait_until(lambda: "missed while redis was unavailable" in b.logs(), "B to log that it caught up")
