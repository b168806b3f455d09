"""What relaying costs in CPU: microseconds of the relaying process per request and per streamed chunk, for a plain
aiohttp relay (_yardsticks.PLAIN_RELAY, ~30 lines), the gateway's raw /api/chat path and its chat path, in one run.

One simulator paces every reply (`--tokens-per-second`, unlimited slots, nothing queues); each path gets
--requests requests at --concurrency with 1-token replies and again with --long-token replies, from a load
generator in a process of its own (benchmarks/_cpu_load.py). The relaying process's CPU (utime + stime from
/proc/PID/stat, with any child processes) is read before and after each run:

    per request = CPU of the 1-token run / requests
    per chunk   = (CPU per long request - CPU per 1-token request) / (long - 1)

The raw paths (plain relay, gateway /api/chat, nginx with --nginx) relay Ollama's NDJSON stream; the chat path is
the chat page's WebSocket (`send`, then events to `reply.done`; per turn and per token the same way). The load
generator's CPU is reported too: near one core, it was the bottleneck and the figures are suspect. CPU time, not
wall time, is what is compared, so other work on the machine shifts the figures little; --rounds N repeats the runs
and reports the median.

    uv run python benchmarks/cpu_cost.py
    uv run python benchmarks/cpu_cost.py --requests 500 --paths plain,raw
    uv run python benchmarks/cpu_cost.py --nginx --rounds 3
    uv run python benchmarks/cpu_cost.py --paths plain,raw,chat,raw-redis,chat-redis   # with and without Redis

`raw-redis` and `chat-redis` are a second gateway of the same settings plus `--redis-url` (default
redis://127.0.0.1:6379/0, a fresh key prefix): its live state shared in Redis, as with --workers or replicas.
--redis-url redis+cluster://HOST:PORT,… runs them on a Redis Cluster. Redis's own CPU (INFO cpu, used_cpu_user +
used_cpu_sys, of every node of a cluster) is read around those runs too: per request and per chunk
the same way. Redis is shared with whatever else runs: an idle machine gives the cleanest figures.

The event loop's own CPU (the relaying process's first thread, /proc/PID/task/PID/stat) is reported per token too:
the gateway's other threads are SQLite's. `--without-search-index` is an experiment, not a setting: it drops the
triggers that put every stored message into the chat's full-text index (search then misses those replies), to
measure what that index costs; `--gateway-arg=--checkpoint-interval=60` does the same for the once-a-second save
of replies in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import start
from _yardsticks import start_nginx, start_plain

HERE = Path(__file__).resolve().parent
_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process, or None once it is gone."""
    return _stat_file(Path(f"/proc/{pid}/stat"))


def cpu_tree(pid: int) -> float:
    """CPU seconds of a process and its live descendants (a gateway with --workers runs several)."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    total, family = 0.0, {pid}
    for child, (parent, _) in sorted(stats.items()):
        if parent in family:
            family.add(child)
    for member in family:
        total += stats.get(member, (0, 0.0))[1]
    return total


def cpu_main_thread(pid: int) -> float:
    """CPU seconds of a process's first thread: the event loop, in the gateway and the plain relay (the gateway's
    other threads are SQLite's and the log writer's)."""
    stat = _stat_file(Path(f"/proc/{pid}/task/{pid}/stat"))
    return stat[1] if stat is not None else 0.0


def _stat_file(path: Path) -> tuple[int, float] | None:
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- one run ---------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    path: str
    tokens: int
    requests: int
    relay_cpu_s: float
    load_cpu_s: float
    wall_s: float
    chunks_seen: int  # raw: body chunks the client received; chat: events
    tokens_seen: int
    failures: dict[str, int] = field(default_factory=dict)
    redis_cpu_s: float = 0.0  # Redis's own CPU during the run (the *-redis paths)
    loop_cpu_s: float = 0.0  # the relaying process's first thread alone (its event loop)

    @property
    def us_per_request(self) -> float:
        return 1e6 * self.relay_cpu_s / self.requests if self.requests else float("nan")

    @property
    def redis_us_per_request(self) -> float:
        return 1e6 * self.redis_cpu_s / self.requests if self.requests else float("nan")


def redis_cpu(url: str | None) -> float:
    """Redis's CPU seconds so far (user + system; a Redis Cluster's: every node's), 0 without a Redis."""
    if not url:
        return 0.0
    import redis  # only the *-redis paths need it
    from redis.cluster import ClusterNode, RedisCluster

    if url.startswith("redis+cluster://"):
        hosts = [host.rsplit(":", 1) for host in url.removeprefix("redis+cluster://").split(",")]
        cluster = RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in hosts])
        try:
            infos = cluster.info("cpu", target_nodes=RedisCluster.ALL_NODES).values()
        finally:
            cluster.close()
    else:
        client = redis.Redis.from_url(url)
        try:
            infos = [client.info("cpu")]
        finally:
            client.close()
    return sum(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]) for info in infos)


