"""--redis-url redis+sentinel://…: the gateway finds the primary through Sentinel, and finds the new one after a
failover, without a restart. A private primary, replica and Sentinel (redis-server, on ports of their own)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chat_support import chat_api
from conftest import Server, free_port, start_gateway, start_simulator, terminate
from fleet_support import wait_until

SERVICE = "clawdbot-primary"


def redis_server(*args: str) -> subprocess.Popen[bytes]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server to run a primary, a replica and a Sentinel of the test's own")
    return subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def answers(port: int) -> bool:
    try:
        return (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, timeout=2).stdout == b"PONG\n"
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def knows_the_replica(sentinel_port: int, replica_port: int) -> bool:
    """Whether the replica is in sync and Sentinel has learned of it (from the primary's INFO, read every 10 s):
    a primary killed before that leaves Sentinel nothing to promote."""
    try:
        listed = subprocess.run(
            ["redis-cli", "-p", str(sentinel_port), "sentinel", "replicas", SERVICE], capture_output=True, timeout=2
        ).stdout
        state = subprocess.run(
            ["redis-cli", "-p", str(replica_port), "info", "replication"], capture_output=True, timeout=2
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return str(replica_port).encode() in listed and b"master_link_status:up" in state


@pytest.fixture
def sentinel() -> Iterator[tuple[int, subprocess.Popen[bytes], int]]:
    """(Sentinel's port, the primary's process, the replica's port)."""
    folder = Path(tempfile.mkdtemp(prefix="clawdbot-sentinel-"))
    primary_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    primary = redis_server("--port", str(primary_port), *common)
    replica = redis_server("--port", str(replica_port), "--replicaof", "127.0.0.1", str(primary_port), *common)
    config = folder / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\nsentinel failover-timeout {SERVICE} 5000\n"
    )
    watcher = redis_server(str(config), "--sentinel")
    procs = [primary, replica, watcher]
    try:
        for port in (primary_port, replica_port, sentinel_port):
            wait_until(lambda port=port: answers(port), f"redis on {port}", timeout=10)
        wait_until(lambda: knows_the_replica(sentinel_port, replica_port), "Sentinel to know the replica", timeout=25)
        yield sentinel_port, primary, replica_port
    finally:
        for proc in procs:
            terminate(proc)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant")
    yield server
    server.stop()


def redis_status(gateway: Server) -> str:
    return str(httpx.get(gateway.url + "/readyz", timeout=10).json()["redis"]["status"])


def test_the_gateway_follows_sentinel_to_a_new_primary(
    sentinel: tuple[int, subprocess.Popen[bytes], int], simulator: Server
) -> None:
    sentinel_port, primary, replica_port = sentinel
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/{SERVICE}"
    gateway = start_gateway(simulator.url, "--redis-url", url)
    try:
        wait_until(lambda: redis_status(gateway) == "ok", "Redis through Sentinel")
        with chat_api(gateway.url) as api:
            conversation = api.create()["id"]
            assert api.turn(conversation, "before the failover")["status"] == "done"
            terminate(primary)  # Sentinel promotes the replica after down-after-milliseconds
            wait_until(lambda: redis_status(gateway) == "unavailable", "the outage seen", timeout=15)
            wait_until(lambda: redis_status(gateway) == "ok", "the new primary found", timeout=30)
            role = subprocess.run(["redis-cli", "-p", str(replica_port), "role"], capture_output=True, timeout=5)
            assert role.stdout.startswith(b"master")
            deadline = time.monotonic() + 20
            while True:  # a send may meet a connection the pool has not yet replaced: 503, then it works
                try:
                    assert api.turn(conversation, "after the failover")["status"] == "done"
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, "no turn after the failover"
                    time.sleep(0.5)
    finally:
        gateway.stop()
