"""What a chat turn sends: the conversation's history in Ollama's `messages` format, trimmed to fit `num_ctx`.

Counts come from the backend's exact numbers where they exist: the last reply's prompt_eval_count is exactly
what the history cost then, and its eval_count what the reply added. Only text the model has not seen yet is
estimated, and the estimate is scaled by how far earlier estimates missed the exact count. When the next turn
would not leave `reply_room` tokens free, the oldest turns are left out, never the system prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..store.records import Conversation, Message

_PIECE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z]+|\d|[^\sA-Za-z\d]")
_PER_MESSAGE = 4  # chat template tokens around each message
_PER_TURN = 3  # the assistant header that opens the reply


def estimate(text: str) -> int:
    """Rough token count: a CJK character, an English word, a digit or a symbol each count as one."""
    return len(_PIECE.findall(text)) + _PER_MESSAGE


@dataclass(slots=True)
class Plan:
    messages: list[dict[str, str]]
    omitted_turns: int
    estimated_tokens: int
    budget: int
    notes: list[str] = field(default_factory=list)


def _turns(history: list[Message]) -> list[list[Message]]:
    """Group shown messages into turns: a user message and the reply that answered it, if any."""
    turns: list[list[Message]] = []
    for message in history:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def _sendable(message: Message) -> dict[str, str] | None:
    """The message as Ollama reads it; thinking is never sent back, replies with no text are skipped."""
    if message.role == "assistant" and not message.content:
        return None
    return {"role": message.role, "content": message.content}


def _scale(history: list[Message], system_prompt: str) -> float:
    """How far the estimate missed the exact prompt_eval_count of the last reply that has one."""
    for index in range(len(history) - 1, -1, -1):
        reply = history[index]
        exact = reply.prompt_tokens or 0
        if reply.role == "assistant" and exact > 0:
            # Compare like with like: that prompt held only the turns that reply did not leave out.
            sent = _turns(history[:index])[reply.omitted_turns or 0 :]
            seen = [m for turn in sent for m in turn if _sendable(m)]
            guess = (
                sum(estimate(m.content) for m in seen) + _PER_TURN + (estimate(system_prompt) if system_prompt else 0)
            )
            return min(max(exact / guess, 0.5), 3.0) if guess else 1.0
    return 1.0


def plan(history: list[Message], system_prompt: str, num_ctx: int, reply_room: int) -> Plan:
    """Messages for the next turn; `history` is every shown message, ending with the new user message."""
    ratio = _scale(history, system_prompt)
    # The room kept for the reply is at most half the context: a small context (a model's own 2048, say) with the
    # default --reply-room would otherwise leave no room for any earlier turn.
    budget = num_ctx - min(reply_room, num_ctx // 2)
    turns = _turns(history)
    sizes = [sum(estimate(m.content) for m in turn if _sendable(m)) * ratio for turn in turns]
    fixed = (estimate(system_prompt) * ratio if system_prompt else 0) + _PER_TURN
    total = fixed + sum(sizes)
    omitted = 0
    while total > budget and omitted < len(turns) - 1:  # the newest turn, the one being asked, always goes
        total -= sizes[omitted]
        omitted += 1
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in turns[omitted:]:
        messages += [sendable for m in turn if (sendable := _sendable(m))]
    notes = [] if total <= budget else ["the newest message alone does not fit; the backend will truncate it"]
    return Plan(messages, omitted, round(total), budget, notes)


def in_use(history: list[Message]) -> int | None:
    """Tokens the context held at the end of the last finished reply, from the backend's exact counts."""
    for message in reversed(history):
        if message.role == "assistant" and message.prompt_tokens:
            return message.prompt_tokens + (message.output_tokens or 0)
    return None


def request(conversation: Conversation, plan: Plan, num_ctx: int, num_predict: int) -> dict[str, Any]:
    """The /api/chat body of a turn. num_ctx goes on every turn, because Ollama reloads a model whenever it changes;
    num_predict too, so that no reply runs on until the context is exhausted."""
    options: dict[str, Any] = {"num_ctx": num_ctx, "num_predict": num_predict}
    if conversation.temperature is not None:
        options["temperature"] = conversation.temperature
    body: dict[str, Any] = {
        "model": conversation.model,
        "messages": plan.messages,
        "stream": True,
        "options": options,
    }
    if conversation.think is not None:
        body["think"] = conversation.think
    return body


def continuation(body: dict[str, Any], content: str, thinking: str, written: int) -> dict[str, Any]:
    """A turn's request that goes on from the text a reply has (the model continues a last assistant message, as
    Ollama and llama.cpp do), asking for the tokens it has left: how a reply moves to another backend mid-way."""
    messages = list(body["messages"])
    partial: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        partial["thinking"] = thinking
    if messages and messages[-1].get("role") == "assistant":  # Continue's own prefix, now longer
        messages[-1] = partial
    else:
        messages.append(partial)
    options = dict(body.get("options") or {})
    if "num_predict" in options:
        options["num_predict"] = max(1, int(options["num_predict"]) - written)
    return {**body, "messages": messages, "options": options}
