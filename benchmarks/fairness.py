"""Fair queueing under overload: one greedy user against many light ones, round-robin against a FIFO baseline.

The gateway runs at most --slots generations (`--max-running`) on a simulator with as many slots, and every reply
takes the same time: the simulator answers every request with the same --reply-tokens tokens at
--tokens-per-second, so a reply holds its slot for T = reply tokens / rate seconds. All users talk to the gateway
through the chat WebSocket, as the chat page does; each one is a different X-Forwarded-For address, which the
gateway (trusting 127.0.0.1, its default) takes as the user.

1. **round-robin**: the greedy user fires --greedy sends at once (one per conversation); while they wait, --light
   users send one message each, one every --stagger seconds. A light user's *wait* is its time to first token
   minus the same figure on an idle gateway. Round-robin promises that a light user waits for at most one grant
   per user ahead of it in the ring: with U users waiting when it arrives, at most ceil((U + 1) / K) slot turns,
   i.e. ceil((U + 1) / K) · T seconds (U counted by the client: users with a send and no first token yet).
2. **FIFO baseline**: the same load with every user behind one address, so the ring has one line and the gateway
   serves in arrival order: a light user waits behind the greedy user's backlog.
3. **429**: `--max-queue-per-user 10`: of the greedy burst, K run, 10 wait and the rest get 429
   (`too_many_waiting`) with Retry-After; a light user is still admitted; HTTP and the raw /api/chat answer alike,
   and nothing refused is stored.
4. **503**: `--max-queue 8`: K run, 8 wait, everyone else gets 503 (`overloaded`) with Retry-After, light users too.

Gateway memory (VmHWM from /proc) is reported for every scenario.

    uv run python benchmarks/fairness.py
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _fairness_clients import HOLD, Client, Generation
from _harness import MODEL, Gateway, load_model, memory_mib, stop_on_sigterm
from _procs import start


def waiting_users(generations: list[Generation], now: float) -> int:
    """Users with a send out and no first token yet: those in the ring (or just granted a slot)."""
    return len({g.user for g in generations if g.sent and g.sent <= now and g.first_token is None and not g.refused})


async def baseline_ttft(client: Client, address: str) -> float:
    """Time to first token on an idle gateway (median of 3): what a reply costs without any queue."""
    tab = await client.tab(address)
    ttfts = []
    for _ in range(3):
        generation = Generation(address, await client.conversation(address))
        await tab.send(generation, "baseline")
        await asyncio.wait_for(generation.finished.wait(), 60)
        assert generation.ttft is not None
        ttfts.append(generation.ttft)
    await tab.close()
    return statistics.median(ttfts)


async def burst_and_trickle(
    client: Client, args: argparse.Namespace, greedy: str, lights: list[str]
) -> tuple[list[Generation], list[Generation]]:
    """The greedy user's burst, then one send per light user every --stagger seconds; all to the end."""
    greedy_tab = await client.tab(greedy)
    light_tabs = [await client.tab(address) for address in lights]
    greedy_gens = [Generation(greedy, await client.conversation(greedy)) for _ in range(args.greedy)]
    light_gens = [Generation(address, await client.conversation(address)) for address in lights]
    everyone = [*greedy_gens, *light_gens]
    for number, generation in enumerate(greedy_gens):
        await greedy_tab.send(generation, f"greedy request {number}")
    start = time.perf_counter()
    for index, (tab, generation) in enumerate(zip(light_tabs, light_gens, strict=True)):
        await asyncio.sleep(max(0.0, start + args.first_light + index * args.stagger - time.perf_counter()))
        generation.users_ahead = waiting_users(everyone, time.perf_counter())
        await tab.send(generation, f"light request from {generation.user}")
    await asyncio.wait_for(asyncio.gather(*(g.finished.wait() for g in everyone)), args.timeout)
    for tab in [greedy_tab, *light_tabs]:
        await tab.close()
    return greedy_gens, light_gens


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": math.nan, "p95": math.nan, "max": math.nan}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {"n": len(values), "p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def summarise(
    mode: str, greedy: list[Generation], light: list[Generation], base: float, args: argparse.Namespace
) -> dict[str, Any]:
    slot_time = args.reply_tokens / args.tokens_per_second

    def waits(generations: list[Generation]) -> list[float]:
        return [g.ttft - base for g in generations if g.ttft is not None]

    bounds = [math.ceil((g.users_ahead + 1) / args.slots) * slot_time for g in light]
    over = [
        (g.ttft - base) - bound
        for g, bound in zip(light, bounds, strict=True)
        if g.ttft is not None and g.ttft - base > bound + args.slack
    ]
    positions = [g.first_position or 0 for g in light]
    return {
        "mode": mode,
        "light": percentiles(waits(light)),
        "greedy": percentiles(waits(greedy)),
        "light_first_position_max": max(positions, default=0),
        "light_first_position_p50": statistics.median(positions) if positions else 0,
        "bound_max_s": max(bounds, default=0.0),
        "over_bound": len(over),
        "failed": sum(1 for g in [*greedy, *light] if g.refused or (g.stored or {}).get("status") != "done"),
        "baseline_ttft_ms": base * 1000,
    }


