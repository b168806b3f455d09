"""Conversation titles the model writes, when an admin allows it (limits.model_titles).

After a conversation's first exchange, a background job asks the conversation's model, with thinking off and a short
num_predict, for a title of a few words. It never delays a reply: it runs only while a backend slot is free and no
reply waits for one, and gives the slot back the moment a reply needs it (backends/admission.py), trying again
later, a few times at most. What the model says is untrusted text: it is cut to one plain line of at most 60
characters, quotes and markdown marks stripped, and an empty or junk answer leaves the title the first message gave.
A title the user set, or one an edit of the first message changed meanwhile, is never overwritten. The new title
reaches open pages as a `conversation.title` event.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import aclosing
from typing import Any

from ..backends.admission import Admission
from ..backends.base import Backend, Delta
from ..backends.fleet import Fleet
from ..errors import BackendError
from ..logs import LOG
from ..metrics import Metrics
from ..store.conversations import Store
from ..store.limits import Limits
from .eventlog import GenerationLog
from .generation import Generation
from .generations import Generations
from .service import title_from

_QUEUE = "\x00titles"  # the admission's user for this work: no real user's id
_ATTEMPTS = 3  # tries when replies keep taking the slot back
_MAX_PENDING = 64  # jobs waiting at once; past it, conversations keep their first message's title
_EXCERPT = 1500  # characters of the question and of the answer the model is shown
_SYSTEM = (
    "You name conversations. Answer with the title only: at most six words, in the language of the "
    "conversation, no quotes, no markdown, no explanation."
)
_LONGEST = 60
_TOKENS = 32  # the answer's num_predict; a backend that ignores it is cut off at twice as many lines
_SECONDS = 60.0  # and after this long (or the platform's reply limit, if shorter)
_THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_LABEL = re.compile(r"^\s*(title|标题)\s*[:：]\s*", re.IGNORECASE)
_MARKS = "\"'`*_#>~“”‘’«»「」『』【】"


def clean(answer: str) -> str | None:
    """A title from the model's answer: one plain line, marks and quotes off its ends; None when nothing usable."""
    text = _THINK_BLOCK.sub("", answer)
    line = next((part for part in text.splitlines() if part.strip()), "")
    line = " ".join(line.replace("**", "").replace("__", "").replace("`", "").split()).strip(_MARKS + " -")
    line = _LABEL.sub("", line).strip(_MARKS + " ").rstrip(".。!！").strip(_MARKS + " ")
    if not any(ch.isalnum() for ch in line):
        return None
    return line if len(line) <= _LONGEST else line[: _LONGEST - 1].rstrip() + "…"


class Titles:
    def __init__(
        self,
        store: Store,
        generations: Generations,
        fleet: Fleet,
        limits: Limits,
        admission: Admission,
        log: GenerationLog,
        metrics: Metrics,
    ) -> None:
        self.store, self.fleet = store, fleet
        self.limits, self.admission, self.log = limits, admission, log
        self.jobs: set[asyncio.Task[None]] = set()
        self.closed = False  # the gateway is stopping: replies still ending get no title job
        self.outcomes: dict[str, int] = {"made": 0, "kept": 0, "gave_up": 0, "failed": 0}
        metrics.labelled["clawdbot_model_titles"] = (
            "Titles asked of the model, by outcome: made, kept (the answer was unusable, or the user's title stood), "
            "gave_up (no idle slot came), failed.",
            "outcome",
            lambda: self.outcomes,
        )
        generations.finished.append(self._replied)

    async def close(self) -> None:
        self.closed = True
        for job in list(self.jobs):
            job.cancel()
        await asyncio.gather(*self.jobs, return_exceptions=True)

    def _replied(self, generation: Generation) -> None:
        """After a first exchange that ended well: a title job, if titles are the model's to write."""
        messages = generation.body.get("messages") or []
        asked = [m for m in messages if m["role"] == "user"]
        first = generation.prompt is not None and len(asked) == 1  # a send or an edit, not a regenerate
        wanted = self.limits.model_titles and not self.closed and first
        if not (wanted and generation.status == "done" and generation.reply.content):
            return
        if len(self.jobs) >= _MAX_PENDING:
            self.outcomes["gave_up"] += 1
            return
        question, answer = asked[0]["content"], generation.reply.content
        # The reply's own options: the conversation may have chosen a context size, and another would reload the
        # model under the replies.
        num_ctx = int(
            (generation.body.get("options") or {}).get("num_ctx") or self.limits.num_ctx(generation.body["model"])
        )
        job = asyncio.get_running_loop().create_task(
            self._title(generation.conversation_id, generation.body["model"], num_ctx, question, answer)
        )
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    async def _title(self, conversation_id: str, model: str, num_ctx: int, question: str, answer: str) -> None:
        try:
            said = await self._ask_when_idle(model, num_ctx, question, answer)
        except (BackendError, TimeoutError) as error:
            self.outcomes["failed"] += 1
            kind = error.kind if isinstance(error, BackendError) else "time_limit"
            LOG.info("no title from the model", extra={"conversation_id": conversation_id, "kind": kind})
            return
        title = clean(said) if said is not None else None
        if title is None:
            self.outcomes["gave_up" if said is None else "kept"] += 1
            return
        try:
            made = await self.store.retitle(conversation_id, title, was=title_from(question))
        except Exception:  # noqa: BLE001 - the title the first message gave stays; nothing else depends on it
            LOG.exception("could not store a title", extra={"conversation_id": conversation_id})
            return
        if made:
            self.outcomes["made"] += 1
            event = {"type": "conversation.title", "conversation_id": conversation_id, "title": title}
            self.log.publish(conversation_id, event)
        else:
            self.outcomes["kept"] += 1  # renamed, edited or deleted meanwhile

    async def _ask_when_idle(self, model: str, num_ctx: int, question: str, answer: str) -> str | None:
        """The model's answer, asked only in a slot no reply wants; None after _ATTEMPTS slots were taken back."""
        for _ in range(_ATTEMPTS):
            ticket = self.admission.enter_background(_QUEUE, model)
            try:
                await self.admission.wait(ticket)
                if not ticket.running:  # taken back before this job even started
                    continue
                backend = self.fleet.member(ticket.place).backend
                ask = asyncio.ensure_future(self._ask(backend, model, num_ctx, question, answer))
                ticket.preempt = ask.cancel
                try:
                    return await ask
                except asyncio.CancelledError:
                    if not ticket.preempted or _cancelling():
                        raise
            finally:
                self.admission.release(ticket)
        return None

    async def _ask(self, backend: Backend, model: str, num_ctx: int, question: str, answer: str) -> str:
        prompt = f"User: {question[:_EXCERPT]}\n\nAssistant: {answer[:_EXCERPT]}\n\nTitle of this conversation:"
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": prompt}],
            "stream": True,
            "think": False,
            "options": {"num_ctx": num_ctx, "num_predict": _TOKENS, "temperature": 0.2},
        }
        parts: list[str] = []
        lines = 0
        async with (
            asyncio.timeout(min(_SECONDS, self.limits.max_reply_seconds)),
            aclosing(backend.chat(body)) as events,
        ):
            async for event in events:
                if isinstance(event, Delta):
                    parts.append(event.content)
                    lines += event.lines
                    if lines > 2 * _TOKENS:
                        return ""  # a model that does not stop is saying no title
        return "".join(parts)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
