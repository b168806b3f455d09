"""Redis over TLS, as a deployment with a private CA runs it: one Redis at rediss://… and a Redis Cluster at
rediss+cluster://…, each trusted through `ssl_ca_certs` in the URL's query. The gateway's live state goes there (a
chat turn streams, its keys are in that Redis), and a gateway that does not trust the certificate says why on
/readyz instead of working without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import ValidationError

from chat_support import chat_api
from clawdbot.settings import Settings
from conftest import Server, free_port, script, start_gateway, start_simulator
from live_support import cluster_port

ANSWER = "Encrypted all the way."


@pytest.fixture(scope="module")
def certificates() -> Iterator[Path]:
    """A CA of the test's own and a certificate it signed for 127.0.0.1 (ca.crt, server.crt, server.key)."""
    for tool in ("openssl", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                raise RuntimeError(f"{tool} is needed for the Redis TLS tests")
            pytest.skip(f"no {tool}")
    with tempfile.TemporaryDirectory(prefix="clawdbot-tls-") as tmp:
        folder = Path(tmp)
        (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for command in (
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=clawdbot-test-ca",
            "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 "
            "-extfile ext.cnf",
        ):
            subprocess.run(["openssl", *command.split()], cwd=folder, check=True, capture_output=True, timeout=60)
        yield folder


def _tls_node(certificates: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    tls = ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no", "--bind", "127.0.0.1"]
    tls += ["--tls-cert-file", str(certificates / "server.crt"), "--tls-key-file", str(certificates / "server.key")]
    tls += ["--tls-ca-cert-file", str(certificates / "ca.crt"), "--save", "", "--appendonly", "no"]
    return subprocess.Popen(
        ["redis-server", *tls, "--dir", str(certificates), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _client(certificates: Path, port: int) -> redis.Redis:
    return redis.Redis(port=port, ssl=True, ssl_ca_certs=str(certificates / "ca.crt"), socket_connect_timeout=1)


def _until_up(certificates: Path, port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if _client(certificates, port).ping():
                return
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, f"the TLS Redis on {port} did not start"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_redis(certificates: Path) -> Iterator[int]:
    port = free_port()
    node = _tls_node(certificates, port)
    try:
        _until_up(certificates, port)
        yield port
    finally:
        node.terminate()
        node.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_cluster(certificates: Path) -> Iterator[list[int]]:
    ports = [cluster_port() for _ in range(3)]
    nodes = [
        _tls_node(certificates, port, "--tls-cluster", "yes", "--cluster-enabled", "yes",
                  "--cluster-config-file", f"nodes-{port}.conf")
        for port in ports
    ]  # fmt: skip
    try:
        for port in ports:
            _until_up(certificates, port)
        create = ["redis-cli", "--tls", "--cacert", str(certificates / "ca.crt"), "--cluster", "create"]
        create += [f"127.0.0.1:{port}" for port in ports]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all(_client(certificates, p).cluster("INFO").get("cluster_state") in ("ok", b"ok") for p in ports):
            assert time.monotonic() < deadline, "the TLS Redis Cluster did not come up"
            time.sleep(0.1)
        yield ports
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=10)


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant")
    yield server
    server.stop()


def _redis_status(gateway: Server) -> dict[str, str]:
    return httpx.get(f"{gateway.url}/readyz", timeout=10).json()["redis"]  # type: ignore[no-any-return]


def _until_status(gateway: Server, status: str) -> dict[str, str]:
    deadline = time.monotonic() + 20
    while (found := _redis_status(gateway))["status"] != status:
        assert time.monotonic() < deadline, f"/readyz said {found}, not {status}"
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("kind", ["rediss", "rediss+cluster"])
def test_the_live_state_goes_over_tls_to_a_redis_trusted_through_the_urls_ca(
    kind: str, certificates: Path, request: pytest.FixtureRequest, simulator: Server
) -> None:
    ports = [request.getfixturevalue("tls_redis")] if kind == "rediss" else request.getfixturevalue("tls_cluster")
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports[:2])
    url = f"{kind}://{hosts}{'/0' if kind == 'rediss' else ''}?ssl_ca_certs={certificates / 'ca.crt'}"
    script(simulator, {"match": "over tls", "reply": ANSWER, "thinking": "", "times": 2})
    gateway = start_gateway(simulator.url, "--redis-url", url, "--redis-prefix", "tls-test")
    try:
        _until_status(gateway, "ok")
        with chat_api(gateway.url) as api:
            conversation = api.create()["id"]
            reply = api.turn(conversation, "over tls, please")
        assert (reply["status"], reply["content"]) == ("done", ANSWER)
        stored = [
            key for port in ports for key in _client(certificates, port).scan_iter(match="tls-test:*", count=1000)
        ]
        assert stored, "no live state in the TLS Redis"
    finally:
        gateway.stop()


@pytest.mark.parametrize("kind", ["rediss", "rediss+cluster"])
def test_a_gateway_that_does_not_trust_the_certificate_says_so_on_readyz(
    kind: str, request: pytest.FixtureRequest, simulator: Server
) -> None:
    ports = [request.getfixturevalue("tls_redis")] if kind == "rediss" else request.getfixturevalue("tls_cluster")
    gateway = start_gateway(simulator.url, "--redis-url", f"{kind}://127.0.0.1:{ports[0]}")
    try:
        found = _until_status(gateway, "unavailable")
        assert "CERTIFICATE_VERIFY_FAILED" in found["error"], found
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 503
    finally:
        gateway.stop()


def test_a_cluster_url_takes_the_tls_settings_and_refuses_others() -> None:
    url = "rediss+cluster://10.0.0.1:7000,10.0.0.2:7000?ssl_ca_certs=/etc/ssl/private-ca.pem&ssl_check_hostname=no"
    assert Settings(redis_url=url).redis_url == url
    with pytest.raises(ValidationError, match="ssl_ca_cert is not a setting of a Redis Cluster URL"):
        Settings(redis_url="rediss+cluster://10.0.0.1:7000?ssl_ca_cert=/etc/ssl/private-ca.pem")
