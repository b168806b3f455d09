"""Durable generations: hundreds of users, a faulty model, dropped connections and one gateway crash.

Each user holds one conversation of --turns turns on the chat WebSocket (`/chat/api/ws`), as the chat page does,
under its own X-Forwarded-For address. The simulator fails --fault-rate of the generations (dropped connections,
stalls, error lines, HTTP 500s, resets). The clients misbehave as well:

* after --send-drop of the sends, the client drops its socket before the `ack` arrives, reconnects and sends
  again with the same `client_id` (the gateway must answer with the first send's message, never store a second);
* in --drop of the turns, the client drops its socket at a random event of the reply, reconnects and sends
  `resume {reply_id, from: last seq + 1}`;
* every client reassembles the reply from the numbered events: a repeat (seq at or below the last one) is dropped,
  a gap (above last + 1) is a bug, counted, and repaired with a resume.

When --kill-at of the planned turns are acknowledged, the gateway is killed with SIGKILL and started again on the
same database and port. Clients reconnect and resume; replies that were in flight come back as `interrupted` (a
stored `reply.done` without a seq), and their users go on with their next turn.

At the end the database itself (the SQLite file, or a throwaway PostgreSQL database with --database postgresql)
is checked: every acknowledged user message is stored exactly once; every user message has a reply that ended
(`done`, `stopped`, `failed` or `interrupted`; none `waiting`, `thinking` or `writing`); every stream that ended
with a numbered `reply.done` reassembles to exactly the stored text; an interrupted reply's stored text and what
its client saw agree (one is a prefix of the other); no `reply.done` carries a status that is not final; no reply
is lost. The script exits 1 if any of that fails, and prints the turns concerned.

    uv run python benchmarks/durability.py --users 200 --turns 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import resource
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from _durability_check import FINAL, INVARIANTS, rows_postgres, rows_sqlite, verify
from _harness import (
    Gateway,
    by_label,
    create_database,
    drop_database,
    load_model,
    memory_mib,
    scrape,
    stop_on_sigterm,
)
from _procs import start

_QUIET = 45.0  # seconds without any event (heartbeats come every 15 s) before a socket counts as dead
_MAX_EVENT_BYTES = 64 * 1024 * 1024  # reply.done carries the whole reply
_T0 = time.monotonic()


# ---- what the clients saw -----------------------------------------------------------------------------------------
@dataclass
class Stats:
    """Counters over all users; `Counter`s are keyed by a code or cause."""

    turns_started: int = 0
    acknowledged: int = 0
    duplicate_acks: int = 0  # a resent send answered with the first one's message: idempotency at work
    send_drops: int = 0  # sockets dropped right after a send, before its ack
    resends: int = 0
    drops: int = 0  # sockets dropped in the middle of a reply
    resumes: int = 0
    reconnects: int = 0
    quiet_reconnects: int = 0  # nothing, not even a heartbeat, for _QUIET seconds
    repeats: int = 0  # replayed events at or below the last seq: dropped
    gaps: int = 0  # events above last seq + 1: a bug
    snapshots: int = 0
    stored_done: int = 0  # replies that ended for their client with a stored reply.done (seq null)
    nonfinal_done: int = 0  # a reply.done whose row is still waiting/thinking/writing: a protocol violation
    send_errors: Counter[str] = field(default_factory=Counter)
    resume_errors: Counter[str] = field(default_factory=Counter)
    reply_errors: Counter[str] = field(default_factory=Counter)  # reply.error codes seen live
    finals: Counter[str] = field(default_factory=Counter)  # how each reply ended, as its client learned it
    stuck: int = 0  # turns that ran past --turn-timeout
    in_flight_at_kill: int = 0


@dataclass
class Reply:
    """One reply as its client reassembles it from numbered events."""

    id: str
    last_seq: int = 0
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None  # the row reply.done carried
    numbered_done: bool = False  # the whole stream was seen (a seq'd reply.done), so the text must match exactly
    gap: bool = False  # a gap is being repaired: counted once
    resumed: bool = False  # its events came over more than one connection
    snapshot_mismatch: int = 0


@dataclass
class Turn:
    user: int
    conversation_id: str
    client_id: str
    message_id: str | None = None
    reply: Reply | None = None
    in_flight: bool = False
    duplicate: bool = False  # acknowledged as a duplicate of an earlier send of the same client_id
    sent_at: list[float] = field(default_factory=list)  # each (re)send, seconds into the run, for diagnosis

    def describe(self) -> str:
        reply = self.reply
        seen = "none" if reply is None or reply.final is None else reply.final.get("status")
        how = "numbered" if reply is not None and reply.numbered_done else "stored/other"
        sends = ", ".join(f"{t:.1f}" for t in self.sent_at)
        return (
            f"{self.client_id} (message {self.message_id}, reply {reply and reply.id}; client saw {seen} via {how}; "
            f"duplicate ack {self.duplicate}; sent at {sends} s)"
        )


class Lost(Exception):
    """The socket closed (our own drop, the gateway's crash, or silence)."""


class Link:
    """A user's WebSocket, opened again (to wherever the gateway now listens) when it was lost."""

    def __init__(self, session: aiohttp.ClientSession, gateway: Gateway, address: str, stats: Stats) -> None:
        self.session, self.gateway, self.stats = session, gateway, stats
        self.headers = {"X-Forwarded-For": address}
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.refs = itertools.count(1)
        self.opened = 0

    async def ensure(self, deadline: float) -> None:
        while self.ws is None or self.ws.closed:
            try:
                self.ws = await self.session.ws_connect(
                    f"{self.gateway.url}/chat/api/ws", headers=self.headers, max_msg_size=_MAX_EVENT_BYTES
                )
                self.stats.reconnects += self.opened > 0
                self.opened += 1
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(random.uniform(0.2, 0.5))  # the gateway is restarting

    async def command(self, body: dict[str, Any]) -> int:
        assert self.ws is not None
        ref = next(self.refs)
        try:
            await self.ws.send_str(orjson.dumps({**body, "ref": ref}).decode())
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as error:
            await self.drop()
            raise Lost from error
        return ref

    async def next(self) -> dict[str, Any]:
        """The next event; Lost when the socket is gone or silent."""
        assert self.ws is not None
        try:
            message = await self.ws.receive(timeout=_QUIET)
        except TimeoutError:
            self.stats.quiet_reconnects += 1
            await self.drop()
            raise Lost from None
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            event: dict[str, Any] = orjson.loads(message.data)
            return event
        await self.drop()
        raise Lost

    async def drop(self) -> None:
        """Lose the connection at once, without a closing handshake, as a network failure would."""
        ws, self.ws = self.ws, None
        if ws is not None and not ws.closed:
            transport = ws.get_extra_info("socket")
            if transport is not None:
                with contextlib.suppress(OSError):
                    transport.shutdown(2)  # SHUT_RDWR: the gateway sees the connection end, not a close frame
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1)


