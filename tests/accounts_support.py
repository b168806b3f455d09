"""Helpers for the accounts tests: a gateway with accounts on, users made by `clawdbot user add`, signed-in
clients (cookie and CSRF token) and API keys."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import httpx

from conftest import Server, start_gateway

PASSWORD = "correct horse battery"
OPEN: list[httpx.Client] = []  # closed after each test by close_clients()


@dataclass
class Gateway:
    server: Server
    data_dir: str
    database_url: str | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def add_user(self, name: str, *, admin: bool = False, password: str = PASSWORD) -> None:
        args = [sys.executable, "-m", "clawdbot", "user", "add", name, "--data-dir", self.data_dir]
        if self.database_url:
            args += ["--database-url", self.database_url]
        done = subprocess.run(
            [*args, *(["--admin"] if admin else [])], input=password + "\n", capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

    def setup_token(self) -> str:
        """The one-time token of the setup link the gateway printed after its startup line."""
        assert self.server.proc.stdout is not None
        line = self.server.proc.stdout.readline()
        found = re.search(r"/chat/setup#token=(\S+)", line)
        assert found, line
        return found.group(1)

    def stop(self) -> None:
        self.server.stop()


def accounts_gateway(ollama_url: str, *args: str, database_url: str | None = None) -> Gateway:
    data_dir = tempfile.mkdtemp(prefix="clawdbot-data-")
    database = ("--database-url", database_url) if database_url else ()
    return Gateway(
        start_gateway(ollama_url, "--auth", "--data-dir", data_dir, *database, *args), data_dir, database_url
    )


def sign_in(base: str, name: str, password: str = PASSWORD) -> httpx.Client:
    """A client with the session cookie and, on every request, the session's CSRF token."""
    client = httpx.Client(base_url=base, timeout=15)
    OPEN.append(client)
    answer = client.post("/chat/api/session", json={"name": name, "password": password})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return client


def new_key(client: httpx.Client, name: str = "test") -> str:
    answer = client.post("/chat/api/keys", json={"name": name})
    assert answer.status_code == 201, answer.text
    secret: str = answer.json()["secret"]
    return secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def close_clients() -> None:
    while OPEN:
        OPEN.pop().close()


def keyed_gateway(ollama_url: str, *args: str) -> tuple[Gateway, str]:
    """A gateway with accounts on, an admin, and that admin's API key."""
    gateway = accounts_gateway(ollama_url, *args)
    gateway.add_user("admin", admin=True)
    client = sign_in(gateway.url, "admin")
    try:
        return gateway, new_key(client)
    finally:
        OPEN.remove(client)
        client.close()
