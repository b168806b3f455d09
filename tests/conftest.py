"""Real processes on free ports: the simulator and the gateway run exactly as a user starts them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")


@dataclass
class Server:
    """A `clawdbot …` process; `url` is where it listens, `stderr_path` holds its logs."""

    proc: subprocess.Popen[str]
    url: str
    port: int
    banner: str
    stderr_path: Path
    args: list[str] = field(default_factory=list)

    def logs(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_process(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 20.0) -> Server:
    """Run `python -m clawdbot ARGS` and wait for its one startup line, which names its URL."""
    stderr = Path(tempfile.mkstemp(prefix="clawdbot-", suffix=".log")[1])
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "clawdbot", *args], stdout=subprocess.PIPE, stderr=err,
                                text=True, env=full_env)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line or proc.poll() is not None:
            break
    match = _URL.search(line)
    if not match:
        proc.kill()
        raise RuntimeError(f"clawdbot {' '.join(args)} did not start: {line!r}\n{stderr.read_text()}")
    port = int(match.group(1))
    return Server(proc, f"http://127.0.0.1:{port}", port, line.strip(), stderr, args)


def start_simulator(*args: str) -> Server:
    return start_process(["simulate", "--port", "0", "--record", "200", *args])


def start_gateway(ollama_url: str, *args: str, env: dict[str, str] | None = None) -> Server:
    return start_process(["serve", "--port", "0", "--ollama-url", ollama_url, "--data-dir",
                          tempfile.mkdtemp(prefix="clawdbot-data-"), *args], env=env)


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    """A fast simulator (instant profile, 8 slots) shared by a test module; scripts are cleared per test."""
    server = start_simulator("--profile", "instant", "--num-parallel", "8")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = start_gateway(simulator.url, "--idle-timeout", "2")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clear_scripts(request: pytest.FixtureRequest) -> None:
    if "simulator" in request.fixturenames:
        sim: Server = request.getfixturevalue("simulator")
        httpx.delete(f"{sim.url}/_sim/script")


def script(sim: Server, *entries: dict[str, object]) -> None:
    """Make the simulator answer the next matching requests with given text or faults."""
    response = httpx.post(f"{sim.url}/_sim/script", json=list(entries))
    response.raise_for_status()


def sim_state(sim: Server) -> dict[str, object]:
    return httpx.get(f"{sim.url}/_sim/state").json()  # type: ignore[no-any-return]
