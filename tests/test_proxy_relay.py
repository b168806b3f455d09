"""The relay, as a user meets it: real gateway and simulator processes, real HTTP, bytes compared exactly.

What the simulator sent is read back from its transcript (by X-Request-ID, which the gateway forwards), so
"unchanged" means byte for byte. Streaming is proven with a slow simulator: the chunks must reach the client
spread out as the backend makes them, not all at once at the end. Disconnects must cancel the generation.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from accounts_support import accounts_gateway, bearer, keyed_gateway
from conftest import Server, access_log, script, sim_state, start_gateway, start_simulator, transcript, wait_for

MODEL = "qwen3:32b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
NDJSON, SSE = "application/x-ndjson", "text/event-stream"


def rid() -> str:
    return uuid.uuid4().hex


# ---- byte-for-byte relay ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/api/chat", CHAT, NDJSON),
        ("/api/chat", {**CHAT, "stream": False}, "application/json; charset=utf-8"),
        ("/api/chat", {**CHAT, "think": False, "options": {"num_predict": 12}}, NDJSON),
        ("/api/generate", {"model": MODEL, "prompt": "Say <b>hi</b> & bye"}, NDJSON),
        ("/api/generate", {"model": MODEL, "prompt": "Say hi", "stream": False}, "application/json; charset=utf-8"),
        ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}, SSE),
        ("/v1/chat/completions", {**CHAT, "stream": True}, SSE),
        ("/v1/chat/completions", CHAT, "application/json"),
    ],
    ids=["chat", "chat-whole", "chat-no-think", "generate", "generate-whole", "sse-usage", "sse", "v1-whole"],
)
def test_generation_is_relayed_byte_for_byte(
    simulator: Server, gateway: Server, path: str, body: dict[str, object], content_type: str
) -> None:
    request_id = rid()
    response = httpx.post(gateway.url + path, json=body, headers={"X-Request-ID": request_id}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-request-id"] == request_id
    sent = transcript(simulator, request_id)
    assert len(sent) > 100
    assert response.content == sent
    if content_type == NDJSON:
        assert json.loads(response.content.splitlines()[-1])["done"] is True
    if content_type == SSE:
        assert response.content.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/tags", None),
        ("GET", "/api/version", None),
        ("POST", "/api/show", {"model": MODEL}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/qwen3:32b", None),
        ("POST", "/api/chat", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/api/generate", {"model": "", "prompt": "hi"}),
        ("POST", "/api/chat", {**CHAT, "think": "sometimes"}),
        ("POST", "/api/show", {"model": "nope:1b"}),
        ("GET", "/api/chat", None),
        ("GET", "/api/no-such-endpoint", None),
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": []}),
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/v1/models/nope", None),
    ],
)
def test_status_headers_and_body_are_the_backends(
    simulator: Server, gateway: Server, method: str, path: str, body: object
) -> None:
    direct = httpx.request(method, simulator.url + path, json=body)
    relayed = httpx.request(method, gateway.url + path, json=body)
    assert (relayed.status_code, relayed.headers.get("content-type"), relayed.content) == (
        direct.status_code,
        direct.headers.get("content-type"),
        direct.content,
    )
    assert relayed.headers["x-request-id"]


# ---- the request reaches the backend unchanged -----------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Echo:
    """A plain HTTP backend that records each request and answers with its body reversed, with the status
    its X-Echo-Status header asks for."""

    url: str
    seen: list[Seen] = field(default_factory=list)


class _EchoHandler(BaseHTTPRequestHandler):
    echo: Echo

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path in ("/api/version", "/api/tags"):  # the gateway's health probe
            self._send(200, "application/json", b'{"version":"0.0.0"}' if "version" in self.path else b'{"models":[]}')
            return
        self.echo.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status = int(self.headers.get("X-Echo-Status") or 200)
        self._send(status, "application/x-echo", body[::-1], {"Retry-After": "7"} if status == 503 else {})

    def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    echo = Echo(f"http://127.0.0.1:{server.server_address[1]}")
    _EchoHandler.echo = echo
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield echo
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def echo_gateway(echo: Echo) -> Iterator[Server]:
    server = start_gateway(echo.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def public_gateway(simulator: Server) -> Iterator[tuple[Server, dict[str, str]]]:
    """A gateway as deployed under a public name: accounts on, and a key (the API's credential)."""
    gateway, key = keyed_gateway(simulator.url)
    yield gateway.server, bearer(key)
    gateway.stop()


def test_request_body_path_and_headers_reach_the_backend_unchanged(echo: Echo, echo_gateway: Server) -> None:
    # With its own num_ctx and num_predict: a body without them gets the defaults added (tests/test_limits.py).
    body = (
        '{ "model":"qwen3:32b",\n  "messages":[{"content":"naïve <café> & \\u00e9 \\ud83d\\ude00","role":"user"}],'
        ' "options":{"num_predict":64, "num_ctx":4096} }\n'
    )
    raw = body.encode()
    request_id = rid()
    response = httpx.post(
        echo_gateway.url + "/api/chat?keep=1&x=%2Fy",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Request-ID": request_id,
            "X-Custom": "kept",
            "Origin": f"http://localhost:{echo_gateway.port}",
            "Host": f"localhost:{echo_gateway.port}",
        },
    )
    assert response.status_code == 200
    seen = echo.seen[-1]
    assert (seen.method, seen.path, seen.body) == ("POST", "/api/chat?keep=1&x=%2Fy", raw)
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-custom"] == "kept"
    assert seen.headers["x-request-id"] == request_id
    assert seen.headers["host"] == echo.url.removeprefix("http://")
    assert "origin" not in seen.headers


