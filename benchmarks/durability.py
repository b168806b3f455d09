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

With --replicas N (and --database postgresql) the gateway is N replicas on that database and one Redis (--redis-url
under a fresh prefix), behind a real nginx running deploy/nginx-replicas.conf, and the clients talk to nginx:
replica 0 is SIGKILLed at --kill-at and left dead, replica 1 is stopped with SIGTERM at --sigterm-at and started
again on its port (a rolling restart), and with --restart-redis a private Redis is restarted empty at --redis-at
(_durability_replicas.py). Replies in flight must then be continued by another replica (counted from the gateways'
"took over a reply" lines), so an `interrupted` reply fails the run too.

    uv run python benchmarks/durability.py --users 200 --turns 3
    uv run python benchmarks/durability.py --replicas 3 --database postgresql --users 100 --turns 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _durability_check import INVARIANTS, rows_postgres, rows_sqlite, verify
from _durability_replicas import Chaos, Deployment, chaos, replica_lines, taken_over
from _durability_users import T0, Front, Link, Options, Stats, User
from _harness import (
    Gateway,
    Gauges,
    by_label,
    create_database,
    drop_database,
    load_model,
    memory_mib,
    merged,
    scrape,
    stop_on_sigterm,
)
from _procs import start


# ---- the run ------------------------------------------------------------------------------------------------------
async def create_conversation(session: aiohttp.ClientSession, gateway: Front, address: str) -> str:
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
    print(f"SIGKILL at {crash.at - T0:.1f} s", flush=True)
    await asyncio.to_thread(gateway.start)  # same data dir, same database, same port if it is free
    crash.down_s = time.monotonic() - crash.at
    print(f"restarted at {time.monotonic() - T0:.1f} s on port {gateway.port}", flush=True)
    crash.port_kept = gateway.port == old_port
    return crash


async def drive(args: argparse.Namespace, gateway: Gateway | None, replicas: Deployment | None) -> dict[str, Any]:
    """Run all users, the crash (or the replicas' blows) and the gauge sampling; what the clients and /metrics saw."""
    stats = Stats()
    options = Options(args.turns, args.think_time, args.drop, args.send_drop, args.turn_timeout)
    run = secrets.token_hex(3)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        front = gateway if gateway is not None else replicas.nginx if replicas is not None else None
        assert front is not None
        addresses = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(args.users)]
        users = [User(i, Link(session, front, a, stats), stats, options, run) for i, a in enumerate(addresses)]
        shares = {"kill": args.kill_at if args.kill else None}
        if replicas is not None:
            shares.update(term=args.sigterm_at if args.sigterm else None)
            shares.update(redis=args.redis_at if args.restart_redis else None)
        triggers = {name: asyncio.Event() for name, share in shares.items() if share is not None}
        targets = {name: int(args.users * args.turns * share) for name, share in shares.items() if share is not None}

        def acknowledged() -> None:
            for name, target in targets.items():
                if stats.acknowledged >= target:
                    triggers[name].set()

        def in_flight() -> int:
            return sum(1 for u in users if u.current is not None and u.current.in_flight)

        crash_task: asyncio.Task[Any] | None = None
        if replicas is not None:
            crash_task = asyncio.create_task(chaos(replicas, triggers, in_flight, time.monotonic()))
        elif "kill" in triggers and gateway is not None:
            crash_task = asyncio.create_task(crash_midway(gateway, session, triggers["kill"], users, stats))
        gauges = Gauges()
        targets_of = (lambda: [gateway.url]) if gateway is not None else (lambda: [r.url for r in replicas.live()])
        watcher = asyncio.create_task(gauges.watch(session, targets_of))

        async def one_user(user: User, address: str) -> None:
            await asyncio.sleep(random.uniform(0, args.ramp_up))
            conversation_id = await create_conversation(session, front, address)
            await user.run_turns(conversation_id, acknowledged)

        started = time.monotonic()
        tasks = [asyncio.create_task(one_user(u, a)) for u, a in zip(users, addresses, strict=True)]
        done, pending = await asyncio.wait(tasks, timeout=args.duration)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.monotonic() - started
        crash: Any = Crash() if replicas is None else Chaos()
        if crash_task is not None:
            if not crash_task.done():
                crash_task.cancel()  # the run ended before the kill's moment
            with contextlib.suppress(asyncio.CancelledError):
                crash = await crash_task
        watcher.cancel()
        final_metrics = merged([found for url in targets_of() if (found := await _scraped(session, url)) is not None])
    errors = [t.exception() for t in done if t.exception() is not None]
    pids = [gateway.pid] if gateway is not None else [r.pid for r in replicas.live()] if replicas else []
    return {
        "stats": stats,
        "users": users,
        "crash": crash if isinstance(crash, Crash) else Crash(memory=crash.killed_memory),
        "chaos": crash if isinstance(crash, Chaos) else Chaos(),
        "replicas": replicas is not None,
        "final_metrics": final_metrics,
        "memory_end": max((memory_mib(pid) for pid in pids), key=lambda m: m["VmHWM"]),
        "gauges": gauges,
        "elapsed_s": elapsed,
        "timed_out_users": len(pending),
        "user_errors": [repr(e) for e in errors[:5]],
        "crashed": isinstance(crash, Crash) and crash.at > 0,
    }


