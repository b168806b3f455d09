"""One streamed request, timed as docs/load-testing.md §1 and §4 describe: a timestamp the moment bytes
arrive, parsing only after the stream has ended, token counts from the server's own numbers. The chat page's
protocol (`--target chat`) is in chat.py; both are driven through the `User` interface below.

TTFT is the first chunk that carries a token (thinking or answer); TTFO the first answer token, which for
qwen3 with thinking on comes much later. Gaps are between reads, so chunks that arrive together count once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol

import aiohttp
import orjson

from .workload import Conversation

_JSON = {"Content-Type": "application/json"}  # a request's own headers; the key is the session's (session_headers)


@dataclass(slots=True)
class Record:
    """Everything measured about one request; times are perf_counter seconds."""

    user: int
    turn: int
    scheduled: float
    start: float = 0.0
    ttft: float | None = None  # seconds from start
    ttfo: float | None = None
    end: float | None = None  # seconds from start
    gaps: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    failure: str | None = None
    detail: str | None = None
    reply: str = ""
    conversation_id: str | None = None  # chat target: where the turn is stored on the server
    reply_id: str | None = None
    server: dict[str, Any] = field(default_factory=dict)  # chat target: the stored reply's own timings

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "user": self.user,
            "turn": self.turn,
            "scheduled": self.scheduled,
            "start": self.start,
            "ttft": self.ttft,
            "ttfo": self.ttfo,
            "end": self.end,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "failure": self.failure,
            "detail": self.detail,
            "gaps": [round(g, 6) for g in self.gaps],
        }
        if self.conversation_id is not None:
            # Enough to check afterwards that the server stored exactly what the client was shown.
            row.update(
                conversation_id=self.conversation_id,
                reply_id=self.reply_id,
                reply_sha256=hashlib.sha256(self.reply.encode()).hexdigest(),
                server=self.server,
            )
        return row


@dataclass(frozen=True, slots=True)
class RequestShape:
    target: str  # "ollama" | "openai" | "chat"
    base_url: str
    model: str
    max_tokens: int | None
    think: bool | None
    timeout: float  # whole-request budget
    idle_timeout: float  # longest silence between chunks
    api_key: str | None = field(default=None, repr=False)  # sent as Authorization: Bearer on every request

    def session_headers(self) -> dict[str, str]:
        """Headers every request of a worker's session carries, built once when the session opens."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        if self.target == "chat":
            scheme, rest = base.split("://", 1)
            return ("wss" if scheme == "https" else "ws") + "://" + rest + "/chat/api/ws"
        return base + ("/api/chat" if self.target == "ollama" else "/v1/chat/completions")

    def body(self, messages: list[dict[str, str]]) -> bytes:
        if self.target == "ollama":
            ollama: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
            if self.think is not None:
                ollama["think"] = self.think
            if self.max_tokens:
                ollama["options"] = {"num_predict": self.max_tokens}
            return orjson.dumps(ollama)
        openai: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.max_tokens:
            openai["max_tokens"] = self.max_tokens
        if self.think is False:
            openai["reasoning_effort"] = "none"
        return orjson.dumps(openai)


class User(Protocol):
    """One virtual user: it takes turns in conversations and holds whatever connection state it needs."""

    async def turn(self, conversation: Conversation, record: Record) -> None:
        """Send the conversation's next message and fill `record` with what happened; never raises."""

    async def close(self) -> None:
        """Let go of connections held across turns."""


class HttpUser:
    """A user of a stateless API: every turn is one request that carries the whole history."""

    def __init__(self, session: aiohttp.ClientSession, shape: RequestShape) -> None:
        self.session = session
        self.shape = shape

    async def turn(self, conversation: Conversation, record: Record) -> None:
        await send(self.session, self.shape, conversation.next_turn(), record)

    async def close(self) -> None:
        return None