def test_backend_status_type_and_body_come_back_unchanged(echo: Echo, echo_gateway: Server) -> None:
    for status in (200, 201, 418, 503):
        response = httpx.put(
            echo_gateway.url + "/v1/anything", content=b"\x00\x01 abc", headers={"X-Echo-Status": str(status)}
        )
        assert response.status_code == status
        assert response.headers["content-type"] == "application/x-echo"
        assert response.content == b"cba \x01\x00"
    assert response.headers["retry-after"] == "7"


# ---- Origin and Host are the gateway's business, not the backend's -------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_browser_origin_is_not_forwarded(
    simulator: Server, public_gateway: tuple[Server, dict[str, str]], stream: bool
) -> None:
    gateway, key = public_gateway
    headers = {"Origin": "https://chat.example.com"}
    body = {**CHAT, "stream": stream}
    assert httpx.post(simulator.url + "/api/chat", json=body, headers=headers).status_code == 403
    response = httpx.post(gateway.url + "/api/chat", json=body, headers={**headers, **key}, timeout=30)
    assert response.status_code == 200
    assert json.loads(response.content.splitlines()[-1])["done"] is True


def test_public_host_is_not_forwarded(simulator: Server, public_gateway: tuple[Server, dict[str, str]]) -> None:
    gateway, key = public_gateway
    headers = {"Host": "chat.example.com"}
    assert httpx.post(simulator.url + "/api/chat", json=CHAT, headers=headers).status_code == 403
    assert httpx.get(simulator.url + "/api/tags", headers=headers).status_code == 403
    response = httpx.post(gateway.url + "/api/chat", json=CHAT, headers={**headers, **key}, timeout=30)
    assert response.status_code == 200
    assert httpx.get(gateway.url + "/api/tags", headers={**headers, **key}).json()["models"][0]["name"] == MODEL


def test_without_accounts_a_foreign_page_may_not_use_the_api(gateway: Server) -> None:
    """As Ollama refuses origins outside OLLAMA_ORIGINS: on localhost, a page elsewhere could otherwise spend the
    GPU or delete models through the browser of whoever runs the gateway."""
    refused = httpx.post(gateway.url + "/api/chat", json=CHAT, headers={"Origin": "https://evil.example"})
    assert (refused.status_code, refused.json()["code"]) == (403, "bad_origin")


