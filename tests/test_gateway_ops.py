"""Running the gateway: health and readiness, --demo, Prometheus metrics, the access log, request ids, bad input."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    Server,
    access_log,
    free_port,
    script,
    sim_state,
    start_gateway,
    start_simulator,
    transcript,
    wait_for,
)

MODEL = "qwen3:32b"


def rid() -> str:
    return uuid.uuid4().hex


def ask(prompt: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


# ---- health and readiness ---------------------------------------------------------------------------------------
def test_healthz_answers_whatever_the_backend_does(gateway: Server, down_gateway: Server) -> None:
    for server in (gateway, down_gateway):
        response = httpx.get(server.url + "/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


def test_readyz_reports_the_backends_version_and_models(simulator: Server, gateway: Server) -> None:
    response = httpx.get(gateway.url + "/readyz")
    assert response.status_code == 200
    backend = response.json()["backend"]
    assert backend["url"] == simulator.url
    assert backend["version"] == httpx.get(simulator.url + "/api/version").json()["version"]
    assert backend["models"] == [MODEL]
    assert backend["simulated"] is False


def test_gateway_starts_without_its_backend_and_becomes_ready_when_it_appears() -> None:
    port = free_port()
    gateway = start_gateway(f"http://127.0.0.1:{port}")
    simulator = None
    try:
        assert f"backend http://127.0.0.1:{port}" in gateway.banner
        assert "NOT answering" in gateway.banner
        assert "refused" in gateway.banner
        response = httpx.get(gateway.url + "/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "not ready"
        assert "refused" in response.json()["backend"]["error"]
        assert gateway.proc.poll() is None, "the gateway must keep running while its backend is away"
        simulator = start_simulator("--port", str(port), "--profile", "instant")
        started = time.monotonic()
        ready = wait_for(lambda: httpx.get(gateway.url + "/readyz").status_code == 200, timeout=5, interval=0.05)
        assert ready, "/readyz did not turn 200 within 5 s of the backend appearing"
        assert time.monotonic() - started < 5
        assert httpx.get(gateway.url + "/readyz").json()["backend"]["models"] == [MODEL]
        chat = httpx.post(gateway.url + "/api/chat", json=ask(stream=False), timeout=10)
        assert chat.json()["done"] is True
    finally:
        gateway.stop()
        if simulator is not None:
            simulator.stop()


def test_demo_mode_runs_a_simulated_model_and_says_so() -> None:
    demo = start_gateway("http://127.0.0.1:9", "--demo", "--demo-profile", "instant")
    try:
        assert "simulated" in demo.banner
        assert "answering" in demo.banner
        # The model is loaded at startup, before anyone asks, so the first chat does not wait for a load.
        loaded = wait_for(lambda: httpx.get(demo.url + "/api/ps").json()["models"], timeout=5)
        assert [m["name"] for m in loaded] == ["qwen3:32b"]  # type: ignore[union-attr]
        ready = httpx.get(demo.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["backend"]["simulated"] is True
        assert "simulated" in ready.json()["note"]
        lines = httpx.post(demo.url + "/api/chat", json=ask(), timeout=10).content.splitlines()
        assert len(lines) > 3
        assert json.loads(lines[-1])["done"] is True
        reply = httpx.post(demo.url + "/v1/chat/completions", json=ask(), timeout=10).json()
        assert reply["choices"][0]["message"]["content"]
    finally:
        demo.stop()


# ---- metrics ----------------------------------------------------------------------------------------------------
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: Server) -> Samples:
    response = httpx.get(gateway.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grows(gateway: Server, before: Samples, name: str, by: float, **labels: str) -> bool:
    """True once the sample has grown by `by` (the gateway counts just after the last byte is sent)."""
    target = value(before, name, **labels) + by
    return bool(wait_for(lambda: value(scrape(gateway), name, **labels) >= target)) and (
        value(scrape(gateway), name, **labels) == target
    )


def test_requests_are_counted_by_route_and_outcome(gateway: Server) -> None:
    before = scrape(gateway)
    httpx.post(gateway.url + "/api/chat", json=ask(), timeout=10)
    httpx.post(gateway.url + "/api/chat", json={**ask(), "model": "missing"})
    httpx.get(gateway.url + "/api/tags")
    httpx.get(gateway.url + f"/api/unknown-{rid()}")
    httpx.get(gateway.url + f"/v1/models/{rid()}")
    requests = "clawdbot_requests_total"
    assert grows(gateway, before, requests, 1, route="/api/chat", outcome="ok")
    assert grows(gateway, before, requests, 1, route="/api/chat", outcome="http_4xx")
    assert grows(gateway, before, requests, 1, route="/api/tags", outcome="ok")
    assert grows(gateway, before, requests, 1, route="/api/other", outcome="http_4xx")  # one label, not one per path
    assert grows(gateway, before, requests, 1, route="/v1/models/{model}", outcome="http_4xx")


def test_stream_timings_are_observed(gateway: Server) -> None:
    before = scrape(gateway)
    long = ask("Explain in detail how a gateway relays a stream")  # hundreds of chunks, in several reads
    with httpx.stream("POST", gateway.url + "/api/chat", json=long, timeout=10) as response:
        chunks = sum(1 for line in response.iter_lines() if line)
    assert chunks > 10
    route = {"route": "/api/chat"}
    assert grows(gateway, before, "clawdbot_time_to_first_token_seconds_count", 1, **route)
    assert grows(gateway, before, "clawdbot_request_duration_seconds_count", 1, **route)
    assert grows(gateway, before, "clawdbot_gateway_overhead_seconds_count", 1)
    after = scrape(gateway)
    gaps = value(after, "clawdbot_chunk_gap_seconds_count", **route) - value(
        before, "clawdbot_chunk_gap_seconds_count", **route
    )
    assert 1 <= gaps < chunks  # one gap between each pair of body reads the gateway relayed
    ttft = value(after, "clawdbot_time_to_first_token_seconds_sum", **route) - value(
        before, "clawdbot_time_to_first_token_seconds_sum", **route
    )
    duration = value(after, "clawdbot_request_duration_seconds_sum", **route) - value(
        before, "clawdbot_request_duration_seconds_sum", **route
    )
    assert 0 < ttft <= duration < 5
    overhead_bucket = value(after, "clawdbot_gateway_overhead_seconds_bucket", le="0.25") - value(
        before, "clawdbot_gateway_overhead_seconds_bucket", le="0.25"
    )
    assert overhead_bucket == 1


def test_active_streams_gauge_counts_open_streams(simulator: Server, gateway: Server) -> None:
    assert wait_for(lambda: value(scrape(gateway), "clawdbot_active_streams") == 0)
    prompt = f"pause {rid()}"
    script(simulator, {"match": prompt, "fault": {"kind": "stall", "after": 2, "seconds": 1}})
    with httpx.stream("POST", gateway.url + "/api/chat", json=ask(prompt), timeout=10) as response:
        lines = response.iter_lines()
        next(lines)
        assert value(scrape(gateway), "clawdbot_active_streams") == 1
        for _ in lines:
            pass
    assert wait_for(lambda: value(scrape(gateway), "clawdbot_active_streams") == 0)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", ask("count me")),
        ("/api/chat", ask("count me", stream=False)),
        ("/api/generate", {"model": MODEL, "prompt": "count me"}),
        ("/v1/chat/completions", ask("count me")),
        ("/v1/chat/completions", ask("count me", stream=True, stream_options={"include_usage": True})),
    ],
    ids=["chat", "chat-whole", "generate", "v1-whole", "v1-stream-usage"],
)
def test_tokens_are_counted_from_the_backends_own_counts(gateway: Server, path: str, body: dict[str, object]) -> None:
    before = scrape(gateway)
    response = httpx.post(gateway.url + path, json=body, timeout=10)
    if path.startswith("/v1/"):
        last = response.text.split("data: [DONE]")[0].strip().rsplit("data: ", 1)[-1]
        usage = json.loads(last)["usage"]
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    else:
        final = json.loads(response.content.splitlines()[-1])
        prompt, completion = final["prompt_eval_count"], final["eval_count"]
    assert prompt > 0
    assert completion > 0
    assert grows(gateway, before, "clawdbot_completion_tokens_total", completion, model=MODEL)
    assert grows(gateway, before, "clawdbot_prompt_tokens_total", prompt, model=MODEL)
    assert value(scrape(gateway), "clawdbot_requests_total", route=path, outcome="ok") > value(
        before, "clawdbot_requests_total", route=path, outcome="ok"
    )


@pytest.mark.parametrize(
    ("kind", "label"),
    [("reset", "reset"), ("drop", "reset_mid_stream"), ("error_line", "error_line")],
)
def test_upstream_errors_are_counted_by_kind(simulator: Server, gateway: Server, kind: str, label: str) -> None:
    before = scrape(gateway)
    prompt = f"{kind} {rid()}"
    script(simulator, {"match": prompt, "fault": {"kind": kind, "after": 2}})
    httpx.post(gateway.url + "/api/chat", json=ask(prompt), timeout=10)
    assert grows(gateway, before, "clawdbot_upstream_errors_total", 1, kind=label)
    assert grows(gateway, before, "clawdbot_requests_total", 1, route="/api/chat", outcome="backend_error")


# ---- access log and request ids ---------------------------------------------------------------------------------
def logged(server: Server, request_id: str) -> list[dict[str, object]]:
    wait_for(lambda: any(e["request_id"] == request_id for e in access_log(server)))
    return [e for e in access_log(server) if e["request_id"] == request_id]


def test_one_access_log_line_per_request(gateway: Server) -> None:
    request_id = rid()
    response = httpx.post(gateway.url + "/api/chat", json=ask(), headers={"X-Request-ID": request_id}, timeout=10)
    final = json.loads(response.content.splitlines()[-1])
    time.sleep(0.1)  # a second line, if one were written, would come right after the first
    (entry,) = logged(gateway, request_id)
    assert entry["route"] == "/api/chat"
    assert entry["method"] == "POST"
    assert entry["status"] == 200
    assert entry["outcome"] == "ok"
    assert entry["model"] == MODEL
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (final["prompt_eval_count"], final["eval_count"])
    assert isinstance(entry["ttft_ms"], float)
    assert isinstance(entry["duration_ms"], float)
    assert 0 < entry["ttft_ms"] <= entry["duration_ms"]


@pytest.mark.parametrize(
    ("fault", "status", "outcome"),
    [("reset", 502, "backend_error"), ("drop", 200, "backend_error"), ("http_500", 500, "http_5xx")],
)
def test_access_log_records_failures(simulator: Server, gateway: Server, fault: str, status: int, outcome: str) -> None:
    request_id, prompt = rid(), f"{fault} {rid()}"
    script(simulator, {"match": prompt, "fault": {"kind": fault, "after": 2}})
    response = httpx.post(gateway.url + "/api/chat", json=ask(prompt), headers={"X-Request-ID": request_id})
    assert response.status_code == status
    (entry,) = logged(gateway, request_id)
    assert (entry["status"], entry["outcome"]) == (status, outcome)


def test_message_text_is_never_logged(simulator: Server, gateway: Server) -> None:
    secret, answer = f"secret-{rid()}", f"answer-{rid()}"
    script(simulator, {"match": secret, "reply": f"the {answer} is here", "thinking": f"think {answer}", "times": 4})
    bodies = [
        ("/api/chat", ask(f"my {secret}")),
        ("/api/chat", ask(f"my {secret}", stream=False)),
        ("/v1/chat/completions", ask(f"my {secret}", stream=True)),
        ("/api/generate", {"model": MODEL, "prompt": f"my {secret}"}),
        ("/api/chat", {**ask(f"my {secret}"), "model": f"model-{secret}"}),
        ("/api/chat", b'{"model": "' + secret.encode() + b'", broken'),
    ]
    ids = []
    for path, body in bodies:
        ids.append(rid())
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.post(gateway.url + path, headers={"X-Request-ID": ids[-1]}, timeout=10, **kwargs)
        assert response.status_code in (200, 400, 404)
    assert answer in json.loads(transcript(simulator, ids[1]))["message"]["content"]  # the reply did pass through
    for request_id in ids:
        assert logged(gateway, request_id)
    logs = gateway.logs()
    assert secret not in logs
    assert answer not in logs


def test_request_id_is_echoed_and_forwarded(simulator: Server, gateway: Server) -> None:
    request_id = f"trace-{rid()}"
    with httpx.stream("POST", gateway.url + "/api/chat", json=ask(), headers={"X-Request-ID": request_id}) as response:
        assert response.headers["x-request-id"] == request_id  # on the stream's headers, before any body
        body = response.read()
    assert body == transcript(simulator, request_id)


def test_request_id_is_generated_when_missing_or_unusable(simulator: Server, gateway: Server) -> None:
    seen = []
    for given in (None, "has spaces; and <tags>", "x" * 300):
        headers = {"X-Request-ID": given} if given else {}
        with httpx.stream("POST", gateway.url + "/api/chat", json=ask(), headers=headers) as response:
            seen.append(response.headers["x-request-id"])
            body = response.read()
        assert re.fullmatch(r"[0-9a-f]{32}", seen[-1])
        assert transcript(simulator, seen[-1]) == body  # the backend saw the same id
    assert len(set(seen)) == len(seen)
    for path in ("/healthz", "/nope", "/api/tags"):
        first, second = (httpx.get(gateway.url + path).headers["x-request-id"] for _ in range(2))
        assert first != second


# ---- bad input --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_gateway(simulator: Server) -> Iterator[Server]:
    server = start_gateway(simulator.url, "--max-request-bytes", "2048")
    yield server
    server.stop()


def test_body_over_the_limit_is_a_413_and_never_reaches_the_backend(simulator: Server, small_gateway: Server) -> None:
    big = ask("x" * 4000)
    before = sim_state(simulator)["requests_total"]
    response = httpx.post(small_gateway.url + "/api/chat", json=big)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "payload_too_large"
    assert "2048" in response.json()["error"]
    request_id = response.headers["x-request-id"]
    v1 = httpx.post(small_gateway.url + "/v1/chat/completions", json=big).json()["error"]
    assert (v1["type"], v1["code"]) == ("invalid_request_error", "payload_too_large")
    chunked = httpx.post(small_gateway.url + "/api/chat", content=iter([b'{"model":"', b"y" * 3000, b'"}']))
    assert chunked.status_code == 413
    assert sim_state(simulator)["requests_total"] == before
    assert httpx.post(small_gateway.url + "/api/chat", json=ask(stream=False)).status_code == 200
    (entry,) = logged(small_gateway, request_id)
    assert (entry["status"], entry["outcome"]) == (413, "rejected")


def test_the_root_sends_a_browser_to_the_chat_page(gateway: Server) -> None:
    response = httpx.get(gateway.url + "/")
    assert (response.status_code, response.headers["location"]) == (302, "/chat")
    page = httpx.get(gateway.url + "/", follow_redirects=True)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("GET", "/chat/nope", 404), ("POST", "/healthz", 405)]
)
def test_paths_the_gateway_does_not_serve_get_json_errors(gateway: Server, method: str, path: str, status: int) -> None:
    response = httpx.request(method, gateway.url + path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]
    assert body["code"] == {404: "not_found", 405: "method_not_allowed"}[status]


def test_garbage_json_is_the_backends_to_reject(simulator: Server, gateway: Server) -> None:
    garbage = b'{"model": "qwen3:32b", "messages": [oops'
    direct = httpx.post(simulator.url + "/api/chat", content=garbage)
    relayed = httpx.post(gateway.url + "/api/chat", content=garbage)
    assert relayed.status_code == 400
    assert (relayed.headers["content-type"], relayed.content) == (direct.headers["content-type"], direct.content)
    assert relayed.json()["error"].startswith("invalid character 'o'")


@pytest.mark.parametrize(
    ("database_url", "shown"),
    [
        ("postgresql://clawdbot:s3cret@db.internal/chat", "postgresql://clawdbot:***@db.internal/chat"),
        ("sqlite:////var/lib/clawdbot/chat.db", "/var/lib/clawdbot/chat.db"),
    ],
)
def test_the_startup_line_names_the_database_but_never_its_password(database_url: str, shown: str) -> None:
    from types import SimpleNamespace
    from typing import cast

    from clawdbot.backends.base import Backend, BackendStatus
    from clawdbot.backends.fleet import Fleet
    from clawdbot.settings import Settings
    from clawdbot.web.serve import startup_line

    backend = SimpleNamespace(
        url="http://127.0.0.1:11434", simulated=False, status=BackendStatus(), how_to_fix=lambda: "start Ollama"
    )
    line = startup_line(Settings(database_url=database_url), 18789, Fleet.of(cast(Backend, backend)))
    assert f"conversations in {shown} " in line
    assert "s3cret" not in line
    assert "chat page http://127.0.0.1:18789/chat" in line
