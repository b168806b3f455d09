"""The fairness benchmark's clients: chat WebSocket tabs, one per send, each under its user's X-Forwarded-For
address, and the times each generation saw (sent, acknowledged, queued, first token, refused)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

_MAX_EVENT_BYTES = 64 * 1024 * 1024
HOLD = "(hold the slot)"  # sends with this in their text get a reply a minute long from the simulator


@dataclass
class Generation:
    """One send, timed on the client's clock (perf_counter seconds)."""

    user: str
    conversation_id: str
    sent: float = 0.0
    acked: float | None = None
    first_token: float | None = None
    done: float | None = None
    first_position: int | None = None  # the first reply.queue position it was told
    refused: dict[str, Any] | None = None  # the error event of a refused send
    stored: dict[str, Any] | None = None  # the row reply.done carried
    users_ahead: int = 0  # users with a send and no first token yet when this one was sent
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # acknowledged or refused
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # reply.done or refused

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent


class Tab:
    """One user's WebSocket; its reader routes every event to the generation of its conversation."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.by_conversation: dict[str, Generation] = {}
        self.by_ref: dict[int, Generation] = {}
        self.refs = 0
        self.reader = asyncio.create_task(self.read())

    async def send(self, generation: Generation, content: str) -> None:
        self.refs += 1
        self.by_ref[self.refs] = generation
        self.by_conversation[generation.conversation_id] = generation
        body = {"type": "send", "conversation_id": generation.conversation_id, "content": content, "ref": self.refs}
        generation.sent = time.perf_counter()
        await self.ws.send_str(orjson.dumps(body).decode())

    async def read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.perf_counter()  # taken before parsing
            event = orjson.loads(message.data)
            kind = event["type"]
            if kind in ("ack", "error"):
                generation = self.by_ref.get(event.get("ref") or 0)
                if generation is None:
                    continue
                if kind == "ack":
                    generation.acked = now
                else:
                    generation.refused = event
                    generation.finished.set()
                generation.answered.set()
                continue
            generation = self.by_conversation.get(event.get("conversation_id", ""))
            if generation is None:
                continue
            if kind == "reply.queue" and generation.first_position is None:
                generation.first_position = event["queue_position"]
            elif kind == "reply.delta" and generation.first_token is None:
                generation.first_token = now
            elif kind == "reply.done":
                generation.done, generation.stored = now, event["message"]
                generation.finished.set()

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class Client:
    """Users as addresses, on one aiohttp session without a connection cap."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def conversation(self, address: str) -> str:
        async with self.session.post(
            f"{self.url}/chat/api/conversations", json={"think": False}, headers={"X-Forwarded-For": address}
        ) as response:
            response.raise_for_status()
            return str((await response.json())["conversation"]["id"])

    async def tab(self, address: str) -> Tab:
        ws = await self.session.ws_connect(
            f"{self.url}/chat/api/ws", headers={"X-Forwarded-For": address}, max_msg_size=_MAX_EVENT_BYTES
        )
        return Tab(ws)
