"""Starting clawdbot processes, reading their CPU time and memory from /proc, and making a user and an API key,
for the benchmark scripts."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

CLAWDBOT = [sys.executable, "-m", "clawdbot"]
_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
_TICK = os.sysconf("SC_CLK_TCK")


def start(args: list[str], cpus: str | None) -> tuple[subprocess.Popen[str], str]:
    prefix = ["taskset", "-c", cpus] if cpus else []
    proc = subprocess.Popen([*prefix, *CLAWDBOT, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = _URL.search(line)
    if not match:
        proc.kill()
        raise SystemExit(f"could not start {args}: {line!r}")
    return proc, f"http://127.0.0.1:{match.group(1)}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int, proc: subprocess.Popen[Any], timeout: float = 15.0) -> bool:
    """Whether `proc` (nginx, redis-server…) accepts connections on `port` within `timeout`, and has not exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.2)


# ---- accounts (a gateway started with --auth) -----------------------------------------------------------------------
def add_user(data_dir: str, name: str, password: str, *, admin: bool = False) -> None:
    """`clawdbot user add NAME --password-stdin` on the gateway's data directory."""
    command = [*CLAWDBOT, "user", "add", name, "--password-stdin", "--data-dir", data_dir, *(["--admin"] * admin)]
    done = subprocess.run(command, input=password + "\n", capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"could not create user {name}: {done.stderr}")


def new_key(gateway: str, name: str, password: str) -> str:
    """Sign in as NAME and make an API key; its secret (cbk_…)."""
    with httpx.Client(base_url=gateway, timeout=30) as client:
        answer = client.post("/chat/api/session", json={"name": name, "password": password})
        answer.raise_for_status()
        csrf = {"X-CSRF-Token": answer.json()["csrf_token"]}
        made = client.post("/chat/api/keys", json={"name": "bench"}, headers=csrf)
        made.raise_for_status()
        secret: str = made.json()["secret"]
        return secret
