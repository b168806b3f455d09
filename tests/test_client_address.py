"""Who the client is behind a proxy: X-Real-IP, Forwarded and X-Forwarded-For from trusted proxies only, read as
nginx's realip module reads them; and, behind the real nginx (the seed's snippet verbatim, and deploy/nginx.conf)
and Caddy, sign-in throttling and the fair queue follow the real client's address, which no header can forge.

Clients come from different loopback addresses (127.0.0.0/8 is all loopback on Linux), so the proxies see
different real clients while --trusted-proxies keeps its default, 127.0.0.1/32 and ::1/128.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from accounts_support import Gateway, accounts_gateway, close_clients
from clawdbot.web.forwarded import Proxies
from conftest import Server, start_gateway, start_simulator
from deploy_support import DEPLOY, Proxy, between, seed_snippet, start_caddy, start_nginx

TRUSTED = ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]


def named(peer: str, *headers: tuple[str, str], header: str = "auto") -> str:
    return Proxies(TRUSTED, header).named(peer, CIMultiDictProxy(CIMultiDict(headers)))  # type: ignore[arg-type]


# ---- the rule --------------------------------------------------------------------------------------------------
def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    for header in ("X-Real-IP", "X-Forwarded-For", "Forwarded"):
        value = "for=192.0.2.9" if header == "Forwarded" else "192.0.2.9"
        assert named("203.0.113.7", (header, value)) == "203.0.113.7"


def test_each_header_of_a_trusted_proxy_names_the_client() -> None:
    assert named("127.0.0.1", ("X-Real-IP", "203.0.113.7")) == "203.0.113.7"
    assert named("127.0.0.1", ("X-Forwarded-For", "203.0.113.7")) == "203.0.113.7"
    assert named("127.0.0.1", ("Forwarded", "for=203.0.113.7;proto=https")) == "203.0.113.7"
    assert named("::1", ("Forwarded", 'for="[2001:db8::7]:4711"')) == "2001:db8::7"
    assert named("127.0.0.1", ("Forwarded", 'For="203.0.113.7:4711"')) == "203.0.113.7"
    assert named("127.0.0.1") == "127.0.0.1"  # a trusted peer that names nobody is itself (curl on the box)
    assert named("::ffff:127.0.0.1", ("X-Real-IP", "203.0.113.7")) == "203.0.113.7"  # a dual-stack socket's peer


def test_lists_are_read_from_the_right_past_our_own_proxies() -> None:
    # The client claimed 192.0.2.66; the proxy appended what it saw; a second proxy of ours appended the first.
    assert named("127.0.0.1", ("X-Forwarded-For", "192.0.2.66, 203.0.113.7, 10.1.2.3")) == "203.0.113.7"
    assert named("127.0.0.1", ("X-Forwarded-For", "192.0.2.66"), ("X-Forwarded-For", "203.0.113.7")) == "203.0.113.7"
    forwarded = "for=192.0.2.66, for=203.0.113.7;proto=https, for=10.1.2.3"
    assert named("127.0.0.1", ("Forwarded", forwarded)) == "203.0.113.7"
    assert named("127.0.0.1", ("X-Forwarded-For", "10.0.0.9, 10.1.2.3")) == "10.0.0.9"  # all ours: the first


def test_a_hop_nobody_can_read_names_nobody() -> None:
    assert named("127.0.0.1", ("Forwarded", "for=unknown")) == "127.0.0.1"
    assert named("127.0.0.1", ("Forwarded", "for=_hidden, for=203.0.113.7")) == "203.0.113.7"
    assert named("127.0.0.1", ("X-Forwarded-For", "203.0.113.7, junk")) == "127.0.0.1"
    assert named("127.0.0.1", ("X-Real-IP", "not an address")) == "127.0.0.1"


def test_headers_that_agree_name_the_client_and_headers_that_disagree_name_the_proxy() -> None:
    # deploy/nginx.conf: X-Real-IP and X-Forwarded-For (appended) agree, whatever the client put in front.
    agreed = (("X-Real-IP", "203.0.113.7"), ("X-Forwarded-For", "192.0.2.66, 203.0.113.7"))
    assert named("127.0.0.1", *agreed) == "203.0.113.7"
    # The seed's nginx writes X-Real-IP and passes on the client's own X-Forwarded-For; Caddy the other way round.
    # Which one was forged cannot be told, so the forger is counted as the proxy, never as the one it names.
    assert named("127.0.0.1", ("X-Real-IP", "203.0.113.7"), ("X-Forwarded-For", "192.0.2.66")) == "127.0.0.1"
    assert named("127.0.0.1", ("X-Real-IP", "192.0.2.66"), ("Forwarded", "for=203.0.113.7")) == "127.0.0.1"
    # An X-Real-IP naming one of our proxies (a CDN before nginx) says nothing of the client: the list does.
    assert named("127.0.0.1", ("X-Real-IP", "10.1.2.3"), ("X-Forwarded-For", "203.0.113.7, 10.1.2.3")) == (
        "203.0.113.7"
    )


def test_a_named_header_is_the_only_one_believed() -> None:
    forged = (("X-Real-IP", "203.0.113.7"), ("X-Forwarded-For", "192.0.2.66"))
    assert named("127.0.0.1", *forged, header="x-real-ip") == "203.0.113.7"
    assert named("127.0.0.1", *forged, header="x-forwarded-for") == "192.0.2.66"
    assert named("127.0.0.1", *forged, header="forwarded") == "127.0.0.1"


# ---- behind the real proxies -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulator() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "4", "--tokens-per-second", "20")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(simulator: Server) -> Iterator[Gateway]:
    gateway = accounts_gateway(simulator.url)
    gateway.add_user("ana")
    yield gateway
    close_clients()
    gateway.stop()


def _in_front(kind: str, gateway: Server, tmp: Path) -> Proxy:
    if kind == "caddy":
        block = between((DEPLOY / "Caddyfile").read_text(encoding="utf-8"), "proxy begin", "proxy end")
        return start_caddy(tmp, block.replace("127.0.0.1:18789", f"127.0.0.1:{gateway.port}"))
    text = seed_snippet() if kind == "seed_nginx" else (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    return start_nginx(tmp, text.replace("127.0.0.1:18789", f"127.0.0.1:{gateway.port}"))


@pytest.fixture(scope="module", params=["seed_nginx", "nginx", "caddy"])
def team_proxy(
    request: pytest.FixtureRequest, simulator: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Proxy]]:
    """A proxy in front of a gateway of its own (throttling state is the gateway's), with the user ana."""
    gateway = accounts_gateway(simulator.url)
    gateway.add_user("ana")
    proxy = _in_front(request.param, gateway.server, tmp_path_factory.mktemp(request.param))
    yield request.param, proxy
    proxy.stop()
    gateway.stop()


_ADDRESSES = (f"127.0.0.{n}" for n in range(2, 250))


def client_from(base: str, address: str | None = None) -> httpx.Client:
    """A client whose connections come from an address of its own (127.0.0.N), as a machine of its own would."""
    transport = httpx.HTTPTransport(local_address=address or next(_ADDRESSES))
    return httpx.Client(base_url=base, timeout=30, transport=transport)


def sign_in(client: httpx.Client, name: str, password: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/chat/api/session", json={"name": name, "password": password}, headers=headers)


def forgery(n: int) -> dict[str, str]:
    """Headers naming some other client, new ones each time."""
    return {"X-Real-IP": f"127.0.2.{n}", "X-Forwarded-For": f"127.0.1.{n}", "Forwarded": f"for=127.0.1.{n}"}


def fail_until_throttled(client: httpx.Client, forged: bool) -> list[int]:
    """Failed sign-ins, each for a different name (so only the per-address limit counts them), each with headers
    naming another client when `forged`; the codes, up to and including the first refusal."""
    codes = []
    for attempt in range(22):
        headers = forgery(attempt) if forged else None
        codes.append(sign_in(client, f"nobody{attempt}", "wrong password", headers).status_code)
        if codes[-1] == 429:
            break
    return codes


@pytest.mark.parametrize("forged", [False, True], ids=["plain", "forging-headers"])
def test_one_client_cannot_lock_others_out_of_signing_in(team_proxy: tuple[str, Proxy], forged: bool) -> None:
    kind, proxy = team_proxy
    with client_from(proxy.url) as attacker, client_from(proxy.url) as colleague:
        codes = fail_until_throttled(attacker, forged)
        # 20 failures from one address, then a wait; changing the headers every time does not reset it.
        assert codes == [401] * 20 + [429]
        assert sign_in(attacker, "nobody-else", "wrong password", forgery(99) if forged else None).status_code == 429
        if forged and kind != "seed_nginx":
            # deploy/'s configurations overwrite or drop every header a client could forge: it is itself.
            assert sign_in(attacker, "nobody-else", "wrong password").status_code == 429
        assert sign_in(colleague, "ana", "correct horse battery").status_code == 200


def test_a_client_reaching_the_gateway_directly_cannot_forge_its_address(site: Gateway) -> None:
    """127.0.0.N is not a --trusted-proxies address: its X-Real-IP, Forwarded and X-Forwarded-For are ignored."""
    victim = next(_ADDRESSES)
    with client_from(site.url) as attacker, client_from(site.url, victim) as colleague:
        spoof = {"X-Real-IP": victim, "X-Forwarded-For": victim, "Forwarded": f"for={victim}"}
        codes = [sign_in(attacker, f"x{i}", "wrong", spoof).status_code for i in range(21)]
        assert codes == [401] * 20 + [429]
        assert sign_in(colleague, "ana", "correct horse battery").status_code == 200


# ---- the fair queue without accounts, behind the seed's snippet ------------------------------------------------
@pytest.fixture(scope="module")
def one_slot(simulator: Server) -> Iterator[Server]:
    server = start_gateway(simulator.url, "--max-running", "1", "--max-queue-per-user", "2")
    yield server
    server.stop()


def _post(client: httpx.Client) -> httpx.Response:
    conversation = client.post("/chat/api/conversations", json={}).json()["conversation"]["id"]
    return client.post(f"/chat/api/conversations/{conversation}/messages", json={"content": "write a long story"})


def _send(client: httpx.Client) -> str:
    sent = _post(client)
    assert sent.status_code in (200, 201, 202), sent.text
    return str(sent.json()["reply"]["id"])


def _position(client: httpx.Client, reply: str) -> int | None:
    deadline = time.monotonic() + 5
    while True:
        position = client.get(f"/chat/api/generations/{reply}").json()["generation"]["queue_position"]
        if position is not None or time.monotonic() > deadline:
            return position  # type: ignore[no-any-return]
        time.sleep(0.02)


def test_the_fair_queue_and_its_limits_tell_clients_behind_the_seed_snippet_apart(
    one_slot: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    proxy = _in_front("seed_nginx", one_slot, tmp_path_factory.mktemp("seed-queue"))
    try:
        with client_from(proxy.url) as greedy, client_from(proxy.url) as light:
            replies = [_send(greedy) for _ in range(3)]  # one runs, two wait in greedy's line
            assert [_position(greedy, reply) for reply in replies[1:]] == [1, 2]
            # Its own limit of waiting replies (--max-queue-per-user 2) is its own, not every client's.
            over = _post(greedy)
            assert (over.status_code, over.json()["code"]) == (429, "too_many_waiting")
            # Round-robin between clients: the light one is served after greedy's next, not after both.
            waiting = _send(light)
            assert _position(light, waiting) == 2
            assert _position(greedy, replies[2]) == 3
            for client in (greedy, light):
                for conversation in client.get("/chat/api/conversations").json()["conversations"]:
                    client.delete(f"/chat/api/conversations/{conversation['id']}")
    finally:
        proxy.stop()
