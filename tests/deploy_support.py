"""Helpers for tests/test_deploy.py: real nginx and Caddy started in the foreground, and the chat page's WebSocket.

A proxy keeps everything it writes (pid, logs, temp files, certificates storage) in a temporary directory and
listens on a free port on 127.0.0.1. A missing nginx, caddy or sqlite3 skips the test that needs it; in CI (CI=true)
a skip fails (conftest.py), since .ci/run installs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import Server, free_port, terminate

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NGINX, CADDY, SQLITE = "/usr/sbin/nginx", "/usr/bin/caddy", "/usr/bin/sqlite3"


def between(text: str, begin: str, end: str) -> str:
    """The lines strictly between the line containing `begin` and the next containing `end`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if begin in line)
    stop = next(i for i in range(start + 1, len(lines)) if end in lines[i])
    return "\n".join(lines[start + 1 : stop])


def seed_snippet() -> str:
    commented = between(
        (DEPLOY / "nginx.conf").read_text(encoding="utf-8"), "minimal (seed) begin", "minimal (seed) end"
    )
    return "\n".join(line.removeprefix("#").removeprefix(" ") for line in commented.splitlines())


def binary(path: str) -> str:
    """The program at `path`, or where PATH has it; a skip (a failure in CI, conftest.py) when there is none."""
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(Path(path).name)
    if found:
        return found
    pytest.skip(f"{Path(path).name} is not installed (apt-get install nginx-light caddy sqlite3)")


@dataclass
class Proxy:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        terminate(self.proc)


def start_proxy(name: str, args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Proxy:
    """Run a proxy in the foreground and wait, for at most 15 s, until its port accepts connections."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    proxy = Proxy(name, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proxy
        except OSError:
            time.sleep(0.05)
    proxy.stop()
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')}")


def start_nginx(tmp: Path, server: str, http_extra: str = "") -> Proxy:
    """nginx with its own prefix: pid, logs and temp files in `tmp`; `server` goes into its http block."""
    port = free_port()
    server = server.replace("listen 8080;", f"listen 127.0.0.1:{port};").replace(
        "listen 80;", f"listen 127.0.0.1:{port};"
    )
    temp = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # A root master hands requests to "nobody" workers, which could not enter the private temp directory.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"{user}pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} warn;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{\n    access_log {tmp / 'access.log'};\n{temp}\n    {http_extra}\n{server}\n}}\n"
    )
    args = [binary(NGINX), "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    return start_proxy(f"nginx ({conf})", args, port, tmp / "nginx.out")


def start_caddy(tmp: Path, site: str) -> Proxy:
    port = free_port()
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {tmp / 'storage'}\n}}\n\n"
        f"http://127.0.0.1:{port} {{\n{site}\n}}\n"
    )
    env = {**os.environ, "HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config")}
    args = [binary(CADDY), "run", "--config", str(conf), "--adapter", "caddyfile"]
    return start_proxy(f"caddy ({conf})", args, port, tmp / "caddy.out", env)


# ---- the chat page's WebSocket and API -----------------------------------------------------------------------
@dataclass
class Turn:
    """One reply as the WebSocket told it: every event with its arrival time (seconds since the send)."""

    reply_id: str
    events: list[tuple[float, dict[str, Any]]]

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, event) for at, event in self.events if event["type"] == kind]

    def text(self, field: str) -> str:
        return "".join(event.get(field, "") for _, event in self.of("reply.delta"))

    @property
    def final(self) -> dict[str, Any]:
        return self.of("reply.done")[-1][1]["message"]  # type: ignore[no-any-return]


def ws_url(proxy: Proxy) -> str:
    return proxy.url.replace("http://", "ws://", 1)


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive()
    assert message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), f"socket ended: {message}"
    return json.loads(message.data)  # type: ignore[no-any-return]


async def send_turn(ws: aiohttp.ClientWebSocketResponse, conversation_id: str, content: str) -> Turn:
    """Send a message and collect events until its reply is done (at most 20 s)."""
    ref = uuid.uuid4().hex
    await ws.send_json({"type": "send", "ref": ref, "conversation_id": conversation_id, "content": content})
    started = time.monotonic()
    events: list[tuple[float, dict[str, Any]]] = []
    reply_id = None
    async with asyncio.timeout(20):
        while True:
            event = await receive(ws)
            events.append((time.monotonic() - started, event))
            assert event["type"] != "error", event
            if event["type"] == "ack" and event["ref"] == ref:
                reply_id = event["reply"]["id"]
            if event["type"] == "reply.done" and event["conversation_id"] == conversation_id:
                break
    assert reply_id == events[-1][1]["message"]["id"]
    return Turn(reply_id, events)


async def new_conversation(session: aiohttp.ClientSession, proxy: Proxy) -> str:
    async with session.post(f"{proxy.url}/chat/api/conversations", json={}) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["conversation"]["id"]  # type: ignore[no-any-return]


async def stored(session: aiohttp.ClientSession, proxy: Proxy, conversation_id: str) -> list[dict[str, Any]]:
    async with session.get(f"{proxy.url}/chat/api/conversations/{conversation_id}") as response:
        assert response.status == 200
        return (await response.json())["messages"]  # type: ignore[no-any-return]


async def script(session: aiohttp.ClientSession, simulator: Server, *entries: dict[str, Any]) -> None:
    async with session.post(f"{simulator.url}/_sim/script", json=list(entries)) as response:
        assert response.status == 200


_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def words(count: int) -> str:
    """Text of about `count` + 1 tokens (the simulator streams one per word and one for the full stop)."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(count)) + "."
