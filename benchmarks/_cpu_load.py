"""The load generator of benchmarks/cpu_cost.py, run as a process of its own so that its CPU is not the relay's.

It warms up (connections open, the model loaded, the chat page's conversations made), prints `ready`, waits for a
line on stdin, then runs --requests requests at --concurrency (a closed loop: each worker sends its next request
when the last one has ended), and prints one JSON line as soon as the last one ends: what it saw and the CPU
seconds it spent itself.

- raw: POST /api/chat, streamed, `options.num_predict` = --tokens, `think: false`; a request counts as done when
  its last line says `"done":true`.
- chat: the chat page's protocol: one WebSocket per worker, conversations made before `ready` (num_predict and
  think set on each, at most --turns-per-conversation turns in each, so the history stays short), a `send` per
  request, done at the reply's `reply.done` with status done.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvloop

MODEL = "qwen3:32b"
PROMPT = "Tell me about the history of the printing press."


@dataclass
class Tally:
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    tokens: int = 0  # raw: lines of the stream; chat: reply.delta events
    received: int = 0  # raw: body chunks as they reached the client; chat: events

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# ---- raw /api/chat ---------------------------------------------------------------------------------------------------
async def raw_request(session: aiohttp.ClientSession, url: str, body: bytes, tally: Tally) -> None:
    headers = {"Content-Type": "application/json"}
    async with session.post(url + "/api/chat", data=body, headers=headers) as response:
        if response.status != 200:
            await response.read()
            tally.fail(f"http_{response.status}")
            return
        last, lines = b"", 0
        async for data in response.content.iter_any():
            tally.received += 1
            lines += data.count(b"\n")
            last = (last + data)[-512:]
        tally.tokens += lines
        if b'"done":true' not in last.rstrip().rsplit(b"\n", 1)[-1]:
            tally.fail("incomplete")
            return
        tally.requests += 1


async def raw(args: argparse.Namespace) -> Tally:
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "think": False,
            "options": {"num_predict": args.tokens},
        }
    )
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm = Tally()
        await asyncio.gather(*(raw_request(session, args.url, body, warm) for _ in range(2 * args.concurrency)))
        if warm.failures:
            raise SystemExit(f"warm-up failed: {warm.failures}")
        tally = Tally()
        left = itertools.count()

        async def worker() -> None:
            while next(left) < args.requests:
                try:
                    await raw_request(session, args.url, body, tally)
                except (aiohttp.ClientError, TimeoutError) as error:
                    tally.fail(type(error).__name__)

        return await measured(args, [worker() for _ in range(args.concurrency)], tally)


# ---- the chat page's WebSocket ---------------------------------------------------------------------------------------
class Tab:
    """One worker's WebSocket and the conversations it writes in, one after another."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, conversations: list[str]) -> None:
        self.ws, self.conversations, self.refs = ws, conversations, itertools.count(1)

    async def turn(self, conversation_id: str, tally: Tally) -> None:
        ref = next(self.refs)
        command = {"type": "send", "ref": ref, "conversation_id": conversation_id, "content": PROMPT}
        await self.ws.send_str(orjson.dumps(command).decode())
        deltas = 0
        while True:
            message = await self.ws.receive(timeout=30)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"the WebSocket closed mid-turn ({self.ws.close_code})")
            tally.received += 1
            event = orjson.loads(message.data)
            kind = event.get("type")
            if kind == "error" and event.get("ref") == ref:
                tally.fail(f"error_{event.get('code')}")
                return
            if event.get("conversation_id") != conversation_id:
                continue
            if kind == "reply.delta":
                deltas += 1
            elif kind == "reply.done":
                tally.tokens += deltas
                status = (event.get("message") or {}).get("status")
                if status == "done":
                    tally.requests += 1
                else:
                    tally.fail(f"reply_{status}")
                return


async def chat(args: argparse.Namespace) -> Tally:
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    per_worker = -(-args.requests // args.concurrency)
    per_conversation = args.turns_per_conversation
    settings = orjson.dumps({"title": "cpu cost", "think": False, "num_predict": args.tokens})
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def conversation() -> str:
            async with session.post(
                args.url + "/chat/api/conversations", data=settings, headers={"Content-Type": "application/json"}
            ) as response:
                answer = await response.read()
                if response.status != 201:
                    raise SystemExit(f"could not make a conversation: {response.status} {answer[:300]!r}")
            return str(orjson.loads(answer)["conversation"]["id"])

        async def tab() -> Tab:
            ws = await session.ws_connect(args.url + "/chat/api/ws", max_msg_size=64 * 1024 * 1024)
            count = 1 + -(-per_worker // per_conversation)  # the first is the warm-up's
            return Tab(ws, [await conversation() for _ in range(count)])

        tabs = await asyncio.gather(*(tab() for _ in range(args.concurrency)))
        warm = Tally()
        await asyncio.gather(*(t.turn(t.conversations[0], warm) for t in tabs))
        if warm.failures:
            raise SystemExit(f"warm-up failed: {warm.failures}")
        tally = Tally()

        async def worker(t: Tab, share: int) -> None:
            for turn in range(share):  # each tab its own share: its conversations were made for that many turns
                conversation_id = t.conversations[1 + turn // per_conversation]
                try:
                    await t.turn(conversation_id, tally)
                except (aiohttp.ClientError, ConnectionError, TimeoutError) as error:
                    tally.fail(type(error).__name__)
                    return

        try:
            shares = [
                args.requests // args.concurrency + (i < args.requests % args.concurrency) for i in range(len(tabs))
            ]
            return await measured(args, [worker(t, share) for t, share in zip(tabs, shares, strict=True)], tally)
        finally:
            await asyncio.gather(*(t.ws.close() for t in tabs))


# ---- the measured window ---------------------------------------------------------------------------------------------
async def measured(args: argparse.Namespace, workers: list[Any], tally: Tally) -> Tally:
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    began, cpu = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*workers)
    wall, used = time.perf_counter() - began, cpu_seconds() - cpu
    # Told at once: closing the connections afterwards is not part of the run.
    result = {
        "requests": tally.requests,
        "failures": tally.failures,
        "tokens": tally.tokens,
        "received": tally.received,
        "wall_s": wall,
        "cpu_s": used,
    }
    print(orjson.dumps(result).decode(), flush=True)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["raw", "chat"])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--turns-per-conversation", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take")
    args = parser.parse_args()
    uvloop.run(raw(args) if args.mode == "raw" else chat(args))


if __name__ == "__main__":
    main()
