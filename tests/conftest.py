"""Real processes on free ports: the simulator and the gateway run exactly as a user starts them."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
_RUN_TMP = pytest.StashKey[Path]()


# ---- the session ---------------------------------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    """Everything the tests and the processes they start put in the temp directory (data directories, logs,
    databases) goes in one folder for this run, removed at its end: a run leaves nothing behind.
    CLAWDBOT_KEEP_TEST_TMP=1 keeps it (its path is printed) to read the logs of a failed run."""
    run = Path(tempfile.mkdtemp(prefix="clawdbot-tests-"))
    config.stash[_RUN_TMP] = run
    tempfile.tempdir = str(run)
    os.environ["TMPDIR"] = str(run)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN_TMP, None)
    if run is None:
        return
    if os.environ.get("CLAWDBOT_KEEP_TEST_TMP"):
        print(f"\nclawdbot: the run's temporary files are in {run}", file=sys.stderr)
    else:
        shutil.rmtree(run, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI (CI=true) a skipped test fails: CI installs everything the tests need (nginx, Caddy, Chromium,
    PostgreSQL, the real Ollama), so a skip there means something is missing, not that it may be left out."""
    report: pytest.TestReport = yield
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be: {reason}"
    return report


def terminate(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGTERM, as systemd stops a service; SIGKILL if it has not exited within 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
        terminate(self.proc)
        self._close_pipe()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


def start_process(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 20.0) -> Server:
    """Run `python -m clawdbot ARGS` and wait for its one startup line, which names its URL."""
    stderr = Path(tempfile.mkstemp(prefix="clawdbot-", suffix=".log")[1])
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clawdbot", *args], stdout=subprocess.PIPE, stderr=err, text=True, env=full_env
        )
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
    """A gateway on a free port with its own data directory. Unless a test is about admission control, it may run
    64 generations at once (the default is the backend's parallelism, 1 without OLLAMA_NUM_PARALLEL), and without
    accounts unless `--auth` is given."""
    if "--max-running" not in args:
        args = (*args, "--max-running", "64")
    if "--auth" not in args and "--no-auth" not in args:  # accounts are the subject of their own tests
        args = (*args, "--no-auth")
    return start_process(
        [
            "serve",
            "--port",
            "0",
            "--ollama-url",
            ollama_url,
            "--data-dir",
            tempfile.mkdtemp(prefix="clawdbot-data-"),
            *args,
        ],
        env=env,
    )


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


@pytest.fixture(scope="module")
def timed_simulator() -> Iterator[Server]:
    """A simulator with model times to measure (the h100 profile at 10× speed: a 0.6 s cold load, 25,000 prompt
    tokens/s, 500 tokens/s), for the tests of where time went (timing, the live view)."""
    server = start_simulator("--profile", "h100", "--speed", "10", "--num-parallel", "4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def timed_gateway(timed_simulator: Server) -> Iterator[Server]:
    server = start_gateway(timed_simulator.url)
    yield server
    server.stop()


def script(sim: Server, *entries: dict[str, object]) -> None:
    """Make the simulator answer the next matching requests with given text or faults."""
    response = httpx.post(f"{sim.url}/_sim/script", json=list(entries))
    response.raise_for_status()


def sim_state(sim: Server) -> dict[str, object]:
    return httpx.get(f"{sim.url}/_sim/state").json()  # type: ignore[no-any-return]


# ---- helpers for the simulator tests (tests/test_simulator_*.py) ------------------------------------------------
MODEL = "qwen3:32b"


def chat_body(prompt: str = "hi", **extra: object) -> dict[str, object]:
    """A one-message /api/chat request; `extra` adds top-level fields (options, think, stream…)."""
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


@dataclass
class Timed:
    """A streamed response with arrival times, in seconds since the request was sent."""

    status: int
    headers: httpx.Headers
    headers_at: float
    lines: list[tuple[float, bytes]]

    @property
    def chunks(self) -> list[dict[str, object]]:
        return [json.loads(line) for _, line in self.lines]

    def gaps(self) -> list[float]:
        times = [t for t, _ in self.lines]
        return [b - a for a, b in itertools.pairwise(times)]


def timed_stream(
    sim: Server, body: object, path: str = "/api/chat", *, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> Timed:
    """POST `body` and record when the headers and each line (split on b"\\n" only) arrive; a fresh connection."""
    started = time.monotonic()
    lines: list[tuple[float, bytes]] = []
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("POST", sim.url + path, json=body, headers=headers) as response,
    ):
        headers_at = time.monotonic() - started
        pending = b""
        for data in response.iter_bytes():
            pending += data
            *complete, pending = pending.split(b"\n")
            lines += [(time.monotonic() - started, line) for line in complete if line]
        if pending:
            lines.append((time.monotonic() - started, pending))
    return Timed(response.status_code, response.headers, headers_at, lines)


# ---- helpers for the gateway tests (tests/test_proxy_*.py, tests/test_gateway_ops.py) ---------------------------
def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was free a moment ago)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def transcript(sim: Server, request_id: str) -> bytes:
    """The exact bytes the simulator sent for the request with this X-Request-ID."""
    response = httpx.get(f"{sim.url}/_sim/transcript/{request_id}")
    response.raise_for_status()
    return response.content


def access_log(server: Server) -> list[dict[str, object]]:
    """The gateway's access-log entries (JSON lines on stderr from the `clawdbot.access` logger)."""
    entries = []
    for line in server.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("logger") == "clawdbot.access":
            entries.append(entry)
    return entries


def wait_for(check: Callable[[], object], *, timeout: float = 3.0, interval: float = 0.01) -> object:
    """Poll until `check()` is truthy and return it; the gateway logs and counts just after the last byte."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="module")
def down_gateway() -> Iterator[Server]:
    """A gateway whose backend URL is a port where nothing listens."""
    server = start_gateway(f"http://127.0.0.1:{free_port()}")
    yield server
    server.stop()
