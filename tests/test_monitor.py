"""The live operations view (monitor.py, web/monitor.py, `clawdbot top`): under traffic the test sends and counts
itself, the view's numbers match: requests, failures and their cause, tokens, and the TTFT the client measured; the
backend's resident models and the model server's memory are shown, the GPU is "not visible from here"."""

from __future__ import annotations

import asyncio
import http.client
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import httpx
import pytest

from chat_support import chat_api, connect, wait_until
from clawdbot.monitor import Sample, combined, history
from conftest import Server, script, start_gateway


def view(gateway: Server) -> dict[str, Any]:
    answer = httpx.get(f"{gateway.url}/chat/api/admin/monitor", timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_the_view_counts_what_the_test_sent(timed_gateway: Server, timed_simulator: Server) -> None:
    raw_ttfts, raw_tokens = [], 0
    body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 15}}
    for _ in range(4):
        # http.client sends the headers and the body in one write: no wait on Nagle and a delayed ACK (~40 ms)
        # that would be the client's own and not the gateway's.
        connection = http.client.HTTPConnection("127.0.0.1", timed_gateway.port, timeout=30)
        started = time.perf_counter()
        connection.request(
            "POST", "/api/chat", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        lines = [answer.readline()]
        raw_ttfts.append(time.perf_counter() - started)
        lines += [line for line in answer.read().split(b"\n") if line]
        connection.close()
        raw_tokens += json.loads(lines[-1])["eval_count"]
    script(timed_simulator, {"match": "break", "fault": {"kind": "error_line", "after": 2, "message": "oom"}})
    with chat_api(timed_gateway.url) as api:
        conversation = api.create(num_predict=10, think=False)["id"]
        replies = [api.wait_reply(conversation, api.send(conversation, text)["reply"]["id"]) for text in ("a", "break")]
    assert [r["status"] for r in replies] == ["done", "failed"]

    seen = view(timed_gateway)
    minute = seen["windows"]["1m"]
    assert (minute["raw"]["requests"], minute["raw"]["failures"]) == (4, 0)
    assert (minute["chat"]["requests"], minute["chat"]["failures"]) == (2, 1)
    assert minute["chat"]["causes"] == {replies[1]["error_kind"]: 1}
    assert (minute["all"]["requests"], minute["all"]["failures"]) == (6, 1)
    tokens = raw_tokens + sum(r["output_tokens"] or 0 for r in replies)
    assert minute["all"]["tokens_per_s"] == pytest.approx(tokens / 60, abs=0.1)
    # The gateway's TTFT against the client's: the client's includes its own side of the connection.
    assert minute["raw"]["ttft_ms"]["p50"] == pytest.approx(1000 * statistics.median_low(raw_ttfts), abs=25, rel=0.2)
    assert minute["chat"]["ttft_ms"]["p50"] is not None
    assert seen["windows"]["60m"]["all"]["requests"] == 6

    [backend] = seen["backends"]
    assert backend["state"] == "healthy"
    # Asked of /api/ps for this view, not left to the health check (every 10 s, its first before the model loaded).
    [model] = backend["resident"]
    assert model["name"] == "qwen3:32b"
    assert model["spilled"] is (model["size_vram"] < model["size"])
    memory = backend["server_memory"]
    assert memory["visible"], memory  # the simulator runs on this machine, as this user
    assert memory["pid"] == timed_simulator.proc.pid
    assert memory["rss_bytes"] > 10_000_000
    assert seen["gpu"]["visible"] is False
    assert seen["gpu"]["why"].startswith("not visible from here")


def test_history_and_now_follow_the_samples(timed_gateway: Server) -> None:
    wait_until(lambda: len(view(timed_gateway)["history"]) >= 1, "ten seconds of samples", timeout=25)
    seen = view(timed_gateway)
    assert seen["now"]["rss_bytes"] > 10_000_000
    assert seen["now"]["open"] == {"websocket": 0, "sse": 0, "raw": 0}
    point = seen["history"][-1]
    assert set(point) == {"at", "connections", "running", "waiting", "tokens_per_s", "cpu_percent", "rss_bytes"}
    assert httpx.get(f"{timed_gateway.url}/chat/api/admin/monitor", params={"hours": "48"}).status_code == 400


def test_clawdbot_top_prints_the_same_view(timed_gateway: Server) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clawdbot", "top", timed_gateway.url, "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "clawdbot top" in out
    assert "backends:" in out
    assert "qwen3:32b" in out
    assert "GPU: not visible from here" in out
    minute = view(timed_gateway)["windows"]["1m"]
    row = next(line for line in out.splitlines() if line.startswith("1m"))
    assert f" {minute['chat']['requests']} " in row
    gone = subprocess.run(
        [sys.executable, "-m", "clawdbot", "top", "http://127.0.0.1:9", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode != 0
    assert "cannot reach" in gone.stderr


def test_workers_samples_add_up_on_the_longest_running_ones_seconds() -> None:
    def series(start: float, count: int, connections: int, tokens_per_s: int, offset: float = 0.0) -> list[Sample]:
        return [Sample(start + i + offset, connections, 1, 0, tokens_per_s * i, 0.5 * i, 100) for i in range(count)]

    first = series(1000.0, 30, connections=3, tokens_per_s=10)
    second = series(1005.0, 10, connections=2, tokens_per_s=20, offset=0.4)  # started later, died at 1014.4
    merged = combined([second, first])
    assert [s.at for s in merged] == [s.at for s in first]  # the one that ran longest sets the seconds
    by_second = {int(s.at): s for s in merged}
    assert by_second[1003].connections == 3  # before the second started
    assert by_second[1010].connections == 5
    assert by_second[1010].rss == 200
    assert by_second[1010].tokens == 10 * 10 + 20 * 4  # its sample at 1009.4
    assert by_second[1020].connections == 3  # gone: its connections no longer count…
    assert by_second[1020].tokens == 10 * 20 + 20 * 9  # …its tokens still do, so the rate does not fall below zero
    points = history(merged, 1000.0, step=5)
    assert all(point["tokens_per_s"] >= 0 for point in points)
    assert combined([first]) == first
    assert combined([[], first]) == first


def test_the_view_is_pushed_as_an_event_stream(timed_gateway: Server) -> None:
    url = f"{timed_gateway.url}/chat/api/admin/monitor/events"
    assert httpx.get(url, params={"hours": "2"}, timeout=10).status_code == 400
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url, params={"hours": "3"}, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
            if sum(e["type"] == "monitor" for e in events) == 2:
                break
    assert events[0]["type"] == "hello"
    first, second = (e for e in events if e["type"] == "monitor")
    assert first["hours"] == 3
    assert set(first["view"]) == set(view(timed_gateway))  # the same view as the plain GET
    assert 1500 <= second["view"]["at"] - first["view"]["at"] <= 6000  # one a tick (2 s), not one a request


def test_the_view_is_pushed_over_the_websocket_until_told_to_stop(timed_gateway: Server) -> None:
    async def watch() -> None:
        async with aiohttp.ClientSession() as session:
            socket = await connect(session, timed_gateway.url)
            bad = await socket.command("monitor", hours=2)
            assert (bad["type"], bad["status"]) == ("error", 400)
            assert (await socket.command("monitor", hours=1))["hours"] == 1
            pushed = await socket.until(lambda e: e["type"] == "monitor")
            assert pushed[-1]["view"]["windows"]["1m"]["all"]["requests"] >= 0
            await socket.until(lambda e: e["type"] == "monitor")  # and the next tick's
            assert (await socket.command("monitor", hours=0))["hours"] == 0
            await asyncio.sleep(2.5)  # a tick: nothing more comes
            assert (await socket.command("ping"))["type"] == "pong"
            [stopped] = [i for i, e in enumerate(socket.seen) if e.get("command") == "monitor" and e["hours"] == 0]
            assert all(e["type"] != "monitor" for e in socket.seen[stopped:])

    asyncio.run(watch())


def test_replies_running_and_waiting_by_model(timed_simulator: Server) -> None:
    gateway = start_gateway(timed_simulator.url, "--max-running", "1")  # one slot: the rest wait in the queue
    # Each first token 2.5 s late: the state holds still long enough to be read twice.
    script(timed_simulator, {"match": "hold on", "fault": {"kind": "slow_first", "seconds": 2.5}, "times": 3})
    try:
        body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hold on"}]}
        with ThreadPoolExecutor(3) as pool:
            sent = [pool.submit(httpx.post, f"{gateway.url}/api/chat", json=body, timeout=60) for _ in range(2)]
            with chat_api(gateway.url) as api:
                conversation = api.create(think=False)["id"]
                api.send(conversation, "hold on, a chat reply")
                seen: dict[str, Any] = {}

                def queued() -> bool:
                    seen.update(view(gateway)["now"])
                    return sum(seen["waiting_by_model"].values()) == 2

                wait_until(queued, "two replies waiting")
                assert seen["running_by_model"] == {"qwen3:32b": 1}
                assert seen["waiting_by_model"] == {"qwen3:32b": 2}
                top = [sys.executable, "-m", "clawdbot", "top", gateway.url, "--once"]
                shown = subprocess.run(top, capture_output=True, text=True, timeout=60).stdout
                assert "by model: qwen3:32b 1 running, 2 waiting" in shown
                assert all(answer.result().status_code == 200 for answer in sent)
        wait_until(lambda: not view(gateway)["now"]["running_by_model"], "every reply done", timeout=20)
        assert view(gateway)["now"]["waiting_by_model"] == {}
    finally:
        gateway.stop()