def run_load(path: str, url: str, pid: int, tokens: int, args: argparse.Namespace) -> Run:
    mode = "chat" if path.startswith("chat") else "raw"
    redis_url = args.redis_url if path.endswith("-redis") else None
    command = [
        sys.executable,
        str(HERE / "_cpu_load.py"),
        mode,
        url,
        "--requests",
        str(args.requests),
        "--concurrency",
        str(args.concurrency),
        "--tokens",
        str(tokens),
        "--turns-per-conversation",
        str(args.turns_per_conversation),
    ]
    load = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert load.stdin is not None
    assert load.stdout is not None
    try:
        if load.stdout.readline().strip() != "ready":
            raise SystemExit(f"the load generator failed to warm up against {path} ({url})")
        time.sleep(0.2)  # let the warm-up's tail (connections closing, the last log lines) settle
        before, redis_before, loop_before = cpu_tree(pid), redis_cpu(redis_url), cpu_main_thread(pid)
        load.stdin.write("go\n")
        load.stdin.flush()
        line = load.stdout.readline()
        relay_cpu, loop_cpu = cpu_tree(pid) - before, cpu_main_thread(pid) - loop_before
        redis_used = redis_cpu(redis_url) - redis_before
        if not line:
            raise SystemExit(f"the load generator died during the {path} run")
        result = json.loads(line)
    finally:
        stop(load)
    return Run(
        path,
        tokens,
        result["requests"],
        relay_cpu,
        result["cpu_s"],
        result["wall_s"],
        result["received"],
        result["tokens"],
        result["failures"],
        redis_used,
        loop_cpu,
    )


def unindexed(database: Path) -> None:
    """Drop the triggers that put each new or changed message into the full-text index (migration 0001)."""
    if not database.exists():
        raise SystemExit(f"no database at {database}: the gateway keeps it elsewhere now")
    with sqlite3.connect(database) as connection:
        for trigger in ("messages_fts_insert", "messages_fts_update"):
            connection.execute(f"DROP TRIGGER {trigger}")  # fails loudly if the schema has changed


# ---- the report ------------------------------------------------------------------------------------------------------
NAMES = {
    "plain": "plain aiohttp relay",
    "nginx": "nginx (1 worker, proxy_buffering off)",
    "raw": "gateway /api/chat",
    "chat": "gateway chat (WebSocket)",
    "raw-redis": "gateway /api/chat, state in Redis",
    "chat-redis": "gateway chat (WebSocket), state in Redis",
}


