"""Continuing a partial reply: a chat whose last message is the assistant's goes on from that text, as Ollama does
(its template leaves the assistant's turn open), instead of answering the question again after it.

Each test asks a real `clawdbot simulate` for a whole reply, cuts it, sends the cut text back as the last message
with the same seed, and reads the stream: partial + continuation must be the reply it would have given in one go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from clawdbot.simulator.replies import count_tokens
from conftest import MODEL, Server, script, timed_stream

ENGLISH = "How do I keep a WebSocket open behind a reverse proxy?"
CHINESE = "我们团队想在内网部署大模型，需要注意哪些安全问题？"


@dataclass
class Streamed:
    thinking: str
    content: str
    final: dict[str, Any]


def stream(sim: Server, messages: list[dict[str, str]], seed: int = 7, **extra: Any) -> Streamed:
    """A streamed /api/chat: the text of its chunks and the final chunk's counts."""
    options = {"seed": seed, **extra.pop("options", {})}
    body = {"model": MODEL, "messages": messages, "options": options, **extra}
    run = timed_stream(sim, body)
    assert run.status == 200
    chunks = run.chunks
    final = chunks[-1]
    assert final["done"] is True, final
    assert all(c["done"] is False for c in chunks[:-1])
    parts = [c["message"] for c in chunks[:-1]]  # type: ignore[index]
    thinking = "".join(p.get("thinking", "") for p in parts)  # type: ignore[union-attr]
    content = "".join(p["content"] for p in parts)  # type: ignore[index]
    return Streamed(thinking, content, final)


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def mid_word(text: str) -> int:
    """An index inside a word, about a third of the way into `text`."""
    return next(i for i in range(len(text) // 3, len(text)) if text[i - 1 : i + 1].isalpha() and text[i].islower())


def mid_sentence(text: str) -> int:
    """The end of a word followed by another word in the same sentence: a token boundary, about halfway in."""
    pattern = r"(?<=[a-z]) (?=[a-z])|(?<=[\u4e00-\u9fff])(?=[\u4e00-\u9fff])"
    return next(m.start() for m in re.finditer(pattern, text) if m.start() >= len(text) // 2)


# ---- the rest of the same answer ------------------------------------------------------------------------------
@pytest.mark.parametrize(("question", "cut"), [(ENGLISH, mid_word), (ENGLISH, mid_sentence), (CHINESE, mid_sentence)])
def test_a_cut_reply_goes_on_from_where_it_stopped(simulator: Server, question: str, cut: Any) -> None:
    whole = stream(simulator, ask(question), think=False)
    at = cut(whole.content)
    partial = whole.content[:at]
    went_on = stream(simulator, [*ask(question), {"role": "assistant", "content": partial}], think=False)
    assert partial + went_on.content == whole.content  # one reply, not a second answer after the first
    assert (went_on.thinking, went_on.final["done_reason"]) == ("", "stop")
    # The partial text is prompt now: the prompt grows by it, the generated tokens shrink by as many.
    grew = went_on.final["prompt_eval_count"] - whole.final["prompt_eval_count"]
    assert grew == count_tokens(partial) - 4  # less the empty think block a new turn opens with (think: false)
    if cut is mid_sentence:  # a cut between tokens: every token is either prompt or generated
        assert went_on.final["eval_count"] == whole.final["eval_count"] - count_tokens(partial)


def test_a_thought_cut_short_thinks_on_then_answers(simulator: Server) -> None:
    whole = stream(simulator, ask(ENGLISH))
    assert whole.thinking
    at = mid_word(whole.thinking)
    opened = {"role": "assistant", "content": "", "thinking": whole.thinking[:at]}
    went_on = stream(simulator, [*ask(ENGLISH), opened])
    assert whole.thinking[:at] + went_on.thinking == whole.thinking
    assert went_on.content == whole.content
    assert went_on.final["done_reason"] == "stop"
    # "<think>" and the thought so far are prompt now
    grew = went_on.final["prompt_eval_count"] - whole.final["prompt_eval_count"]
    assert grew == 1 + count_tokens(whole.thinking[:at])


def test_a_reply_with_content_is_not_thought_over_again(simulator: Server) -> None:
    """Thinking on, but the turn already has content: the model is past its thinking and only goes on writing."""
    whole = stream(simulator, ask(ENGLISH))
    partial = whole.content[: mid_word(whole.content)]
    went_on = stream(simulator, [*ask(ENGLISH), {"role": "assistant", "content": partial, "thinking": whole.thinking}])
    assert (went_on.thinking, partial + went_on.content) == ("", whole.content)


def test_num_predict_counts_only_the_continuation(simulator: Server) -> None:
    whole = stream(simulator, ask(ENGLISH), think=False)
    partial = whole.content[: mid_sentence(whole.content)]
    capped = stream(
        simulator, [*ask(ENGLISH), {"role": "assistant", "content": partial}], think=False, options={"num_predict": 5}
    )
    assert (capped.final["done_reason"], capped.final["eval_count"]) == ("length", 5)
    assert whole.content.startswith(partial + capped.content)
    assert count_tokens(capped.content) == 5


def test_a_whole_reply_sent_back_has_nothing_left_to_say(simulator: Server) -> None:
    whole = stream(simulator, ask(ENGLISH), think=False)
    again = stream(simulator, [*ask(ENGLISH), {"role": "assistant", "content": whole.content}], think=False)
    assert (again.content, again.final["done_reason"]) == ("", "stop")


# ---- text the simulator did not write ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "partial",
    [
        "The short answer: it depends on how long the conne",  # another backend, cut mid-word
        "Proxies close idle connections, so the socket needs",  # mid-sentence
    ],
)
def test_text_from_elsewhere_goes_on_without_starting_over(simulator: Server, partial: str) -> None:
    whole = stream(simulator, ask(ENGLISH), think=False)
    went_on = stream(simulator, [*ask(ENGLISH), {"role": "assistant", "content": partial}], think=False)
    assert went_on.content
    assert not re.match(r"\s*[A-Z]", went_on.content), went_on.content[:80]  # no new sentence mid-sentence
    assert not went_on.content.strip().startswith(whole.content[:20])
    assert went_on.content in whole.content  # the rest of a fitting answer, not text of its own
    assert went_on.final["done_reason"] == "stop"


def test_another_seeds_reply_goes_on_as_this_seeds(simulator: Server) -> None:
    mine = stream(simulator, ask(ENGLISH), think=False, seed=1)
    theirs = stream(simulator, ask(ENGLISH), think=False, seed=2)
    assert mine.content != theirs.content
    partial = theirs.content[: mid_word(theirs.content)]
    went_on = stream(simulator, [*ask(ENGLISH), {"role": "assistant", "content": partial}], think=False, seed=1)
    assert re.match("[a-z]", went_on.content), went_on.content[:80]  # the word cut in half goes on
    assert went_on.content in mine.content


def test_the_openai_route_continues_too(simulator: Server) -> None:
    body = {"model": MODEL, "messages": ask(ENGLISH), "seed": 3, "reasoning_effort": "none"}
    whole = httpx.post(simulator.url + "/v1/chat/completions", json=body, timeout=30).json()
    text = whole["choices"][0]["message"]["content"]
    partial = text[: mid_word(text)]
    body["messages"] = [*ask(ENGLISH), {"role": "assistant", "content": partial}]
    went_on = httpx.post(simulator.url + "/v1/chat/completions", json=body, timeout=30).json()
    assert partial + went_on["choices"][0]["message"]["content"] == text


# ---- scripted replies -----------------------------------------------------------------------------------------------
def test_a_scripted_reply_goes_on_after_its_partial_text_and_a_scripted_continuation_goes_as_written(
    simulator: Server,
) -> None:
    script(
        simulator,
        {"match": "tell", "reply": "Once upon a time there was a proxy.", "thinking": ""},
        {"match": "tell", "reply": " and it kept the socket open.", "thinking": ""},
    )
    cut = [*ask("tell me"), {"role": "assistant", "content": "Once upon a ti"}]
    assert stream(simulator, cut, think=False).content == "me there was a proxy."
    assert stream(simulator, cut, think=False).content == " and it kept the socket open."