async def _scraped(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]] | None:
    """A replica's /metrics; None for one still restarting (the run can end during a rolling restart, whose new
    process starts with fresh counters anyway)."""
    try:
        return await scrape(session, url)
    except aiohttp.ClientConnectionError:
        return None


# ---- report -------------------------------------------------------------------------------------------------------
def report(args: argparse.Namespace, result: dict[str, Any], checked: dict[str, Any], sim_cmd: str) -> str:
    stats: Stats = result["stats"]
    crash: Crash = result["crash"]
    gauges: Gauges = result["gauges"]
    metrics_before, metrics_after = crash.metrics, result["final_metrics"]
    survivor = "largest live replica" if args.replicas else "restarted one"
    failures = by_label(metrics_before, "clawdbot_chat_reply_failures_total") + by_label(
        metrics_after, "clawdbot_chat_reply_failures_total"
    )
    retries = by_label(metrics_before, "clawdbot_chat_reply_retries_total") + by_label(
        metrics_after, "clawdbot_chat_reply_retries_total"
    )
    invariants = {key: checked[key] for key in INVARIANTS}
    if args.replicas:
        invariants.update(interrupted=checked["statuses"].get("interrupted", 0))
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
        *(replica_lines(result["chaos"], result["continued"], result["continued_seen"]) if args.replicas else []),
        *([] if args.replicas else crash_lines(result)),
        f"| stored error_kind (status:kind) | {_fmt(checked['error_kinds'])} |",
        f"| /metrics reply failures by cause | {_fmt(failures)} |",
        f"| /metrics retries before the first token (unseen) | {_fmt(retries)} |",
        f"| reply.error codes seen live | {_fmt(stats.reply_errors)} |",
        f"| send errors / resume errors | {_fmt(stats.send_errors)} / {_fmt(stats.resume_errors)} |",
        f"| whole streams compared with the database (of which resumed) / interrupted compared | "
        f"{checked['whole_streams_checked']} ({checked['resumed_streams_checked']}) / "
        f"{checked['interrupted_checked']} |",
        f"| stored but never acknowledged (a send given up) | {checked['unacknowledged_stored']} |",
        f"| gateway memory: VmHWM of the killed process / of the {survivor} (VmRSS at end) | "
        f"{crash.memory.get('VmHWM', 0):.0f} MiB / "
        f"{result['memory_end']['VmHWM']:.0f} MiB ({result['memory_end']['VmRSS']:.0f} MiB) |",
        f"| peak clawdbot_reply_log_bytes / at end | {gauges.peak_log_bytes / 1024:.0f} KiB / "
        f"{_gauge(result['final_metrics'], 'clawdbot_reply_log_bytes') / 1024:.0f} KiB |",
        f"| peak clawdbot_generations_queued / at end | {gauges.peak_queued:.0f} / "
        f"{_gauge(result['final_metrics'], 'clawdbot_generations_queued'):.0f} |",
        "",
        "invariants (each must be 0): " + ", ".join(f"{k} {v}" for k, v in invariants.items()),
        f"simulator: clawdbot {sim_cmd}",
        f"gateway:   clawdbot serve {' '.join(args.gateway_args)}"
        + (f" (×{args.replicas}, behind nginx: deploy/nginx-replicas.conf)" if args.replicas else ""),
    ]
    lines += [f"  problem: {p}" for p in checked["problems"] + result["user_errors"]]
    return "\n".join(lines)


