"""`clawdbot bench` against a real simulator: counts, multi-turn history, failure kinds, both protocols."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Server, start_simulator


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    server = start_simulator("--profile", "instant", "--num-parallel", "0")
    yield server
    server.stop()


def bench(url: str, tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "clawdbot", "bench", url, "--json", str(out), "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
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
    ):
        result = subprocess.run(
            [sys.executable, "-m", "clawdbot", "bench", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, args
