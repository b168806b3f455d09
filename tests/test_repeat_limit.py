"""A reply Ollama cut off because the model repeated itself: its stream ends with 200, no final chunk and no error
(llm/server.go's guard: one token's trimmed text 31 times in a row). The gateway tells that end from a dropped
connection and says what happened, on the page and on the raw APIs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from chat_support import chat_api
from clawdbot.backends.repeats import Repeats
from clawdbot.gateway.framing import repeated
from conftest import Server, script, start_gateway

GOING = "going" + " going" * 49  # 50 tokens whose trimmed text is the same: Ollama sends 31, then stops


def ndjson(*texts: str) -> bytes:
    return b"".join(
        json.dumps({"message": {"role": "assistant", "content": t}, "done": False}).encode() + b"\n" for t in texts
    )


def sse(*texts: str) -> bytes:
    frames = [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in texts]
    return b"".join(b"data: " + json.dumps(frame).encode() + b"\n\n" for frame in frames)


def test_the_count_is_ollamas() -> None:
    repeats = Repeats()
    for text in ["going"] + [" going\n"] * 29:
        repeats.saw(text)
    assert not repeats.hit  # 30 in a row: Ollama goes on
    repeats.saw(" going")
    assert repeats.hit  # the 31st is the last it sends
    repeats.saw("gone")
    assert not repeats.hit
    assert repeated("ndjson", ndjson("so", *["going"] * 31))
    assert not repeated("ndjson", ndjson(*["going"] * 30))
    assert not repeated("ndjson", ndjson(*["going"] * 20, "gone", *["going"] * 20))
    assert repeated("sse", sse(*[" go"] * 31))
    assert not repeated("sse", sse(*[" go"] * 15))


@pytest.fixture(scope="module")
def gateway(simulator: Server) -> Iterator[Server]:
    server = start_gateway(simulator.url)
    yield server
    server.stop()


def _lines(response: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in response.content.splitlines() if line.strip()]


def test_the_raw_api_says_the_model_repeated_itself(simulator: Server, gateway: Server) -> None:
    script(simulator, {"match": "repeat after me", "reply": GOING, "thinking": "", "times": 2})
    body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "repeat after me"}]}
    lines = _lines(httpx.post(gateway.url + "/api/chat", json=body, timeout=30))
    assert [line["message"]["content"] for line in lines[:-1]] == ["going"] + [" going"] * 30  # type: ignore[index]
    assert "repeated one token 31 times in a row" in str(lines[-1]["error"])
    v1 = httpx.post(gateway.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    last = v1.text.strip().split("\n\n")[-1]
    assert "repeated one token 31 times in a row" in json.loads(last.removeprefix("data: "))["error"]["message"]


def test_a_stream_that_drops_after_repeating_less_is_not_called_a_repeat(simulator: Server, gateway: Server) -> None:
    script(simulator, {"match": "drop me", "reply": GOING, "thinking": "", "fault": {"kind": "drop", "after": 20}})
    body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "drop me"}]}
    lines = _lines(httpx.post(gateway.url + "/api/chat", json=body, timeout=30))
    assert len(lines) == 21
    assert "repeated" not in str(lines[-1]["error"])


def test_the_page_says_the_model_repeated_itself_and_keeps_the_text(simulator: Server, gateway: Server) -> None:
    script(simulator, {"match": "repeat after me", "reply": GOING, "thinking": "", "times": 2})
    with chat_api(gateway.url) as api:
        conversation = api.create()
        reply = api.turn(conversation["id"], "repeat after me")
    assert (reply["status"], reply["error_kind"]) == ("failed", "repeat_limit")
    assert reply["error"].startswith("The model kept repeating the same word")
    assert reply["content"] == "going" + " going" * 30