async def send(
    session: aiohttp.ClientSession, shape: RequestShape, messages: list[dict[str, str]], record: Record
) -> Record:
    body = shape.body(messages)
    reads: list[tuple[float, bytes]] = []
    clock = time.perf_counter
    record.start = clock()
    try:
        async with asyncio.timeout(shape.timeout):
            async with session.post(shape.url, data=body, headers=_JSON) as resp:
                if resp.status != 200:
                    text = (await resp.read())[:300].decode("utf-8", "replace")
                    record.failure, record.detail = f"http_{resp.status}", text
                    record.end = clock() - record.start
                    return record
                content = resp.content
                while True:
                    data = await content.readany()
                    now = clock()
                    if not data:
                        break
                    reads.append((now, data))
    except TimeoutError:
        record.failure, record.detail = "timeout", f"no complete reply within {shape.timeout:g} s"
    except aiohttp.ClientConnectorError as error:
        record.failure, record.detail = "connect", str(error.os_error)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
        record.failure, record.detail = "reset", type(error).__name__
    except aiohttp.ServerTimeoutError:
        record.failure, record.detail = "timeout", f"silent for {shape.idle_timeout:g} s"
    _analyse(shape.target, reads, record)
    return record


def _analyse(target: str, reads: list[tuple[float, bytes]], record: Record) -> None:
    """After the stream: gaps, token times, the final counts, and whether it ended properly."""
    start = record.start
    for (previous, _), (now, _) in pairwise(reads):
        record.gaps.append(now - previous)
    if reads and record.end is None:
        record.end = reads[-1][0] - start
    parse = _ndjson_frames if target == "ollama" else _sse_frames
    answer: list[str] = []
    finished = False
    for when, frame in parse(reads):
        if frame is None:
            record.failure = record.failure or "malformed"
            continue
        kind, text, done = _interpret(target, frame, record)
        if kind == "error":
            record.failure, record.detail = "stream_error", text[:300]
            break
        if text and record.ttft is None:
            record.ttft = when - start
        if kind == "content" and text:
            answer.append(text)
            if record.ttfo is None:
                record.ttfo = when - start
        finished = finished or done
    record.reply = "".join(answer)
    if not finished and record.failure is None:
        record.failure, record.detail = "incomplete", "the stream ended without its final chunk"


def _ndjson_frames(reads: list[tuple[float, bytes]]) -> list[tuple[float, Any]]:
    frames, pending = [], b""
    for when, data in reads:
        pending += data
        *lines, pending = pending.split(b"\n")
        frames += [(when, _loads(line)) for line in lines if line.strip()]
    if pending.strip():
        frames.append((reads[-1][0], _loads(pending)))
    return frames


def _sse_frames(reads: list[tuple[float, bytes]]) -> list[tuple[float, Any]]:
    frames, pending = [], b""
    for when, data in reads:
        pending += data
        *events, pending = pending.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            payload = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if payload == b"[DONE]":
                frames.append((when, {"__done__": True}))
            elif payload:
                frames.append((when, _loads(payload)))
    return frames


def _interpret(target: str, frame: dict[str, Any], record: Record) -> tuple[str, str, bool]:
    """(kind, text, finished) for one frame: kind is thinking, content, error or meta."""
    error = frame.get("error")
    if error is not None:
        return "error", error.get("message", str(error)) if isinstance(error, dict) else str(error), False
    if target == "ollama":
        message = frame.get("message") or {}
        if frame.get("done"):
            record.prompt_tokens = int(frame.get("prompt_eval_count") or 0)
            record.output_tokens = int(frame.get("eval_count") or 0)
            return "meta", "", True
        if message.get("thinking"):
            return "thinking", message["thinking"], False
        return "content", message.get("content") or "", False
    if frame.get("__done__"):
        return "meta", "", True
    usage = frame.get("usage")
    if usage:
        record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        record.output_tokens = int(usage.get("completion_tokens") or 0)
    choices = frame.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    reasoning = delta.get("reasoning") or delta.get("reasoning_content")
    if reasoning:
        return "thinking", reasoning, False
    return "content", delta.get("content") or "", False


def _loads(data: bytes) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
