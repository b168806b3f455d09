"""The simulator's bytes on the wire match `ollama serve` (docs/ollama-protocol.md), seen over real HTTP."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import ollama
import openai
import pytest

from conftest import MODEL, Server, chat_body, script, start_simulator, timed_stream

NATIVE_JSON = "application/json; charset=utf-8"
RFC3339NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z")
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?(Z|[+-]\d\d:\d\d)")
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]
CHAT_FINAL = ["model", "created_at", "message", "done", "done_reason", *METRICS]
GENERATE_FINAL = ["model", "created_at", "response", "thinking", "done", "done_reason", "context", *METRICS]
SHOW_ORDER = ["license", "modelfile", "parameters", "template", "system", "details", "model_info"]
SHOW_ORDER += ["capabilities", "modified_at"]  # the fields the simulator sends (no renderer, tensors…), in Go order
CHUNK_KEYS = ["id", "object", "created", "model", "system_fingerprint", "choices"]
ESCAPE_REPLY = "<b>bold</b> & “quoted” 中文\u2028next 😀 done"


def in_order(keys: list[str], order: list[str]) -> bool:
    """`keys` are some of `order`, in that order (omitempty drops some, nothing moves)."""
    return keys == [k for k in order if k in keys]


def post(sim: Server, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(sim.url + path, json=body, timeout=30, **kwargs)


def lines_of(response: httpx.Response) -> list[bytes]:
    assert response.content.endswith(b"\n")
    return response.content[:-1].split(b"\n")


@pytest.fixture(scope="module")
def legacy_sim() -> Iterator[Server]:
    """An older-looking install: /v1 in the pre-0.32.6 format, and a second model that cannot think."""
    legacy = ("--openai-format", "legacy", "--ollama-version", "0.11.4")
    server = start_simulator("--profile", "instant", *legacy, "--models", MODEL, "--models", "llama3.2:3b")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[Server]:
    """The 4090 profile at 5× speed: a cold load takes ~1.8 s."""
    server = start_simulator("--profile", "4090", "--speed", "5")
    yield server
    server.stop()


# ---- plain endpoints ----------------------------------------------------------------------------------------------
def test_root_get_and_head(simulator: Server) -> None:
    got = httpx.get(simulator.url + "/")
    assert got.status_code == 200
    assert got.content == b"Ollama is running"
    assert got.headers["content-type"] == "text/plain; charset=utf-8"
    assert got.headers["content-length"] == "17"
    assert "server" not in got.headers
    head = httpx.head(simulator.url + "/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == "text/plain; charset=utf-8"
    assert "server" not in head.headers


def test_version(simulator: Server, legacy_sim: Server) -> None:
    got = httpx.get(simulator.url + "/api/version")
    assert got.content == b'{"version":"0.32.15"}'
    assert got.headers["content-type"] == NATIVE_JSON
    assert httpx.head(simulator.url + "/api/version").status_code == 200
    assert httpx.get(legacy_sim.url + "/api/version").json() == {"version": "0.11.4"}


def test_tags_lists_the_pulled_models_in_go_order(simulator: Server) -> None:
    got = httpx.get(simulator.url + "/api/tags")
    assert got.headers["content-type"] == NATIVE_JSON
    assert not got.content.endswith(b"\n")
    entry = got.json()["models"][0]
    assert list(entry) == ["name", "model", "modified_at", "size", "digest", "details", "capabilities"]
    assert entry["name"] == entry["model"] == MODEL
    assert list(entry["details"]) == [
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    ]
    assert entry["details"]["family"] == "qwen3"
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert LOCAL_TIME.fullmatch(entry["modified_at"])
    assert entry["capabilities"] == ["completion", "tools", "thinking"]
    assert httpx.head(simulator.url + "/api/tags").status_code == 200


def test_show_and_its_errors(simulator: Server) -> None:
    got = post(simulator, "/api/show", {"model": MODEL})
    assert got.status_code == 200
    assert got.headers["content-type"] == NATIVE_JSON
    body = got.json()
    assert in_order(list(body), SHOW_ORDER)
    assert {"details", "model_info", "modified_at"} <= set(body)
    assert body["model_info"]["general.architecture"] == "qwen3"
    assert body["model_info"]["qwen3.context_length"] == 40960
    assert "temperature                    0.6" in body["parameters"].splitlines()
    assert "thinking" in body["capabilities"]
    assert post(simulator, "/api/show", {"name": "qwen3:32b"}).status_code == 200  # the old field still works
    missing = post(simulator, "/api/show", {})
    assert (missing.status_code, missing.content) == (400, b'{"error":"model is required"}')
    unknown = post(simulator, "/api/show", {"model": "nope:1b"})
    assert (unknown.status_code, unknown.content) == (404, b'{"error":"model \'nope:1b\' not found"}')


def test_ps_before_and_after_a_load(simulator: Server) -> None:
    unload = post(simulator, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    empty = httpx.get(simulator.url + "/api/ps")
    assert (empty.content, empty.headers["content-type"]) == (b'{"models":[]}', NATIVE_JSON)
    assert post(simulator, "/api/chat", {"model": MODEL, "messages": []}).json()["done_reason"] == "load"
    models = httpx.get(simulator.url + "/api/ps").json()["models"]
    assert [m["name"] for m in models] == [MODEL]
    entry = models[0]
    order = ["name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"]
    assert list(entry) == order
    assert entry["context_length"] == 40960
    assert LOCAL_TIME.fullmatch(entry["expires_at"])
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    assert 270 < (expires - datetime.now(UTC)).total_seconds() <= 301  # the default keep_alive, 5m
    with ollama.Client(host=simulator.url) as client:
        assert [m.model for m in client.ps().models] == [MODEL]
    post(simulator, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0})
    assert httpx.get(simulator.url + "/api/ps").json() == {"models": []}


def test_pull_streams_progress_for_a_new_model(simulator: Server) -> None:
    got = post(simulator, "/api/pull", {"model": "qwen3:0.6b"})
    assert got.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in lines_of(got)]
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = lines[1:-3]
    assert len(layers) >= 2
    digest = layers[0]["digest"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    for layer in layers:
        assert in_order(list(layer), ["status", "digest", "total", "completed"])
        assert layer["status"] == "pulling " + digest[7:19]
    assert "completed" not in layers[0]  # 0 is omitted
    completed = [layer.get("completed", 0) for layer in layers]
    assert completed == sorted(completed)
    assert completed[-1] == layers[-1]["total"]
    names = [m["name"] for m in httpx.get(simulator.url + "/api/tags").json()["models"]]
    assert "qwen3:0.6b" in names


def test_pull_of_a_present_model_and_without_streaming(simulator: Server) -> None:
    lines = [json.loads(line) for line in lines_of(post(simulator, "/api/pull", {"model": MODEL}))]
    layer = lines[1]
    assert layer["total"] == layer["completed"]
    assert len(lines) == 5
    whole = post(simulator, "/api/pull", {"model": MODEL, "stream": False})
    assert whole.headers["content-type"] == "application/json"
    assert whole.content == b'{"status":"success"}'  # gin's c.JSON: no newline
    with ollama.Client(host=simulator.url) as client:
        assert client.pull(MODEL).status == "success"


def test_pull_of_an_unknown_model(simulator: Server) -> None:
    got = post(simulator, "/api/pull", {"model": "nope:1b"})
    assert got.status_code == 200
    assert got.content == b'{"status":"pulling manifest"}\n{"error":"pull model manifest: file does not exist"}\n'
    whole = post(simulator, "/api/pull", {"model": "nope:1b", "stream": False})
    assert whole.status_code == 500
    assert whole.headers["content-type"] == "application/json"
    assert whole.content == b'{"error":"pull model manifest: file does not exist"}'
    with ollama.Client(host=simulator.url) as client, pytest.raises(ollama.ResponseError, match="does not exist"):
        list(client.pull("nope:1b", stream=True))
    nameless = post(simulator, "/api/pull", {"stream": True})
    assert (nameless.status_code, nameless.content) == (400, b'{"error":"invalid model name"}')


# ---- /api/chat streaming --------------------------------------------------------------------------------------------
def test_chat_stream_bytes_are_go_json(simulator: Server) -> None:
    script(simulator, {"match": "escape me", "reply": ESCAPE_REPLY, "thinking": "Is a<b && b>c?"})
    request_id = uuid.uuid4().hex
    got = post(simulator, "/api/chat", chat_body("please escape me"), headers={"X-Request-ID": request_id})
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/x-ndjson"
    assert got.headers.get("transfer-encoding") == "chunked"
    assert "server" not in got.headers
    raw = got.content
    for forbidden in (b"<", b">", b"&", "\u2028".encode()):
        assert forbidden not in raw
    assert b'"content":"\\u003c"' in raw
    assert b"\\u2028" in raw
    assert "中文".encode() in raw  # raw UTF-8, not \\u4e2d
    assert b"\\u4e2d" not in raw
    lines = lines_of(got)
    chunks = [json.loads(line) for line in lines]
    *middle, final = chunks
    assert final["done"] is True
    thinking = [c["message"]["thinking"] for c in middle if "thinking" in c["message"]]
    content = [c["message"]["content"] for c in middle if c["message"]["content"]]
    assert "".join(thinking) == "Is a<b && b>c?"
    assert "".join(content) == ESCAPE_REPLY
    assert len(thinking) + len(content) == len(middle)  # no empty chunks: the tags are never sent
    for line, chunk in zip(lines, middle, strict=False):
        assert list(chunk) == ["model", "created_at", "message", "done"]
        assert chunk["done"] is False
        keys = ["role", "content", "thinking"] if "thinking" in chunk["message"] else ["role", "content"]
        assert list(chunk["message"]) == keys
        assert line.startswith(b'{"model":"qwen3:32b","created_at":"')
    transcript = httpx.get(f"{simulator.url}/_sim/transcript/{request_id}")
    assert transcript.content == raw


def test_chat_final_chunk(simulator: Server) -> None:
    script(simulator, {"match": "final", "reply": "One two three.", "thinking": ""})
    chunks = post(simulator, "/api/chat", chat_body("final please", think=False)).content.splitlines()
    final = json.loads(chunks[-1])
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert in_order(list(final), CHAT_FINAL)
    assert {"prompt_eval_count", "eval_count", "total_duration"} <= set(final)
    assert final["eval_count"] == len(chunks) - 1  # one token per line, the EOS is not sent
    assert final["total_duration"] >= final.get("load_duration", 0)
    for chunk in chunks[:-1]:
        assert not set(json.loads(chunk)) & {*METRICS, "done_reason"}  # zero metrics are omitted


def test_created_at_is_rfc3339nano_utc(simulator: Server) -> None:
    chunks = [json.loads(line) for line in lines_of(post(simulator, "/api/chat", chat_body("time", think=False)))]
    stamps = [c["created_at"] for c in chunks]
    for stamp in stamps:
        assert RFC3339NANO.fullmatch(stamp), stamp
    assert stamps == sorted(stamps, key=lambda s: (s[:19], float("0" + s[19:-1])))
    first = datetime.strptime(stamps[0][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - first).total_seconds()) < 5


def test_thinking_is_on_by_default_and_off_with_think_false(simulator: Server) -> None:
    chunks = [json.loads(line) for line in lines_of(post(simulator, "/api/chat", chat_body("Explain batching")))]
    kinds = ["thinking" if "thinking" in c["message"] else "content" for c in chunks[:-1]]
    assert kinds[0] == "thinking"
    assert "content" in kinds
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all thinking, then all content
    text = "".join(c["message"].get("thinking", "") + c["message"]["content"] for c in chunks)
    assert "think>" not in text
    answer = "".join(c["message"]["content"] for c in chunks)
    assert answer == answer.lstrip()  # whitespace after </think> is trimmed
    off = [json.loads(line) for line in lines_of(post(simulator, "/api/chat", chat_body("Explain", think=False)))]
    assert all("thinking" not in c["message"] for c in off)
    assert "".join(c["message"]["content"] for c in off)
    high = [json.loads(line) for line in lines_of(post(simulator, "/api/chat", chat_body("Explain", think="high")))]
    assert "thinking" in high[0]["message"]


def test_model_without_thinking(legacy_sim: Server) -> None:
    refused = post(legacy_sim, "/api/chat", {**chat_body("hi", think=True), "model": "llama3.2:3b"})
    assert refused.status_code == 400
    assert refused.content == b'{"error":"\\"llama3.2:3b\\" does not support thinking"}'
    plain = post(legacy_sim, "/api/chat", {**chat_body("hi"), "model": "llama3.2:3b"})
    chunks = [json.loads(line) for line in lines_of(plain)]
    assert all("thinking" not in c["message"] for c in chunks)
    assert chunks[-1]["done_reason"] == "stop"
    tags = [m["name"] for m in httpx.get(legacy_sim.url + "/api/tags").json()["models"]]
    assert tags == [MODEL, "llama3.2:3b"]
    assert "thinking" not in post(legacy_sim, "/api/show", {"model": "llama3.2:3b"}).json()["capabilities"]


def test_num_predict_stops_with_length(simulator: Server) -> None:
    chunks = [
        json.loads(line) for line in lines_of(post(simulator, "/api/chat", chat_body(options={"num_predict": 7})))
    ]
    assert chunks[-1]["done_reason"] == "length"
    assert chunks[-1]["eval_count"] == 7


@pytest.mark.parametrize(("path", "field"), [("/api/chat", "message"), ("/api/generate", "response")])
def test_empty_request_loads_and_keep_alive_zero_unloads(simulator: Server, path: str, field: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": []} if field == "message" else {"model": MODEL}
    for keep_alive, reason in ((None, "load"), (0, "unload")):
        request = body if keep_alive is None else {**body, "keep_alive": keep_alive}
        got = post(simulator, path, request)
        assert got.headers["content-type"] == NATIVE_JSON  # one object, though streaming was asked for
        assert not got.content.endswith(b"\n")
        answer = got.json()
        assert list(answer) == ["model", "created_at", field, "done", "done_reason"]
        assert answer[field] == ({"role": "assistant", "content": ""} if field == "message" else "")
        assert (answer["done"], answer["done_reason"]) == (True, reason)
    assert httpx.get(simulator.url + "/api/ps").json() == {"models": []}


def test_requests_are_read_as_leniently_as_go_reads_them(simulator: Server) -> None:
    script(simulator, {"match": "shouting", "reply": "Heard."})
    messages = [
        {"role": "USER", "content": "first"},
        {"role": "assistant"},  # the Python client drops an empty content
        {"role": "User", "content": "shouting"},
    ]
    body = {"model": MODEL, "messages": messages, "stream": False, "options": {"num_ctx": 40960, "unknown": 1}}
    assert post(simulator, "/api/chat", body).json()["message"]["content"] == "Heard."  # roles are lower-cased
    floats = post(simulator, "/api/chat", chat_body(stream=False, options={"num_predict": 3.9}))
    assert (floats.json()["done_reason"], floats.json()["eval_count"]) == ("length", 3)  # JSON numbers are float64


def test_history_is_cut_to_num_ctx_keeping_the_system_prompt(simulator: Server) -> None:
    history: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    for turn in range(3):
        history += [
            {"role": "user", "content": f"question {turn}" + " word" * 100},
            {"role": "assistant", "content": f"answer {turn}" + " word" * 100},
        ]
    history.append({"role": "user", "content": "last"})
    body = {"model": MODEL, "messages": history, "stream": False, "think": False, "options": {"num_predict": 1}}
    whole = post(simulator, "/api/chat", body).json()["prompt_eval_count"]
    assert whole > 600
    cut = post(simulator, "/api/chat", {**body, "options": {"num_predict": 1, "num_ctx": 512}}).json()
    assert 400 < cut["prompt_eval_count"] <= 512  # the oldest turns went, the system prompt and the question stayed
    post(simulator, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0})


def test_negative_keep_alive_keeps_the_model_forever(simulator: Server) -> None:
    assert post(simulator, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": -1}).status_code == 200
    expires = httpx.get(simulator.url + "/api/ps").json()["models"][0]["expires_at"]
    assert int(expires[:4]) > 2200
    post(simulator, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0})
    assert httpx.get(simulator.url + "/api/ps").json() == {"models": []}


# ---- /api/generate --------------------------------------------------------------------------------------------------
def test_generate_stream_has_response_and_context(simulator: Server) -> None:
    got = post(simulator, "/api/generate", {"model": MODEL, "prompt": "Why is the sky blue?"})
    chunks = [json.loads(line) for line in lines_of(got)]
    *middle, final = chunks
    assert list(middle[0]) == ["model", "created_at", "response", "thinking", "done"]
    assert middle[0]["response"] == ""
    assert any(list(c) == ["model", "created_at", "response", "done"] and c["response"] for c in middle)
    assert in_order(list(final), GENERATE_FINAL)
    assert final["response"] == ""
    assert "thinking" not in final
    context = final["context"]
    assert all(isinstance(token, int) for token in context)
    assert len(context) == final["prompt_eval_count"] + final["eval_count"]


def test_generate_raw_has_no_context(simulator: Server) -> None:
    got = post(simulator, "/api/generate", {"model": MODEL, "prompt": "Hi", "raw": True, "think": False})
    final = json.loads(lines_of(got)[-1])
    assert final["done"] is True
    assert "context" not in final
    bad = post(simulator, "/api/generate", {"model": MODEL, "prompt": "Hi", "raw": True, "system": "x"})
    assert bad.status_code == 400
    assert bad.content == b'{"error":"raw mode does not support template, system, or context"}'


# ---- non-streaming ----------------------------------------------------------------------------------------------
def test_chat_without_streaming_aggregates(simulator: Server) -> None:
    script(simulator, {"match": "whole", "reply": "All <of> it.", "thinking": "Hmm & so."})
    got = post(simulator, "/api/chat", chat_body("whole please", stream=False))
    assert got.headers["content-type"] == NATIVE_JSON
    assert not got.content.endswith(b"\n")
    assert b"\\u003cof\\u003e" in got.content
    body = got.json()
    assert in_order(list(body), CHAT_FINAL)
    assert list(body["message"]) == ["role", "content", "thinking"]
    assert body["message"] == {"role": "assistant", "content": "All <of> it.", "thinking": "Hmm & so."}
    assert body["done_reason"] == "stop"
    script(simulator, {"match": "whole", "reply": "All <of> it.", "thinking": "Hmm & so."})
    with ollama.Client(host=simulator.url) as client:
        reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "whole"}])
    assert (reply.message.content, reply.message.thinking) == ("All <of> it.", "Hmm & so.")


def test_generate_without_streaming_aggregates(simulator: Server) -> None:
    script(simulator, {"match": "gen whole", "reply": "Blue.", "thinking": "Rayleigh."})
    body = post(simulator, "/api/generate", {"model": MODEL, "prompt": "gen whole", "stream": False}).json()
    assert (body["response"], body["thinking"]) == ("Blue.", "Rayleigh.")
    assert in_order(list(body), GENERATE_FINAL)
    assert len(body["context"]) == body["prompt_eval_count"] + body["eval_count"]


def test_official_client_streams_chat(simulator: Server) -> None:
    script(simulator, {"match": "client", "reply": "Hello from the client test.", "thinking": "ok"})
    with ollama.Client(host=simulator.url) as client:
        parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "client"}], stream=True))
    assert "".join(p.message.content for p in parts) == "Hello from the client test."
    assert "".join(p.message.thinking or "" for p in parts) == "ok"
    assert parts[-1].done
    assert parts[-1].eval_count == len(parts) - 1 + 3  # <think>, </think> and the blank line are tokens too


# ---- /v1 ---------------------------------------------------------------------------------------------------------
def sse(response: httpx.Response) -> list[Any]:
    """The data payloads of an SSE body; asserts the framing is exactly `data: …\\n\\n`."""
    assert response.headers["content-type"] == "text/event-stream"
    raw = response.content
    assert raw.endswith(b"\n\n")
    events = []
    for event in raw[:-2].split(b"\n\n"):
        assert event.startswith(b"data: ")
        payload = event[6:]
        events.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
    return events


def openai_client(sim: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="ollama", max_retries=0)


def v1_body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": True, **extra}


def test_v1_stream_current_format(simulator: Server) -> None:
    script(simulator, {"match": "v1 current", "reply": "Hi <there>!", "thinking": "Greet."})
    events = sse(post(simulator, "/v1/chat/completions", v1_body("v1 current")))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(list(c) == CHUNK_KEYS for c in chunks)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert re.fullmatch(r"chatcmpl-\d{1,3}", chunks[0]["id"])
    assert {c["created"] for c in chunks} == {chunks[0]["created"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["system_fingerprint"] for c in chunks} == {"fp_ollama"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert all("role" not in d for d in deltas[1:])
    assert "".join(d.get("reasoning", "") for d in deltas) == "Greet."
    assert "".join(d.get("content", "") for d in deltas) == "Hi <there>!"
    finish = chunks[-1]["choices"][0]
    assert (finish["delta"], finish["finish_reason"]) == ({}, "stop")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in c for c in chunks)


def test_v1_stream_usage_only_when_asked(simulator: Server) -> None:
    body = v1_body("usage", stream_options={"include_usage": True}, max_tokens=5)
    events = sse(post(simulator, "/v1/chat/completions", body))
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert list(usage) == ["prompt_tokens", "completion_tokens", "total_tokens"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    with openai_client(simulator) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "usage"}],
            stream=True,
            max_tokens=5,
            stream_options={"include_usage": True},
        )
        parts = list(stream)
    assert parts[-1].usage is not None
    assert parts[-1].usage.completion_tokens == 5


def test_v1_stream_legacy_format(legacy_sim: Server) -> None:
    script(legacy_sim, {"match": "v1 legacy", "reply": "Hi there.", "thinking": ""})
    body = v1_body("v1 legacy", reasoning_effort="none", stream_options={"include_usage": True})
    *chunks, usage_chunk, done = sse(post(legacy_sim, "/v1/chat/completions", body))
    assert done == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert all(d["role"] == "assistant" for d in deltas)
    assert "".join(d["content"] for d in deltas) == "Hi there."
    assert deltas[-1] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["id"] == chunks[-1]["id"]
    assert usage_chunk["usage"]["completion_tokens"] >= len(chunks) - 1


def test_v1_without_streaming(simulator: Server) -> None:
    script(simulator, {"match": "v1 whole", "reply": "Fine & dandy.", "thinking": "Mood?"})
    got = post(simulator, "/v1/chat/completions", {**v1_body("v1 whole"), "stream": False})
    assert got.headers["content-type"] == "application/json"
    assert got.content.endswith(b"}\n")
    body = got.json()
    assert list(body) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "Fine & dandy.", "reasoning": "Mood?"},
        "finish_reason": "stop",
    }
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    script(simulator, {"match": "v1 whole", "reply": "Fine & dandy."})
    with openai_client(simulator) as client:
        completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "v1 whole"}])
    assert completion.choices[0].message.content == "Fine & dandy."


def test_v1_models(simulator: Server, legacy_sim: Server) -> None:
    got = httpx.get(simulator.url + "/v1/models")
    assert got.headers["content-type"] == "application/json"
    assert got.content.endswith(b"\n")
    body = got.json()
    assert list(body) == ["object", "data"]
    assert body["object"] == "list"
    first = body["data"][0]
    assert list(first) == ["id", "object", "created", "owned_by"]
    assert (first["id"], first["object"], first["owned_by"]) == (MODEL, "model", "library")
    assert [m["id"] for m in httpx.get(legacy_sim.url + "/v1/models").json()["data"]] == [MODEL, "llama3.2:3b"]
    one = httpx.get(simulator.url + "/v1/models/qwen3:32b")
    assert one.json() == first
    missing = httpx.get(simulator.url + "/v1/models/nope:1b")
    assert missing.status_code == 404
    assert missing.content == (
        b'{"error":{"message":"model \'nope:1b\' not found","type":"not_found_error","param":null,"code":null}}\n'
    )


# ---- errors -------------------------------------------------------------------------------------------------------
ERRORS = [
    ("/api/chat", b"", 400, "missing request body"),
    ("/api/chat", b"   \n", 400, "missing request body"),
    ("/api/chat", b"{bad", 400, "invalid character 'b' looking for beginning of object key string"),
    ("/api/chat", b'{"model":"qwen3:32b",', 400, "unexpected EOF"),
    ("/api/generate", b'{"model":"qwen3:32b" "prompt":1}', 400, "invalid character '\"' after object key:value pair"),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":"hi"}',
        400,
        "json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message",
    ),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":[],"stream":"yes"}',
        400,
        "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
    ),
    ("/api/chat", b"[1]", 400, "json: cannot unmarshal array into Go value of type api.ChatRequest"),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":[],"think":"x"}',
        400,
        'invalid think value: "x" (must be "high", "medium", "low", "max", true, or false)',
    ),
    ("/api/chat", b'{"model":"qwen3:32b","messages":[],"keep_alive":"abc"}', 400, 'time: invalid duration "abc"'),
    ("/api/chat", b'{"model":"qwen3:32b","messages":[],"keep_alive":"-1"}', 400, 'time: missing unit in duration "-1"'),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"options":{"temperature":"hot"}}',
        500,
        'option "temperature" must be of type float32',
    ),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":"5"}}',
        500,
        'option "num_predict" must be of type integer',
    ),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"options":{"stop":"x"}}',
        500,
        'option "stop" must be of type array',
    ),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"options":{"stop":["a",1]}}',
        500,
        'option "stop" must be of an array of strings',
    ),
    (
        "/api/chat",
        b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}],"top_logprobs":21}',
        400,
        "top_logprobs must be between 0 and 20",
    ),
    ("/api/chat", b'{"messages":[{"role":"user","content":"hi"}]}', 400, "model is required"),
    ("/api/generate", b'{"prompt":"hi"}', 404, "model '' not found"),
    ("/api/chat", b'{"model":"nope:1b","messages":[]}', 404, "model 'nope:1b' not found"),
    ("/api/generate", b'{"model":"nope","prompt":"x"}', 404, "model 'nope' not found"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), ERRORS)
def test_native_error_bodies(simulator: Server, path: str, body: bytes, status: int, message: str) -> None:
    got = httpx.post(simulator.url + path, content=body)
    assert got.status_code == status
    assert got.headers["content-type"] == NATIVE_JSON
    assert got.content == json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("stream", [True, False])
def test_a_format_that_is_neither_json_nor_a_schema_fails_after_the_load(simulator: Server, stream: bool) -> None:
    for fmt in ("json", "", None, {"type": "object"}):
        assert post(simulator, "/api/chat", chat_body(format=fmt, stream=stream)).status_code == 200
    got = post(simulator, "/api/chat", chat_body(format="xml", stream=stream))
    assert got.status_code == 500
    assert got.headers["content-type"] == ("application/json" if stream else NATIVE_JSON)
    assert got.json() == {"error": 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'}
    assert post(simulator, "/api/generate", {"model": MODEL, "prompt": "hi", "format": 7}).json() == {
        "error": 'invalid format: "7"; expected "json" or a valid JSON Schema object'
    }


def test_body_is_read_like_gos_decoder(simulator: Server) -> None:
    """json.Decoder reads one value, so what follows it is ignored; a lone surrogate (a browser cutting an emoji
    in half) or a bad UTF-8 byte becomes U+FFFD instead of failing the request."""
    trailing = httpx.post(simulator.url + "/api/chat", content=b'{"model":"qwen3:32b","messages":[]} {"x"')
    assert (trailing.status_code, trailing.json()["done_reason"]) == (200, "load")
    broken = '{"model":"qwen3:32b","messages":[{"role":"user","content":"half \\ud83d and \udcff"}],"stream":false}'
    for path in ("/api/chat", "/v1/chat/completions"):
        script(simulator, {"match": "half \ufffd and \ufffd", "reply": "read"})
        got = httpx.post(simulator.url + path, content=broken.encode("utf-8", "surrogateescape"))
        assert got.status_code == 200, got.text
        assert "read" in got.text


def test_v1_error_bodies(simulator: Server) -> None:
    empty = post(simulator, "/v1/chat/completions", {"model": MODEL, "messages": []})
    assert empty.status_code == 400
    # The middleware's own refusal is gin's c.AbortWithStatusJSON (charset, no newline); a handler's error is
    # rewritten through json.Encoder (no charset, a newline).
    assert empty.headers["content-type"] == "application/json; charset=utf-8"
    assert empty.content == (
        b'{"error":{"message":"[] is too short - \'messages\'","type":"invalid_request_error",'
        b'"param":null,"code":null}}'
    )
    unknown = post(simulator, "/v1/chat/completions", v1_body("hi") | {"model": "nope:1b"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/json"
    assert unknown.content.endswith(b"}}\n")
    assert unknown.json()["error"]["type"] == "not_found_error"
    with openai_client(simulator) as client, pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "hi"}])


def test_unknown_route_and_wrong_method(simulator: Server) -> None:
    missing = httpx.get(simulator.url + "/api/nothing")
    assert (missing.status_code, missing.content) == (404, b"404 page not found")
    assert missing.headers["content-type"] == "text/plain"  # gin's serveError: no charset
    wrong = httpx.get(simulator.url + "/api/chat")
    assert (wrong.status_code, wrong.content) == (405, b"405 method not allowed")
    assert wrong.headers["content-type"] == "text/plain"
    assert "server" not in wrong.headers


# ---- guards -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["example.com", "ollama.example.com:11434", "8.8.8.8:11434"])
def test_foreign_host_gets_an_empty_403(simulator: Server, host: str) -> None:
    got = httpx.get(simulator.url + "/api/version", headers={"Host": host})
    assert (got.status_code, got.content) == (403, b"")
    chat = httpx.post(simulator.url + "/api/chat", json=chat_body(), headers={"Host": host})
    assert (chat.status_code, chat.content) == (403, b"")


@pytest.mark.parametrize("host", ["localhost:11434", "127.0.0.1", "10.1.2.3:11434", "[::1]:11434", "box.local"])
def test_local_hosts_are_allowed(simulator: Server, host: str) -> None:
    assert httpx.get(simulator.url + "/api/version", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example", "chrome-extension://abc"])
def test_foreign_origin_gets_an_empty_403(simulator: Server, origin: str) -> None:
    got = post(simulator, "/api/chat", chat_body(), headers={"Origin": origin})
    assert (got.status_code, got.content) == (403, b"")
    preflight = httpx.options(simulator.url + "/api/chat", headers={"Origin": origin})
    assert preflight.status_code == 403


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000", "https://127.0.0.1", "app://desktop", "vscode-webview://x"]
)
def test_local_origins_work(simulator: Server, origin: str) -> None:
    got = post(simulator, "/api/chat", chat_body(options={"num_predict": 2}), headers={"Origin": origin})
    assert got.status_code == 200
    assert got.headers["access-control-allow-origin"] == origin
    assert got.headers["vary"] == "Origin"
    preflight = httpx.options(simulator.url + "/api/chat", headers={"Origin": origin})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-max-age"] == "43200"
    assert "POST" in preflight.headers["access-control-allow-methods"]


def test_origin_of_the_host_itself_is_allowed(simulator: Server) -> None:
    headers = {"Host": "192.168.7.7:11434", "Origin": "http://192.168.7.7:11434"}
    assert httpx.get(simulator.url + "/api/version", headers=headers).status_code == 200
    headers["Origin"] = "http://192.168.7.8:11434"
    assert httpx.get(simulator.url + "/api/version", headers=headers).status_code == 403


# ---- timing of the first byte ---------------------------------------------------------------------------------------
def test_no_headers_before_the_first_token(slow_sim: Server) -> None:
    started = time.monotonic()
    cold = timed_stream(slow_sim, chat_body("cold start", options={"num_predict": 3}))
    assert cold.status == 200
    assert cold.headers_at >= 1.5  # the headers waited for the ~1.8 s load
    assert cold.lines[0][0] - cold.headers_at < 0.2  # and came with the first chunk
    final = cold.chunks[-1]
    assert 1.6e9 < final["load_duration"] <= final["total_duration"]
    assert final["total_duration"] <= (time.monotonic() - started) * 1e9
    warm = timed_stream(slow_sim, chat_body("warm", options={"num_predict": 3}))
    assert warm.headers_at < 0.5
    assert warm.chunks[-1]["load_duration"] < 0.1e9


# ---- Ollama's repeat cut-off -------------------------------------------------------------------------------------
GOING = "going" + " going" * 49  # 50 tokens whose trimmed text is the same


def test_a_reply_that_repeats_a_token_31_times_ends_without_a_final_chunk(simulator: Server) -> None:
    """llm/server.go aborts a reply whose trimmed token text repeats more than 30 times in a row, with a nil error:
    200, the 31 tokens before it, then the end of the stream, with no `done` chunk and no error line."""
    script(simulator, {"match": "repeat after me", "reply": GOING, "thinking": "", "times": 4})
    streamed = post(simulator, "/api/chat", chat_body("repeat after me"))
    assert streamed.status_code == 200
    chunks = [json.loads(line) for line in lines_of(streamed)]
    assert [c["message"]["content"] for c in chunks] == ["going"] + [" going"] * 30
    assert not any(c["done"] for c in chunks)
    whole = post(simulator, "/api/chat", chat_body("repeat after me", stream=False)).json()
    assert list(whole) == ["model", "created_at", "message", "done"]  # the last chunk, with the text gathered
    assert (whole["message"]["content"], whole["done"]) == ("going" + " going" * 30, False)
    v1 = post(simulator, "/v1/chat/completions", v1_body("repeat after me"))
    assert v1.status_code == 200
    assert b"[DONE]" not in v1.content
    assert b'"finish_reason":null' in v1.content
    assert b'"finish_reason":"' not in v1.content
    short = post(simulator, "/api/chat", chat_body("repeat after me", options={"num_predict": 20}))
    assert json.loads(lines_of(short)[-1])["done_reason"] == "length"  # cut by num_predict first: a normal end