def summarise(runs: list[Run], long: int) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for path in dict.fromkeys(run.path for run in runs):
        short = [r for r in runs if r.path == path and r.tokens == 1]
        longer = [r for r in runs if r.path == path and r.tokens == long]
        per_request = statistics.median(r.us_per_request for r in short)
        per_long = statistics.median(r.us_per_request for r in longer)
        loop_short = statistics.median(1e6 * r.loop_cpu_s / max(r.requests, 1) for r in short)
        loop_long = statistics.median(1e6 * r.loop_cpu_s / max(r.requests, 1) for r in longer)
        table[path] = {
            "loop_us_per_chunk": (loop_long - loop_short) / (long - 1),
            "us_per_request": per_request,
            "us_per_long_request": per_long,
            "us_per_chunk": (per_long - per_request) / (long - 1),
            "load_cores": statistics.median(r.load_cpu_s / r.wall_s for r in [*short, *longer]),
            "relay_cores": statistics.median(r.relay_cpu_s / r.wall_s for r in [*short, *longer]),
            "chunks_per_long_request": statistics.median(r.chunks_seen / max(r.requests, 1) for r in longer),
            "tokens_per_long_request": statistics.median(r.tokens_seen / max(r.requests, 1) for r in longer),
            "requests": sum(r.requests for r in [*short, *longer]),
            "failures": sum(sum(r.failures.values()) for r in [*short, *longer]),
        }
        if path.endswith("-redis"):
            redis_request = statistics.median(r.redis_us_per_request for r in short)
            redis_long = statistics.median(r.redis_us_per_request for r in longer)
            table[path]["redis_us_per_request"] = redis_request
            table[path]["redis_us_per_chunk"] = (redis_long - redis_request) / (long - 1)
    return table


