"""Redis over TLS, as a deployment with a private CA runs it: one Redis at rediss://…, a Redis Cluster at
rediss+cluster://… and a primary found through a Sentinel at rediss+sentinel://…, each trusted through
`ssl_ca_certs` in the URL's query. The gateway's live state goes there (a chat turn streams, its keys are in that
Redis), and a gateway that does not trust the certificate says why on /readyz instead of working without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import ValidationError

from chat_support import chat_api
from clawdbot.settings import Settings
from conftest import Server, free_port, script, start_gateway, start_simulator
from fleet_support import wait_until
from live_support import cluster_port

ANSWER = "Encrypted all the way."
SENTINEL_SERVICE = "clawdbot-tls"
KINDS = ["rediss", "rediss+cluster", "rediss+sentinel"]


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


def _answers(certificates: Path, port: int) -> bool:
    try:
        return bool(_client(certificates, port).ping())
    except redis.exceptions.ConnectionError:
        return False


def _until_up(certificates: Path, port: int) -> None:
    wait_until(lambda: _answers(certificates, port), f"the TLS Redis on {port} to start", timeout=10)


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
        wait_until(
            lambda: all(_client(certificates, p).cluster("INFO").get("cluster_state") in ("ok", b"ok") for p in ports),
            "the TLS Redis Cluster to come up",
            timeout=30,
        )
        yield ports
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_sentinel(certificates: Path, tls_redis: int) -> Iterator[int]:
    """A Sentinel that speaks only TLS, watching the TLS Redis (over TLS too) as SENTINEL_SERVICE: its port."""
    port = free_port()
    config = certificates / f"sentinel-{port}.conf"
    config.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {certificates}\ntls-auth-clients no\ntls-replication yes\n"
        f"tls-cert-file {certificates / 'server.crt'}\ntls-key-file {certificates / 'server.key'}\n"
        f"tls-ca-cert-file {certificates / 'ca.crt'}\n"
        f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {tls_redis} 1\n"
    )
    watcher = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _until_up(certificates, port)
        # Until Sentinel has reached the primary (over TLS) it is down as far as a client asking for it can tell.
        wait_until(
            lambda: _client(certificates, port).sentinel_master(SENTINEL_SERVICE).get("role-reported") == "master",
            "the TLS Sentinel to reach its primary",
            timeout=20,
        )
        yield port
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def _servers(kind: str, request: pytest.FixtureRequest) -> tuple[str, list[int]]:
    """Where a gateway on a TLS Redis of `kind` points (the URL before its query), and the ports of the Redis
    servers that keep the keys."""
    if kind == "rediss+cluster":
        ports = request.getfixturevalue("tls_cluster")
        return f"{kind}://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", ports
    primary = request.getfixturevalue("tls_redis")
    if kind == "rediss+sentinel":
        return f"{kind}://127.0.0.1:{request.getfixturevalue('tls_sentinel')}/{SENTINEL_SERVICE}/0", [primary]
    return f"{kind}://127.0.0.1:{primary}/0", [primary]


@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant")
    yield server
    server.stop()


def _redis_status(gateway: Server) -> dict[str, str]:
    return httpx.get(f"{gateway.url}/readyz", timeout=10).json()["redis"]  # type: ignore[no-any-return]


def _until_status(gateway: Server, status: str) -> dict[str, str]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (found := _redis_status(gateway))["status"] == status and found, f"/readyz to say {status}", timeout=20
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_live_state_goes_over_tls_to_a_redis_trusted_through_the_urls_ca(
    kind: str, certificates: Path, request: pytest.FixtureRequest, simulator: Server
) -> None:
    where, ports = _servers(kind, request)
    url = f"{where}?ssl_ca_certs={certificates / 'ca.crt'}"
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


@pytest.mark.parametrize("kind", KINDS)
def test_a_gateway_that_does_not_trust_the_certificate_says_so_on_readyz(
    kind: str, request: pytest.FixtureRequest, simulator: Server
) -> None:
    where, _ = _servers(kind, request)
    gateway = start_gateway(simulator.url, "--redis-url", where)
    try:
        found = _until_status(gateway, "unavailable")
        assert "CERTIFICATE_VERIFY_FAILED" in found["error"], found
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 503
    finally:
        gateway.stop()


def test_a_cluster_url_takes_the_tls_settings_and_refuses_others() -> None:
    url = "rediss+cluster://10.0.0.1:7000,10.0.0.2:7000?ssl_ca_certs=/etc/ssl/private-ca.pem&ssl_check_hostname=no"
    assert Settings(redis_url=url).redis_url == url
    with pytest.raises(ValidationError, match="ssl_ca_cert is not a setting of a rediss\\+cluster:// URL"):
        Settings(redis_url="rediss+cluster://10.0.0.1:7000?ssl_ca_cert=/etc/ssl/private-ca.pem")
    with pytest.raises(ValidationError, match="takes no settings in its query"):
        Settings(redis_url="redis+cluster://10.0.0.1:7000?ssl_ca_certs=/etc/ssl/private-ca.pem")


def test_a_sentinel_url_takes_the_tls_settings_and_names_its_service() -> None:
    url = "rediss+sentinel://10.0.0.1:26379,10.0.0.2:26379/main/2?ssl_ca_certs=/etc/ssl/private-ca.pem"
    assert Settings(redis_url=url).redis_url == url
    assert Settings(redis_url="redis+sentinel://10.0.0.1:26379/main").redis_url
    with pytest.raises(ValidationError, match="ssl_keyfil is not a setting of a rediss\\+sentinel:// URL"):
        Settings(redis_url="rediss+sentinel://10.0.0.1:26379/main?ssl_keyfil=/etc/ssl/key.pem")
    with pytest.raises(ValidationError, match="takes no settings in its query"):
        Settings(redis_url="redis+sentinel://10.0.0.1:26379/main?ssl_ca_certs=/etc/ssl/private-ca.pem")
    for unnamed in ("redis+sentinel://10.0.0.1:26379", "redis+sentinel://10.0.0.1:26379/main/one"):
        with pytest.raises(ValidationError, match="names the service"):
            Settings(redis_url=unnamed)
