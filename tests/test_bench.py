"""`clawdbot bench` against a real simulator: counts, multi-turn history, failure kinds, all three protocols
(the chat page's through a real gateway)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounts_support import accounts_gateway, close_clients, new_key, sign_in
from conftest import Server, script, start_gateway, start_simulator


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "0")
    yield server
    server.stop()


def bench(url: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    inherited = {name: value for name, value in os.environ.items() if name != "CLAWDBOT_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "clawdbot", "bench", url, "--json", str(out), "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**inherited, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result.stdout


def test_levels_requests_and_server_token_counts(sim: Server, tmp_path: Path) -> None:
    data, stdout = bench(sim.url, tmp_path, "--concurrency", "2,4", "--requests", "8", "--max-tokens", "20")
    assert [level["level"] for level in data["levels"]] == ["2 users", "4 users"]
    for level in data["levels"]:
        assert level["requests"] == 8
        assert level["failures"] == 0
        assert level["output_tokens"] == 8 * 20  # num_predict 20 → the server's eval_count
        assert all(r["ttft"] is not None and r["ttft"] <= r["end"] for r in level["records"])
        assert level["peak_in_flight"] <= int(level["level"].split()[0])
    assert "| avg time to first token |" in stdout
    assert "TTFT" in stdout


def test_conversations_send_their_growing_history(sim: Server, tmp_path: Path) -> None:
    data, _ = bench(
        sim.url, tmp_path, "--concurrency", "1", "--requests", "4", "--turns", "4", "--no-think", "--max-tokens", "15"
    )
    records = sorted(data["levels"][0]["records"], key=lambda r: r["turn"])
    prompts = [r["prompt_tokens"] for r in records]
    assert [r["turn"] for r in records] == [0, 1, 2, 3]
    assert prompts == sorted(prompts)
    assert prompts[3] > prompts[0] + 3 * 15


def test_thinking_gives_a_later_first_answer_token(sim: Server, tmp_path: Path) -> None:
    data, _ = bench(sim.url, tmp_path, "--concurrency", "1", "--requests", "3", "--think")
    for record in data["levels"][0]["records"]:
        assert record["ttfo"] is not None
        assert record["ttfo"] > record["ttft"]


def test_openai_protocol_with_usage_counts(sim: Server, tmp_path: Path) -> None:
    data, stdout = bench(
        sim.url, tmp_path, "--target", "openai", "--concurrency", "3", "--requests", "6", "--max-tokens", "12"
    )
    level = data["levels"][0]
    assert level["failures"] == 0
    assert level["output_tokens"] == 6 * 12
    assert "/v1/chat/completions" in stdout


def test_open_loop_rate_records_scheduled_times(sim: Server, tmp_path: Path) -> None:
    data, _ = bench(sim.url, tmp_path, "--rate", "40", "--duration", "1", "--max-tokens", "5")
    level = data["levels"][0]
    assert 15 <= level["requests"] <= 80  # Poisson around 40
    assert all(r["start"] >= r["scheduled"] - 1e-3 for r in level["records"])
    assert level["wait"]["n"] == level["requests"]


def test_workers_share_the_load_and_merge(sim: Server, tmp_path: Path) -> None:
    data, _ = bench(sim.url, tmp_path, "--concurrency", "4", "--requests", "10", "--workers", "2", "--max-tokens", "5")
    level = data["levels"][0]
    assert level["requests"] == 10
    assert level["client"]["workers"] == 2
    assert {r["worker"] for r in level["records"]} == {0, 1}


@pytest.mark.parametrize(
    ("faults", "kind"), [("http_500", "http_500"), ("error_line", "stream_error"), ("drop", "reset")]
)
def test_failures_are_counted_by_kind(tmp_path: Path, faults: str, kind: str) -> None:
    server = start_simulator("--profile", "instant", "--fault-rate", "1", "--faults", faults)
    try:
        data, stdout = bench(server.url, tmp_path, "--concurrency", "2", "--requests", "4", "--max-tokens", "60")
    finally:
        server.stop()
    level = data["levels"][0]
    assert level["failures"] == 4
    assert level["failure_kinds"] == {kind: 4}
    assert f"failures 4/4 (100.00%): {kind} 4" in stdout


def test_unreachable_server_is_a_connect_failure(tmp_path: Path) -> None:
    data, _ = bench("http://127.0.0.1:9", tmp_path, "--concurrency", "2", "--requests", "2")
    assert data["levels"][0]["failure_kinds"] == {"connect": 2}


def test_usage_errors() -> None:
    for args in (
        ["--requests", "3"],
        ["--concurrency", "2"],
        ["--concurrency", "2", "--rate", "1", "--requests", "1"],
        ["--concurrency", "0", "--requests", "1"],
        ["--target", "chat", "--concurrency", "1", "--requests", "1", "--max-tokens", "5"],
        ["--rate", "1", "--conversations-per-user", "1"],
        ["--concurrency", "1", "--requests", "1", "--report", "/nonexistent/run.html"],
        ["--concurrency", "1", "--requests", "1", "--json", "/nonexistent/run.json"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "clawdbot", "bench", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, args
        assert "clawdbot bench →" not in result.stdout, args  # refused before any request was sent
    assert "Error: --json /nonexistent/run.json: cannot write into /nonexistent" in result.stderr


# ---- --target chat: the chat page's protocol through a real gateway ---------------------------------------------
@pytest.fixture(scope="module")
def chat_gateway(sim: Server) -> Iterator[Server]:
    # Heartbeats well inside the tests' --idle-timeout, so a silent model must not look like a dead socket.
    server = start_gateway(sim.url, "--heartbeat", "0.3")
    yield server
    server.stop()


@pytest.fixture
def clean_script(sim: Server) -> Iterator[Server]:
    httpx.delete(f"{sim.url}/_sim/script")
    yield sim
    httpx.delete(f"{sim.url}/_sim/script")


def stored(gateway: Server, conversation_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gateway.url}/chat/api/conversations/{conversation_id}")
    response.raise_for_status()
    return response.json()["messages"]  # type: ignore[no-any-return]


def test_chat_target_stores_every_turn_as_the_client_saw_it(chat_gateway: Server, tmp_path: Path) -> None:
    data, stdout = bench(
        chat_gateway.url,
        tmp_path,
        *("--target", "chat", "--concurrency", "3", "--conversations-per-user", "1", "--turns", "2", "--no-think"),
    )
    level = data["levels"][0]
    records = level["records"]
    assert (level["requests"], level["failures"]) == (6, 0)
    assert all(r["ttft"] is not None and r["ttft"] <= r["end"] for r in records)
    assert "ws://" in stdout
    assert "stored TTFT" in stdout
    conversations = {r["conversation_id"] for r in records}
    assert len(conversations) == 3
    for conversation_id in conversations:
        turns = sorted((r for r in records if r["conversation_id"] == conversation_id), key=lambda r: r["turn"])
        messages = stored(chat_gateway, conversation_id)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        replies = {m["id"]: m for m in messages if m["role"] == "assistant"}
        assert [r["turn"] for r in turns] == [0, 1]
        for record in turns:
            reply = replies[record["reply_id"]]
            assert reply["status"] == "done"
            assert record["output_tokens"] == reply["output_tokens"] > 0
            assert record["reply_sha256"] == hashlib.sha256(reply["content"].encode()).hexdigest()
            assert record["server"]["ttft_ms"] == reply["ttft_ms"]
        # Only the new message went over the socket; the server sent the model the whole history.
        assert turns[1]["prompt_tokens"] > turns[0]["prompt_tokens"] + turns[0]["output_tokens"]
    assert level["output_tokens"] == sum(r["output_tokens"] for r in records)


def test_chat_failed_replies_are_counted_by_kind(chat_gateway: Server, clean_script: Server, tmp_path: Path) -> None:
    # Eight: the gateway retries a failure before the first token once, so each reply meets two.
    script(clean_script, {"match": "", "fault": {"kind": "http_500"}, "times": 8})
    data, stdout = bench(chat_gateway.url, tmp_path, "--target", "chat", "--concurrency", "2", "--requests", "4")
    level = data["levels"][0]
    assert level["failure_kinds"] == {"failed_http_500": 4}
    assert all("HTTP 500" in r["detail"] for r in level["records"])
    assert "failures 4/4 (100.00%): failed_http_500 4" in stdout


def test_chat_heartbeats_count_as_traffic_and_the_turn_budget_still_ends_a_stall(
    chat_gateway: Server, clean_script: Server, tmp_path: Path
) -> None:
    script(
        clean_script,
        {"match": "", "fault": {"kind": "slow_first", "seconds": 1.5}},  # silent longer than --idle-timeout
        {"match": "", "fault": {"kind": "stall", "after": 2, "seconds": 10}},  # longer than --timeout
    )
    data, _ = bench(
        chat_gateway.url,
        tmp_path,
        *("--target", "chat", "--concurrency", "1", "--requests", "2", "--idle-timeout", "1", "--timeout", "3"),
    )
    first, second = sorted(data["levels"][0]["records"], key=lambda r: r["start"])
    assert first["failure"] is None
    assert first["ttft"] > 1.4
    assert second["failure"] == "timeout"
    assert 2.5 < second["end"] < 6


# ---- --api-key: a gateway with accounts on ------------------------------------------------------------------------
def test_api_key_is_sent_on_every_request(sim: Server, tmp_path: Path) -> None:
    gateway = accounts_gateway(sim.url)
    try:
        gateway.add_user("bench")
        key = new_key(sign_in(gateway.url, "bench"), "bench")
        ollama = ("--concurrency", "2", "--requests", "4", "--max-tokens", "5", "--warmup", "1")
        chat = ("--target", "chat", "--concurrency", "2", "--conversations-per-user", "1", "--turns", "2")
        # From the environment (Ollama's API), then as the option (the chat page's POST and WebSocket).
        data, _ = bench(gateway.url, tmp_path, *ollama, env={"CLAWDBOT_API_KEY": key})
        assert (data["levels"][0]["requests"], data["levels"][0]["failures"]) == (4, 0)
        data, _ = bench(gateway.url, tmp_path, *chat, "--no-think", "--api-key", key)
        assert (data["levels"][0]["requests"], data["levels"][0]["failures"]) == (4, 0)
        assert key not in json.dumps(data)  # the command line in the file has the key blanked out
        assert "--api-key …" in data["environment"]["command"]
        # Without it, every request is refused.
        data, _ = bench(gateway.url, tmp_path, *ollama)
        assert data["levels"][0]["failure_kinds"] == {"http_401": 4}
        data, _ = bench(gateway.url, tmp_path, *chat)
        assert data["levels"][0]["failure_kinds"] == {"http_401": 2}  # a failed turn ends its conversation
    finally:
        close_clients()
        gateway.stop()
