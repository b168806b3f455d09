"""Faults on demand: every kind the simulator can inject looks to a client the way the real failure does."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from conftest import MODEL, Server, chat_body, script, start_simulator, timed_stream

RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
    "check ollama server logs for details"
)
MID_STREAM = "an error was encountered while running the model: CUDA error: an illegal memory access was encountered"
BUSY = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'


@pytest.fixture(scope="module")
def failing() -> Iterator[Server]:
    """Every request fails with a runner crash (--fault-rate 1 --faults http_500)."""
    server = start_simulator("--profile", "instant", "--fault-rate", "1", "--faults", "http_500")
    yield server
    server.stop()


def fault(kind: str, **fields: Any) -> dict[str, Any]:
    return {"match": "fault", "fault": {"kind": kind, **fields}}


def stream_body(**extra: Any) -> dict[str, Any]:
    return chat_body("fault please", think=False, options={"num_predict": 12}, **extra)


def transcript(sim: Server, request_id: str) -> bytes:
    return httpx.get(f"{sim.url}/_sim/transcript/{request_id}").content


# ---- before the response -----------------------------------------------------------------------------------------
def test_reset_closes_the_connection_before_any_response(simulator: Server) -> None:
    script(simulator, fault("reset"))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(simulator.url + "/api/chat", json=stream_body())
    assert httpx.post(simulator.url + "/api/chat", json=stream_body()).status_code == 200  # only that one


def test_http_500_is_a_runner_crash(simulator: Server) -> None:
    script(simulator, fault("http_500"))
    got = httpx.post(simulator.url + "/api/chat", json=stream_body())
    assert got.status_code == 500
    assert got.content == json.dumps({"error": RUNNER_STOPPED}, separators=(",", ":")).encode()
    assert got.headers["content-type"] == "application/json"  # streamResponse set it before the error came
    script(simulator, fault("http_500"))
    whole = httpx.post(simulator.url + "/api/chat", json=stream_body(stream=False))
    assert (whole.status_code, whole.headers["content-type"]) == (500, "application/json; charset=utf-8")
    script(simulator, fault("http_500", message="custom failure"))
    with ollama.Client(host=simulator.url) as client, pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "fault"}])
    assert (caught.value.status_code, caught.value.error) == (500, "custom failure")


def test_busy_is_a_503_with_two_spaces(simulator: Server) -> None:
    script(simulator, fault("busy"))
    got = httpx.post(simulator.url + "/api/chat", json=stream_body())
    assert (got.status_code, got.content) == (503, BUSY)
    script(simulator, fault("busy"))
    v1 = httpx.post(simulator.url + "/v1/chat/completions", json=stream_body(stream=True))
    assert v1.status_code == 503
    assert v1.json() == {
        "error": {
            "message": "server busy, please try again.  maximum pending requests exceeded",
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }


def test_refuse_stops_accepting_connections_for_a_while(simulator: Server) -> None:
    script(simulator, fault("refuse", seconds=1.0))
    started = time.monotonic()
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.post(simulator.url + "/api/chat", json=stream_body())
    refused = 0
    while True:
        try:
            got = httpx.get(simulator.url + "/api/version", timeout=2)
        except httpx.ConnectError:
            refused += 1
            assert time.monotonic() - started < 3, "still refusing"
            time.sleep(0.05)
            continue
        break
    back = time.monotonic() - started
    assert got.status_code == 200
    assert refused >= 5
    assert 0.9 <= back < 2.0
    assert httpx.post(simulator.url + "/api/chat", json=stream_body()).status_code == 200


def test_slow_first_token(simulator: Server) -> None:
    script(simulator, fault("slow_first", seconds=0.5))
    slow = timed_stream(simulator, stream_body())
    assert slow.headers_at >= 0.5
    assert slow.chunks[-1]["done"] is True
    assert slow.chunks[-1]["total_duration"] >= 0.5e9
    fast = timed_stream(simulator, stream_body())
    assert fast.headers_at < 0.3


# ---- during the stream ---------------------------------------------------------------------------------------------
def test_drop_cuts_the_connection_after_n_chunks(simulator: Server) -> None:
    script(simulator, fault("drop", after=3))
    request_id = uuid.uuid4().hex
    headers = {"X-Request-ID": request_id}
    with httpx.stream("POST", simulator.url + "/api/chat", json=stream_body(), headers=headers) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            next(lines)
    assert all(json.loads(line)["done"] is False for line in received)
    assert transcript(simulator, request_id).count(b"\n") == 3


def test_drop_before_the_first_chunk_leaves_only_headers(simulator: Server) -> None:
    script(simulator, fault("drop", after=0))
    with httpx.stream("POST", simulator.url + "/api/chat", json=stream_body()) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_stall_pauses_the_stream_then_it_completes(simulator: Server) -> None:
    script(simulator, fault("stall", after=2, seconds=0.6))
    stalled = timed_stream(simulator, stream_body())
    gaps = stalled.gaps()
    assert gaps[1] >= 0.5  # between the 2nd and 3rd chunk
    assert max(gaps[:1] + gaps[2:]) < 0.2
    assert stalled.chunks[-1]["done_reason"] == "length"
    assert len(stalled.lines) == 13  # 12 tokens and the final chunk


def test_error_line_ends_the_stream_without_done(simulator: Server) -> None:
    script(simulator, fault("error_line", after=3))
    got = httpx.post(simulator.url + "/api/chat", json=stream_body())
    assert got.status_code == 200  # the status was already sent
    lines = got.content.split(b"\n")
    assert lines[-1] == b""  # the error line ends with a newline, then EOF
    assert len(lines) == 5
    assert all(json.loads(line)["done"] is False for line in lines[:3])
    assert lines[3] == json.dumps({"error": MID_STREAM}, separators=(",", ":")).encode()


def test_error_line_raises_in_the_official_client(simulator: Server) -> None:
    script(simulator, fault("error_line", after=2, message="boom <gpu>"))
    with ollama.Client(host=simulator.url) as client:
        parts = client.chat(model=MODEL, messages=[{"role": "user", "content": "fault"}], stream=True)
        assert [next(parts).done, next(parts).done] == [False, False]
        with pytest.raises(ollama.ResponseError) as caught:
            next(parts)
    assert caught.value.error == "boom <gpu>"
    assert caught.value.status_code == -1
    script(simulator, fault("error_line", after=2))
    whole = httpx.post(simulator.url + "/api/chat", json=stream_body(stream=False))
    assert (whole.status_code, whole.json()) == (500, {"error": MID_STREAM})


def test_malformed_line_in_the_middle(simulator: Server) -> None:
    script(simulator, fault("malformed", after=2))
    lines = httpx.post(simulator.url + "/api/chat", json=stream_body()).content.splitlines()
    broken = []
    for index, line in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            broken.append(index)
    assert broken == [2]
    assert json.loads(lines[-1])["done"] is True  # the stream goes on and finishes


def test_error_line_on_v1_is_an_empty_chunk_without_done(simulator: Server) -> None:
    script(simulator, fault("error_line", after=3))
    body = {**stream_body(), "stream": True, "stream_options": {"include_usage": True}}
    got = httpx.post(simulator.url + "/v1/chat/completions", json=body)
    assert got.status_code == 200
    events = got.content.split(b"\n\n")
    assert events[-1] == b""
    payloads = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    assert b"[DONE]" not in got.content
    assert len(payloads) == 4
    last = payloads[-1]
    assert last["model"] == ""  # Ollama decodes its own error line as an empty chat response
    assert last["choices"][0]["delta"].get("content", "") == ""
    assert all(p["choices"] and p["choices"][0]["finish_reason"] is None for p in payloads)
    assert all("usage" not in p for p in payloads)
    script(simulator, fault("error_line", after=3))
    with openai.OpenAI(base_url=simulator.url + "/v1", api_key="ollama", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": "fault"}]
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert len(chunks) == 4  # the client sees no error: the stream just ends early
    assert all(c.choices[0].finish_reason is None for c in chunks)


def test_faults_only_hit_matching_requests(simulator: Server) -> None:
    script(simulator, {"match": "break here", "fault": {"kind": "http_500"}, "times": -1})
    assert httpx.post(simulator.url + "/api/chat", json=chat_body("all good")).status_code == 200
    assert httpx.post(simulator.url + "/api/chat", json=chat_body("please break here")).status_code == 500
    assert httpx.post(simulator.url + "/api/chat", json=chat_body("break here again")).status_code == 500
    httpx.delete(simulator.url + "/_sim/script")
    assert httpx.post(simulator.url + "/api/chat", json=chat_body("break here")).status_code == 200


# ---- at random ----------------------------------------------------------------------------------------------------
def test_fault_rate_one_fails_every_generation(failing: Server) -> None:
    for prompt in ("a", "b", "c", "d", "e"):
        got = httpx.post(failing.url + "/api/chat", json=chat_body(prompt))
        assert (got.status_code, got.json()) == (500, {"error": RUNNER_STOPPED})
    generate = httpx.post(failing.url + "/api/generate", json={"model": MODEL, "prompt": "x"})
    assert generate.status_code == 500
    v1 = httpx.post(failing.url + "/v1/chat/completions", json=chat_body("x"))
    assert v1.status_code == 500
    assert v1.json()["error"] == {"message": RUNNER_STOPPED, "type": "api_error", "param": None, "code": None}
    assert httpx.get(failing.url + "/api/tags").status_code == 200  # only generations fail
