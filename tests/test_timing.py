"""Where a reply's time went (timing.py): on the chat page's replies and on raw API requests, measured against a
simulator whose model times are known (the h100 profile at 10× speed: a 0.6 s cold load, 25,000 prompt tokens/s,
500 tokens/s), stored with the reply, sent in reply.stats, and written to the access log; the parts add up."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import httpx
import pytest

from chat_support import chat_api, connect, done_of, wait_until
from clawdbot.timing import PARTS, Clocks
from conftest import Server

TO_FIRST_TOKEN = ("gateway_ms", "queue_ms", "model_load_ms", "prompt_eval_ms", "first_token_ms", "relay_ms")


def adds_up(timing: dict[str, Any]) -> None:
    """The parts to the first token make up ttft_ms, and all of them total_ms (each is rounded to 0.1 ms)."""
    assert set(timing) == {*PARTS, "ttft_ms", "total_ms"}
    assert sum(timing[part] or 0.0 for part in TO_FIRST_TOKEN) == pytest.approx(timing["ttft_ms"], abs=0.5)
    assert sum(timing[part] or 0.0 for part in PARTS) == pytest.approx(timing["total_ms"], abs=0.6)


def log_lines(server: Server, msg: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "clawdbot.access" and line.get("msg") == msg]


def test_a_chat_reply_shows_the_models_cold_load_and_its_parts_add_up_to_what_the_client_saw(
    timed_gateway: Server,
) -> None:
    with chat_api(timed_gateway.url) as api:
        conversation = api.create(num_predict=40, think=False)["id"]
        sent = api.send(conversation, "Tell me about the sea. " * 40)  # ~300 prompt tokens
        reply = api.wait_reply(conversation, sent["reply"]["id"])
    timing = reply["timing"]
    adds_up(timing)
    assert reply["ttft_ms"] == pytest.approx(timing["ttft_ms"], abs=1)  # whole milliseconds there
    assert reply["total_ms"] == pytest.approx(timing["total_ms"], abs=1)
    # The first request loads the model: 6 s at 10× speed, as Ollama's load_duration says.
    assert 550 <= timing["model_load_ms"] <= 900
    assert timing["prompt_eval_ms"] is not None
    assert timing["prompt_eval_ms"] < 100
    # 40 tokens at ~500 tokens/s, the first of them before generation_ms starts.
    assert 40 <= timing["generation_ms"] <= 400
    assert timing["gateway_ms"] < timing["model_load_ms"]
    # Written once the reply is stored, by the log's own thread: moments after the reply reads as finished.
    wait_until(lambda: any(e["reply_id"] == reply["id"] for e in log_lines(timed_gateway, "reply")), "the log line")
    [line] = [entry for entry in log_lines(timed_gateway, "reply") if entry["reply_id"] == reply["id"]]
    assert line["timing"] == timing
    assert (line["status"], line["completion_tokens"]) == ("done", reply["output_tokens"])
    assert "content" not in line
    assert "Tell me" not in json.dumps(line)  # never the text


@pytest.mark.asyncio
async def test_the_reply_stats_event_carries_the_timing_the_reply_is_stored_with(timed_gateway: Server) -> None:
    with chat_api(timed_gateway.url) as api:
        conversation = api.create(num_predict=20, think=False)["id"]
    async with aiohttp.ClientSession() as session:
        socket = await connect(session, timed_gateway.url)
        ack = await socket.command("send", conversation_id=conversation, content="A short question")
        reply_id = ack["reply"]["id"]
        events = await socket.until(done_of(reply_id))
        await socket.ws.close()
    [stats] = [event for event in events if event["type"] == "reply.stats"]
    adds_up(stats["timing"])
    with chat_api(timed_gateway.url) as api:
        stored = next(m for m in api.view(conversation)["messages"] if m["id"] == reply_id)
    assert stored["timing"] == stats["timing"]
    assert stored["timing"]["model_load_ms"] < 100  # loaded by now


def test_a_raw_request_logs_where_its_time_went(timed_gateway: Server) -> None:
    body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 25}}
    response = httpx.post(f"{timed_gateway.url}/api/chat", json=body, timeout=30)
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    wait_until(lambda: any(line["request_id"] == request_id for line in log_lines(timed_gateway, "request")), "log")
    [line] = [entry for entry in log_lines(timed_gateway, "request") if entry["request_id"] == request_id]
    timing = line["timing"]
    adds_up(timing)
    assert timing["ttft_ms"] == pytest.approx(line["ttft_ms"], abs=0.1)
    assert timing["total_ms"] == pytest.approx(line["duration_ms"], abs=0.1)
    assert timing["model_load_ms"] is not None
    assert timing["prompt_eval_ms"] is not None
    assert 20 <= timing["generation_ms"] <= 300  # 25 tokens at ~500 tokens/s


def test_a_request_that_never_reached_a_token_has_no_model_parts() -> None:
    """Failed before the backend's first byte: the wait is the backend's, and nothing after it is made up."""
    clocks = Clocks(received=10.0, queued=0.5, forwarded=10.6)
    timing = clocks.breakdown(12.6)
    assert timing["gateway_ms"] == pytest.approx(100.0)
    assert timing["queue_ms"] == 500.0
    assert [timing[p] for p in ("model_load_ms", "prompt_eval_ms", "first_token_ms", "relay_ms", "generation_ms")] == [
        None
    ] * 5
    assert (timing["finish_ms"], timing["ttft_ms"], timing["total_ms"]) == (2000.0, None, 2600.0)
    # A server that reports no durations (OpenAI-compatible): the whole wait is first_token_ms.
    served = Clocks(10.0, 0.0, 10.1, first_byte=10.4, first_sent=10.41, last_byte=11.0).breakdown(11.0)
    assert (served["model_load_ms"], served["prompt_eval_ms"], served["first_token_ms"]) == (None, None, 300.0)
    adds_up(served)
    # Durations larger than the wait the gateway saw (another clock) are cut to it: no negative part.
    cut = Clocks(10.0, 0.0, 10.1, first_byte=10.2, first_sent=10.2, last_byte=10.5).breakdown(10.5, 400_000_000, 9)
    assert (cut["model_load_ms"], cut["prompt_eval_ms"], cut["first_token_ms"]) == (100.0, 0.0, 0.0)
    adds_up(cut)
