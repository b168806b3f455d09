"""The gateway in front of a real Ollama: Intel's ipex-llm build of Ollama 0.5.4 on the CPU with gemma3:270m
(scripts/real_ollama.py sets it up; docs/real-ollama.md).

The same calls go to Ollama directly and through the gateway, and the clients must get the same chunks and the
same errors. Greedy decoding makes equal requests give equal text, but only from the same state of the prompt
cache: a prompt evaluated afresh can end on a different token than the same prompt found in the cache, so every
comparison first primes the cache with the request it is about to send twice. gemma3:270m is a base model that may
never stop: every generation is bounded by num_predict (the Modelfile caps requests without one at 64 tokens).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import ollama
import openai
import pytest
import pytest_asyncio

from chat_support import ChatApi, Socket, connect, done_of
from conftest import Server, start_gateway, wait_for
from real_ollama_support import (
    EXACT,
    LONG,
    MODEL,
    NUM_CTX,
    RealOllama,
    chunks_of,
    start_real_ollama,
    stop_real_ollama,
    without_timing,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def real() -> Iterator[RealOllama]:
    server = start_real_ollama()
    yield server
    stop_real_ollama(server)


@pytest.fixture(scope="module")
def gateway(real: RealOllama) -> Iterator[Server]:
    server = start_gateway(
        real.url, "--num-ctx", str(NUM_CTX), "--reply-room", "256", "--default-model", MODEL, "--idle-timeout", "30"
    )
    yield server
    server.stop()


@pytest.fixture
def api(gateway: Server) -> Iterator[ChatApi]:
    with ChatApi(gateway.url) as client:
        yield client


@pytest_asyncio.fixture
async def socket(gateway: Server) -> AsyncIterator[Socket]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield await connect(session, gateway.url)


def prompt() -> str:
    """A question no earlier test asked, so the prompt cache holds none of it."""
    return f"Question {uuid.uuid4().hex[:6]}: why is the sky blue?"


def turn(api: ChatApi, conversation_id: str, content: str) -> dict[str, Any]:
    """Send over HTTP and wait for the stored reply: a model load and 64 tokens on a busy CPU take seconds."""
    sent = api.send(conversation_id, content)
    return api.wait_reply(conversation_id, sent["reply"]["id"], timeout=60)


def twice(real: RealOllama, gateway: Server, send: Any) -> tuple[Any, Any]:
    """`send(url)` once to prime the prompt cache, then directly and through the gateway."""
    send(real.url)
    return send(real.url), send(gateway.url)


# ---- the native API with the official ollama client ---------------------------------------------------------
def test_ollama_chat_stream_gives_the_same_chunks(real: RealOllama, gateway: Server) -> None:
    messages = [{"role": "user", "content": prompt()}]

    def send(url: str) -> list[tuple[object, ...]]:
        with ollama.Client(host=url) as client:
            chunks = client.chat(model=MODEL, messages=messages, options=EXACT, stream=True)
            return [(c.message.content, c.done, c.done_reason, c.eval_count, c.prompt_eval_count) for c in chunks]

    direct, relayed = twice(real, gateway, send)
    assert relayed == direct
    assert relayed[-1][1:4] == (True, "length", EXACT["num_predict"])
    assert "".join(str(c[0]) for c in relayed).strip()


def test_raw_chunks_have_the_same_fields_and_values(real: RealOllama, gateway: Server) -> None:
    for path, body in (
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": prompt()}], "options": EXACT}),
        ("/api/generate", {"model": MODEL, "prompt": prompt(), "options": EXACT}),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": prompt()}], "options": EXACT,
                       "stream": False}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": prompt()}], "stream": True,
                                  "max_tokens": 12, "temperature": 0, "seed": 1,
                                  "stream_options": {"include_usage": True}}),
    ):  # fmt: skip
        direct, relayed = twice(real, gateway, lambda url, p=path, b=body: httpx.post(url + p, json=b, timeout=60))
        assert (relayed.status_code, relayed.headers["content-type"]) == (200, direct.headers["content-type"])
        assert [without_timing(c) for c in chunks_of(relayed)] == [without_timing(c) for c in chunks_of(direct)]
        assert [list(c) for c in chunks_of(relayed)] == [list(c) for c in chunks_of(direct)]  # keys, in order


@pytest.mark.parametrize("stream", [True, False])
def test_ollama_generate_is_the_same(real: RealOllama, gateway: Server, stream: bool) -> None:
    question = prompt()

    def send(url: str) -> tuple[object, ...]:
        with ollama.Client(host=url) as client:
            got = client.generate(model=MODEL, prompt=question, options=EXACT, stream=stream)
            parts = list(got) if stream else [got]
        return "".join(p.response for p in parts), parts[-1].done_reason, parts[-1].eval_count, parts[-1].context

    direct, relayed = twice(real, gateway, send)
    assert relayed == direct
    assert relayed[3]  # 0.5.4 sends the prompt's and the reply's token ids


@pytest.mark.parametrize(
    ("call", "status"),
    [
        pytest.param(
            lambda c: c.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}]),
            404,
            id="unknown-model-chat",
        ),
        pytest.param(
            lambda c: list(c.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}], stream=True)),
            404,
            id="unknown-model-chat-stream",
        ),
        pytest.param(lambda c: c.generate(model="nope:1b", prompt="hi"), 404, id="unknown-model-generate"),
        pytest.param(lambda c: c.show("nope:1b"), 404, id="unknown-model-show"),
        pytest.param(
            lambda c: c.generate(model=MODEL, prompt="hi", raw=True, system="be brief"), 400, id="raw-with-system"
        ),
        pytest.param(
            lambda c: c.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_ctx": "big"}),
            500,
            id="option-of-wrong-type",
        ),
        pytest.param(
            lambda c: c.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], keep_alive="soon"),
            400,
            id="bad-keep-alive",
        ),
    ],
)
def test_ollama_errors_are_the_same(real: RealOllama, gateway: Server, call: Any, status: int) -> None:
    raised = []
    for url in (real.url, gateway.url):
        with ollama.Client(host=url) as client, pytest.raises(ollama.ResponseError) as error:
            call(client)
        raised.append((error.value.status_code, error.value.error))
    assert raised[1] == raised[0]
    assert raised[0][0] == status


def test_model_lists_and_details_are_relayed_unchanged(real: RealOllama, gateway: Server) -> None:
    for method, path, body in (
        ("GET", "/api/version", None),
        ("GET", "/api/tags", None),
        ("POST", "/api/show", {"model": MODEL}),
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{MODEL}", None),
        ("GET", "/api/nothing", None),
    ):
        direct = httpx.request(method, real.url + path, json=body)
        relayed = httpx.request(method, gateway.url + path, json=body)
        assert relayed.headers["content-type"] == direct.headers["content-type"], path
        if path == "/api/show":  # parameters come from a Go map: in any order, each time
            assert relayed.status_code == direct.status_code == 200
            assert sorted_modelfile(relayed.json()) == sorted_modelfile(direct.json())
            continue
        assert (relayed.status_code, relayed.content) == (direct.status_code, direct.content), path


def sorted_modelfile(show: dict[str, Any]) -> dict[str, Any]:
    return {**show, **{key: sorted(show[key].splitlines()) for key in ("modelfile", "parameters")}}


# ---- the OpenAI-compatible API with the official openai client ------------------------------------------------
def test_openai_stream_gives_the_same_chunks(real: RealOllama, gateway: Server) -> None:
    messages = [{"role": "user", "content": prompt()}]

    def send(url: str) -> list[tuple[object, ...]]:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            stream = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=12, temperature=0, seed=1, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            return [
                (
                    tuple((ch.delta.role, ch.delta.content, ch.finish_reason) for ch in chunk.choices),
                    chunk.usage.completion_tokens if chunk.usage else None,
                    chunk.model,
                    chunk.object,
                )
                for chunk in stream
            ]

    direct, relayed = twice(real, gateway, send)
    assert relayed == direct
    # 0.5.4 writes the pre-0.32.6 format: the role on every delta, finish_reason on the last content chunk.
    assert relayed[-2][0] == (("assistant", "", "length"),)
    assert relayed[-1][:2] == ((), 12)


def test_openai_whole_reply_is_the_same(real: RealOllama, gateway: Server) -> None:
    messages = [{"role": "user", "content": prompt()}]

    def send(url: str) -> tuple[object, ...]:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0, seed=1)
        assert got.usage is not None
        return got.choices[0].message.content, got.choices[0].finish_reason, got.usage.completion_tokens

    direct, relayed = twice(real, gateway, send)
    assert relayed == direct


@pytest.mark.parametrize(
    ("messages", "model", "kind"),
    [
        ([{"role": "user", "content": "hi"}], "nope:1b", openai.NotFoundError),
        ([], MODEL, openai.BadRequestError),
    ],
)
def test_openai_errors_are_the_same(
    real: RealOllama, gateway: Server, messages: list[dict[str, str]], model: str, kind: type[openai.APIError]
) -> None:
    raised = []
    for url in (real.url, gateway.url):
        with (
            openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client,
            pytest.raises(kind) as error,
        ):
            client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
        raised.append((error.value.status_code, error.value.body))  # type: ignore[attr-defined]
    assert raised[1] == raised[0]


# ---- the chat page --------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_conversation_of_several_turns_over_the_socket(socket: Socket, api: ChatApi) -> None:
    conversation = api.create(temperature=0)
    replies = []
    for turn, content in enumerate(("Name three colours.", "And three animals?", "Thanks!")):
        ack = await socket.command("send", conversation_id=conversation["id"], content=content, client_id=f"t{turn}")
        assert ack["type"] == "ack", ack
        await socket.until(done_of(ack["reply"]["id"]), within=60)
        events = [e for e in socket.seen if e.get("id") == ack["reply"]["id"]]  # reply.start came before the ack
        numbered = [e["seq"] for e in events if e.get("seq") is not None]
        assert numbered == list(range(1, len(numbered) + 1))
        statuses = [e["status"] for e in events if e["type"] == "reply.status"]
        assert statuses == ["writing"]  # gemma3 does not think, and 0.5.4 knows nothing of thinking
        stats = next(e for e in events if e["type"] == "reply.stats")
        done = events[-1]["message"]
        assert done["status"] == "done", done
        assert done["content"] == "".join(e.get("content", "") for e in events if e["type"] == "reply.delta")
        assert done["output_tokens"] == stats["output_tokens"] <= 64  # the Modelfile's num_predict
        assert stats["done_reason"] in ("stop", "length")
        assert done["eval_ms"] > 0
        assert done["ttft_ms"] > 0
        replies.append(done)
    # Each turn sends the whole history: the prompt grows by the earlier turns.
    assert replies[0]["prompt_tokens"] < replies[1]["prompt_tokens"] < replies[2]["prompt_tokens"]
    stored = api.view(conversation["id"])["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"] * 3
    assert [m["content"] for m in stored[1::2]] == [r["content"] for r in replies]


@pytest.mark.asyncio
async def test_stop_frees_the_backend_at_once(real: RealOllama, gateway: Server, socket: Socket, api: ChatApi) -> None:
    conversation = api.create(model=LONG)  # no 64-token cap: about 50 s of text at 40 tokens/s
    ack = await socket.command("send", conversation_id=conversation["id"], content="Write a long story about a fox.")
    reply_id = ack["reply"]["id"]
    await socket.until(lambda e: e["type"] == "reply.delta" and e["id"] == reply_id, within=60)
    await asyncio.sleep(0.5)
    stopped = await socket.command("stop", conversation_id=conversation["id"])
    assert stopped["type"] == "ack", stopped
    done = (await socket.until(done_of(reply_id), within=10))[-1]["message"]
    assert done["status"] == "stopped"
    assert done["content"]
    # Ollama runs one request at a time (OLLAMA_NUM_PARALLEL=1): had the stopped reply gone on, this would wait
    # for the rest of its 2,000 tokens.
    started = time.monotonic()
    answer = await asyncio.to_thread(
        httpx.post,
        gateway.url + "/api/generate",
        json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 10


@pytest.mark.asyncio
async def test_a_model_not_loaded_yet_is_loaded_by_the_first_reply(
    real: RealOllama, socket: Socket, api: ChatApi
) -> None:
    await asyncio.to_thread(real.unload)
    conversation = api.create()
    ack = await socket.command("send", conversation_id=conversation["id"], content="Hello!")
    events = await socket.until(done_of(ack["reply"]["id"]), within=60)
    done = events[-1]["message"]
    assert done["status"] == "done", done
    ps = (await asyncio.to_thread(httpx.get, real.url + "/api/ps")).json()["models"]
    assert [m["name"] for m in ps] == [MODEL]
    ps = ps[0]
    assert ps["size_vram"] == 0  # on the CPU
    assert "context_length" not in ps  # 0.5.4 predates it (0.10.0)


def test_the_page_reads_the_older_server_without_breaking(real: RealOllama, gateway: Server, api: ChatApi) -> None:
    """0.5.4 lists no capabilities, knows no `think` (it ignores the field), puts done_reason before done."""
    models = api.http.get("/models").json()
    assert models["reachable"] is True
    listed = {m["name"]: m for m in models["models"]}
    assert listed[MODEL]["capabilities"] == []
    assert (listed[MODEL]["family"], listed[MODEL]["quantization"]) == ("gemma3", "Q4_K_M")
    assert httpx.get(gateway.url + "/readyz").json()["backend"]["version"] == "0.5.4-ipexllm-20250407"
    for think in (True, False):
        conversation = api.create(think=think)
        reply = turn(api, conversation["id"], "Hi")
        assert reply["status"] == "done", reply
        assert (reply["thinking"], reply["content"] != "") == ("", True)
        assert reply["output_tokens"] > 0
        assert reply["prompt_tokens"] > 0


# ---- the reply that ended as failed / incomplete_stream (now repeat_limit) ------------------------------------
REPEATING = " ".join(["go"] * 60)  # greedy gemma3:270m answers "going going going …"


def test_ollama_ends_a_stream_without_done_when_a_token_repeats_31_times(real: RealOllama, gateway: Server) -> None:
    """Ollama's llm server aborts a reply whose trimmed token text repeats over 30 times in a row with `return
    ctx.Err()`, which is nil: the handler closes the stream with 200, no final chunk and no error line. The
    gateway tells it from a stream cut short by the 31 equal chunks and adds an error line saying so: a client
    raises instead of taking the text for a whole reply."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": REPEATING}], "options": {"temperature": 0}}
    direct = httpx.post(real.url + "/api/chat", json=body, timeout=60)
    assert direct.status_code == 200
    chunks = chunks_of(direct)
    assert len(chunks) == 31
    assert not any(c["done"] for c in chunks)
    assert {c["message"]["content"].strip() for c in chunks} == {"going"}
    relayed = chunks_of(httpx.post(gateway.url + "/api/chat", json=body, timeout=60))
    assert [without_timing(c) for c in relayed[:-1]] == [without_timing(c) for c in chunks]
    assert "repeated one token 31 times in a row" in relayed[-1]["error"]


def test_the_page_keeps_the_text_of_a_reply_ollama_cut_short(real: RealOllama, gateway: Server, api: ChatApi) -> None:
    conversation = api.create(temperature=0)
    reply = turn(api, conversation["id"], REPEATING)
    assert (reply["status"], reply["error_kind"]) == ("failed", "repeat_limit")
    assert "kept repeating" in reply["error"]
    assert reply["content"].split() == ["going"] * 31


@pytest.mark.asyncio
async def test_a_reload_for_another_num_ctx_waits_for_the_reply_in_flight(
    real: RealOllama, gateway: Server, socket: Socket, api: ChatApi
) -> None:
    """The page's num_ctx differs from a plain curl's: Ollama must reload the model, and its scheduler waits until
    the reply in flight has ended (sched.go: the runner is set to expire, then unloaded once its last request is
    done) instead of cutting it off."""
    conversation = api.create(num_ctx=4096, temperature=0)
    ack = await socket.command("send", conversation_id=conversation["id"], content="Tell me about the sea.")
    reply_id = ack["reply"]["id"]
    await socket.until(lambda e: e["type"] == "reply.delta" and e["id"] == reply_id, within=60)
    curl = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}}  # num_ctx: the default
    other = await asyncio.to_thread(httpx.post, gateway.url + "/api/generate", json=curl, timeout=60)
    done = (await socket.until(done_of(reply_id), within=30))[-1]["message"]
    assert done["status"] == "done", done
    assert other.status_code == 200, other.text
    assert other.json()["load_duration"] > 100_000_000  # it waited for the reply, then for a reload
    assert real.logs().count("--ctx-size 4096") >= 1


# ---- a trailing assistant message -----------------------------------------------------------------------------------
def test_ollama_goes_on_from_a_trailing_assistant_message(real: RealOllama) -> None:
    """Gemma's template leaves the model's turn open after a trailing assistant message, so the model continues
    that text instead of answering again, and the text is prompt. The simulator does the same (docs/simulator.md)."""
    question = {"role": "user", "content": "Count from 1 to 20, separated by commas."}

    def send(*messages: dict[str, str]) -> dict[str, Any]:
        body = {"model": MODEL, "messages": messages, "stream": False, "options": EXACT}
        response = httpx.post(real.url + "/api/chat", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    alone = send(question)
    went_on = send(question, {"role": "assistant", "content": "1, 2, 3, 4, 5,"})
    content = went_on["message"]["content"]
    assert re.findall(r"\d+", content)[:3] == ["6", "7", "8"], content  # on from 5; the reply holds only the rest
    assert (went_on["done_reason"], went_on["eval_count"]) == ("length", EXACT["num_predict"])
    assert went_on["prompt_eval_count"] >= alone["prompt_eval_count"] + 10  # five numbers and five commas at least


# ---- a model's own parameters --------------------------------------------------------------------------------------
def test_a_models_own_reply_cap_and_context_size_win_over_the_gateways_defaults(real: RealOllama) -> None:
    """gemma3:270m's Modelfile caps replies at 64 tokens: the gateway adds no cap of its own to a raw request (it
    would lift the model's) and the page's replies keep to it. A model whose Modelfile sets num_ctx gets that size
    on requests that set none, instead of --num-ctx."""
    sized = "gemma3:270m-ctx"
    create = {"model": sized, "modelfile": f"FROM {MODEL}\nPARAMETER num_ctx 1024\n", "stream": False}
    assert httpx.post(real.url + "/api/create", json=create, timeout=60).status_code == 200
    gateway = start_gateway(real.url, "--num-ctx", str(NUM_CTX), "--reply-room", "256", "--health-interval", "0.5")
    try:
        ready = wait_for(lambda: httpx.get(gateway.url + "/readyz").json()["context"]["models"].get(sized) == 1024)
        assert ready, httpx.get(gateway.url + "/readyz").json()["context"]
        assert httpx.get(gateway.url + "/readyz").json()["context"]["models"][MODEL] == NUM_CTX
        ask = {"model": MODEL, "prompt": "Once upon a time", "stream": False, "options": {"temperature": 1}}
        told = httpx.post(gateway.url + "/api/generate", json=ask, timeout=120).json()
        assert told["eval_count"] <= 64
        with ChatApi(gateway.url) as api:
            reply = turn(api, api.create(model=MODEL)["id"], "Tell me a long story about the sea.")
        assert reply["output_tokens"] <= 64
        loaded = {"model": sized, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
        assert httpx.post(gateway.url + "/api/generate", json=loaded, timeout=120).status_code == 200
        assert "--ctx-size 1024" in real.logs()
    finally:
        gateway.stop()
        httpx.request("DELETE", real.url + "/api/delete", json={"model": sized}, timeout=30)
