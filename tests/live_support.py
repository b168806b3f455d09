"""Helpers for the scale-out tests: several gateway processes sharing one real PostgreSQL database and one real
Redis (127.0.0.1:6379), each deployment under a key prefix of its own so tests never see each other's keys."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from chat_support import postgres_database
from conftest import Server, free_port, start_gateway

# The scale-out tests run on this Redis; tests/test_live_cluster.py runs them again with a redis+cluster:// URL here.
REDIS_URL = os.environ.get("CLAWDBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def client_of(url: str) -> Any:
    """A plain (synchronous) client of the Redis or Redis Cluster at `url`."""
    if url.startswith("redis+cluster://"):
        hosts = [host.rsplit(":", 1) for host in url.removeprefix("redis+cluster://").split(",")]
        return RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in hosts], socket_connect_timeout=2)
    return redis.Redis.from_url(url, socket_connect_timeout=2)


def kill_pubsub(url: str) -> int:
    """Close every pub/sub connection of the Redis (on every node of a Redis Cluster) at `url`: a gap in each
    process's channels, which it makes again at once. How many were closed."""
    client = client_of(url)
    try:
        if isinstance(client, RedisCluster):
            return sum(client.client_kill_filter(_type="pubsub", target_nodes=node) for node in client.get_nodes())
        return int(client.client_kill_filter(_type="pubsub"))
    finally:
        client.close()


def redis_or_skip() -> Any:
    """A client of the test Redis; skipped where there is none (CI has one, so it fails there instead)."""
    try:
        client = client_of(REDIS_URL)
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException) as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {REDIS_URL}: {error}")
    return client


@contextlib.contextmanager
def redis_prefix(url: str | None = None) -> Iterator[str]:
    """A fresh key prefix, and its keys deleted afterwards (on the test Redis, or the one at `url`)."""
    client = redis_or_skip() if url is None else client_of(url)
    prefix = f"clawdbot-test-{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


@contextlib.contextmanager
def deployment() -> Iterator[tuple[str, str]]:
    """(database URL, Redis prefix) of a fresh deployment: a new PostgreSQL database and a new key prefix."""
    with postgres_database() as database, redis_prefix() as prefix:
        yield database, prefix


@contextlib.contextmanager
def deployment_on(redis_url: str) -> Iterator[tuple[str, str]]:
    """As deployment(), on the Redis (or Redis Cluster) at `redis_url`."""
    with postgres_database() as database, redis_prefix(redis_url) as prefix:
        yield database, prefix


def start_replica(sim_url: str, database: str, prefix: str, *args: str, redis_url: str = REDIS_URL) -> Server:
    """One gateway process of a deployment: the shared database and Redis, its own port."""
    return start_gateway(sim_url, "--database-url", database, "--redis-url", redis_url, "--redis-prefix", prefix, *args)


def start_replicas(
    count: int, sim_url: str, database: str, prefix: str, *args: str, redis_url: str = REDIS_URL
) -> list[Server]:
    return [start_replica(sim_url, database, prefix, *args, redis_url=redis_url) for _ in range(count)]


def keys(prefix: str) -> list[str]:
    client = redis_or_skip()
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


@contextlib.contextmanager
def redis_cluster(nodes: int = 3, ports: list[int] | None = None) -> Iterator[str]:
    """A Redis Cluster of the test's own (`nodes` primaries on free ports, or on `ports`; no replicas, nothing
    saved), as a redis+cluster:// URL naming two of its nodes; stopped afterwards."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if os.environ.get("CI"):
            raise RuntimeError("redis-server and redis-cli are needed for the Redis Cluster tests")
        pytest.skip("no redis-server to run a Redis Cluster with")
    ports = ports or [cluster_port() for _ in range(nodes)]
    with tempfile.TemporaryDirectory(prefix="clawdbot-cluster-") as tmp:
        node = ["--cluster-enabled", "yes", "--dir", tmp, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
        procs = [
            subprocess.Popen(
                ["redis-server", "--port", str(port), "--cluster-config-file", f"nodes-{port}.conf", *node],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in ports
        ]
        try:
            for port in ports:
                _wait_for_ping(port)
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports), "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            deadline = time.monotonic() + 30
            while not all(_cluster_ok(port) for port in ports):
                assert time.monotonic() < deadline, "the Redis Cluster did not come up"
                time.sleep(0.1)
            yield "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports[:2])
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)


def cluster_port() -> int:
    """A free port for a cluster node: at most 55535, its cluster bus (10000 higher) free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait_for_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.5).ping():
                return
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, f"redis-server on {port} did not start"
            time.sleep(0.05)


def _cluster_ok(port: int) -> bool:
    info = redis.Redis(port=port).execute_command("CLUSTER INFO")  # parsed by redis-py into a dict
    state = info.get("cluster_state") if isinstance(info, dict) else None
    return state in ("ok", b"ok")


class OwnRedis:
    """A Redis server of the test's own, to stop and start again on the same port (empty each time, as after a
    crash): the shared one must not go down under the other tests."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            if os.environ.get("CI"):
                raise RuntimeError("redis-server is needed for the tests that stop and start a Redis")
            pytest.skip("no redis-server to run a Redis of the test's own")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = tempfile.mkdtemp(prefix="clawdbot-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OwnRedis:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"]
        self.proc = subprocess.Popen(
            ["redis-server", *args, self.folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
            while True:
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    if client.ping():
                        return self
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        """Gone at once (SIGKILL): nothing is saved, as in a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)
