"""`--target chat`: the platform's own chat protocol (docs/chat-protocol.md), driven as the chat page drives it.

Each virtual user is a browser tab. It creates its conversation with a POST, keeps one WebSocket open across all
its turns and pauses, and sends only the new message each turn: the history lives on the server. A turn is timed
from the `send` command to `reply.done` (opening the socket and creating the conversation happen before, so they
show as wait, not TTFT): TTFT at the first reply.delta, TTFO at the first answer delta, gaps between deltas, and
token counts and the gateway's own timings from the stored reply that reply.done carries. Every wait is bounded
by --timeout (the whole turn) and --idle-timeout (silence; heartbeats count as traffic), so a lost or unexpected
event ends as a failure, never a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import aiohttp
import orjson

from .client import Record, RequestShape
from .workload import Conversation

_MAX_EVENT_BYTES = 64 * 1024 * 1024  # reply.done carries the whole reply
_SERVER_TIMINGS = ("status", "done_reason", "ttft_ms", "thinking_ms", "total_ms", "eval_ms")
# Failures after which the socket may still carry the old reply's events: the tab reconnects, as a reload would.
_RECONNECT = {"timeout", "ws_closed", "connect", "reset"}
# The gateway's wording for a failed reply (backends/ollama.py), reduced to a kind that can be counted.
_FAILED_CLASSES = (
    (re.compile(r"refused the connection|could not be reached"), "unreachable"),
    (re.compile(r"did not accept a connection|sent nothing"), "timeout"),
    (re.compile(r"closed the connection"), "reset"),
    (re.compile(r"not JSON|JSON that is not an object"), "malformed"),
    (re.compile(r"the model failed"), "model_error"),
    (re.compile(r"answered (\d{3})"), r"http_\1"),
    (re.compile(r"before it was complete"), "incomplete"),
)


def failed_kind(error: str | None) -> str:
    """`failed_<class>` for a reply the gateway stored as failed, from its error text."""
    for pattern, name in _FAILED_CLASSES:
        match = pattern.search(error or "")
        if match:
            return "failed_" + match.expand(name)
    return "failed_other"


class _TurnFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


class ChatUser:
    """One browser tab: a WebSocket kept across turns, and the server-side conversation it is writing in."""

    def __init__(self, session: aiohttp.ClientSession, shape: RequestShape) -> None:
        self.session = session
        self.shape = shape
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.local: Conversation | None = None  # the workload's conversation that conversation_id stores
        self.conversation_id: str | None = None
        self.refs = itertools.count(1)

    async def turn(self, conversation: Conversation, record: Record) -> None:
        content = conversation.next_turn()[-1]["content"]
        record.start = time.perf_counter()
        try:
            async with asyncio.timeout(self.shape.timeout):
                ws = await self._socket()
                record.conversation_id = await self._conversation(conversation)
                await _Exchange(record, f"r{next(self.refs)}", record.conversation_id).run(ws, content, self.shape)
        except TimeoutError:
            record.failure, record.detail = "timeout", f"no reply.done within {self.shape.timeout:g} s"
        except _TurnFailed as failure:
            record.failure, record.detail = failure.kind, failure.detail
        except aiohttp.WSServerHandshakeError as error:
            record.failure, record.detail = f"http_{error.status}", f"WebSocket refused: {error.message}"
        except aiohttp.ClientConnectorError as error:
            record.failure, record.detail = "connect", str(error.os_error)
        except (aiohttp.ClientError, ConnectionError) as error:
            record.failure, record.detail = "reset", type(error).__name__
        if record.failure and record.end is None:
            record.end = time.perf_counter() - record.start
        if record.failure in _RECONNECT:
            await self.close()

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close()

    async def _socket(self) -> aiohttp.ClientWebSocketResponse:
        if self.ws is None or self.ws.closed:
            # No receive timeout here: each receive sets its own (--idle-timeout), so heartbeats reset it.
            self.ws = await self.session.ws_connect(
                self.shape.url,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                max_msg_size=_MAX_EVENT_BYTES,
            )
        return self.ws

    async def _conversation(self, conversation: Conversation) -> str:
        if conversation is self.local and self.conversation_id is not None:
            return self.conversation_id
        body: dict[str, Any] = {"model": self.shape.model, "system_prompt": conversation.system or ""}
        if self.shape.think is not None:
            body["think"] = self.shape.think
        url = self.shape.base_url.rstrip("/") + "/chat/api/conversations"
        async with self.session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as r:
            answer = await r.read()
            if r.status != 201:
                raise _TurnFailed(f"http_{r.status}", answer[:300].decode("utf-8", "replace"))
        self.local, self.conversation_id = conversation, str(orjson.loads(answer)["conversation"]["id"])
        return self.conversation_id


@dataclass(slots=True)
class _Exchange:
    """One `send` and the events it causes, until its reply is done or the command fails."""

    record: Record
    ref: str
    conversation_id: str
    reply_id: str | None = None
    deltas: list[tuple[float, str, str]] = field(default_factory=list)  # (when, "thinking" | "content", text)
    final: dict[str, Any] | None = None
    done_at: float = 0.0

    async def run(self, ws: aiohttp.ClientWebSocketResponse, content: str, shape: RequestShape) -> None:
        command = {"type": "send", "ref": self.ref, "conversation_id": self.conversation_id, "content": content}
        clock = time.perf_counter
        self.record.start = clock()
        await ws.send_str(orjson.dumps(command).decode())
        try:
            while True:
                try:
                    message = await ws.receive(timeout=shape.idle_timeout)
                except TimeoutError:
                    raise _TurnFailed("timeout", f"silent for {shape.idle_timeout:g} s") from None
                now = clock()
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    raise _TurnFailed("ws_closed", f"the WebSocket closed mid-turn (code {ws.close_code})")
                event = orjson.loads(message.data)
                if isinstance(event, dict) and self._take(event, now):
                    break
        finally:
            self._measure()

    def _take(self, event: dict[str, Any], now: float) -> bool:
        """Note one event; True once the turn is over. Heartbeats and other tabs' events fall through."""
        kind = event.get("type")
        if kind == "error" and event.get("ref") in (self.ref, None):
            code = str(event.get("code") or "error")
            raise _TurnFailed("conflict" if code == "conflict" else f"error_{code}", str(event.get("message"))[:300])
        if kind == "ack" and event.get("ref") == self.ref:
            self.reply_id = self.reply_id or (event.get("reply") or {}).get("id")
        elif kind == "reply.start" and event.get("conversation_id") == self.conversation_id:
            self.reply_id = self.reply_id or (event.get("message") or {}).get("id")
        elif kind == "reply.delta" and self.reply_id is not None and event.get("id") == self.reply_id:
            part = "content" if "content" in event else "thinking"
            self.deltas.append((now, part, str(event.get(part) or "")))
        elif kind == "reply.done" and self.reply_id is not None:
            message = event.get("message") or {}
            if message.get("id") == self.reply_id:
                self.final, self.done_at = message, now
                return True
        return False

    def _measure(self) -> None:
        record, start = self.record, self.record.start
        times = [when for when, _, _ in self.deltas]
        record.gaps = [later - earlier for earlier, later in pairwise(times)]
        record.ttft = times[0] - start if times else None
        record.ttfo = next((when - start for when, part, _ in self.deltas if part == "content"), None)
        record.reply = "".join(text for _, part, text in self.deltas if part == "content")
        record.reply_id = self.reply_id
        final = self.final
        if final is None:
            return
        record.end = self.done_at - start
        record.prompt_tokens = int(final.get("prompt_tokens") or 0)
        record.output_tokens = int(final.get("output_tokens") or 0)
        record.server = {name: final.get(name) for name in _SERVER_TIMINGS}
        status = final.get("status")
        if status == "failed":
            kind = final.get("error_kind")  # the cause as /metrics counts it; older gateways only wrote text
            record.failure = f"failed_{kind}" if kind else failed_kind(final.get("error"))
            record.detail = str(final.get("error"))[:300]
        elif status != "done":
            record.failure, record.detail = str(status), str(final.get("error") or f"the reply ended {status}")
        elif final.get("content") != record.reply:
            record.failure, record.detail = "content_mismatch", "the stored reply differs from the deltas received"
