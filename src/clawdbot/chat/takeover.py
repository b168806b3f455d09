"""Taking over a reply whose writer died: the same reply, continued by the model from exactly where it was.

Several gateway processes share the replies' event logs (live/eventlog.py). When one dies mid-reply, another finds
the reply orphaned (live/sweep.py) and hands it here with what the shared log has of it: the text of its last
event, its status and its last seq. The reply goes on as itself — same id, same row, its events numbered on from
that seq — on a request that asks the model to continue its own last message (context.continuation, as a
failover to another backend does), so a client that resumes by seq sees a pause and then the rest, with nothing
lost and nothing twice. What the request needs (the conversation, the history before the reply, its settings) is
read again from the database: nothing else of the dead process is needed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import ClawdbotError
from ..logs import LOG
from . import context
from .context import continuation
from .generation import Generation, Guard
from .service import Chat


async def take_over(chat: Chat, reply_id: str, conversation_id: str, state: dict[str, Any]) -> bool:
    """Continue the reply in this process; False when it cannot be (it is no longer shown, or no slot can be
    queued for): the caller then ends it as interrupted, with its text."""
    owner = state["owner"]
    conversation, history = await chat.store.conversation_and_messages(conversation_id, owner)
    where = next((n for n, message in enumerate(history) if message.id == reply_id), None)
    if conversation is None or where is None:
        return False
    content, thinking, seq = str(state["content"]), str(state["thinking"]), int(state["seq"])
    num_ctx = int(conversation.num_ctx or chat.limits.num_ctx(conversation.model))
    plan = context.plan(history[:where], conversation.system_prompt, num_ctx, chat.settings.reply_room)
    tokens = chat.limits.reply_tokens(conversation.num_predict, conversation.model)
    body = context.request(conversation, plan, num_ctx, tokens)
    # Each event carried at most a token's text: its seq bounds what was written, so num_predict still holds.
    if content or thinking:
        body = continuation(body, content, thinking, seq)
    try:
        ticket = await chat.admission.enter(
            owner, model=conversation.model, prefer=chat.fleet.affinity.get(conversation_id)
        )
    except ClawdbotError as refused:  # the queue is full: ended as interrupted, which Continue can go on from
        LOG.warning("could not take over a reply", extra={"reply_id": reply_id, "reason": refused.code})
        return False
    prompt = history[where - 1] if where > 0 and history[where - 1].role == "user" else None
    generation = Generation(
        replace(history[where], content=content, thinking=thinking),
        body,
        ticket,
        prompt=prompt,
        status=state["status"] if state["status"] in ("thinking", "writing") else "waiting",
        guard=Guard(max(1, chat.limits.max_num_predict - seq), chat.limits.max_reply_seconds),
    )
    generation.content.append(content)
    generation.thinking.append(thinking)
    generation.streamed = bool(content or thinking)
    await chat.generations.adopt(generation, owner, seq)
    LOG.info("took over a reply whose writer is gone", extra={"reply_id": reply_id, "seq": seq})
    return True
