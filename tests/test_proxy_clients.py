"""The official `ollama` and `openai` Python clients pointed at the gateway behave as they do against Ollama.

Each test runs the same calls against the simulator directly and through the gateway and compares what the
client library hands back: chunks, whole replies, token counts and the exceptions it raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import ollama
import openai
import pytest

from accounts_support import bearer, keyed_gateway
from conftest import Server, script

MODEL = "qwen3:32b"
REPLY = "Rayleigh scattering: short <blue> wavelengths scatter more & faster. 🌤"
THINKING = "The user asks about the sky. I should mention scattering."


def scripted(sim: Server, *, thinking: str = THINKING) -> str:
    """Script the same reply for the next two requests (direct, then through the gateway); returns the prompt."""
    prompt = f"question {uuid.uuid4().hex}"
    script(sim, {"match": prompt, "reply": REPLY, "thinking": thinking, "times": 2})
    return prompt


def both(simulator: Server, gateway: Server) -> list[str]:
    return [simulator.url, gateway.url]


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# ---- ollama ---------------------------------------------------------------------------------------------------
def test_ollama_chat_stream_gives_the_same_chunks(simulator: Server, gateway: Server) -> None:
    prompt = scripted(simulator)
    runs = []
    for url in both(simulator, gateway):
        with ollama.Client(host=url) as client:
            chunks = list(client.chat(model=MODEL, messages=messages(prompt), stream=True))
        runs.append(
            [
                (c.message.content, c.message.thinking, c.done, c.done_reason, c.eval_count, c.prompt_eval_count)
                for c in chunks
            ]
        )
    direct, relayed = runs
    assert relayed == direct
    assert "".join(c[0] for c in relayed) == REPLY
    assert "".join(c[1] or "" for c in relayed) == THINKING
    assert relayed[-1][2:4] == (True, "stop")
    assert relayed[-1][4] > len(relayed) - 2  # eval_count counts every generated token, thinking included


def test_ollama_chat_whole_reply_is_the_same(simulator: Server, gateway: Server) -> None:
    prompt = scripted(simulator)
    replies = []
    for url in both(simulator, gateway):
        with ollama.Client(host=url) as client:
            r = client.chat(model=MODEL, messages=messages(prompt), stream=False)
        replies.append((r.message.content, r.message.thinking, r.done_reason, r.eval_count, r.prompt_eval_count))
    assert replies[1] == replies[0]
    assert replies[1][:3] == (REPLY, THINKING, "stop")


@pytest.mark.parametrize("stream", [True, False])
def test_ollama_generate_is_the_same(simulator: Server, gateway: Server, stream: bool) -> None:
    prompt = scripted(simulator, thinking="")
    results = []
    for url in both(simulator, gateway):
        with ollama.Client(host=url) as client:
            got = client.generate(model=MODEL, prompt=prompt, think=False, stream=stream)
            parts = list(got) if stream else [got]
        final = parts[-1]
        results.append(("".join(p.response for p in parts), final.done_reason, final.eval_count, final.context))
    assert results[1] == results[0]
    assert results[1][0] == REPLY


def test_ollama_list_and_show_are_the_same(simulator: Server, gateway: Server) -> None:
    views = []
    for url in both(simulator, gateway):
        with ollama.Client(host=url) as client:
            views.append((client.list().model_dump(), client.show(MODEL).model_dump()))
    assert views[1] == views[0]
    listed, shown = views[1]
    assert [m["model"] for m in listed["models"]] == [MODEL]
    assert "thinking" in shown["capabilities"]


CALLS: dict[str, Callable[[ollama.Client], object]] = {
    "chat": lambda c: c.chat(model="x", messages=messages("hi")),
    "chat-stream": lambda c: list(c.chat(model="x", messages=messages("hi"), stream=True)),
    "generate": lambda c: c.generate(model="x", prompt="hi"),
    "show": lambda c: c.show("x"),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_ollama_unknown_model_raises_the_same_error(
    simulator: Server, gateway: Server, call: Callable[[ollama.Client], object]
) -> None:
    for url in both(simulator, gateway):
        with ollama.Client(host=url) as client, pytest.raises(ollama.ResponseError) as raised:
            call(client)
        assert raised.value.status_code == 404
        assert raised.value.error == "model 'x' not found"


def test_ollama_client_sending_a_browser_origin_works_through_the_gateway(simulator: Server) -> None:
    headers = {"Origin": "https://chat.example.com"}
    with ollama.Client(host=simulator.url, headers=headers) as client, pytest.raises(ollama.ResponseError) as raised:
        client.list()
    assert raised.value.status_code == 403
    prompt = scripted(simulator)
    gateway, key = keyed_gateway(simulator.url)  # deployed under a public name: accounts, and the client's key
    try:
        with ollama.Client(host=gateway.url, headers={**headers, **bearer(key)}) as client:
            assert client.chat(model=MODEL, messages=messages(prompt)).message.content == REPLY
    finally:
        gateway.stop()


def test_ollama_client_gets_a_502_naming_the_backend_when_it_is_down(down_gateway: Server) -> None:
    with ollama.Client(host=down_gateway.url) as client, pytest.raises(ollama.ResponseError) as raised:
        client.chat(model=MODEL, messages=messages("hi"))
    assert raised.value.status_code == 502
    backend = down_gateway.args[down_gateway.args.index("--ollama-url") + 1]
    assert backend in raised.value.error
    assert "refused" in raised.value.error


# ---- openai ---------------------------------------------------------------------------------------------------
def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def test_openai_chat_whole_reply_is_the_same(simulator: Server, gateway: Server) -> None:
    prompt = scripted(simulator)
    replies = []
    for url in both(simulator, gateway):
        with openai_client(url) as client:
            r = client.chat.completions.create(model=MODEL, messages=messages(prompt))
        choice = r.choices[0]
        extra = choice.message.model_extra or {}
        replies.append((choice.message.content, extra.get("reasoning"), choice.finish_reason, r.usage))
    assert replies[1] == replies[0]
    content, reasoning, finish, usage = replies[1]
    assert (content, reasoning, finish) == (REPLY, THINKING, "stop")
    assert usage is not None
    assert usage.completion_tokens > 10


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_chat_stream_is_the_same(simulator: Server, gateway: Server, include_usage: bool) -> None:
    prompt = scripted(simulator, thinking="")
    runs = []
    for url in both(simulator, gateway):
        with openai_client(url) as client:
            stream = client.chat.completions.create(
                model=MODEL,
                messages=messages(prompt),
                stream=True,
                stream_options={"include_usage": include_usage},
            )
            chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        runs.append((text, finish, [c.usage for c in chunks if c.usage]))
    assert runs[1] == runs[0]
    text, finish, usage = runs[1]
    assert (text, finish) == (REPLY, ["stop"])
    assert len(usage) == (1 if include_usage else 0)
    if include_usage:
        assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens > 0


def test_openai_models_are_the_same(simulator: Server, gateway: Server) -> None:
    views = []
    for url in both(simulator, gateway):
        with openai_client(url) as client:
            views.append(([m.model_dump() for m in client.models.list()], client.models.retrieve(MODEL).model_dump()))
    assert views[1] == views[0]
    assert [m["id"] for m in views[1][0]] == [MODEL]


def test_openai_unknown_model_raises_not_found(simulator: Server, gateway: Server) -> None:
    for url in both(simulator, gateway):
        with openai_client(url) as client:
            with pytest.raises(openai.NotFoundError) as raised:
                client.chat.completions.create(model="x", messages=messages("hi"))
            assert raised.value.status_code == 404
            assert raised.value.body == {
                "message": "model 'x' not found",
                "type": "not_found_error",
                "param": None,
                "code": None,
            }
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="x", messages=messages("hi"), stream=True)
            with pytest.raises(openai.NotFoundError):
                client.models.retrieve("x")


@pytest.mark.parametrize("stream", [True, False])
def test_openai_backend_down_raises_a_502(down_gateway: Server, stream: bool) -> None:
    with openai_client(down_gateway.url) as client, pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=messages("hi"), stream=stream)
    error = raised.value
    assert error.status_code == 502
    assert isinstance(error.body, dict)
    assert error.body["code"] == "backend_unreachable"
    assert error.body["type"] == "api_error"
    assert down_gateway.args[down_gateway.args.index("--ollama-url") + 1] in error.message


@pytest.mark.parametrize("kind", ["error_line", "drop"])
def test_openai_failure_mid_stream_raises_while_iterating(simulator: Server, gateway: Server, kind: str) -> None:
    prompt = f"fails {uuid.uuid4().hex}"
    script(simulator, {"match": prompt, "reply": REPLY, "thinking": "", "fault": {"kind": kind, "after": 4}})
    received: list[object] = []
    with openai_client(gateway.url) as client:
        stream = client.chat.completions.create(model=MODEL, messages=messages(prompt), stream=True)
        with pytest.raises(openai.APIError) as raised:
            received.extend(stream)
    assert not isinstance(raised.value, openai.APIConnectionError), "the gateway should say what went wrong"
    assert 4 <= len(received) <= 5  # Ollama turns its own error line into one empty chunk
    assert "backend" in raised.value.message
