"""Which turns go to the model: the history in Ollama's format, trimmed from the oldest turn when it would not
leave room for the reply, counted with the backend's own numbers where there are some.

Unit tests of context.plan() and context.in_use(), then one conversation through a real gateway with a small
num_ctx, checking what the backend received and what the page is told.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from chat_support import Spy, chat_api
from clawdbot.chat.context import estimate, in_use, plan
from clawdbot.store.records import Message, new_message
from conftest import Server, script, start_gateway


def user(content: str) -> Message:
    return new_message("c", "user", content, status="sent")


def reply(content: str, thinking: str = "", **counts: int | None) -> Message:
    """A stored reply; `counts` are prompt_tokens, output_tokens and omitted_turns."""
    return replace(new_message("c", "assistant", content, status="done", thinking=thinking), **counts)


WORDY = " ".join(["word"] * 96)  # 96 pieces + 4 around the message: 100 tokens by the estimate


# ---- estimates -----------------------------------------------------------------------------------------------------
def test_the_estimate_counts_words_cjk_characters_digits_and_symbols() -> None:
    assert estimate("") == 4  # the chat template's tokens around any message
    assert estimate("hello world") == 6
    assert estimate("你好世界") == 8
    assert estimate("in 2024!") == 1 + 4 + 1 + 4
    assert estimate(WORDY) == 100


# ---- what is sent --------------------------------------------------------------------------------------------------
def test_everything_that_fits_is_sent_system_first_without_thinking() -> None:
    history = [
        user("What is 2+2?"),
        reply("4.", thinking="Two and two make four."),
        reply("", thinking="a failed reply with no text"),  # nothing to send back
        user("And 3+3?"),
    ]
    result = plan(history, "Answer briefly.", 8192, 2048)
    assert result.messages == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert result.omitted_turns == 0
    assert result.budget == 8192 - 2048
    assert result.notes == []
    assert "<think>" not in str(result.messages)


def test_no_system_prompt_sends_no_system_message() -> None:
    assert plan([user("hi")], "", 8192, 2048).messages == [{"role": "user", "content": "hi"}]


def test_exact_counts_from_the_backend_correct_the_guess() -> None:
    guessed = plan([user(WORDY), reply("short"), user("next")], "", 8192, 0).estimated_tokens
    assert guessed == 100 + estimate("short") + estimate("next") + 3  # + the header that opens the reply
    # The model charged twice the guess for the first prompt (the message and the header): so is everything else.
    counted = [user(WORDY), reply("short", prompt_tokens=2 * (100 + 3), output_tokens=5), user("next")]
    assert plan(counted, "", 8192, 0).estimated_tokens == pytest.approx(2 * guessed, abs=3)


def test_the_count_is_compared_with_what_that_reply_was_really_sent() -> None:
    # The last reply left the first turn out, and its prompt cost exactly what the estimate says the rest does.
    history = [
        user(WORDY),
        reply(WORDY),
        user(WORDY),
        reply(WORDY, prompt_tokens=100 + 3, output_tokens=100, omitted_turns=1),
        user("next"),
    ]
    result = plan(history, "", 300 + 300, 300)
    assert result.omitted_turns == 1  # 408 tokens by the estimate; 208 without the first turn
    assert result.messages[0]["content"] == WORDY
    assert len(result.messages) == 3


def test_a_wild_count_only_scales_the_guess_so_far() -> None:
    history = [user(WORDY), reply("short", prompt_tokens=100_000), user("next")]
    unscaled = plan([user(WORDY), reply("short"), user("next")], "", 1_000_000, 0).estimated_tokens
    assert 2.5 * unscaled < plan(history, "", 1_000_000, 0).estimated_tokens <= 3 * unscaled


def test_the_oldest_turns_are_left_out_first_and_whole() -> None:
    history: list[Message] = []
    for i in range(4):
        history += [user(f"q{i} " + WORDY), reply(f"a{i} " + WORDY)]
    history.append(user("the newest question"))
    # Each old turn costs about 202 tokens; 500 leaves room for the newest question and two whole turns.
    result = plan(history, "Be brief.", 500 + 100, 100)
    assert result.omitted_turns == 2
    assert result.messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["content"][:2] for m in result.messages[1:-1]] == ["q2", "a2", "q3", "a3"]
    assert result.messages[-1] == {"role": "user", "content": "the newest question"}
    assert result.estimated_tokens <= result.budget


def test_the_newest_message_and_the_system_prompt_always_go() -> None:
    history = [user("old"), reply("older answer"), user(WORDY * 5)]
    result = plan(history, "System rules.", 256, 200)
    assert result.omitted_turns == 1
    assert result.messages == [
        {"role": "system", "content": "System rules."},
        {"role": "user", "content": WORDY * 5},
    ]
    assert result.notes  # it does not fit even alone: the page is told the backend will truncate it


def test_a_small_context_keeps_half_for_the_history_whatever_the_reply_room() -> None:
    """--reply-room 2048 (the default) with a model of 2048 tokens (Ollama 0.5's default) once sent every turn
    without its history: the room kept for the reply is at most half the context."""
    history = [user("my name is Ana"), reply("Nice to meet you, Ana."), user("what is my name?")]
    result = plan(history, "", 2048, 2048)
    assert result.omitted_turns == 0
    assert result.budget == 1024
    assert [m["content"] for m in result.messages] == ["my name is Ana", "Nice to meet you, Ana.", "what is my name?"]


def test_in_use_is_the_last_replys_exact_count() -> None:
    assert in_use([]) is None
    assert in_use([user("hi"), reply("partial")]) is None
    history = [user("a"), reply("b", prompt_tokens=30, output_tokens=12), user("c"), reply("", prompt_tokens=None)]
    assert in_use(history) == 42


# ---- through the gateway ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spy(simulator: Server) -> Iterator[Spy]:
    server = Spy(simulator.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(spy: Spy) -> Iterator[Server]:
    server = start_gateway(spy.url, "--reply-room", "128")
    yield server
    server.stop()


def test_a_small_context_leaves_old_turns_out_and_says_so(gateway: Server, spy: Spy, simulator: Server) -> None:
    answer = " ".join(f"answer{i}" for i in range(60))  # no token repeated 31 times: Ollama would cut it off
    with chat_api(gateway.url) as api:
        conversation = api.create(num_ctx=512, system_prompt="You are a patient tutor.")
        script(simulator, {"reply": answer, "thinking": "", "times": -1})
        replies = [api.turn(conversation["id"], f"question {i}: " + " ".join(["please"] * 80)) for i in range(4)]
        sent = spy.last_chat().body
        assert sent["options"]["num_ctx"] == 512
        assert sent["messages"][0] == {"role": "system", "content": "You are a patient tutor."}
        assert sent["messages"][-1]["content"].startswith("question 3:")
        assert len(sent["messages"]) < 1 + 2 * 4 - 1  # the system prompt and every turn would be 8
        assert replies[0]["omitted_turns"] == 0
        assert replies[-1]["omitted_turns"] > 0
        assert len(sent["messages"]) == 1 + 2 * (4 - replies[-1]["omitted_turns"]) - 1
        context = api.view(conversation["id"])["context"]
        assert context["omitted_turns"] == replies[-1]["omitted_turns"]
        assert context["num_ctx"] == 512
        assert context["in_use"] == replies[-1]["prompt_tokens"] + replies[-1]["output_tokens"]
