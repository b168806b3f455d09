"""`OpenAIBackend` against a fake OpenAI-compatible server on 127.0.0.1: what it sends for an Ollama chat body,
how it reads the server-sent events back (text, reasoning, usage, finish_reason), how each failure is named, what
the health check reads, and that its API key goes with every request but never into a message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from clawdbot.backends.base import Delta, Final
from clawdbot.backends.ollama import OllamaBackend
from clawdbot.backends.openai import OpenAIBackend
from clawdbot.errors import BackendError
from clawdbot.settings import Settings

KEY = "sk-test-4242-secret"
PNG = "iVBORw0KGgoAAAANSUhEUg=="


def event(
    content: str = "", *, reasoning: str = "", field: str = "reasoning_content", finish: str | None = None
) -> bytes:
    delta: dict[str, Any] = {"content": content}
    if reasoning:
        delta[field] = reasoning
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def usage(prompt: int, completion: int) -> bytes:
    chunk = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


DONE = b"data: [DONE]\n\n"


@dataclass
class Fake:
    """What the fake server answers (writes of the SSE body, or an error status) and what it was sent."""

    writes: list[bytes] = field(default_factory=list)
    status: int = 200
    error: bytes = b""
    pause: float = 0.05
    props: dict[str, Any] | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def authorized(request: web.Request, fake: Fake) -> web.Response | None:
    """The server's key check: a wrong key is refused with a message that quotes it, as some servers do."""
    fake.headers.append(dict(request.headers))
    given = request.headers.get("Authorization", "")
    if given == f"Bearer {KEY}":
        return None
    body = {"error": {"message": f"Incorrect API key provided: {given.removeprefix('Bearer ')}", "code": 401}}
    return web.json_response(body, status=401)


async def serve(fake: Fake) -> TestServer:
    async def chat(request: web.Request) -> web.StreamResponse:
        if refused := authorized(request, fake):
            return refused
        fake.bodies.append(await request.json())
        if fake.status != 200:
            return web.Response(status=fake.status, body=fake.error, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for data in fake.writes:
            await response.write(data)
            await asyncio.sleep(fake.pause)  # each write reaches the backend as a read of its own
        return response

    async def models(request: web.Request) -> web.Response:
        if refused := authorized(request, fake):
            return refused
        listed = [{"id": "gemma3:270m", "object": "model", "meta": {"n_ctx": 4096}}, {"id": "qwen3", "object": "model"}]
        return web.json_response({"object": "list", "data": listed})

    async def props(request: web.Request) -> web.Response:
        if refused := authorized(request, fake):
            return refused
        if fake.props is None:
            return web.json_response({"error": "Not Found"}, status=404)
        return web.json_response(fake.props)

    async def slots(request: web.Request) -> web.Response:
        return web.json_response([{"id": 0}, {"id": 1}, {"id": 2}])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/props", props)
    app.router.add_get("/slots", slots)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[Fake, OpenAIBackend]]:
    state = Fake()
    server = await serve(state)
    backend = OpenAIBackend(Settings(idle_timeout=1.0), f"http://127.0.0.1:{server.port}", api_key=KEY)
    yield state, backend
    await backend.close()
    await server.close()


BODY: dict[str, Any] = {
    "model": "gemma3:270m",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?", "images": [PNG]},
        {"role": "assistant", "content": "A picture.", "thinking": "It is an image."},
        {"role": "user", "content": "Of what?"},
    ],
    "options": {"num_predict": 64, "num_ctx": 8192, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n"]},
    "think": True,
    "keep_alive": "5m",
    "stream": True,
}


async def collect(backend: OpenAIBackend, body: dict[str, Any] = BODY) -> list[Delta | Final]:
    return [item async for item in backend.chat(body)]


@pytest.mark.asyncio
async def test_an_ollama_body_becomes_a_streaming_chat_completion(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    state.writes = [event("Hi", finish="stop"), usage(3, 1), DONE]
    await collect(backend)
    (sent,) = state.bodies
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {"role": "assistant", "content": "A picture."},  # its thinking is not sent back
        {"role": "user", "content": "Of what?"},
    ]
    assert {k: v for k, v in sent.items() if k != "messages"} == {
        "model": "gemma3:270m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["\n\n"],
        "chat_template_kwargs": {"enable_thinking": True},
    }


@pytest.mark.asyncio
async def test_a_last_assistant_message_is_continued_and_format_asks_for_json(
    fake: tuple[Fake, OpenAIBackend],
) -> None:
    state, backend = fake
    state.writes = [event(" 6", finish="stop"), DONE]
    messages = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1, 2,"}]
    await collect(backend, {"model": "m", "messages": messages, "format": "json", "think": "high"})
    (sent,) = state.bodies
    assert (sent["continue_final_message"], sent["add_generation_prompt"]) == (True, False)
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["reasoning_effort"] == "high"
    assert "max_tokens" not in sent


