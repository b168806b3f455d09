"""The simulator's composed replies: they answer the question (its language, the table, list and code it asks for, a
length that suits it), are the same for the same seed, and differ from one request to the next without one.

The first half calls `compose` directly over several seeds, so a property that holds only by chance fails; the
second half asks a real `clawdbot simulate` process over HTTP, as the gateway and `--demo` do.
"""

from __future__ import annotations

import random
import re
from typing import Any

import httpx
import pytest

from chat_support import chat_api
from clawdbot.simulator.ask import is_chinese
from clawdbot.simulator.replies import GREEDY, compose, count_tokens, reply_seed, tokenize
from conftest import MODEL, Server, chat_body, start_simulator

SEEDS = range(8)
HAN = re.compile(r"[\u4e00-\u9fff]")
TABLE = re.compile(r"^\|.+\|\n\|(?: ?-+ ?\|)+\n\|.+\|$", re.MULTILINE)
FENCE = re.compile(r"```[a-z]*\n.*?\n```", re.DOTALL)


def prose(content: str) -> list[str]:
    """The paragraphs of a reply outside its code blocks."""
    return [block for block in FENCE.sub("", content).split("\n\n") if block.strip()]


# ---- language ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_an_english_question_gets_an_english_answer(seed: int) -> None:
    reply = compose(seed, "How do I keep a WebSocket open behind a reverse proxy?", think=True)
    assert not HAN.search(reply.content)
    assert not HAN.search(reply.thinking)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_chinese_question_gets_a_chinese_answer(seed: int) -> None:
    reply = compose(seed, "我们团队想在内网部署大模型，需要注意哪些安全问题？", think=True)
    assert all(HAN.search(paragraph) for paragraph in prose(reply.content)), reply.content
    assert HAN.search(reply.thinking)
    assert not re.search(r"\b(?:the|and|user)\b", reply.thinking)


@pytest.mark.parametrize(
    ("text", "chinese"),
    [
        ("用python写一个快速排序", True),
        ("Python 异步编程中 asyncio.gather() 和 asyncio.create_task() 有什么区别？", True),
        ("What does 你好 mean?", False),
        ("こんにちは、元気ですか", False),  # Japanese: answered in English
        ("Wie spät ist es?", False),
    ],
)
def test_chinese_is_told_from_english_and_other_languages(text: str, chinese: bool) -> None:
    assert is_chinese(text) is chinese


@pytest.mark.parametrize("question", ["Wie spät ist es?", "Как дела?"])
def test_other_languages_are_answered_in_english(question: str) -> None:
    content = compose(1, question, think=False).content
    assert not HAN.search(content)
    assert re.search(r"\b(?:the|and|is)\b", content)


# ---- formats ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_a_table_and_a_python_code_block_when_asked(seed: int) -> None:
    content = compose(seed, "Explain Python decorators with a table and a python code block", think=False).content
    assert TABLE.search(content), content
    assert "```python\n" in content
    assert "def " in content


@pytest.mark.parametrize(
    ("question", "fence", "marker"),
    [
        ("Write a Python function that retries an HTTP request", "python", "def fetch_with_retry("),
        ("Write a JavaScript debounce function", "javascript", "function debounce("),
        ("Show me TypeScript code that fetches a user", "typescript", "interface User"),
        ("Write a Go program that starts an HTTP server", "go", "package main"),
        ("Write a Rust program that counts words", "rust", "fn main()"),
        ("Write a Java program that totals orders per customer", "java", "public class"),
        ("Write a C program that counts lines", "c", "#include <stdio.h>"),
        ("Write a C++ program that sorts names", "cpp", "#include <algorithm>"),
        ("Write a SQL query for the top customers", "sql", "SELECT"),
        ("Write a bash script that counts files by extension", "bash", "set -euo pipefail"),
        ("Give me a JSON config for the gateway", "json", '"upstream"'),
        ("Write a YAML docker-compose file for Ollama", "yaml", "services:"),
        ("Write an HTML sign-up form", "html", "<form"),
        ("Write CSS for a grid of cards", "css", "grid-template-columns"),
        ("Write a Dockerfile for a Python app", "dockerfile", "FROM python"),
        ("Show the fix as a diff", "diff", "+++ b/"),
        ("How do I configure nginx for WebSockets?", "nginx", "proxy_set_header Upgrade"),
        ("用python写一个快速排序", "python", "def quicksort("),
    ],
)
def test_code_comes_in_the_language_the_question_names(question: str, fence: str, marker: str) -> None:
    for seed in range(3):
        content = compose(seed, question, think=False).content
        block = re.search(rf"```{re.escape(fence)}\n(.*?)\n```", content, re.DOTALL)
        assert block is not None, content
        assert marker in block.group(1)
        assert block.group(1).count("\n") >= 4  # a program, not a placeholder


