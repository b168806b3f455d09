"""When the backend fails: a JSON error naming the backend and the cause before the stream starts, one error
line or event appended when a stream is cut short, and the backend's own errors passed through untouched.

Faults are scripted into the simulator (`POST /_sim/script`); none of them may ever show a stack trace.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import ollama
import pytest

from conftest import Server, access_log, script, start_gateway, transcript, wait_for

MODEL = "qwen3:32b"
OPENAI_KEYS = {"message", "type", "param", "code"}


def rid() -> str:
    return uuid.uuid4().hex


def ask(prompt: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


def fault(sim: Server, kind: str, **options: object) -> str:
    """Script one fault for the next request with the returned prompt."""
    prompt = f"{kind} {uuid.uuid4().hex}"
    script(sim, {"match": prompt, "fault": {"kind": kind, **options}})
    return prompt


def backend_of(gateway: Server) -> str:
    return gateway.args[gateway.args.index("--ollama-url") + 1]


def assert_no_traceback(*servers: Server) -> None:
    for server in servers:
        assert "Traceback" not in server.logs()


@pytest.fixture(scope="module")
def impatient_gateway(simulator: Server) -> Iterator[Server]:
    """Gives up on a backend that sends nothing for 1 s."""
    server = start_gateway(simulator.url, "--first-byte-timeout", "1")
    yield server
    server.stop()


# ---- before the first byte: a JSON error with a status --------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [("POST", "/api/chat"), ("GET", "/api/tags"), ("POST", "/api/generate")])
def test_refused_connection_is_a_502_naming_the_backend(down_gateway: Server, method: str, path: str) -> None:
    response = httpx.request(method, down_gateway.url + path, json=ask("hi") if method == "POST" else None)
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    body = response.json()
    assert body["code"] == "backend_unreachable"
    assert body["backend"] == backend_of(down_gateway)
    assert backend_of(down_gateway) in body["error"]
    assert "refused" in body["error"]
    assert "Traceback" not in response.text
    assert_no_traceback(down_gateway)


def test_refused_connection_under_v1_is_an_openai_error(down_gateway: Server) -> None:
    response = httpx.post(down_gateway.url + "/v1/chat/completions", json=ask("hi", stream=True))
    assert response.status_code == 502
    error = response.json()["error"]
    assert set(error) == OPENAI_KEYS
    assert (error["type"], error["code"]) == ("api_error", "backend_unreachable")
    assert backend_of(down_gateway) in error["message"]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_reset_before_answering_is_a_502(simulator: Server, gateway: Server, path: str) -> None:
    response = httpx.post(gateway.url + path, json=ask(fault(simulator, "reset"), stream=True))
    assert response.status_code == 502
    body = response.json()
    message = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert f"backend {simulator.url} closed the connection before answering" in message
    if path.startswith("/v1/"):
        assert body["error"]["code"] == "backend_error"
    else:
        assert (body["code"], body["backend"]) == ("backend_error", simulator.url)
    assert_no_traceback(gateway)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_no_first_byte_within_the_timeout_is_a_504(simulator: Server, impatient_gateway: Server, path: str) -> None:
    started = time.monotonic()
    response = httpx.post(impatient_gateway.url + path, json=ask(fault(simulator, "slow_first", seconds=4)), timeout=10)
    took = time.monotonic() - started
    assert response.status_code == 504
    assert 0.9 < took < 3
    body = response.json()
    if path.startswith("/v1/"):
        assert set(body["error"]) == OPENAI_KEYS
        assert body["error"]["code"] == "backend_timeout"
        message = body["error"]["message"]
    else:
        assert body["code"] == "backend_timeout"
        message = body["error"]
    assert message == f"backend {simulator.url} sent nothing within 1 s"
    assert_no_traceback(impatient_gateway)


@pytest.mark.parametrize("kind", ["http_500", "busy"])
@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_backend_error_statuses_pass_through(simulator: Server, gateway: Server, kind: str, path: str) -> None:
    answers = []
    for url in (simulator.url, gateway.url):
        response = httpx.post(url + path, json=ask(fault(simulator, kind), stream=True))
        answers.append((response.status_code, response.headers["content-type"], response.content))
    assert answers[1] == answers[0]
    assert answers[1][0] == {"http_500": 500, "busy": 503}[kind]


# ---- in the middle of a stream: one error line or event, once ------------------------------------------------------
def relay(gateway: Server, path: str, body: dict[str, object], request_id: str) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers={"X-Request-ID": request_id}, timeout=15)


def test_dropped_stream_ends_with_one_error_line(simulator: Server, gateway: Server) -> None:
    request_id = rid()
    response = relay(gateway, "/api/chat", ask(fault(simulator, "drop", after=3)), request_id)
    assert response.status_code == 200
    sent = transcript(simulator, request_id)
    assert sent.count(b"\n") == 3
    assert response.content.startswith(sent)
    extra = response.content.removeprefix(sent)
    assert extra.endswith(b"\n")
    assert extra.count(b"\n") == 1
    assert json.loads(extra) == {"error": f"backend {simulator.url} closed the connection in the middle of the reply"}
    assert_no_traceback(gateway)


def test_dropped_stream_raises_in_the_ollama_client(simulator: Server, gateway: Server) -> None:
    received = []
    with ollama.Client(host=gateway.url) as client, pytest.raises(ollama.ResponseError) as raised:
        received.extend(
            client.chat(model=MODEL, messages=ask(fault(simulator, "drop", after=3))["messages"], stream=True)
        )
    assert len(received) == 3
    assert "closed the connection in the middle of the reply" in raised.value.error


def test_dropped_sse_stream_ends_with_one_error_event(simulator: Server, gateway: Server) -> None:
    request_id = rid()
    response = relay(gateway, "/v1/chat/completions", ask(fault(simulator, "drop", after=3), stream=True), request_id)
    sent = transcript(simulator, request_id)
    assert sent.count(b"data: ") == 3
    assert response.content.startswith(sent)
    extra = response.content.removeprefix(sent)
    assert extra.startswith(b"data: ")
    assert extra.endswith(b"\n\n")
    assert extra.count(b"data: ") == 1
    error = json.loads(extra.removeprefix(b"data: "))["error"]
    assert set(error) == OPENAI_KEYS
    assert error["message"] == f"backend {simulator.url} closed the connection in the middle of the reply"


@pytest.mark.parametrize(("path", "frame"), [("/api/chat", b""), ("/v1/chat/completions", b"data: ")])
def test_silent_stream_is_cut_after_the_idle_timeout(
    simulator: Server, gateway: Server, path: str, frame: bytes
) -> None:
    """The shared gateway runs with --idle-timeout 2; the backend goes quiet for 6 s after three chunks."""
    request_id = rid()
    started = time.monotonic()
    response = relay(gateway, path, ask(fault(simulator, "stall", after=3, seconds=6), stream=True), request_id)
    took = time.monotonic() - started
    assert 2 <= took < 4.5
    sent = transcript(simulator, request_id)
    assert response.content.startswith(sent)
    extra = response.content.removeprefix(sent)
    assert extra.startswith(frame + b'{"error":')
    error = json.loads(extra.removeprefix(frame))["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert message.startswith(f"backend {simulator.url} sent nothing for 2 s")
    assert_no_traceback(gateway)


def test_backends_own_error_line_passes_through_and_nothing_is_added(simulator: Server, gateway: Server) -> None:
    request_id = rid()
    message = "an error was encountered while running the model: out of <memory> & more"
    response = relay(gateway, "/api/chat", ask(fault(simulator, "error_line", after=3, message=message)), request_id)
    assert response.status_code == 200
    assert response.content == transcript(simulator, request_id)
    lines = response.content.splitlines()
    assert len(lines) == 4
    assert json.loads(lines[-1]) == {"error": message}
    with ollama.Client(host=gateway.url) as client, pytest.raises(ollama.ResponseError) as raised:
        list(
            client.chat(
                model=MODEL, messages=ask(fault(simulator, "error_line", message=message))["messages"], stream=True
            )
        )
    assert raised.value.error == message


def test_malformed_line_passes_through_unchanged(simulator: Server, gateway: Server) -> None:
    request_id = rid()
    response = relay(gateway, "/api/chat", ask(fault(simulator, "malformed", after=2)), request_id)
    sent = transcript(simulator, request_id)
    assert response.content == sent
    lines = sent.splitlines()
    assert lines[2] == b'{"model":"qwen3:32b","created_at":"2025-10-20T10:00:00Z","message":{"role":'
    assert json.loads(lines[-1])["done"] is True


# ---- a whole (non-streamed) reply cut short must not look complete -------------------------------------------------
class _ShortReplies(BaseHTTPRequestHandler):
    """Answers the health probe, then breaks off every reply halfway: by Content-Length or inside a chunked body."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path in ("/api/version", "/api/tags"):
            body = b'{"version":"0.0.0"}' if self.path == "/api/version" else b'{"models":[]}'
            self._head({"Content-Length": str(len(body))})
            self.wfile.write(body)
            return
        self.close_connection = True
        if self.path == "/api/chat":
            self._head({"Content-Length": "400"})
            self.wfile.write(b'{"model":"qwen3:32b","message":{"role":"assistant","content":"Half')
        else:
            self._head({"Transfer-Encoding": "chunked"})
            self.wfile.write(b'10\r\n{"models":[{"nam\r\n')

    def _head(self, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def short_gateway() -> Iterator[Server]:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _ShortReplies)
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    gateway = start_gateway(f"http://127.0.0.1:{backend.server_address[1]}")
    yield gateway
    gateway.stop()
    backend.shutdown()
    backend.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/api/chat"), ("POST", "/api/show")], ids=["content-length", "chunked"]
)
def test_whole_reply_cut_short_breaks_the_clients_transfer_too(short_gateway: Server, method: str, path: str) -> None:
    request_id = rid()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.request(
            method,
            short_gateway.url + path,
            json=ask("hi", stream=False),
            headers={"X-Request-ID": request_id},
            timeout=5,
        )
    entries = wait_for(lambda: [e for e in access_log(short_gateway) if e["request_id"] == request_id])
    assert entries
    assert (entries[0]["outcome"], entries[0]["error_kind"]) == ("backend_error", "reset_mid_stream")
    assert_no_traceback(short_gateway)