# ---- the scenarios ------------------------------------------------------------------------------------------------
async def queue_scenario(
    args: argparse.Namespace, sim_url: str, tmp: Path, mode: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Round-robin (each user its own address) or FIFO (everyone behind one address)."""
    gateway = Gateway(gateway_args(args, sim_url, tmp / mode), tmp / f"gateway-{mode}.log")
    await asyncio.to_thread(gateway.start)
    try:
        async with session() as http:
            client = Client(http, gateway.url)
            base = await baseline_ttft(client, "10.2.0.1")
            greedy = "10.1.0.1"
            lights = [f"10.3.0.{i + 1}" for i in range(args.light)]
            if mode == "fifo":
                greedy, lights = "10.9.9.9", ["10.9.9.9"] * args.light
            greedy_gens, light_gens = await burst_and_trickle(client, args, greedy, lights)
        figures = summarise(mode, greedy_gens, light_gens, base, args)
        return figures, memory_mib(gateway.pid)
    finally:
        gateway.stop()


@dataclass
class Refusals:
    scenario: str
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # "status code" → count
    retry_after_ok: bool = True  # every refusal said when to retry
    light_outcome: str = ""
    http_outcome: str = ""
    raw_outcome: str = ""
    stored_user_messages: int = -1
    memory: dict[str, float] = field(default_factory=dict)


async def limit_scenario(args: argparse.Namespace, sim_url: str, tmp: Path, scenario: str) -> Refusals:
    """--max-queue-per-user 10 (expect 429) or --max-queue 8 (expect 503) under the greedy burst."""
    extra = ["--max-queue-per-user", "10"] if scenario == "429" else ["--max-queue", "8"]
    data = tmp / f"limit-{scenario}"
    gateway = Gateway([*gateway_args(args, sim_url, data), *extra], tmp / f"gateway-{scenario}.log")
    await asyncio.to_thread(gateway.start)
    result = Refusals(scenario)
    try:
        async with session() as http:
            client = Client(http, gateway.url)
            greedy, light = "10.1.0.1", "10.3.0.1"
            tab = await client.tab(greedy)
            gens = [Generation(greedy, await client.conversation(greedy)) for _ in range(args.greedy)]
            for number, generation in enumerate(gens):
                await tab.send(generation, f"greedy request {number} {HOLD}")
            await asyncio.wait_for(asyncio.gather(*(_answered(g) for g in gens)), 30)
            for generation in gens:
                if generation.refused is None:
                    result.accepted += 1
                    continue
                key = f"{generation.refused['status']} {generation.refused['code']}"
                result.refused[key] = result.refused.get(key, 0) + 1
                result.retry_after_ok &= int(generation.refused.get("retry_after") or 0) >= 1
            result.light_outcome = await one_light_send(client, light)
            result.http_outcome = await http_send(client, greedy)
            result.raw_outcome = await raw_chat(client, greedy)
            await tab.close()
        result.stored_user_messages = count_user_messages(data / "clawdbot.db")
        result.memory = memory_mib(gateway.pid)
        return result
    finally:
        gateway.stop()


async def _answered(generation: Generation) -> None:
    """Until the send is acknowledged (it is then running or waiting) or refused."""
    await generation.answered.wait()


async def one_light_send(client: Client, address: str) -> str:
    tab = await client.tab(address)
    generation = Generation(address, await client.conversation(address))
    await tab.send(generation, f"light request {HOLD}")
    await _answered(generation)
    await tab.close()
    refused = generation.refused
    if refused is None:
        return "admitted"
    return f"{refused['status']} {refused['code']}, retry_after {refused.get('retry_after')}"


async def http_send(client: Client, address: str) -> str:
    """POST …/messages: refused the same way, with a Retry-After header."""
    conversation_id = await client.conversation(address)
    async with client.session.post(
        f"{client.url}/chat/api/conversations/{conversation_id}/messages",
        json={"content": f"over HTTP {HOLD}"},
        headers={"X-Forwarded-For": address},
    ) as response:
        body = await response.json()
        return f"{response.status} {body.get('code', '')}, Retry-After {response.headers.get('Retry-After')}"


async def raw_chat(client: Client, address: str) -> str:
    """The raw Ollama API shares the slots and the queue."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"raw {HOLD}"}], "stream": True}
    async with client.session.post(
        f"{client.url}/api/chat", json=body, headers={"X-Forwarded-For": address}
    ) as response:
        return f"{response.status}, Retry-After {response.headers.get('Retry-After')}"


def count_user_messages(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM messages WHERE role = 'user'").fetchone()[0])
    finally:
        conn.close()


def gateway_args(args: argparse.Namespace, sim_url: str, data_dir: Path) -> list[str]:
    # Without accounts (on 127.0.0.1): the users are told apart by address, as the gateway's fairness does then.
    return ["--ollama-url", sim_url, "--data-dir", str(data_dir), "--max-running", str(args.slots), "--no-auth"]


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
    )


# ---- report -------------------------------------------------------------------------------------------------------
def render_queues(rows: list[tuple[dict[str, Any], dict[str, float]]]) -> str:
    lines = [
        "| queue | light users: wait p50 / p95 / max | greedy: wait p50 / p95 / max | light: first queue position "
        "p50 / max | light waits over the round-robin bound | replies not done | gateway VmHWM |",
        "|---|---|---|---|---|---|---|",
    ]
    for figures, memory in rows:
        light, greedy = figures["light"], figures["greedy"]
        lines.append(
            f"| {figures['mode']} | {_s(light)} | {_s(greedy)} | {figures['light_first_position_p50']:.0f} / "
            f"{figures['light_first_position_max']} | {figures['over_bound']} of {light['n']} "
            f"(bound ≤ {figures['bound_max_s']:.1f} s) | {figures['failed']} | {memory['VmHWM']:.0f} MiB |"
        )
    return "\n".join(lines)


def _s(p: dict[str, float]) -> str:
    return f"{p['p50']:.2f} / {p['p95']:.2f} / {p['max']:.2f} s"


def render_limits(rows: list[Refusals], greedy: int) -> str:
    lines = [
        f"| limit | greedy burst of {greedy}: admitted / refused | every refusal has retry_after | light user | "
        "HTTP POST …/messages (greedy) | raw /api/chat (greedy) | user messages stored | gateway VmHWM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        refused = ", ".join(f"{n} × {k}" for k, n in r.refused.items()) or "none"
        lines.append(
            f"| {'--max-queue-per-user 10' if r.scenario == '429' else '--max-queue 8'} | {r.accepted} / {refused} | "
            f"{'yes' if r.retry_after_ok else 'NO'} | {r.light_outcome} | {r.http_outcome} | {r.raw_outcome} | "
            f"{r.stored_user_messages} | {r.memory.get('VmHWM', 0):.0f} MiB |"
        )
    return "\n".join(lines)


def verdict(queues: list[tuple[dict[str, Any], dict[str, float]]], limits: list[Refusals], slots: int) -> list[str]:
    """What must hold; each failure is one line."""
    problems = []
    fair = next(f for f, _ in queues if f["mode"] == "round-robin")
    if fair["over_bound"]:
        problems.append(f"{fair['over_bound']} light users waited longer than the round-robin bound")
    for figures, _ in queues:
        if figures["failed"]:
            problems.append(f"{figures['mode']}: {figures['failed']} replies did not end done")
    for r in limits:
        expected = "429 too_many_waiting" if r.scenario == "429" else "503 overloaded"
        admitted = slots + (10 if r.scenario == "429" else 8)
        if r.accepted != admitted or list(r.refused) != [expected]:
            problems.append(f"{r.scenario}: admitted {r.accepted} (expected {admitted}), refused {r.refused}")
        if not r.retry_after_ok:
            problems.append(f"{r.scenario}: a refusal without retry_after")
        if r.stored_user_messages != r.accepted + (r.light_outcome == "admitted"):
            problems.append(f"{r.scenario}: {r.stored_user_messages} user messages stored, {r.accepted} admitted")
        if not r.http_outcome.startswith(expected.split()[0]) or "Retry-After None" in r.http_outcome:
            problems.append(f"{r.scenario}: HTTP send answered {r.http_outcome}")
        if not r.raw_outcome.startswith(expected.split()[0]) or "Retry-After None" in r.raw_outcome:
            problems.append(f"{r.scenario}: raw /api/chat answered {r.raw_outcome}")
    return problems


async def run(args: argparse.Namespace) -> int:
    reply = "ok" + " tok" * (args.reply_tokens - 1)  # one token per word (the simulator's Qwen-like tokenizer)
    sim_args = ["simulate", "--port", "0", "--tokens-per-second", str(args.tokens_per_second)]
    sim_args += ["--num-parallel", str(args.slots), "--keep-alive", "-1s"]
    sim, sim_url = start(sim_args, None)
    try:
        await load_model(sim_url)
        # The limit scenarios' replies hold their slots a minute, so the queue stays full while it is probed.
        hold = "ok" + " tok" * int(args.tokens_per_second * 60)
        script = [
            {"match": HOLD, "reply": hold, "thinking": "", "times": -1},
            {"match": "", "reply": reply, "thinking": "", "times": -1},
        ]
        async with session() as http, http.post(f"{sim_url}/_sim/script", json=script) as response:
            response.raise_for_status()
        with tempfile.TemporaryDirectory(prefix="clawdbot-fairness-") as name:
            tmp = Path(name)
            queues = [await queue_scenario(args, sim_url, tmp, mode) for mode in ("round-robin", "fifo")]
            limits = [await limit_scenario(args, sim_url, tmp, scenario) for scenario in ("429", "503")]
    finally:
        sim.terminate()
        sim.wait()
    slot_time = args.reply_tokens / args.tokens_per_second
    print(
        f"K = {args.slots} slots, T = {slot_time:.2f} s per reply ({args.reply_tokens} tokens at "
        f"{args.tokens_per_second:g} tok/s), greedy burst {args.greedy}, {args.light} light users one every "
        f"{args.stagger:g} s from {args.first_light:g} s; baseline TTFT "
        f"{queues[0][0]['baseline_ttft_ms']:.0f} ms (round-robin) / {queues[1][0]['baseline_ttft_ms']:.0f} ms (FIFO)"
    )
    print()
    print(render_queues(queues))
    print()
    print(render_limits(limits, args.greedy))
    problems = verdict(queues, limits, args.slots)
    print()
    print(f"simulator: clawdbot {' '.join(sim_args)} (every reply scripted to {args.reply_tokens} tokens)")
    print(f"gateway:   clawdbot serve --max-running {args.slots} --no-auth [--max-queue-per-user 10 | --max-queue 8]")
    for problem in problems:
        print(f"  problem: {problem}")
    print("RESULT: " + ("FAILED" if problems else "fair queueing and admission limits held"))
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=4, help="K: simulator slots = gateway --max-running")
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="per stream")
    parser.add_argument("--reply-tokens", type=int, default=40, help="every reply's length")
    parser.add_argument("--greedy", type=int, default=50, help="the greedy user's burst of sends")
    parser.add_argument("--light", type=int, default=20, help="light users, one send each")
    parser.add_argument("--first-light", type=float, default=0.5, help="seconds after the burst")
    parser.add_argument("--stagger", type=float, default=1.0, help="seconds between light users' sends")
    parser.add_argument("--slack", type=float, default=0.25, help="seconds allowed over the bound (event loop, DB)")
    parser.add_argument("--timeout", type=float, default=300.0, help="cap on one scenario (s)")
    args = parser.parse_args()
    stop_on_sigterm()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
