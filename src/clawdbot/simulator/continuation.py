"""Going on from a partial reply: a chat whose last message is the assistant's continues that message.

Ollama renders a trailing assistant message as an open turn (qwen3's template and renderer write no `<|im_end|>`
after it and no new assistant header), so the model goes on from its last character: a word cut in half is
finished, a sentence goes on, and the text already there is prompt. A message with content is continued as
content; one with only thinking (thinking on) thinks on, then answers.

The simulator's answer is fixed by the request and its seed, so `rest_of` is what is left of that answer after the
partial text: partial + continuation is the uninterrupted answer. Text from elsewhere (another backend, another
seed) is picked up where its last words occur in the answer; failing that, the answer is joined at a point that
fits how the text ends (a new paragraph, the next sentence, or mid-sentence), so the reply never starts over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from .replies import tokenize


@dataclass(frozen=True, slots=True)
class Partial:
    """A trailing assistant message, as the template leaves it open."""

    content: str
    thinking: str  # the thought so far; "" unless the turn is still thinking
    thinking_open: bool  # no content yet and thinking on: the model thinks on before it answers


def partial_of(messages: list[dict[str, Any]], *, think: bool) -> Partial | None:
    if not messages or messages[-1].get("role") != "assistant":
        return None
    content = str(messages[-1].get("content") or "")
    still_thinking = think and not content
    return Partial(content, str(messages[-1].get("thinking") or "") if still_thinking else "", still_thinking)


def rest_of(full: str, said: str) -> str:
    """What follows `said` in an answer whose whole text would be `full`."""
    if full.startswith(said):
        return full[len(said) :]
    at = _anchor(full, said)
    return full[at:] if at is not None else _joined(full, said)


_MIN_TAIL = 4  # tokens: a shorter tail (" the", ", and") occurs anywhere and tells nothing
_MAX_TAIL = 64
_WORD_END = re.compile(r"(?<![A-Za-z])[A-Za-z]{2,}$")


def _anchor(full: str, said: str) -> int | None:
    """Where the answer goes on after the longest tail of `said` it contains, or after a word that completes the
    word `said` was cut in."""
    tokens = tokenize(said)
    starts = [0, *accumulate(len(token) for token in tokens[:-1])]
    for start in starts[-_MAX_TAIL : len(starts) - _MIN_TAIL + 1]:
        tail = said[start:]
        found = full.find(tail)
        if found >= 0:
            return found + len(tail)
    fragment = _WORD_END.search(said)
    if fragment is None:
        return None
    words = [match.start() for match in re.finditer(rf"\b{fragment.group()}", full)]
    return _nearest(words, len(said)) + len(fragment.group()) if words else None


_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_BLOCK = re.compile(r"(?<=\n\n)(?=\S)")
_SENTENCE = re.compile(r"(?<=[.!?] )(?=[A-Z])|(?<=[。！？])(?=[^\s])|(?<=\n\n)(?=\S)")
_MID = re.compile(rf"(?<=[a-z,]) (?=[a-z])|(?<=[{_CJK}，])(?=[{_CJK}])")
_ENDS_SENTENCE = (*".!?。！？:：", "```")


def _joined(full: str, said: str) -> str:
    """The answer from a point that fits how `said` ends, without starting it over."""
    if not full:
        return ""
    trimmed = said.rstrip(" \t")
    spaced = trimmed != said
    if not trimmed or trimmed.endswith("\n"):  # a new block: the next paragraph of the answer
        newlines = len(trimmed) - len(trimmed.rstrip("\n"))
        return "\n" * (2 - min(newlines, 2) if trimmed else 0) + full[_point(full, _BLOCK, len(said)) or 0 :]
    if trimmed.endswith(_ENDS_SENTENCE):
        rest = full[_point(full, _SENTENCE, len(said)) or 0 :]
        return rest if spaced or not rest[:1].isascii() else " " + rest
    at = _point(full, _MID, len(said))
    if at is None:  # the answer has no sentence to join mid-way: end this one, go on with the next
        stop = "。" if re.search(f"[{_CJK}]$", trimmed) else "."
        return stop + _joined(full, trimmed + stop)
    rest = full[at:]
    return rest.lstrip(" ") if spaced else rest


def _point(full: str, where: re.Pattern[str], after: int) -> int | None:
    points = [match.start() for match in where.finditer(full)]
    return _nearest(points, after) if points else None


def _nearest(points: list[int], after: int) -> int:
    """The first point at or past `after` (as much of the answer skipped as was said), else the last one."""
    return next((point for point in points if point >= after), points[-1])
