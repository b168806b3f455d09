"""One reply being generated, as the chat keeps it while it runs: its text so far, its status and timings, where
it ran, and how it will be stored (`Generation.outcome`). `Guard` is where the gateway cuts a reply off, and
`ended_early` which stored replies Continue may go on from. generations.py runs them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..backends.admission import Ticket
from ..backends.base import Final
from ..store.records import Checkpoint, Message, Outcome, now_ms
from ..timing import Clocks, received

_ENDED_EARLY = ("interrupted", "failed", "stopped")
# The done_reason of a reply cut off before the model ended it: Ollama's, at num_predict (or a full context), and
# the gateway's own at its limits (Guard).
CUT_OFF = ("length", "time_limit")


def ended_early(reply: Message) -> bool:
    """Whether Continue may go on from this reply: it ended before the model had said all it would."""
    return reply.status in _ENDED_EARLY or (reply.status == "done" and reply.done_reason in CUT_OFF)


@dataclass(frozen=True, slots=True)
class Guard:
    """Where the gateway cuts a reply off whatever the backend does: past `tokens` streamed (Ollama sends a line per
    token, or fewer) or `seconds` after it got a slot. The reply is kept as done, with done_reason length or
    time_limit, and the backend request is closed, which frees its slot."""

    tokens: int
    seconds: float


@dataclass(slots=True, eq=False)
class Generation:
    reply: Message  # as it started, then as it was stored
    body: dict[str, Any]
    ticket: Ticket
    prompt: Message | None = None  # the user message this answers (none for Regenerate)
    status: str = "waiting"
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    streamed: bool = False  # text reached listeners: from here on, no silent retry
    dirty: bool = False  # text or status changed since the last checkpoint
    checkpointed: bool = True  # a checkpoint row may exist (one was written, or by the process it came from)
    started: float = field(default_factory=time.perf_counter)
    # From the command that started it (a reply another process began: from when this one took it over).
    clocks: Clocks = field(default_factory=lambda: Clocks(received()))
    first_token: float | None = None
    thinking_from: float | None = None
    thinking_until: float | None = None
    final: Final | None = None
    error: str | None = None
    error_kind: str | None = None
    ending: str = "stopped"  # what a cancellation means: Stop, or the gateway shutting down ("interrupted")
    task: asyncio.Task[None] | None = None
    guard: Guard | None = None
    tokens: int = 0  # lines of text streamed, as the guard counts them
    cut: str | None = None  # the done_reason when the guard cut the reply off
    backends: list[str] = field(default_factory=list)  # where it ran, in order (several after a failover)
    switches: list[dict[str, Any]] = field(default_factory=list)  # each failover: from, to, at (characters)
    owner: str = ""  # whose conversation it is, and the API key that started it (usage is counted by them)
    key: str | None = None

    @property
    def id(self) -> str:
        return self.reply.id

    @property
    def conversation_id(self) -> str:
        return self.reply.conversation_id

    @property
    def client_id(self) -> str | None:
        """The client's id for the message this answers: a retried send finds its reply by it."""
        return self.prompt.client_id if self.prompt is not None else None

    def checkpoint(self) -> Checkpoint:
        content, thinking = "".join(self.content), "".join(self.thinking)
        self.content[:], self.thinking[:] = [content], [thinking]  # joined once, not again next second
        self.dirty, self.checkpointed = False, True
        return Checkpoint(self.id, self.status, content, thinking)

    def outcome(self) -> Outcome:
        """How the finished reply is stored."""
        now = time.perf_counter()
        final = self.final
        thinking_until = self.thinking_until or (now if self.thinking_from else None)
        self.clocks.first_sent = self.first_token or 0.0
        load, prompt = (final.load_ns, final.prompt_eval_ns) if final is not None else (None, None)
        timing = self.clocks.breakdown(now, load, prompt)
        ended = Outcome(
            status=self.status,
            content="".join(self.content),
            thinking="".join(self.thinking),
            finished_at=now_ms(),
            error=self.error,
            error_kind=self.error_kind,
            ttft_ms=_ms(self.first_token - self.clocks.received) if self.first_token else None,
            thinking_ms=_ms(thinking_until - self.thinking_from) if self.thinking_from and thinking_until else None,
            total_ms=_ms(now - self.clocks.received),
            backend=",".join(self.backends) or None,
            switches=self.switches or None,
            timing=timing,
        )
        if final is not None:
            return replace(
                ended,
                done_reason=final.done_reason,
                prompt_tokens=final.prompt_tokens,
                output_tokens=final.output_tokens,
                eval_ms=_ms(final.eval_ns / 1e9),
            )
        if self.cut is not None:  # the backend never sent its counts: the guard's own count stands in
            return replace(ended, done_reason=self.cut, output_tokens=self.tokens)
        return ended


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
