"""What relaying replies' events through Redis costs: Redis CPU per token, and the writer's round trips per token.

    uv run python benchmarks/live_eventlog.py --replies 8 --words 100

Two gateways of one deployment (a throwaway PostgreSQL database, a fresh Redis key prefix): A writes `--replies`
replies at once, each `--words` tokens; B has a WebSocket subscribed to every one of those conversations and counts
the events it relays. Redis's `INFO cpu` and `INFO commandstats` are read before and after, and A's
`clawdbot_reply_log_mirror_total` counters (round trips, stream entries, events published). Redis is shared: an
equally long idle interval is measured first, and its CPU is subtracted.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from typing import Any

import aiohttp
import orjson
import redis
from _harness import by_label, create_database, drop_database, load_model, scrape
from _procs import start

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_usec(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """(calls, microseconds) per command."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


async def relay(args: argparse.Namespace, a: str, b: str, client: redis.Redis) -> dict[str, Any]:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(args.words))
    async with aiohttp.ClientSession() as session:
        conversations = []
        for _ in range(args.replies):
            async with session.post(f"{a}/chat/api/conversations", json={}) as response:
                conversations.append((await response.json())["conversation"]["id"])
        tab = await session.ws_connect(f"{b}/chat/api/ws")
        await tab.receive()  # hello
        for i, conversation in enumerate(conversations):
            await tab.send_str(orjson.dumps({"type": "subscribe", "conversation_id": conversation, "ref": i}).decode())
            while orjson.loads((await tab.receive()).data)["type"] != "ack":
                pass
        script = [{"match": f"go {i} ", "reply": text, "thinking": ""} for i in range(args.replies)]
        async with session.post(f"{args.sim}/_sim/script", json=script) as response:
            response.raise_for_status()
        before_metrics = by_label(await scrape(session, a), "clawdbot_reply_log_mirror_total")
        cpu, usec, began = redis_cpu(client), command_usec(client), time.perf_counter()
        for i, conversation in enumerate(conversations):
            url = f"{a}/chat/api/conversations/{conversation}/messages"
            async with session.post(url, json={"content": f"go {i} "}) as response:
                assert response.status == 202, await response.text()
        deltas = done = 0
        while done < args.replies:
            event = orjson.loads((await tab.receive(timeout=30)).data)
            deltas += event["type"] == "reply.delta"
            done += event["type"] == "reply.done"
        elapsed = time.perf_counter() - began
        await asyncio.sleep(0.2)  # the last flush
        cpu_used, after_usec = redis_cpu(client) - cpu, command_usec(client)
        after_metrics = by_label(await scrape(session, a), "clawdbot_reply_log_mirror_total")
        await tab.close()
    mirror = {k: after_metrics[k] - before_metrics[k] for k in after_metrics}
    commands = {
        name: (calls - usec.get(name, (0, 0))[0], spent - usec.get(name, (0, 0))[1])
        for name, (calls, spent) in after_usec.items()
        if calls != usec.get(name, (0, 0))[0]
    }
    return {"deltas": deltas, "elapsed": elapsed, "cpu": cpu_used, "mirror": mirror, "commands": commands}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=8)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--tokens-per-second", type=float, default=80)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"clawdbot-bench-{secrets.token_hex(4)}"
    name, database = await create_database(args.postgres, "clawdbot_live_eventlog")
    sim_args = ["simulate", "--port", "0", "--profile", "instant", "--num-parallel", str(max(args.replies, 1))]
    sim_proc, args.sim = start([*sim_args, "--tokens-per-second", str(args.tokens_per_second)], None)
    common = ["--ollama-url", args.sim, "--database-url", database, "--redis-url", args.redis_url]
    common += ["--redis-prefix", prefix, "--no-auth", "--max-running", str(max(args.replies, 1))]
    procs = []
    try:
        await load_model(args.sim)
        a_proc, a = start(["serve", "--port", "0", "--data-dir", tempfile.mkdtemp(), *common], None)
        procs.append(a_proc)
        b_proc, b = start(["serve", "--port", "0", "--data-dir", tempfile.mkdtemp(), *common], None)
        procs.append(b_proc)
        result = await relay(args, a, b, client)
        idle = redis_cpu(client)
        await asyncio.sleep(result["elapsed"])
        idle = redis_cpu(client) - idle
    finally:
        for proc in [*procs, sim_proc]:
            proc.terminate()
            proc.wait()
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        await drop_database(args.postgres, name)
    tokens, mirror = result["deltas"], result["mirror"]
    ours = ("xadd", "publish", "hset", "expire", "xtrim", "multi")  # exec: the sum of these again
    usec = sum(spent for name, (_, spent) in result["commands"].items() if name in ours)
    print(f"{args.replies} replies × {args.words} tokens, {tokens} deltas relayed A → B in {result['elapsed']:.2f} s")
    print(
        f"Redis CPU: {result['cpu'] * 1000:.1f} ms during the run, {idle * 1000:.1f} ms in as long idle; "
        f"{(result['cpu'] - idle) / max(tokens, 1) * 1e6:.1f} µs per relayed token (idle subtracted)"
    )
    print(f"Redis command time (commandstats, the log's commands): {usec / max(tokens, 1):.1f} µs per token")
    for name in (*ours, "exec"):
        if name in result["commands"]:
            calls, spent = result["commands"][name]
            print(f"  {name:8} {calls:6} calls {spent:8} µs")
    trips = mirror.get("round_trips", 0)
    print(
        f"Writer: {trips} round trips for {mirror.get('events', 0)} stream entries and {mirror.get('frames', 0)} "
        f"published events: {trips / max(tokens, 1):.3f} round trips per token; "
        f"dropped {mirror.get('frames_dropped', 0)}, failures {mirror.get('failures', 0)}"
    )


if __name__ == "__main__":
    asyncio.run(main())
