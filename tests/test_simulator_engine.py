"""The simulator's timing model: load, slots and FIFO wait, batching, prefill, prompt cache, cancellation, keep-alive.

Each test drives a real `clawdbot simulate` process over HTTP and reads either the metrics Ollama reports in the
final chunk or the arrival times of chunks. The 4090 profile runs sped up, so every number below is the
calibrated one divided by the speed.
"""

from __future__ import annotations

import calendar
import http.client
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from conftest import MODEL, Server, Timed, chat_body, script, sim_state, start_simulator, timed_stream

STEP_1 = 1 / 36 + 0.001  # seconds of one single-stream decode step on the 4090 profile
LONG = "explain in detail how the engine streams"  # the simulator answers this with 300+ tokens


@pytest.fixture(scope="module")
def serial() -> Iterator[Server]:
    """One slot, as OLLAMA_NUM_PARALLEL's default; 10× speed: a cold load takes 0.9 s, a token ~2.9 ms."""
    server = start_simulator("--profile", "4090", "--speed", "10", "--num-parallel", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def batched() -> Iterator[Server]:
    """Eight slots at 5× speed (a token ~5.8 ms alone), loaded before the tests start."""
    server = start_simulator("--profile", "4090", "--speed", "5", "--num-parallel", "8")
    load(server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small() -> Iterator[Server]:
    """20× speed (load 0.45 s), keep-alive 1 s, and room for only one request waiting on a load."""
    server = start_simulator("--profile", "4090", "--speed", "20", "--keep-alive", "1s", "--max-queue", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def flat() -> Iterator[Server]:
    """The idealised backend: 20 tokens/s for every stream, unlimited slots, no batching."""
    server = start_simulator("--profile", "instant", "--tokens-per-second", "20", "--num-parallel", "0")
    yield server
    server.stop()


def load(sim: Server, **extra: Any) -> dict[str, Any]:
    response = httpx.post(sim.url + "/api/chat", json={"model": MODEL, "messages": [], **extra}, timeout=30)
    return response.json()  # type: ignore[no-any-return]


def runner(sim: Server) -> dict[str, Any]:
    return sim_state(sim)["runners"][MODEL]  # type: ignore[index,no-any-return]


def ask(sim: Server, body: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming chat; the final object carries Ollama's metrics."""
    response = httpx.post(sim.url + "/api/chat", json={**body, "stream": False}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def rate(final: dict[str, Any]) -> float:
    """Tokens per second as Ollama's docs compute it."""
    return float(final["eval_count"]) / final["eval_duration"] * 1e9


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.005)
    return time.monotonic() - started


def created(chunk: dict[str, Any]) -> float:
    """The server's clock when it wrote the chunk, from `created_at`."""
    stamp = chunk["created_at"]
    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + stamp[19:-1])


def in_background(fn: Callable[[], Any]) -> tuple[ThreadPoolExecutor, Any]:
    pool = ThreadPoolExecutor(1)
    return pool, pool.submit(fn)


class Stream:
    """A raw HTTP/1.1 request on its own socket, so a test can hang up at any moment."""

    def __init__(self, sim: Server, body: dict[str, Any]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
        self.conn.request("POST", "/api/chat", json.dumps(body), {"Content-Type": "application/json"})
        self.response: http.client.HTTPResponse | None = None

    def readline(self) -> bytes:
        if self.response is None:
            self.response = self.conn.getresponse()
        return self.response.readline()

    def hang_up(self) -> None:
        if self.response is not None:
            self.response.close()
        self.conn.close()


# ---- load ---------------------------------------------------------------------------------------------------------
def test_cold_load_shows_in_load_duration_and_first_token(serial: Server) -> None:
    assert load(serial, keep_alive=0)["done_reason"] == "unload"
    assert runner(serial)["loaded"] is False
    cold = timed_stream(serial, chat_body("first", think=False, options={"num_predict": 4}))
    assert cold.headers_at >= 0.85  # 9 s / 10
    final = cold.chunks[-1]
    assert 0.85e9 <= final["load_duration"] < 1.5e9
    assert final["total_duration"] > final["load_duration"] + final["eval_duration"] * 0.9
    assert runner(serial)["loaded"] is True
    assert runner(serial)["num_ctx"] == 4096  # the 4090 profile's default context
    warm = timed_stream(serial, chat_body("second", think=False, options={"num_predict": 4}))
    assert warm.headers_at < 0.3
    assert warm.chunks[-1]["load_duration"] < 0.05e9


def test_queue_full_while_loading_answers_503(small: Server) -> None:
    load(small, keep_alive=0)
    body = chat_body("load me", think=False, options={"num_predict": 2})
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for _ in range(3):  # one loads, one waits for the load, the third finds the queue full
            futures.append(pool.submit(httpx.post, small.url + "/api/chat", json=body, timeout=30))
            time.sleep(0.05)
        answers = [f.result() for f in futures]
    assert sorted(a.status_code for a in answers) == [200, 200, 503]
    busy = next(a for a in answers if a.status_code == 503)
    assert busy.content == b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'


def test_num_ctx_change_reloads_the_model(serial: Server) -> None:
    load(serial)
    assert runner(serial)["num_ctx"] == 4096
    bigger = ask(serial, chat_body("more context", think=False, options={"num_ctx": 8192, "num_predict": 2}))
    assert bigger["load_duration"] >= 0.85e9
    assert runner(serial)["num_ctx"] == 8192
    assert httpx.get(serial.url + "/api/ps").json()["models"][0]["context_length"] == 8192
    options = {"num_ctx": 8192, "num_predict": 2, "temperature": 0.1, "seed": 7}  # sampling options: no reload
    same = ask(serial, chat_body("same context", think=False, options=options))
    assert same["load_duration"] < 0.05e9


# ---- slots --------------------------------------------------------------------------------------------------------
def test_one_slot_serves_requests_first_in_first_out(serial: Server) -> None:
    load(serial)
    runs: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    def run(name: str, tokens: int) -> None:
        started = time.time()  # the server's clock, which `created_at` reads too
        body = chat_body(f"{name}: {LONG}", think=False, options={"num_predict": tokens})
        timed = timed_stream(serial, body)
        runs[name] = (started, timed.chunks)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(run, "A", 200)]  # ~0.6 s of decoding
        wait_for(lambda: runner(serial)["active"] == 1, timeout=0.3)
        # Each next request is sent once the one before it is queued: threads alone do not order arrivals.
        futures.append(pool.submit(run, "B", 10))
        wait_for(lambda: runner(serial)["waiting"] == 1, timeout=0.3)
        futures.append(pool.submit(run, "C", 10))
        wait_for(lambda: runner(serial)["waiting"] == 2, timeout=0.3)
        assert runner(serial)["active"] == 1
        for future in futures:
            future.result()
    a, b, c = (runs[name][1] for name in "ABC")
    assert created(b[0]) > created(a[-2])  # B's first token came after A's last one
    assert created(c[0]) > created(b[-2])  # and C's after B's: first in, first out
    waited = created(a[-1]) - runs["B"][0]
    assert waited > 0.2
    # The wait for the slot counts in total_duration, beyond B's own load, prompt and decode time. (Measured on
    # the server's clock: B's request reaches it later than the client's start, by more on a busy machine.)
    final = b[-1]
    own = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert final["total_duration"] - own >= 0.1e9
    assert b[-1]["load_duration"] < 0.05e9  # but not in load_duration (it happens inside the runner)


def test_hanging_up_frees_the_slot_at_once(serial: Server) -> None:
    load(serial)
    before = runner(serial)["cancelled_total"]
    running = Stream(serial, chat_body(LONG, think=False, options={"num_predict": 3000}))
    assert running.readline()  # streaming has begun
    queued = Stream(serial, chat_body("waiting one", think=False))
    wait_for(lambda: runner(serial)["waiting"] == 1, timeout=1)
    assert runner(serial)["active"] == 1
    queued.hang_up()
    assert wait_for(lambda: runner(serial)["waiting"] == 0, timeout=1) < 0.25
    assert runner(serial)["cancelled_total"] == before + 1
    assert runner(serial)["active"] == 1
    for _ in range(5):
        running.readline()
    running.hang_up()
    assert wait_for(lambda: runner(serial)["active"] == 0, timeout=1) < 0.25
    assert runner(serial)["cancelled_total"] == before + 2
    after = timed_stream(serial, chat_body("next", think=False, options={"num_predict": 2}))
    assert after.headers_at < 0.2  # the slot is free again


# ---- batching -----------------------------------------------------------------------------------------------------
def test_per_stream_rate_drops_as_the_batch_grows(batched: Server) -> None:
    opts = {"num_predict": 80}
    alone = rate(ask(batched, chat_body(f"rate: {LONG}", think=False, options=opts)))
    assert alone == pytest.approx(5 / STEP_1, rel=0.25)  # ~34 tok/s × 5
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        bodies = [chat_body(f"rate {i}: {LONG}", think=False, options=opts) for i in range(8)]
        finals = list(pool.map(lambda body: ask(batched, body), bodies))
    wall = time.monotonic() - started
    per_stream = statistics.median(rate(f) for f in finals)
    assert per_stream < 0.85 * alone  # a batch of 8 steps ~1.4× slower (calibration §2.3)
    assert per_stream > 0.45 * alone
    assert 8 * per_stream > 4 * alone  # yet the machine as a whole does far more
    assert wall < 2 * 80 / alone + 0.5  # they ran together, not one after another


def test_prefill_of_a_long_prompt_delays_other_streams(batched: Server) -> None:
    pool, pending = in_background(
        lambda: timed_stream(batched, chat_body(f"steady: {LONG}", think=False, options={"num_predict": 200}))
    )
    with pool:
        time.sleep(0.25)
        long_prompt = " word" * 4000  # ~8 prefill steps of 512 tokens, each ~8.5× a decode step
        long = ask(batched, chat_body(long_prompt, think=False, options={"num_predict": 1}))
        steady: Timed = pending.result()
    assert long["prompt_eval_count"] > 4000
    assert long["prompt_eval_duration"] > 0.25e9
    stamps = [created(c) for c in steady.chunks]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    decode_step = STEP_1 / 5
    assert statistics.median(gaps) < 3 * decode_step
    spikes = [g for g in gaps if g > 5 * decode_step]
    assert len(spikes) >= 5  # the steady stream waited on the steps that carried the prompt
    assert max(gaps) < 0.15


def test_prompt_cache_makes_the_next_turn_cheap(batched: Server) -> None:
    history = "cache-test " + "remember this sentence. " * 300
    script(batched, {"match": "cache-test", "reply": "Short answer.", "thinking": ""})
    first = ask(batched, chat_body(history, think=False))
    assert first["message"]["content"] == "Short answer."
    turn = [
        {"role": "user", "content": history},
        {"role": "assistant", "content": "Short answer."},
        {"role": "user", "content": "And then?"},
    ]
    second = ask(batched, {"model": MODEL, "messages": turn, "think": False})
    assert second["prompt_eval_count"] > first["prompt_eval_count"] + 6  # the whole conversation is counted
    assert second["prompt_eval_duration"] < first["prompt_eval_duration"] / 5  # but only the new part is evaluated
    edited = [{"role": "user", "content": "edited " + history}, *turn[1:]]
    uncached = ask(batched, {"model": MODEL, "messages": edited, "think": False})
    assert uncached["prompt_eval_duration"] > first["prompt_eval_duration"] / 2


def test_a_continued_reply_is_prompt_and_is_cached_with_its_partial_text(batched: Server) -> None:
    """A trailing assistant message is prompt: it is evaluated like any, and the slot's cache then holds it and the
    continuation as one reply, so the next turn, which has the joined reply in its history, evaluates little."""
    said = "cont-cache " + "the proxy keeps the socket open. " * 300
    script(batched, {"match": "go on", "reply": said + "Then it closes.", "thinking": ""})
    question = {"role": "user", "content": "go on"}
    partial = [question, {"role": "assistant", "content": said}]
    fresh = ask(batched, {"model": MODEL, "messages": partial, "think": False})
    assert fresh["message"]["content"] == "Then it closes."
    assert fresh["prompt_eval_count"] > 1500  # the partial text counts as prompt
    joined = {"role": "assistant", "content": said + "Then it closes."}
    history = [question, joined, {"role": "user", "content": "Why?"}]
    follow_up = ask(batched, {"model": MODEL, "messages": history, "think": False})
    assert follow_up["prompt_eval_count"] > fresh["prompt_eval_count"]
    assert follow_up["prompt_eval_duration"] < fresh["prompt_eval_duration"] / 5


# ---- keep-alive ---------------------------------------------------------------------------------------------------
def test_keep_alive_unloads_an_idle_model(small: Server) -> None:
    ask(small, chat_body("keep me", think=False, options={"num_predict": 2}))
    finished = time.monotonic()
    assert [m["name"] for m in httpx.get(small.url + "/api/ps").json()["models"]] == [MODEL]
    wait_for(lambda: httpx.get(small.url + "/api/ps").json() == {"models": []}, timeout=3)
    idle = time.monotonic() - finished
    assert 0.8 < idle < 2.0  # --keep-alive 1s
    assert runner(small)["loaded"] is False
    again = ask(small, chat_body("load again", think=False, options={"num_predict": 2}))
    assert again["load_duration"] >= 0.4e9  # 9 s / 20
    ask(small, chat_body("then go", think=False, keep_alive=0, options={"num_predict": 2}))
    assert wait_for(lambda: runner(small)["loaded"] is False, timeout=1) < 0.2


# ---- the fixed-rate engine ----------------------------------------------------------------------------------------
def test_fixed_rate_serves_many_streams_each_at_full_speed(flat: Server) -> None:
    body = chat_body("flat", think=False, options={"num_predict": 16})
    started = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        runs = list(pool.map(lambda _: timed_stream(flat, body), range(24)))
    wall = time.monotonic() - started
    assert wall < 2.0  # 16 tokens at 20/s = 0.8 s each, all at once
    assert runner(flat)["slots"] == 0
    for run in runs:
        chunks = run.chunks
        assert rate(chunks[-1]) == pytest.approx(20, rel=0.15)
        stamps = [created(c) for c in chunks[:-1]]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert statistics.median(gaps) == pytest.approx(0.05, abs=0.01)


# ---- scripts ------------------------------------------------------------------------------------------------------
def test_scripted_replies_by_match(simulator: Server) -> None:
    script(
        simulator,
        {"match": "weather", "reply": "Sunny.", "thinking": ""},
        {"reply": "Anything.", "times": 2},
        {"match": "forever", "reply": "Again.", "times": -1},
    )

    def reply(prompt: str) -> str:
        return str(ask(simulator, chat_body(prompt, think=False))["message"]["content"])

    assert reply("what is the weather?") == "Sunny."
    assert reply("hello") == "Anything."
    assert reply("weather again") == "Anything."  # the weather entry was used up; the catch-all takes it
    assert reply("forever") == "Again."  # the catch-all is spent too
    assert reply("forever and ever") == "Again."
    assert reply("hello") not in ("Sunny.", "Anything.", "Again.")
    assert [entry["match"] for entry in sim_state(simulator)["script"]] == ["forever"]  # type: ignore[union-attr]
    httpx.delete(simulator.url + "/_sim/script")
    assert reply("forever") != "Again."


def test_thinking_tokens_count_in_eval_count(simulator: Server) -> None:
    script(simulator, {"match": "count", "reply": "One two.", "thinking": "Hmm, fine."})
    final = ask(simulator, chat_body("count"))
    # <think>, "Hmm", ",", " fine", ".", </think>, "\n\n", "One", " two", "."
    assert final["eval_count"] == 10