@dataclass
class Options:
    turns: int
    think_time: float
    drop: float
    send_drop: float
    turn_timeout: float


class User:
    """One browser tab: a conversation, its WebSocket, and --turns turns with pauses between them."""

    def __init__(self, index: int, link: Link, stats: Stats, options: Options, run: str) -> None:
        self.index, self.link, self.stats, self.options, self.run = index, link, stats, options, run
        self.turns: list[Turn] = []
        self.current: Turn | None = None

    async def run_turns(self, conversation_id: str, acknowledged: Callable[[], None]) -> None:
        for number in range(self.options.turns):
            turn = Turn(self.index, conversation_id, f"{self.run}-u{self.index}-t{number}")
            self.turns.append(turn)
            self.current = turn
            self.stats.turns_started += 1
            try:
                await asyncio.wait_for(self.one_turn(turn, number, acknowledged), self.options.turn_timeout)
            except TimeoutError:
                self.stats.stuck += 1
            turn.in_flight = False
            await asyncio.sleep(self.options.think_time * random.uniform(0.5, 1.5))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.link.drop(), 2)

    async def one_turn(self, turn: Turn, number: int, acknowledged: Callable[[], None]) -> None:
        content = f"User {self.index}, turn {number}: {random.choice(_TOPICS)} ({secrets.token_hex(3)})"
        turn.in_flight = True
        ack, early = await self.send(turn, content)
        if ack is None:
            return
        turn.message_id, reply = ack["message"]["id"], Reply(ack["reply"]["id"])
        turn.reply = reply
        self.stats.acknowledged += 1
        acknowledged()
        resume = turn.duplicate = bool(ack.get("duplicate"))  # its earlier events went to a socket now gone
        for event in early:
            self.apply(reply, event)
        await self.follow(reply, resume)

    async def send(self, turn: Turn, content: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Send until acknowledged, always with the same client_id; the events that came before the ack."""
        deadline = time.monotonic() + self.options.turn_timeout
        first = True
        while True:
            early: list[dict[str, Any]] = []
            try:
                await self.connect(deadline)
                if not first:
                    self.stats.resends += 1
                first = False
                body = {"type": "send", "conversation_id": turn.conversation_id, "content": content}
                turn.sent_at.append(time.monotonic() - _T0)
                ref = await self.link.command({**body, "client_id": turn.client_id})
                if random.random() < self.options.send_drop:
                    # Lost before the ack is read. A socket dropped at once loses the frame too (the gateway never
                    # handles it), so wait a moment: mostly the send is stored and the resend must be a duplicate.
                    await asyncio.sleep(random.uniform(0, 0.05))
                    self.stats.send_drops += 1
                    await self.link.drop()
                    continue
                while True:
                    event = await self.link.next()
                    if event.get("ref") != ref or event["type"] not in ("ack", "error"):
                        early.append(event)
                    elif event["type"] == "ack":
                        self.stats.duplicate_acks += bool(event.get("duplicate"))
                        return event, early
                    else:
                        self.stats.send_errors[event["code"]] += 1
                        if event["code"] not in ("overloaded", "too_many_waiting", "conflict"):
                            return None, early
                        await asyncio.sleep(float(event.get("retry_after") or 1))
                        break
            except Lost:
                continue

    async def connect(self, deadline: float) -> None:
        if self.link.ws is None or self.link.ws.closed:
            await self.link.ensure(deadline)

    async def follow(self, reply: Reply, resume: bool) -> None:
        """Read the reply's events to its end, dropping the socket once at a random event (--drop)."""
        drop_at = random.randint(1, 250) if random.random() < self.options.drop else None
        deadline = time.monotonic() + self.options.turn_timeout
        while reply.final is None:
            try:
                if self.link.ws is None or self.link.ws.closed:
                    await self.connect(deadline)
                    resume = True
                if resume or reply.gap:
                    resume, reply.resumed = False, True
                    self.stats.resumes += 1
                    await self.link.command({"type": "resume", "reply_id": reply.id, "from": reply.last_seq + 1})
                event = await self.link.next()
                self.apply(reply, event)
                if drop_at is not None and reply.last_seq >= drop_at and reply.final is None:
                    drop_at = None
                    self.stats.drops += 1
                    await self.link.drop()
                    await asyncio.sleep(random.uniform(0, 1.0))  # a phone leaving a tunnel
            except Lost:
                continue
        self.stats.finals[reply.final["status"]] += 1

    def apply(self, reply: Reply, event: dict[str, Any]) -> None:
        """Fold one event into the reply, by seq: repeats dropped, gaps counted (and repaired by a resume)."""
        kind = event["type"]
        if kind == "error":  # to a resume: the reply is unknown; the database check says what became of it
            code = event.get("code", "?")
            self.stats.resume_errors[code] += 1
            reply.final = {"status": f"resume_error:{code}", "content": ""}
            return
        if event.get("id") != reply.id:
            return  # hello, heartbeat, acks, message.new, and anything of an earlier reply
        seq = event.get("seq")
        if kind == "reply.done" and seq is None:  # the stored row: the reply ended while we were away
            self.stats.stored_done += 1
            reply.final = event["message"]
            self.stats.nonfinal_done += reply.final["status"] not in FINAL
            return
        if kind == "reply.snapshot":
            self.snapshot(reply, event)
            return
        if not isinstance(seq, int):
            return  # reply.queue is not numbered
        if seq <= reply.last_seq:
            self.stats.repeats += 1
            return
        if seq > reply.last_seq + 1:
            if not reply.gap:
                self.stats.gaps += 1
                reply.gap = True  # follow() resumes from last_seq + 1
            return
        reply.gap = False
        reply.last_seq = seq
        if kind == "reply.delta":
            if "content" in event:
                reply.content.append(event["content"])
            if "thinking" in event:
                reply.thinking.append(event["thinking"])
        elif kind == "reply.error":
            self.stats.reply_errors[event.get("code") or "?"] += 1
        elif kind == "reply.done":
            reply.final, reply.numbered_done = event["message"], True
            self.stats.nonfinal_done += reply.final["status"] not in FINAL

    def snapshot(self, reply: Reply, event: dict[str, Any]) -> None:
        """A snapshot (on subscribing while the reply runs, or of a folded log) replaces what we had up to its seq."""
        self.stats.snapshots += 1
        if event["seq"] <= reply.last_seq:
            return
        content = "".join(reply.content)
        if not event["content"].startswith(content):
            reply.snapshot_mismatch += 1
        reply.content, reply.thinking = [event["content"]], [event["thinking"]]
        reply.last_seq = event["seq"]


_TOPICS = [
    "how do I keep a long conversation within num_ctx?",
    "explain asyncio.gather versus create_task",
    "what should nginx do with WebSocket upgrades?",
    "写一段关于雨夜古寺的短文",
    "how many parallel slots fit in 24 GB of VRAM?",
    "为什么首字延迟会随着排队变长？",
    "give me a checklist for deploying a local LLM",
    "compare SQLite and PostgreSQL for a chat history",
]


# ---- the run ------------------------------------------------------------------------------------------------------
async def create_conversation(session: aiohttp.ClientSession, gateway: Gateway, address: str) -> str:
    """POST /chat/api/conversations, retried while the gateway restarts."""
    for _ in range(100):
        try:
            async with session.post(
                f"{gateway.url}/chat/api/conversations", json={}, headers={"X-Forwarded-For": address}
            ) as response:
                if response.status == 201:
                    return str((await response.json())["conversation"]["id"])
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("could not create a conversation")


@dataclass
class Crash:
    """What the kill found and left: the first process's metrics and memory just before it died."""

    at: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    down_s: float = 0.0
    port_kept: bool = True


async def crash_midway(
    gateway: Gateway, session: aiohttp.ClientSession, trigger: asyncio.Event, users: list[User], stats: Stats
) -> Crash:
    crash = Crash()
    await trigger.wait()
    crash.metrics = await scrape(session, gateway.url)  # its counters die with it
    crash.memory = memory_mib(gateway.pid)
    old_port = gateway.port
    stats.in_flight_at_kill = sum(1 for u in users if u.current is not None and u.current.in_flight)
    crash.at = time.monotonic()
    gateway.kill()
    print(f"SIGKILL at {crash.at - _T0:.1f} s", flush=True)
    await asyncio.to_thread(gateway.start)  # same data dir, same database, same port if it is free
    crash.down_s = time.monotonic() - crash.at
    print(f"restarted at {time.monotonic() - _T0:.1f} s on port {gateway.port}", flush=True)
    crash.port_kept = gateway.port == old_port
    return crash


class Gauges:
    """Samples the gauges worth watching once a second: peak event-log bytes and queue length."""

    def __init__(self) -> None:
        self.peak_log_bytes = 0.0
        self.peak_queued = 0.0

    async def watch(self, session: aiohttp.ClientSession, gateway: Gateway) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                metrics = await scrape(session, gateway.url)
                self.peak_log_bytes = max(self.peak_log_bytes, metrics["clawdbot_reply_log_bytes"][""])
                self.peak_queued = max(self.peak_queued, metrics["clawdbot_generations_queued"][""])


async def drive(args: argparse.Namespace, gateway: Gateway) -> dict[str, Any]:
    """Run all users, the crash and the gauge sampling; what the clients and /metrics saw."""
    stats = Stats()
    options = Options(args.turns, args.think_time, args.drop, args.send_drop, args.turn_timeout)
    run = secrets.token_hex(3)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        addresses = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(args.users)]
        users = [User(i, Link(session, gateway, a, stats), stats, options, run) for i, a in enumerate(addresses)]
        trigger = asyncio.Event()
        target = int(args.users * args.turns * args.kill_at)

        def acknowledged() -> None:
            if stats.acknowledged >= target:
                trigger.set()

        crash_task = asyncio.create_task(crash_midway(gateway, session, trigger, users, stats)) if args.kill else None
        gauges = Gauges()
        watcher = asyncio.create_task(gauges.watch(session, gateway))

        async def one_user(user: User, address: str) -> None:
            await asyncio.sleep(random.uniform(0, args.ramp_up))
            conversation_id = await create_conversation(session, gateway, address)
            await user.run_turns(conversation_id, acknowledged)

        started = time.monotonic()
        tasks = [asyncio.create_task(one_user(u, a)) for u, a in zip(users, addresses, strict=True)]
        done, pending = await asyncio.wait(tasks, timeout=args.duration)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.monotonic() - started
        crash = Crash()
        if crash_task is not None:
            if not crash_task.done():
                crash_task.cancel()  # the run ended before the kill's moment
            with contextlib.suppress(asyncio.CancelledError):
                crash = await crash_task
        watcher.cancel()
        final_metrics = await scrape(session, gateway.url)
    errors = [t.exception() for t in done if t.exception() is not None]
    return {
        "stats": stats,
        "users": users,
        "crash": crash,
        "final_metrics": final_metrics,
        "memory_end": memory_mib(gateway.pid),
        "gauges": gauges,
        "elapsed_s": elapsed,
        "timed_out_users": len(pending),
        "user_errors": [repr(e) for e in errors[:5]],
        "crashed": crash_task is not None and crash.at > 0,
    }