@pytest.mark.asyncio
async def test_reasoning_content_and_usage_become_deltas_and_a_final(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    state.writes = [
        event(reasoning="Let ") + event(reasoning="me think.", field="reasoning") + event("The "),
        event("answer") + event(" is 4."),
        event(finish="stop") + usage(11, 6) + DONE,
    ]
    got = await collect(backend)
    assert got[:2] == [Delta(thinking="Let me think.", content="The ", lines=3), Delta(content="answer is 4.", lines=2)]
    final = got[2]
    assert isinstance(final, Final)
    assert (final.done_reason, final.prompt_tokens, final.output_tokens, final.load_ns) == ("stop", 11, 6, 0)
    # Measured here: the first text came after the first pause, and the rest two pauses later.
    assert final.total_ns == final.prompt_eval_ns + final.eval_ns
    assert final.prompt_eval_ns > 0
    assert final.eval_ns >= 50_000_000
    assert len(got) == 3


@pytest.mark.asyncio
async def test_finish_reason_length_is_ollamas_length(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    state.writes = [event("a b c"), event(finish="length"), usage(5, 64), DONE]
    *deltas, final = await collect(backend)
    assert deltas == [Delta(content="a b c")]
    assert isinstance(final, Final)
    assert (final.done_reason, final.output_tokens) == ("length", 64)


@pytest.mark.asyncio
async def test_an_error_status_quotes_the_servers_message(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    state.status = 400
    state.error = orjson.dumps({"error": {"message": "max_tokens is too large: 99999", "type": "invalid_request"}})
    with pytest.raises(BackendError) as failed:
        await collect(backend)
    assert failed.value.kind == "http_400"
    assert "max_tokens is too large: 99999" in failed.value.message
    assert "max_tokens is too large" in failed.value.explain()


@pytest.mark.asyncio
async def test_a_stream_cut_short_is_an_incomplete_stream(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    state.writes = [event("The answer"), event(" is")]  # then the connection ends: no finish_reason, no [DONE]
    items: list[Delta | Final] = []

    async def read() -> None:
        async for item in backend.chat(BODY):
            items.append(item)

    with pytest.raises(BackendError) as failed:
        await read()
    assert failed.value.kind == "incomplete_stream"
    assert items == [Delta(content="The answer"), Delta(content=" is")]


@pytest.mark.asyncio
async def test_an_error_event_in_the_stream_fails_the_reply(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    failure = orjson.dumps({"error": {"message": "the KV cache is full", "code": 500}})
    state.writes = [event("Half"), b"error: " + failure + b"\n\n"]  # llama.cpp's form
    with pytest.raises(BackendError) as failed:
        await collect(backend)
    assert (failed.value.kind, failed.value.message) == ("error_line", "the model failed: the KV cache is full")


@pytest.mark.asyncio
async def test_a_stream_that_goes_silent_fails_with_idle_timeout(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    state.writes, state.pause = [event("a"), event("b")], 4.0  # idle_timeout is 1 s
    with pytest.raises(BackendError) as failed:
        await collect(backend)
    assert failed.value.kind == "idle_timeout"


@pytest.mark.asyncio
async def test_the_api_key_goes_with_every_request_and_never_into_a_message(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    state.writes = [event("ok", finish="stop"), DONE]
    await collect(backend)
    await backend.probe()
    # The passthrough sends our key, not the client's.
    response = await backend.send("GET", "/v1/models", b"", [("Authorization", "Bearer client-key")])
    assert response.status == 200
    await response.read()
    assert {h["Authorization"] for h in state.headers} == {f"Bearer {KEY}"}

    wrong = f"http://127.0.0.1:{backend.url.rsplit(':', 1)[1]}"
    for key in ("sk-wrong-1234", KEY + "-old"):  # a server that quotes the refused key, ours inside it
        other = OpenAIBackend(Settings(), wrong, api_key=key)
        try:
            with pytest.raises(BackendError) as failed:
                await collect(other)
            status = await other.probe()
        finally:
            await other.close()
        assert failed.value.kind == "http_401"
        assert "Incorrect API key provided" in failed.value.message
        texts = [failed.value.message, failed.value.explain(), str(failed.value), str(status.error)]
        assert not [text for text in texts if key in text or KEY in text]
        assert status.reachable is False


@pytest.mark.asyncio
async def test_probe_lists_the_models_and_reads_llama_cpps_props(fake: tuple[Fake, OpenAIBackend]) -> None:
    state, backend = fake
    status = await backend.probe()  # a server without /props (vLLM): no version, no slots
    assert (status.reachable, status.error, status.version, backend.reported_slots) == (True, None, None, None)
    assert status.models == [
        {"name": "gemma3:270m", "model": "gemma3:270m", "details": {}},
        {"name": "qwen3", "model": "qwen3", "details": {}},
    ]
    assert status.model_names() == ["gemma3:270m", "qwen3"]
    assert status.loaded == {"gemma3:270m": 4096, "qwen3": 0}  # everything listed is served
    assert status.own == {"gemma3:270m": {"num_ctx": 4096}}

    state.props = {"build_info": "b6123-abcdef", "total_slots": 4}
    status = await backend.probe()
    assert (status.version, backend.reported_slots) == ("b6123-abcdef", 4)
    state.props = {"build_info": "b6123-abcdef"}  # no total_slots: /slots is counted
    await backend.probe()
    assert backend.reported_slots == 3


@pytest.mark.asyncio
async def test_probe_of_a_server_that_is_down_says_why_and_does_not_raise() -> None:
    backend = OpenAIBackend(Settings(), "http://127.0.0.1:9")  # the discard port: nothing listens
    try:
        status = await backend.probe()
        with pytest.raises(BackendError) as failed:
            await collect(backend)
    finally:
        await backend.close()
    assert status.reachable is False
    assert "refused the connection" in str(status.error)
    assert failed.value.kind == "connect_refused"
    assert "OpenAI-compatible" in backend.how_to_fix()


@pytest.mark.asyncio
async def test_ollama_reports_no_slots() -> None:
    backend = OllamaBackend(Settings(), "http://127.0.0.1:9")
    assert backend.reported_slots is None  # both kinds have the attribute; Ollama never says
    await backend.close()