def render(table: dict[str, dict[str, Any]], long: int) -> str:
    lines = [
        f"| relaying process | CPU per request (1 token) | CPU per {long}-token request | CPU per chunk | "
        f"relay CPU (cores) | load generator CPU (cores) | client chunks per {long}-token reply | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path, row in table.items():
        unit = "turn" if path.startswith("chat") else "request"
        lines.append(
            f"| {NAMES[path]} | {row['us_per_request']:.0f} µs / {unit} | {row['us_per_long_request']:.0f} µs | "
            f"**{row['us_per_chunk']:.1f} µs** | {row['relay_cores']:.2f} | {row['load_cores']:.2f} | "
            f"{row['chunks_per_long_request']:.1f} | {row['failures']} of {row['requests']} |"
        )
    ratios = []
    if "raw" in table and "plain" in table:
        raw, plain = table["raw"], table["plain"]
        ratios.append(f"gateway raw / plain relay: {raw['us_per_request'] / plain['us_per_request']:.2f}× per request")
        ratios.append(f"gateway raw / plain relay: {raw['us_per_chunk'] / plain['us_per_chunk']:.2f}× per chunk")
    for chat_path, raw_path in (("chat", "raw"), ("chat-redis", "raw-redis")):
        if chat_path in table and raw_path in table:
            chat, raw = table[chat_path], table[raw_path]
            ratios.append(f"{chat_path} / {raw_path}: {chat['us_per_chunk'] / raw['us_per_chunk']:.2f}× per token")
            loops = chat["loop_us_per_chunk"], raw["loop_us_per_chunk"]
            ratio = f"{loops[0] / loops[1]:.2f}×" if loops[1] > 0 else "too few clock ticks to compare"
            ratios.append(
                f"{chat_path} / {raw_path}, the event loop's thread alone: {loops[0]:.1f} against {loops[1]:.1f} µs "
                f"per token ({ratio})"
            )
    for path, row in table.items():
        if "redis_us_per_request" in row:
            ratios.append(
                f"Redis's own CPU, {path}: {row['redis_us_per_request']:.0f} µs per request, "
                f"{row['redis_us_per_chunk']:.1f} µs per chunk"
            )
    return "\n".join([*lines, "", *ratios])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests (chat: turns) per run")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument(
        "--turns-per-conversation",
        type=int,
        default=10,
        help="chat: turns in one conversation before the next (1: every turn without history, so that a long run's "
        "longer history is not counted as cost per token)",
    )
    parser.add_argument("--long", type=int, default=50, help="tokens of the long replies (default 50)")
    parser.add_argument("--tokens-per-second", type=float, default=200.0, help="the simulator's pace per stream")
    parser.add_argument("--paths", default="plain,raw,chat", help="which of plain, raw, chat (comma-separated)")
    parser.add_argument("--nginx", action="store_true", help="nginx too, as the floor (nginx-light)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run; the median is reported")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="the Redis of the raw-redis and chat-redis paths"
    )
    parser.add_argument("--redis-prefix", help="its key prefix (default: a fresh one)")
    parser.add_argument("--database-url", help="passed to the gateway (default: SQLite in a temporary directory)")
    parser.add_argument("--gateway-arg", action="append", default=[], help="one more argument for `clawdbot serve`")
    parser.add_argument(
        "--without-search-index",
        action="store_true",
        help="an experiment: drop the triggers that feed the chat's full-text index (SQLite) once the gateways have "
        "made their databases, to measure what indexing each stored reply costs; search misses those replies",
    )
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    args = parser.parse_args()
    if args.without_search_index and args.database_url:
        parser.error("--without-search-index is for the default SQLite database")
    if args.long < 2:
        parser.error("--long must be at least 2")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := set(paths) - {"plain", "raw", "chat", "raw-redis", "chat-redis"}:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    if args.nginx:
        paths.insert(1 if "plain" in paths else 0, "nginx")
    rate = f"{args.tokens_per_second:g}"
    sim_args = ["simulate", "--port", "0", "--profile", "instant", "--tokens-per-second", rate]
    sim_args += ["--num-parallel", "0", "--keep-alive", "-1s"]
    procs: list[subprocess.Popen[Any]] = []
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="clawdbot-cpu-") as tmp:
        try:
            sim, sim_url = start(sim_args, None)
            procs.append(sim)
            relays: dict[str, tuple[subprocess.Popen[Any], str]] = {}
            if "plain" in paths:
                relays["plain"] = start_plain(sim_url)
            if "nginx" in paths:
                relays["nginx"] = start_nginx(sim_url, Path(tmp))
            gateway_args = [
                "serve",
                "--port",
                "0",
                "--ollama-url",
                sim_url,
                "--no-auth",
                "--data-dir",
                str(Path(tmp) / "data"),
                "--max-running",
                "4096",  # no per-user cap: every request runs at once, as on the other paths
                *(["--database-url", args.database_url] if args.database_url else []),
                *args.gateway_arg,
            ]
            if "raw" in paths or "chat" in paths:
                gateway = start(gateway_args, None)
                relays["raw"] = relays["chat"] = gateway
            if "raw-redis" in paths or "chat-redis" in paths:
                prefix = args.redis_prefix or f"clawdbot-cpu-{os.getpid()}"
                shared = [*gateway_args, "--redis-url", args.redis_url, "--redis-prefix", prefix]
                shared[shared.index("--data-dir") + 1] = str(Path(tmp) / "data-redis")
                relays["raw-redis"] = relays["chat-redis"] = start(shared, None)
            procs += [proc for proc, _ in relays.values()]
            if args.without_search_index:
                started = [data for data, path in (("data", "raw"), ("data-redis", "raw-redis")) if path in relays]
                for data in started:
                    unindexed(Path(tmp) / data / "clawdbot.db")
            for round_ in range(args.rounds):
                for tokens in (1, args.long):
                    for path in paths:
                        proc, url = relays[path]
                        run = run_load(path, url, proc.pid, tokens, args)
                        runs.append(run)
                        print(
                            f"round {round_ + 1}, {NAMES[path]}, {tokens}-token replies: "
                            f"{run.us_per_request:.0f} µs per {'turn' if path.startswith('chat') else 'request'}, "
                            f"{run.requests} done in {run.wall_s:.1f} s, load generator {run.load_cpu_s:.1f} CPU-s"
                            + (f", failures {run.failures}" if run.failures else ""),
                            flush=True,
                        )
        finally:
            for proc in reversed(procs):
                stop(proc)
    table = summarise(runs, args.long)
    print()
    print(render(table, args.long))
    print(
        f"\nsimulator: clawdbot {' '.join(sim_args)}\ngateway:   clawdbot {' '.join(gateway_args)}\n"
        f"load:      {args.requests} requests at concurrency {args.concurrency} per run, 1- and {args.long}-token "
        f"replies, {args.rounds} round(s); python benchmarks/_cpu_load.py (a process of its own)\n"
        f"CPU:       utime + stime from /proc/PID/stat before and after each run; os.cpu_count() = {os.cpu_count()}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"runs": [run.__dict__ for run in runs], "summary": table, "args": vars(args)}, default=str)
        )


if __name__ == "__main__":
    main()