def test_several_languages_each_get_their_block() -> None:
    content = compose(0, "Write a Rust program and a C++ program that count words", think=False).content
    assert content.index("```rust\n") < content.index("```cpp\n")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_list_when_asked(seed: int) -> None:
    bullets = compose(seed, "Give me some tips for clean code as a bulleted list", think=False).content
    assert len(re.findall(r"^- \S", bullets, re.MULTILINE)) >= 3
    steps = compose(seed, "List 5 steps to deploy a web service", think=False).content
    assert re.findall(r"^(\d)\. \S", steps, re.MULTILINE) == ["1", "2", "3", "4", "5"]
    chinese = compose(seed, "请把部署的注意事项整理成要点列表", think=False).content
    assert len(re.findall(r"^- \S", chinese, re.MULTILINE)) >= 3


@pytest.mark.parametrize("seed", SEEDS)
def test_the_answer_is_on_the_questions_topic(seed: int) -> None:
    how = compose(seed, "How do I configure nginx to proxy WebSocket connections?", think=True)
    assert "configure nginx to proxy WebSocket connections" in how.content.split("\n\n")[0]
    assert "configure nginx" in how.thinking
    comparison = compose(seed, "用一个表格比较 TCP 和 UDP 的主要区别。", think=False).content
    assert re.search(r"^\| .* \| TCP \| UDP \|$", comparison, re.MULTILINE)
    detailed = compose(seed, "Explain in detail how HTTP caching works", think=False).content
    assert detailed.startswith("## How HTTP caching works\n\n")
    assert len(re.findall(r"^### ", detailed, re.MULTILINE)) >= 3


# ---- length -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_length_follows_the_question(seed: int) -> None:
    def size(question: str) -> int:
        return count_tokens(compose(seed, question, think=False).content)

    greeting, short = size("hi"), size("How do I stream tokens?")
    normal = size("How do I stream tokens from Ollama to a browser through a reverse proxy?")
    detailed = size("Explain in detail how to stream tokens from Ollama to a browser")
    assert greeting < short < detailed
    assert normal < detailed
    assert size("Briefly, how do I stream tokens from Ollama to a browser?") < normal


def test_lengths_vary_between_questions_and_seeds() -> None:
    questions = ["hi", "How do I stream?", "Compare TCP and UDP", "Explain in detail how DNS works"]
    assert len({count_tokens(compose(0, q, think=False).content) for q in questions}) == len(questions)
    same = "How do I stream tokens from Ollama to a browser through a reverse proxy?"
    assert len({count_tokens(compose(seed, same, think=False).content) for seed in range(10)}) >= 5


def test_thinking_follows_the_same_reading() -> None:
    asked = compose(2, "Explain Python decorators with a table and a python code block", think=True).thinking
    assert "table" in asked
    assert "Python code" in asked
    greeting = compose(2, "hi", think=True).thinking
    detailed = compose(2, "Explain in detail how DNS works", think=True).thinking
    assert count_tokens(greeting) < 30 < count_tokens(detailed)
    assert "在问“KV cache”" in compose(2, "帮我解释一下 KV cache 是什么？", think=True).thinking


def test_the_answer_does_not_depend_on_thinking() -> None:
    question = "Compare PostgreSQL and SQLite for a small internal service"
    with_thinking = compose(5, question, think=True)
    assert with_thinking.content == compose(5, question, think=False).content
    assert compose(5, question, think=False).thinking == ""
    assert "<think>" not in with_thinking.thinking + with_thinking.content


@pytest.mark.parametrize(
    "question",
    ["hi", "Explain Python decorators with a table and a python code block", "请详细解释一下 TCP 三次握手"],
)
def test_composed_tokens_join_back_to_the_text(question: str) -> None:
    reply = compose(7, question, think=True)
    for text in (reply.thinking, reply.content):
        assert "".join(tokenize(text)) == text


# ---- seeds --------------------------------------------------------------------------------------------------------
def test_compose_is_deterministic_per_seed_and_prompt() -> None:
    question = "How do I stream tokens from Ollama to a browser through a reverse proxy?"
    first = compose(0, question, think=True)
    assert first == compose(0, question, think=True)
    assert first != compose(1, question, think=True)
    assert first != compose(0, question + " Please be specific.", think=True)