# ---- report -------------------------------------------------------------------------------------------------------
def report(args: argparse.Namespace, result: dict[str, Any], checked: dict[str, Any], sim_cmd: str) -> str:
    stats: Stats = result["stats"]
    crash: Crash = result["crash"]
    gauges: Gauges = result["gauges"]
    metrics_before, metrics_after = crash.metrics, result["final_metrics"]
    failures = by_label(metrics_before, "clawdbot_chat_reply_failures_total") + by_label(
        metrics_after, "clawdbot_chat_reply_failures_total"
    )
    retries = by_label(metrics_before, "clawdbot_chat_reply_retries_total") + by_label(
        metrics_after, "clawdbot_chat_reply_retries_total"
    )
    invariants = {key: checked[key] for key in INVARIANTS}
    invariants.update(
        not_acknowledged=stats.turns_started - stats.acknowledged,
        gaps=stats.gaps,
        nonfinal_done=stats.nonfinal_done,
        stuck=stats.stuck,
        timed_out_users=result["timed_out_users"],
    )
    lines = [
        f"users {args.users} × turns {args.turns}, think {args.think_time} s, drop {args.drop:.0%} of turns, "
        f"send-drop {args.send_drop:.0%}, fault rate {args.fault_rate:.0%}, database {args.database}, "
        f"{result['elapsed_s']:.0f} s",
        "",
        "| what | count |",
        "|---|---|",
        f"| turns started / acknowledged | {stats.turns_started} / {stats.acknowledged} |",
        f"| user messages / replies stored | {checked['user_rows']} / {checked['reply_rows']} |",
        f"| replies by final status (stored) | {_fmt(checked['statuses'])} |",
        f"| sends dropped before the ack / resent / answered `duplicate` | "
        f"{stats.send_drops} / {stats.resends} / {stats.duplicate_acks} |",
        f"| drops mid-reply / resumes / reconnects (of which silent) | "
        f"{stats.drops} / {stats.resumes} / {stats.reconnects} ({stats.quiet_reconnects}) |",
        f"| replayed events dropped as repeats / snapshots / stored reply.done | "
        f"{stats.repeats} / {stats.snapshots} / {stats.stored_done} |",
        f"| gateway SIGKILLs / in flight then (client view) / down for | "
        f"{int(result['crashed'])} / {stats.in_flight_at_kill} / {crash.down_s:.1f} s "
        f"(port {'kept' if crash.port_kept else 'changed'}) |",
        f"| stored error_kind (status:kind) | {_fmt(checked['error_kinds'])} |",
        f"| /metrics reply failures by cause | {_fmt(failures)} |",
        f"| /metrics retries before the first token (unseen) | {_fmt(retries)} |",
        f"| reply.error codes seen live | {_fmt(stats.reply_errors)} |",
        f"| send errors / resume errors | {_fmt(stats.send_errors)} / {_fmt(stats.resume_errors)} |",
        f"| whole streams compared with the database (of which resumed) / interrupted compared | "
        f"{checked['whole_streams_checked']} ({checked['resumed_streams_checked']}) / "
        f"{checked['interrupted_checked']} |",
        f"| stored but never acknowledged (a send given up) | {checked['unacknowledged_stored']} |",
        f"| gateway memory: VmHWM of the killed process / of the restarted one (VmRSS at end) | "
        f"{crash.memory.get('VmHWM', 0):.0f} MiB / {result['memory_end']['VmHWM']:.0f} MiB "
        f"({result['memory_end']['VmRSS']:.0f} MiB) |",
        f"| peak clawdbot_reply_log_bytes / at end | {gauges.peak_log_bytes / 1024:.0f} KiB / "
        f"{_gauge(result['final_metrics'], 'clawdbot_reply_log_bytes') / 1024:.0f} KiB |",
        f"| peak clawdbot_generations_queued / at end | {gauges.peak_queued:.0f} / "
        f"{_gauge(result['final_metrics'], 'clawdbot_generations_queued'):.0f} |",
        "",
        "invariants (each must be 0): " + ", ".join(f"{k} {v}" for k, v in invariants.items()),
        f"simulator: clawdbot {sim_cmd}",
        f"gateway:   clawdbot serve {' '.join(args.gateway_args)}",
    ]
    lines += [f"  problem: {p}" for p in checked["problems"] + result["user_errors"]]
    return "\n".join(lines)


