"""The scale-out features on a Redis Cluster (`--redis-url redis+cluster://…`): a cluster of three primaries of the
test's own, the deployment's keys spread over its nodes, and the scale-out tests themselves run again against it —
replies followed and resumed on another replica, the 409, Stop and Delete across replicas, the fair queue and
slots, limits counted once, revocations, a replica killed mid-reply. (The tests that cut a replica off from one
Redis with a proxy of their own, or stop that Redis, are for a single Redis and are left out; a gateway that
starts before its cluster is here instead.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from chat_support import chat_api
from clawdbot.settings import Settings
from conftest import Server, start_gateway, start_simulator
from live_support import client_of, cluster_port, deployment_on, redis_cluster, start_replicas

HERE = Path(__file__).resolve().parent
AGAIN = ["test_live_eventlog.py", "test_live_replies.py", "test_live_admission.py", "test_live_auth.py"]
AGAIN += ["test_live_takeover.py"]
SINGLE_REDIS_ONLY = "not without_redis and not lost_redis and not while_redis_is_down"


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster() as url:
        yield url


def test_a_cluster_url_names_its_nodes_and_no_database() -> None:
    assert Settings(redis_url="redis+cluster://10.0.0.1:7000,10.0.0.2:7000").redis_url
    with pytest.raises(ValidationError, match="one database, 0"):
        Settings(redis_url="redis+cluster://10.0.0.1:7000/2")


def test_a_deployments_keys_spread_over_the_clusters_nodes(cluster_url: str) -> None:
    simulator = start_simulator("--profile", "instant", "--tokens-per-second", "400")
    try:
        with deployment_on(cluster_url) as (database, prefix):
            replicas: list[Server] = start_replicas(2, simulator.url, database, prefix, redis_url=cluster_url)
            try:
                for number, replica in enumerate(replicas * 3):
                    with chat_api(replica.url) as api:
                        conversation = api.create()["id"]
                        assert api.turn(conversation, f"hello {number}")["status"] == "done"
                client = client_of(cluster_url)
                holding = [
                    node.name
                    for node in client.get_primaries()
                    if any(True for _ in client.scan_iter(match=f"{prefix}:*", target_nodes=node))
                ]
                client.close()
                assert len(holding) >= 2, holding  # not every key in one slot: the hash tags spread them
            finally:
                for replica in replicas:
                    replica.stop()
    finally:
        simulator.stop()


def test_a_gateway_started_before_its_cluster_waits_for_it_and_then_works() -> None:
    """No node answers at first (RedisClusterUnreachableError, which is no RedisError): the gateway starts all the
    same, says so on /readyz, and works once the cluster is there, without a restart."""
    simulator = start_simulator("--profile", "instant")
    ports = [cluster_port() for _ in range(3)]
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports[:2])
    gateway = start_gateway(simulator.url, "--redis-url", url, "--heartbeat", "0.5")
    try:
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).json()["redis"]["status"] == "unavailable"
        with redis_cluster(ports=ports):
            deadline = time.monotonic() + 30
            while httpx.get(f"{gateway.url}/readyz", timeout=10).json()["redis"]["status"] != "ok":
                assert time.monotonic() < deadline, "the gateway did not find the cluster once it was up"
                time.sleep(0.2)
            with chat_api(gateway.url) as api:
                conversation = api.create()["id"]
                assert api.turn(conversation, "hello, cluster")["status"] == "done"
    finally:
        gateway.stop()
        simulator.stop()


@pytest.mark.timeout(1200)
def test_the_scale_out_tests_pass_on_a_redis_cluster(cluster_url: str) -> None:
    env = {**os.environ, "CLAWDBOT_TEST_REDIS_URL": cluster_url}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SINGLE_REDIS_ONLY, *AGAIN],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout
    assert " failed" not in run.stdout
