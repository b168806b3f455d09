"""Helpers for the fleet tests: a gateway in front of several simulators (by --ollama-url or a TOML file of
[[backends]]), /readyz per backend, and raw streams held open to fill a backend's slots."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conftest import Server, script, start_process

MODEL = "qwen3:32b"
HOLD = "HOLD-THE-SLOT"  # a prompt the simulators answer without end, until the client hangs up
BACKEND = "x-clawdbot-backend"


def start_fleet(config: str, *args: str, env: dict[str, str] | None = None) -> Server:
    """A gateway configured by the TOML text `config` alone (its [[backends]]), without accounts."""
    path = Path(tempfile.mkstemp(prefix="clawdbot-fleet-", suffix=".toml")[1])
    path.write_text(config, encoding="utf-8")
    data = tempfile.mkdtemp(prefix="clawdbot-data-")
    return start_process(
        ["serve", "--port", "0", "--config", str(path), "--data-dir", data, "--no-auth", *args], env=env
    )


def backends_toml(*tables: dict[str, object]) -> str:
    lines = []
    for table in tables:
        lines.append("[[backends]]")
        for key, value in table.items():
            if isinstance(value, list):
                lines.append(f"{key} = [{', '.join(repr(str(v)) for v in value)}]")
            elif isinstance(value, int):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def name_of(sim: Server) -> str:
    """The default name of a backend given by --ollama-url: its host and port."""
    return sim.url.removeprefix("http://")


def backends(gateway: Server) -> dict[str, dict[str, Any]]:
    """/readyz's report of each backend, by name."""
    return {b["name"]: b for b in httpx.get(gateway.url + "/readyz", timeout=10).json()["backends"]}


def wait_until(check: Callable[[], object], what: str, timeout: float = 8.0) -> Any:
    """Poll until `check()` is truthy and return it; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_state(gateway: Server, name: str, state: str, timeout: float = 8.0) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (b := backends(gateway)[name])["state"] == state and b,
        f"{name} to be {state} (now {backends(gateway)[name]['state']})",
        timeout,
    )


def hold_forever(*sims: Server, reply: str = "Sure.") -> None:
    """Script the simulators: a prompt with HOLD streams until the client hangs up; anything else gets `reply`."""
    for sim in sims:
        httpx.delete(f"{sim.url}/_sim/script")
        script(sim, {"match": HOLD, "reply": "la ", "endless": True, "times": -1}, {"reply": reply, "times": -1})


def chat(prompt: str, *history: dict[str, str], model: str = MODEL, **extra: object) -> dict[str, object]:
    messages = [*history, {"role": "user", "content": prompt}]
    return {"model": model, "messages": messages, "options": {"num_predict": 8}, **extra}


@dataclass
class Held:
    """A raw /api/chat stream admitted and left open: it holds a slot on `backend` until `close()`."""

    client: httpx.Client
    response: httpx.Response

    @property
    def backend(self) -> str:
        return self.response.headers[BACKEND]

    def close(self) -> None:
        self.response.close()
        self.client.close()


def hold(gateway: Server, session: str | None = None, timeout: float = 10.0) -> Held:
    """Open a stream that never ends by itself; returns once it is admitted (its headers came)."""
    client = httpx.Client(timeout=timeout)
    headers = {"X-Clawdbot-Session": session} if session else {}
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"{HOLD} {time.monotonic_ns()}"}]}
    request = client.build_request("POST", gateway.url + "/api/chat", json=body, headers=headers)
    try:
        response = client.send(request, stream=True)
    except BaseException:
        client.close()
        raise
    assert response.status_code == 200
    return Held(client, response)


def ask(gateway: Server, body: dict[str, object], **headers: str) -> httpx.Response:
    """A raw /api/chat request answered whole; its status is asserted by the caller."""
    return httpx.post(gateway.url + "/api/chat", json={**body, "stream": False}, headers=headers, timeout=15)