def test_reply_seed_is_the_requests_else_greedy_else_a_fresh_draw() -> None:
    draw = random.Random(0)
    assert reply_seed({"seed": 42}, draw) == 42
    assert reply_seed({"seed": 42.0, "temperature": 0.7}, draw) == 42
    assert reply_seed({"temperature": 0}, draw) == reply_seed({"temperature": 0.0, "seed": 9}, draw) == GREEDY
    fresh = [reply_seed({}, draw), reply_seed({"seed": -1}, draw), reply_seed({"temperature": 1.0}, draw)]
    assert len(set(fresh)) == 3
    assert GREEDY not in fresh
    again = random.Random(0)  # the simulator's --seed makes a run of draws reproducible
    assert [reply_seed({}, again), reply_seed({"seed": -1}, again), reply_seed({}, again)] == fresh


# ---- over HTTP, through a real simulator -------------------------------------------------------------------------
def chat(sim: Server, question: str, **extra: Any) -> dict[str, Any]:
    body = chat_body(question, stream=False, **extra)
    response = httpx.post(sim.url + "/api/chat", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["message"]  # type: ignore[no-any-return]


def v1(sim: Server, question: str, **extra: Any) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], **extra}
    response = httpx.post(sim.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]  # type: ignore[no-any-return]


def test_over_http_the_reply_answers_the_question(simulator: Server) -> None:
    english = chat(simulator, "Explain Python decorators with a table and a python code block")
    assert TABLE.search(english["content"])
    assert "```python\n" in english["content"]
    assert not HAN.search(english["content"] + english["thinking"])
    chinese = chat(simulator, "用一个表格比较 TCP 和 UDP 的主要区别。")
    assert all(HAN.search(paragraph) for paragraph in prose(chinese["content"]))
    assert TABLE.search(chinese["content"])
    assert HAN.search(chinese["thinking"])
    listing = chat(simulator, "List 5 steps to deploy a web service", think=False)
    assert re.findall(r"^(\d)\. ", listing["content"], re.MULTILINE) == ["1", "2", "3", "4", "5"]


def test_over_http_a_seed_repeats_the_reply_and_no_seed_samples_anew(simulator: Server) -> None:
    question = "How do I stream tokens from Ollama to a browser through a reverse proxy?"
    seeded = chat(simulator, question, options={"seed": 42})
    assert chat(simulator, question, options={"seed": 42}) == seeded
    assert chat(simulator, question, options={"seed": 43})["content"] != seeded["content"]
    unseeded = [chat(simulator, question) for _ in range(2)]
    assert unseeded[0]["content"] != unseeded[1]["content"]  # Regenerate gives another answer
    greedy = chat(simulator, question, options={"temperature": 0})
    assert chat(simulator, question, options={"temperature": 0, "seed": 7}) == greedy
    body = {"model": MODEL, "prompt": question, "stream": False, "options": {"seed": 42}}
    generated = httpx.post(simulator.url + "/api/generate", json=body, timeout=30).json()
    assert generated["response"] == seeded["content"]
    assert v1(simulator, question, seed=42) == v1(simulator, question, seed=42)
    assert v1(simulator, question) != v1(simulator, question)
    assert v1(simulator, question, temperature=0) == v1(simulator, question, temperature=0)


def test_the_simulators_seed_makes_a_run_of_unseeded_replies_reproducible() -> None:
    runs = []
    for _ in range(2):
        sim = start_simulator("--profile", "instant", "--seed", "5")
        try:
            question = "How do I stream tokens from Ollama to a browser through a reverse proxy?"
            runs.append([chat(sim, question)["content"] for _ in range(3)])
        finally:
            sim.stop()
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 3


def test_through_the_gateway_regenerate_gives_another_answer_to_the_question(gateway: Server) -> None:
    """What a --demo user sees: the answer holds what was asked for, and Regenerate does not repeat it."""
    with chat_api(gateway.url) as api:
        conversation = api.create()["id"]
        first = api.turn(conversation, "Explain Python decorators with a table and a python code block")
        assert first["status"] == "done"
        assert TABLE.search(first["content"])
        assert "```python\n" in first["content"]
        again = api.wait_reply(conversation, api.post(conversation, "regenerate")["reply"]["id"])
        assert again["status"] == "done"
        assert again["content"] != first["content"]
        assert "```python\n" in again["content"]
        chinese = api.turn(conversation, "请用表格比较 TCP 和 UDP")
        assert all(HAN.search(paragraph) for paragraph in prose(chinese["content"]))