def _fmt(counts: dict[str, int] | Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v) or "none"


def _gauge(metrics: dict[str, dict[str, float]], name: str) -> float:
    return metrics.get(name, {}).get("", 0.0)


def failed(result: dict[str, Any], checked: dict[str, Any]) -> bool:
    stats: Stats = result["stats"]
    return (
        any(checked[key] for key in INVARIANTS)
        or stats.gaps > 0
        or stats.nonfinal_done > 0
        or stats.stuck > 0
        or stats.turns_started != stats.acknowledged
        or result["timed_out_users"] > 0
        or bool(result["user_errors"])
        or stats.acknowledged == 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--think-time", type=float, default=1.0, help="mean pause between a user's turns (s)")
    parser.add_argument("--ramp-up", type=float, default=5.0, help="users start over this many seconds")
    parser.add_argument("--drop", type=float, default=0.2, help="share of turns whose socket drops mid-reply")
    parser.add_argument("--send-drop", type=float, default=0.05, help="share of sends whose socket drops before ack")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="the simulator's share of failing requests")
    parser.add_argument("--faults", default="drop,stall,error_line,http_500,reset")
    parser.add_argument("--slots", type=int, default=16, help="simulator slots = gateway --max-running")
    parser.add_argument("--tokens-per-second", type=float, default=100.0, help="per stream, in the simulator")
    parser.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True, help="SIGKILL the gateway once")
    parser.add_argument("--kill-at", type=float, default=0.5, help="…when this share of planned turns is acked")
    parser.add_argument("--duration", type=float, default=600.0, help="cap on the whole run (s)")
    parser.add_argument("--turn-timeout", type=float, default=300.0, help="cap on one turn (s)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing database to connect to while creating (and dropping) the benchmark's own",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep-log", type=Path, help="copy the gateway's log (both processes) here")
    args = parser.parse_args()
    random.seed(args.seed)
    stop_on_sigterm()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two sockets per user, more while reconnecting
    sys.exit(asyncio.run(run(args)))


async def run(args: argparse.Namespace) -> int:
    sim_args = ["simulate", "--port", "0", "--tokens-per-second", str(args.tokens_per_second)]
    sim_args += ["--num-parallel", str(args.slots), "--keep-alive", "-1s", "--seed", str(args.seed)]
    sim_args += ["--fault-rate", str(args.fault_rate)]
    for kind in args.faults.split(","):
        sim_args += ["--faults", kind]
    sim, sim_url = start(sim_args, None)
    name, url = None, ""
    with tempfile.TemporaryDirectory(prefix="clawdbot-durability-") as tmp:
        data_dir = Path(tmp) / "data"
        args.gateway_args = ["--ollama-url", sim_url, "--data-dir", str(data_dir), "--max-running", str(args.slots)]
        args.gateway_args += ["--no-auth"]  # on 127.0.0.1: accounts are not what this measures
        try:
            await load_model(sim_url)
            if args.database == "postgresql":
                name, url = await create_database(args.postgres, "clawdbot_durability")
                args.gateway_args += ["--database-url", url]
            gateway = Gateway(args.gateway_args, Path(tmp) / "gateway.log")
            await asyncio.to_thread(gateway.start)
            try:
                result = await drive(args, gateway)
            finally:
                gateway.stop()
            rows = rows_sqlite(data_dir / "clawdbot.db") if name is None else await rows_postgres(url)
            log_text = gateway.log.read_text(errors="replace")
            if args.keep_log:
                args.keep_log.write_text(log_text)
        finally:
            sim.terminate()
            sim.wait()
            if name is not None:
                await drop_database(args.postgres, name)
    checked = verify(result["users"], rows)
    tracebacks = log_text.count("Traceback")
    print(report(args, result, checked, " ".join(sim_args)))
    print(f"tracebacks in the gateway's log: {tracebacks}")
    bad = failed(result, checked) or tracebacks > 0
    print("RESULT: " + ("FAILED: an invariant does not hold" if bad else "all invariants held"))
    if args.json:
        stats: Stats = result["stats"]
        figures = {
            "stats": {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(stats).items()},
            "checked": checked,
            "crash": {k: v for k, v in vars(result["crash"]).items() if k != "metrics"},
            "memory_end": result["memory_end"],
            "elapsed_s": result["elapsed_s"],
        }
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    main()