# ---- it streams -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_simulator() -> Iterator[Server]:
    """A 4090 at 4× speed (~140 tok/s), one slot, model loaded before the tests start."""
    server = start_simulator("--profile", "4090", "--speed", "4", "--num-parallel", "1")
    loaded = httpx.post(server.url + "/api/chat", json={"model": MODEL, "messages": []}, timeout=30)
    assert loaded.json()["done_reason"] == "load"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_gateway(slow_simulator: Server) -> Iterator[Server]:
    # The size the direct requests load the model with (the 4090 profile's default): a gateway that sent another
    # would reload the model between the two and measure the reload.
    server = start_gateway(slow_simulator.url, "--num-ctx", "4096")
    yield server
    server.stop()


@pytest.fixture
def slow(slow_simulator: Server) -> Server:
    httpx.delete(slow_simulator.url + "/_sim/script")
    return slow_simulator


def arrivals(url: str, path: str, body: dict[str, object]) -> list[float]:
    """Seconds from sending the request to each non-empty line's arrival."""
    started = time.perf_counter()
    times: list[float] = []
    with httpx.stream("POST", url + path, json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                times.append(time.perf_counter() - started)
    return times


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {**CHAT, "messages": [{"role": "user", "content": "stream test"}]}),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "stream test"}], "stream": True}),
    ],
    ids=["ndjson", "sse"],
)
def test_chunks_reach_the_client_as_the_backend_makes_them(
    slow: Server, slow_gateway: Server, path: str, body: dict[str, object]
) -> None:
    reply = " ".join(f"word{i}" for i in range(25))
    script(slow, {"match": "stream test", "reply": reply, "thinking": "", "times": 2})
    direct = arrivals(slow.url, path, body)
    relayed = arrivals(slow_gateway.url, path, body)
    assert len(relayed) == len(direct) > 40
    span = direct[-1] - direct[0]
    assert span > 0.3, "the slow simulator should take a while to generate this reply"
    # A buffering proxy would deliver everything at the end: first and last chunk together.
    assert relayed[0] < relayed[-1] - 0.6 * span
    assert relayed[0] - direct[0] < 0.15
    assert relayed[-1] - relayed[0] > 0.7 * span
    halfway = relayed[0] + (relayed[-1] - relayed[0]) / 2
    assert 0.2 < sum(t < halfway for t in relayed) / len(relayed) < 0.8, "chunks arrive spread over the stream"


