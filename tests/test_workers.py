"""`clawdbot --workers N`: N processes on one port sharing Redis, one startup line, /metrics for the whole instance,
a dead worker started again, and nothing left running when the supervisor stops or dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Server, chat_body, script, start_simulator
from fleet_support import wait_until
from live_support import redis_prefix, start_replica


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    with redis_prefix() as name:
        yield name


@pytest.fixture
def instance(simulator: Server, prefix: str, tmp_path: object) -> Iterator[Server]:
    database = f"sqlite:///{tmp_path}/chat.db"
    server = start_replica(simulator.url, database, prefix, "--workers", "2")
    yield server
    server.stop()


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sorted(int(child) for child in found)


def nodes(server: Server, tries: int = 40) -> set[str]:
    """The workers that answered `tries` new connections (each names its own Redis node on /readyz)."""
    seen = set()
    for _ in range(tries):
        with httpx.Client() as client:  # a new connection each time: the kernel picks the worker per connection
            seen.add(client.get(server.url + "/readyz", timeout=10).json()["redis"]["node"])
    return seen


def test_more_than_one_worker_needs_redis(simulator: Server) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clawdbot", "serve", "--workers", "2", "--ollama-url", simulator.url, "--no-auth"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers 2 needs --redis-url" in done.stderr


def test_workers_share_one_port_and_one_startup_line(instance: Server) -> None:
    assert "(2 workers)" in instance.banner
    assert len(children(instance.proc.pid)) == 2
    assert len(nodes(instance)) == 2  # both accept connections on the one port


def test_metrics_count_the_whole_instance(instance: Server) -> None:
    for _ in range(12):
        with httpx.Client() as client:
            client.post(instance.url + "/api/chat", json=chat_body(stream=False), timeout=30).raise_for_status()
    for _ in range(6):  # whichever worker answers the scrape, it counts its sibling's requests too
        with httpx.Client() as client:
            text = client.get(instance.url + "/metrics", timeout=10).text
        line = next(
            x for x in text.splitlines() if x.startswith('clawdbot_requests_total{outcome="ok",route="/api/chat"}')
        )
        assert float(line.split()[-1]) == 12.0
        slots = next(x for x in text.splitlines() if x.startswith("clawdbot_backend_slots{"))
        assert float(slots.split()[-1]) == 64.0  # the same fleet seen twice is still one fleet


def test_the_live_view_counts_the_whole_instance(instance: Server) -> None:
    body = {**chat_body(stream=False), "options": {"num_predict": 5}}
    for _ in range(10):  # each on a new connection: the kernel spreads them over both workers
        with httpx.Client() as client:
            client.post(instance.url + "/api/chat", json=body, timeout=30).raise_for_status()
    for _ in range(6):  # whichever worker answers, it adds its sibling's replies and state to its own
        with httpx.Client() as client:
            view = client.get(instance.url + "/chat/api/admin/monitor", timeout=10).json()
        assert view["process"]["workers"] == 2
        minute = view["windows"]["1m"]
        assert (minute["raw"]["requests"], minute["raw"]["failures"]) == (10, 0)
        assert minute["all"]["tokens_per_s"] == pytest.approx(10 * 5 / 60, abs=0.1)
        assert view["now"]["open"]["raw"] == 0


def test_the_live_view_counts_every_workers_slots(instance: Server, simulator: Server) -> None:
    # Two replies whose first token comes 4 s late, each on its own connection (one worker or both): whichever
    # worker is asked, the backend's two slots in use are both counted.
    script(simulator, {"match": "hold", "fault": {"kind": "slow_first", "seconds": 4}, "times": 2})
    body = {**chat_body("hold on", stream=False), "options": {"num_predict": 5}}

    def running() -> int:
        with httpx.Client() as client:  # a new connection: either worker may answer
            view = client.get(instance.url + "/chat/api/admin/monitor", timeout=10).json()
        return int(view["backends"][0]["running"])

    with ThreadPoolExecutor(2) as pool:
        sent = [pool.submit(httpx.post, instance.url + "/api/chat", json=body, timeout=30) for _ in range(2)]
        wait_until(lambda: running() == 2, "both replies holding a slot", timeout=3)
        seen = [running() for _ in range(6)]
        assert all(answer.result().status_code == 200 for answer in sent)
    assert seen == [2] * 6


def test_a_dead_worker_is_started_again(instance: Server) -> None:
    first = children(instance.proc.pid)
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: len(children(instance.proc.pid)) == 2 and children(instance.proc.pid) != first, "a new worker")
    for _ in range(10):  # the survivor answered meanwhile, and the new one now answers too
        with httpx.Client() as client:
            client.post(instance.url + "/api/chat", json=chat_body(stream=False), timeout=30).raise_for_status()
    wait_until(lambda: len(nodes(instance, 20)) == 2, "both workers answering", timeout=20)


def test_sigterm_stops_every_worker(instance: Server) -> None:
    workers = children(instance.proc.pid)
    instance.proc.send_signal(signal.SIGTERM)
    assert instance.proc.wait(timeout=60) == 0
    for pid in workers:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), f"worker {pid} gone", timeout=10)


def test_workers_stop_themselves_when_the_supervisor_is_killed(instance: Server) -> None:
    workers = children(instance.proc.pid)
    instance.proc.kill()
    instance.proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    for pid in workers:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split()[2] == "Z":  # exited, waiting to be reaped by init
                    break
            time.sleep(0.2)
        assert time.monotonic() < deadline, f"worker {pid} outlived its supervisor"