def crash_lines(result: dict[str, Any]) -> list[str]:
    crash: Crash = result["crash"]
    return [
        f"| gateway SIGKILLs / in flight then (client view) / down for | "
        f"{int(result['crashed'])} / {result['stats'].in_flight_at_kill} / {crash.down_s:.1f} s "
        f"(port {'kept' if crash.port_kept else 'changed'}) |"
    ]


def _fmt(counts: dict[str, int] | Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v) or "none"


def _gauge(metrics: dict[str, dict[str, float]], name: str) -> float:
    return metrics.get(name, {}).get("", 0.0)


def failed(result: dict[str, Any], checked: dict[str, Any]) -> bool:
    stats: Stats = result["stats"]
    return (
        any(checked[key] for key in INVARIANTS)
        or (checked["statuses"].get("interrupted", 0) > 0 and result["replicas"])
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
    parser.add_argument("--sim-profile", default="4090", help="the simulator's timings (tests: instant)")
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
    group = parser.add_argument_group("replicas", "several gateways behind nginx, sharing PostgreSQL and Redis")
    group.add_argument("--replicas", type=int, default=0, help="run this many replicas (needs --database postgresql)")
    group.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="(under a fresh --redis-prefix)")
    group.add_argument("--sigterm", action=argparse.BooleanOptionalAction, default=True, help="restart replica 1")
    group.add_argument("--sigterm-at", type=float, default=0.7, help="…when this share of planned turns is acked")
    group.add_argument("--restart-redis", action="store_true", help="a private Redis, restarted empty mid-run")
    group.add_argument("--redis-at", type=float, default=0.4, help="…when this share of planned turns is acked")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep-log", type=Path, help="copy the gateway's log (both processes) here")
    args = parser.parse_args()
    if args.replicas and (args.database != "postgresql" or args.replicas < 2):
        parser.error("--replicas needs --database postgresql and at least 2 replicas")
    random.seed(args.seed)
    stop_on_sigterm()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two sockets per user, more while reconnecting
    sys.exit(asyncio.run(run(args)))


async def run(args: argparse.Namespace) -> int:
    sim_args = ["simulate", "--port", "0", "--tokens-per-second", str(args.tokens_per_second)]
    sim_args += ["--profile", args.sim_profile]
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
            loading = asyncio.create_task(load_model(sim_url))
            if args.database == "postgresql":
                name, url = await create_database(args.postgres, "clawdbot_durability")
                args.gateway_args += ["--database-url", url]
            gateway, replicas = None, None
            if args.replicas:
                redis_url = None if args.restart_redis else args.redis_url
                replicas = Deployment(args.replicas, args.gateway_args, Path(tmp), redis_url)
                await replicas.start()
            else:
                gateway = Gateway(args.gateway_args, Path(tmp) / "gateway.log")
                await asyncio.to_thread(gateway.start)
            await loading
            try:
                result = await drive(args, gateway, replicas)
            finally:
                if gateway is not None:
                    gateway.stop()
                if replicas is not None:
                    await asyncio.to_thread(replicas.stop)
            rows = rows_sqlite(data_dir / "clawdbot.db") if name is None else await rows_postgres(url)
            log_text = gateway.log.read_text(errors="replace") if gateway else replicas.logs() if replicas else ""
            if args.keep_log:
                args.keep_log.write_text(log_text)
        finally:
            sim.terminate()
            sim.wait()
            if name is not None:
                await drop_database(args.postgres, name)
    checked = verify(result["users"], rows)
    result["continued"] = continued = taken_over(log_text)
    result["continued_seen"] = sum(
        1 for u in result["users"] for t in u.turns if t.reply and t.reply.id in continued and t.reply.final
    )
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
            "chaos": vars(result["chaos"]),
            "continued": sorted(result["continued"]),
            "continued_seen": result["continued_seen"],
            "memory_end": result["memory_end"],
            "elapsed_s": result["elapsed_s"],
        }
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    main()