# ---- a client that leaves cancels the generation -----------------------------------------------------------------
def open_raw(port: int, body: dict[str, object], request_id: str) -> socket.socket:
    """Send a POST /api/chat on a plain socket, so the test decides exactly when the connection closes."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def read_chunks(sock: socket.socket, count: int) -> bytes:
    """Read the response until `count` generation chunks have arrived."""
    sock.settimeout(10)
    received = b""
    while received.count(b'"done":false') < count:
        data = sock.recv(65536)
        assert data, "connection closed early"
        received += data
    return received


def runner(sim: Server, client: httpx.Client | None = None) -> dict[str, int]:
    state = (client.get(sim.url + "/_sim/state").json() if client else sim_state(sim))["runners"]
    return state[MODEL]


def seconds_until(sim: Server, done: object, limit: float = 2.0) -> float:
    """Poll the simulator until `done(runner_state)`; return how long that took from now."""
    started = time.perf_counter()
    with httpx.Client() as client:
        while not done(runner(sim, client)):
            assert time.perf_counter() - started < limit, runner(sim, client)
            time.sleep(0.002)
    return time.perf_counter() - started


LONG = " ".join(f"token{i}" for i in range(3000))  # ~20 s at this speed: it only ends when cancelled


def test_client_disconnect_mid_stream_cancels_the_generation(slow: Server, slow_gateway: Server) -> None:
    script(slow, {"match": "leave early", "reply": LONG, "thinking": ""})
    before = runner(slow)
    request_id = rid()
    sock = open_raw(slow_gateway.port, {**CHAT, "messages": [{"role": "user", "content": "leave early"}]}, request_id)
    received = read_chunks(sock, 3)
    assert b"200 OK" in received.split(b"\r\n", 1)[0]
    assert runner(slow)["active"] == 1
    sock.close()
    took = seconds_until(slow, lambda s: s["cancelled_total"] == before["cancelled_total"] + 1)
    assert took < 0.3, f"the backend kept generating for {took:.3f} s after the client left"
    assert runner(slow)["active"] == 0
    entries = wait_for(lambda: [e for e in access_log(slow_gateway) if e["request_id"] == request_id])
    assert entries
    assert entries[0]["outcome"] == "client_closed"


def test_client_disconnect_while_queued_cancels_the_waiting_request(slow: Server, slow_gateway: Server) -> None:
    script(slow, {"match": "hold the slot", "reply": LONG, "thinking": ""})
    holder = open_raw(slow.port, {**CHAT, "messages": [{"role": "user", "content": "hold the slot"}]}, rid())
    try:
        read_chunks(holder, 1)
        before = runner(slow)
        waiter = open_raw(slow_gateway.port, {**CHAT, "messages": [{"role": "user", "content": "queued"}]}, rid())
        seconds_until(slow, lambda s: s["waiting"] == 1)
        waiter.close()  # no byte has come back yet: the request is waiting for the only slot
        took = seconds_until(slow, lambda s: s["waiting"] == 0)
        assert took < 0.3, f"the request stayed queued {took:.3f} s after the client left"
        after = runner(slow)
        assert after["cancelled_total"] == before["cancelled_total"] + 1
        assert after["completed_total"] == before["completed_total"]
    finally:
        holder.close()
        seconds_until(slow, lambda s: s["active"] == 0)


def test_the_single_sign_on_header_is_not_forwarded(echo: Echo) -> None:
    sso = ("--sso-header", "X-Forwarded-User", "--sso-proxies", "127.0.0.1/32")
    gateway = accounts_gateway(echo.url, *sso)
    try:
        response = httpx.post(gateway.url + "/api/chat", content=b"{}", headers={"X-Forwarded-User": "ana"})
        assert response.status_code == 200
        assert "x-forwarded-user" not in echo.seen[-1].headers
        assert "authorization" not in echo.seen[-1].headers
    finally:
        gateway.stop()


def test_the_backend_comes_from_configuration_never_from_the_request(echo: Echo, echo_gateway: Server) -> None:
    """No request can point the gateway elsewhere (SSRF): not an absolute URL in the request line, not a Host or
    forwarding header, not a field in the body, not a path that climbs. A second server stands for "elsewhere"."""
    hits: list[str] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{elsewhere.server_address[1]}"
    try:
        before = len(echo.seen)
        with socket.create_connection(("127.0.0.1", echo_gateway.port), timeout=10) as conn:
            line = f"GET http://{target}/api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            conn.sendall(line.encode())
            while conn.recv(65536):
                pass
        tricks = [
            {"X-Forwarded-Host": target, "X-Ollama-Host": f"http://{target}", "Forwarded": f"host={target}"},
            {"Host": target},
        ]
        for headers in tricks:
            body = {"model": "m", "base_url": f"http://{target}/", "host": f"http://{target}"}
            httpx.post(echo_gateway.url + "/api/chat", json=body, headers=headers)
        httpx.get(echo_gateway.url + "/api/../../../etc/passwd")
        httpx.get(echo_gateway.url + "/v1/%2e%2e/%2e%2e/x")
        assert hits == []
        assert len(echo.seen) > before  # what was forwarded went to the configured backend
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
