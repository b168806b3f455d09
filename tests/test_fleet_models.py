"""Which backend serves which model: simulators that each pull different models, a [[backends]] `models` list, the
model lists merged across them; and a fleet of both kinds, a real llama.cpp server (OpenAI-compatible, gemma3:270m)
beside a simulated Ollama, through the chat page and the raw APIs."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import httpx
import pytest

from chat_support import ChatApi, Socket, done_of
from conftest import Server, start_simulator
from fleet_support import BACKEND, ask, backends_toml, chat, start_fleet, wait_state, wait_until
from test_real_llamacpp import KEY, server  # noqa: F401  (the llama.cpp server, a fixture)

pytestmark = pytest.mark.timeout(120)

ONLY_A, ONLY_B, BOTH = "qwen3:32b", "llama3.2:1b", "gemma3:1b"
GEMMA = "gemma3:270m"


def names(listing: list[dict[str, object]], key: str) -> list[str]:
    return sorted(str(entry[key]) for entry in listing)


def test_each_model_goes_to_a_backend_that_serves_it() -> None:
    a = start_simulator("--profile", "instant", "--models", ONLY_A, "--models", BOTH)
    b = start_simulator("--profile", "instant", "--models", ONLY_B, "--models", BOTH)
    # `a` lists BOTH as well, but its [[backends]] table lets it serve only ONLY_A.
    config = backends_toml(
        {"name": "a", "url": a.url, "slots": 4, "models": [ONLY_A]}, {"name": "b", "url": b.url, "slots": 4}
    )
    gateway = start_fleet(config, "--health-interval", "1")
    try:
        for _ in range(3):
            for model, where in ((ONLY_A, "a"), (ONLY_B, "b"), (BOTH, "b")):
                response = ask(gateway, chat("which one?", model=model))
                assert (response.status_code, response.headers[BACKEND]) == (200, where), response.text
        tags = httpx.get(gateway.url + "/api/tags").json()["models"]
        assert names(tags, "name") == sorted([ONLY_A, ONLY_B, BOTH])  # each once
        listed = httpx.get(gateway.url + "/v1/models").json()["data"]
        assert names(listed, "id") == sorted([ONLY_A, ONLY_B, BOTH])
        page = {m["name"]: m["backends"] for m in httpx.get(gateway.url + "/chat/api/models").json()["models"]}
        assert page == {ONLY_A: ["a"], ONLY_B: ["b"], BOTH: ["b"]}

        b.kill()
        wait_state(gateway, "b", "out", timeout=5)
        page = {m["name"]: m["backends"] for m in httpx.get(gateway.url + "/chat/api/models").json()["models"]}
        assert page == {ONLY_A: ["a"], ONLY_B: [], BOTH: []}  # still shown, unavailable for now
        assert names(httpx.get(gateway.url + "/api/tags").json()["models"], "name") == [ONLY_A]
    finally:
        for process in (gateway, a, b):
            process.stop()


@pytest.fixture(scope="module")
def mixed(server: str) -> Iterator[Server]:  # noqa: F811
    """llama.cpp as [[backends]] kind "openai" named "llama", beside a simulated Ollama named "sim"."""
    sim = start_simulator("--profile", "instant")
    config = backends_toml(
        {"name": "sim", "url": sim.url, "slots": 2},
        {"name": "llama", "kind": "openai", "url": server, "slots": 2, "api_key_env": "FLEET_LLAMA_KEY"},
    )
    gateway = start_fleet(config, "--num-predict", "12", "--no-model-titles", env={"FLEET_LLAMA_KEY": KEY})
    try:
        wait_until(lambda: len(httpx.get(gateway.url + "/chat/api/models").json()["models"]) == 2, "both models")
        yield gateway
    finally:
        gateway.stop()
        sim.stop()


@pytest.mark.asyncio
async def test_a_chat_turn_on_the_openai_backend(mixed: Server) -> None:
    with ChatApi(mixed.url) as api:
        conversation = api.create(model=GEMMA)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            socket = Socket(await session.ws_connect(mixed.url + "/chat/api/ws"))
            assert (await socket.next())["type"] == "hello"
            ack = await socket.command("send", conversation_id=conversation["id"], content="Why is the sky blue?")
            events = await socket.until(done_of(ack["reply"]["id"]), within=60)
            await socket.ws.close()
        stored = api.view(conversation["id"])["messages"][-1]
    assert (stored["status"], stored["backend"], stored["model"]) == ("done", "llama", GEMMA)
    assert stored["content"].strip()
    assert stored["content"] == "".join(e.get("content", "") for e in events if e["type"] == "reply.delta")


def test_the_raw_apis_on_a_mixed_fleet(mixed: Server) -> None:
    body = {"model": GEMMA, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 6, "stream": True}
    with httpx.stream("POST", mixed.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert (response.status_code, response.headers[BACKEND]) == (200, "llama")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"

    ollama_only = ask(mixed, chat("hi", model=GEMMA))  # /api/* is Ollama's API: the simulator does not serve it
    assert ollama_only.status_code == 404, ollama_only.text
    assert ollama_only.headers["content-type"].startswith("application/json")
    assert GEMMA in ollama_only.json()["error"]
    assert ask(mixed, chat("hi")).headers[BACKEND] == "sim"

    assert names(httpx.get(mixed.url + "/v1/models").json()["data"], "id") == sorted([GEMMA, ONLY_A])
    assert names(httpx.get(mixed.url + "/api/tags").json()["models"], "name") == [ONLY_A]  # Ollama's list: Ollama's
    page = {m["name"]: m["backends"] for m in httpx.get(mixed.url + "/chat/api/models").json()["models"]}
    assert page == {ONLY_A: ["sim"], GEMMA: ["llama"]}
