"""Hundreds of concurrent conversations through the chat page's protocol, on SQLite and on PostgreSQL.

For each database the script starts a gateway (SQLite in a temporary data dir; PostgreSQL in a fresh database it
creates and drops) over one simulator that streams a fixed rate per stream with unlimited slots
(`--tokens-per-second 20 --num-parallel 0`, as gateway_overhead.py), so the model never queues. On that gateway
it runs the same load twice with `clawdbot bench`: N users each holding one conversation of --turns turns, started
over --ramp-up seconds, first on the raw /api/chat (the client sends the history) and then through the chat
WebSocket (`--target chat`: the gateway stores every message and sends the history itself). Then it checks the
database's work: errors in the gateway's log, failed replies, and, through the REST API, that every turn the
client saw is stored after its user message as a `done` reply with exactly the text the client received.
"Added" is the chat path's TTFT minus the raw path's, per percentile.

With --pin (default on 2+ CPUs) the gateway gets CPU 1 to itself and the simulator and the bench client share
CPU 0; PostgreSQL runs wherever the system puts it.

    uv run python benchmarks/chat_database.py --conversations 500 --turns 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from _procs import CLAWDBOT, PeakRss, cpu_seconds, start

_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
# What a database problem looks like in the gateway's log (store.py logs a failed write; tracebacks otherwise).
_DB_ERROR = re.compile(
    r"database is locked|could not store|OperationalError|IntegrityError|InterfaceError|asyncpg\.|sqlite3\.|"
    r"deadlock|Traceback",
    re.I,
)
NUM_CTX = "8192"  # the gateway sends it on every chat turn; the simulator must default to it, or it would reload


def start_gateway(args: list[str], cpus: str | None, log: Path) -> tuple[subprocess.Popen[str], str]:
    """Like _procs.start, but the gateway's log is kept: it is where database errors show."""
    prefix = ["taskset", "-c", cpus] if cpus else []
    with log.open("w") as err:
        proc = subprocess.Popen([*prefix, *CLAWDBOT, *args], stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    match = _URL.search(proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit(f"could not start the gateway: {log.read_text()[-2000:]}")
    return proc, f"http://127.0.0.1:{match.group(1)}"


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(admin_url: str) -> tuple[str, str]:
    name = f"clawdbot_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def bench(url: str, target: str, args: argparse.Namespace, cpus: str | None, out: Path) -> tuple[dict[str, Any], str]:
    command = [
        "clawdbot",
        "bench",
        url,
        "--target",
        target,
        "--concurrency",
        str(args.conversations),
        "--conversations-per-user",
        "1",
        "--turns",
        str(args.turns),
        "--ramp-up",
        str(args.ramp_up),
        "--think-time",
        str(args.think_time),
        "--no-think",
        "--workers",
        str(args.workers),
        "--timeout",
        "300",
        "--idle-timeout",
        "60",
        "--no-progress",
        "--json",
        str(out),
    ]
    prefix = ["taskset", "-c", cpus] if cpus else []
    subprocess.run([*prefix, *CLAWDBOT, *command[1:]], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["levels"][0], " ".join(shlex.quote(part) for part in [*prefix, *command])


def verify(gateway: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every reply the client saw: stored, after a user message, `done`, with the text the client received."""
    by_conversation: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("conversation_id"):
            by_conversation.setdefault(record["conversation_id"], []).append(record)
    lost, problems, complete = 0, [], 0
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for conversation_id, turns in by_conversation.items():
            messages = client.get(f"/chat/api/conversations/{conversation_id}").json()["messages"]
            position = {m["id"]: i for i, m in enumerate(messages)}
            for record in turns:
                problem = _check(record, messages, position)
                if problem:
                    lost += 1
                    problems.append(f"{conversation_id} turn {record['turn']}: {problem}")
            done = [m for m in messages if m["role"] == "assistant" and m["status"] == "done"]
            users = [m for m in messages if m["role"] == "user"]
            complete += len(done) == len(users) == len(turns)
    return {
        "conversations": len(by_conversation),
        "complete_conversations": complete,
        "turns_checked": sum(len(t) for t in by_conversation.values()),
        "lost": lost,
        "problems": problems[:10],
    }


def _check(record: dict[str, Any], messages: list[dict[str, Any]], position: dict[str, int]) -> str | None:
    if record["failure"] is not None:
        return None  # counted as a failure already; what the server kept of it is not a loss
    where = position.get(record["reply_id"] or "")
    if where is None:
        return "reply not stored"
    reply = messages[where]
    if where == 0 or messages[where - 1]["role"] != "user":
        return "no user message before the reply"
    if reply["status"] != "done":
        return f"stored as {reply['status']}"
    if hashlib.sha256(reply["content"].encode()).hexdigest() != record["reply_sha256"]:
        return "stored text differs from what the client received"
    return None


def database_errors(log: Path) -> tuple[int, list[str]]:
    lines = [line for line in log.read_text(errors="replace").splitlines() if _DB_ERROR.search(line)]
    return len(lines), [line[:300] for line in lines[:3]]


def measure(
    kind: str, sim_url: str, args: argparse.Namespace, pins: tuple[str | None, str | None], tmp: Path
) -> dict[str, Any]:
    shared, own = pins
    extra, name = [], None
    if kind == "postgresql":
        name, url = create_database(args.postgres)
        extra = ["--database-url", url]
    log = tmp / f"gateway-{kind}.log"
    data_dir = tempfile.mkdtemp(prefix=f"clawdbot-{kind}-")
    gw, gw_url = start_gateway(
        # The simulator has unlimited slots, so the gateway's own queue must not hold anyone back either.
        [
            "serve",
            "--port",
            "0",
            "--ollama-url",
            sim_url,
            "--data-dir",
            data_dir,
            "--num-ctx",
            NUM_CTX,
            "--max-running",
            "4096",
            "--no-auth",  # it listens on 127.0.0.1 only; what is measured is the chat path, not key checks
            *extra,
        ],
        own,
        log,
    )
    try:
        cpu0 = cpu_seconds(gw.pid)
        raw, raw_cmd = bench(gw_url, "ollama", args, shared, tmp / f"raw-{kind}.json")
        cpu1 = cpu_seconds(gw.pid)
        peak = PeakRss(gw.pid)
        peak.start()
        chat, chat_cmd = bench(gw_url, "chat", args, shared, tmp / f"chat-{kind}.json")
        peak.running = False
        cpu2 = cpu_seconds(gw.pid)
        checked = verify(gw_url, chat["records"])
    finally:
        gw.terminate()
        gw.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
        if name is not None:
            drop_database(args.postgres, name)
    errors, examples = database_errors(log)
    row = figures(kind, raw, chat, checked, errors)
    row.update(
        gateway_cpu_s_raw=cpu1 - cpu0,
        gateway_cpu_s_chat=cpu2 - cpu1,
        gateway_peak_rss_mib=peak.peak,
        database_error_examples=examples,
        commands=[raw_cmd, chat_cmd],
    )
    return row


def figures(
    kind: str, raw: dict[str, Any], chat: dict[str, Any], checked: dict[str, Any], errors: int
) -> dict[str, Any]:
    def ms(level: dict[str, Any], metric: str, q: str) -> float:
        return float(level[metric][q] or 0.0) * 1000

    return {
        "database": kind,
        "turns_chat": chat["requests"],
        "turns_raw": raw["requests"],
        "failures_chat": chat["failure_kinds"],
        "failures_raw": raw["failure_kinds"],
        "database_errors": errors,
        **{f"verify_{key}": value for key, value in checked.items()},
        **{
            f"ttft_{q}_{side}_ms": ms(level, "ttft", q)
            for q in ("p50", "p99")
            for side, level in [("raw", raw), ("chat", chat)]
        },
        "added_ttft_p50_ms": ms(chat, "ttft", "p50") - ms(raw, "ttft", "p50"),
        "added_ttft_p99_ms": ms(chat, "ttft", "p99") - ms(raw, "ttft", "p99"),
        "stored_ttft_p99_ms": ms(chat, "server_ttft", "p99"),
        "e2e_p99_chat_s": float(chat["e2e"]["p99"] or 0.0),
        "wait_p99_chat_ms": ms(chat, "wait", "p99"),
        "client_lag_p99_ms": f"{raw['client']['loop_lag_p99_ms']:.1f} / {chat['client']['loop_lag_p99_ms']:.1f}",
    }


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| database | turns (raw / chat) | failed (raw / chat) | DB errors in log | lost after check | "
        "TTFT p50 raw → chat | added p50 | TTFT p99 raw → chat | added p99 | stored TTFT p99 | "
        "chat full reply p99 | client lag p99 (raw / chat) |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        failed = f"{sum(r['failures_raw'].values())} / {sum(r['failures_chat'].values())}"
        lines.append(
            f"| {r['database']} | {r['turns_raw']} / {r['turns_chat']} | {failed} | {r['database_errors']} | "
            f"{r['verify_lost']} of {r['verify_turns_checked']} | "
            f"{r['ttft_p50_raw_ms']:.1f} → {r['ttft_p50_chat_ms']:.1f} ms | {r['added_ttft_p50_ms']:+.1f} ms | "
            f"{r['ttft_p99_raw_ms']:.1f} → {r['ttft_p99_chat_ms']:.1f} ms | {r['added_ttft_p99_ms']:+.1f} ms | "
            f"{r['stored_ttft_p99_ms']:.1f} ms | {r['e2e_p99_chat_s']:.2f} s | {r['client_lag_p99_ms']} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=500, help="concurrent users, one conversation each")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--ramp-up", type=float, default=5.0, help="seconds over which users start (staggered)")
    parser.add_argument("--think-time", type=float, default=1.0, help="mean pause between a user's turns")
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="the simulator's rate per stream")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing database to connect to while creating (and dropping) the benchmark's own",
    )
    parser.add_argument("--workers", type=int, default=1, help="bench client processes")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--results", type=Path, help="keep every run's raw bench JSON and gateway log here")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited: a socket or two per conversation
    pins = ("0", "1") if args.pin else (None, None)
    sim_args = ["simulate", "--port", "0", "--tokens-per-second", str(args.tokens_per_second), "--num-parallel", "0"]
    sim_args += ["--keep-alive", "-1s", "--context-length", NUM_CTX]
    sim, sim_url = start(sim_args, pins[0])
    rows = []
    try:
        # Load the model once, outside every measurement.
        httpx.post(f"{sim_url}/api/chat", json={"model": "qwen3:32b", "messages": [], "keep_alive": -1}, timeout=120)
        with tempfile.TemporaryDirectory() as tmp:
            results = args.results or Path(tmp)
            results.mkdir(parents=True, exist_ok=True)
            for kind in args.databases.split(","):
                rows.append(measure(kind.strip(), sim_url, args, pins, results))
                print(render(rows[-1:]), flush=True)
    finally:
        sim.terminate()
        sim.wait()
    print("\n" + render(rows))
    print(f"\nsimulator: clawdbot {' '.join(sim_args)}")
    print("pinning:   " + ("gateway on CPU 1; simulator and bench on CPU 0" if args.pin else "none"))
    print("commands:\n  " + "\n  ".join(c for r in rows for c in r["commands"]))
    for r in rows:
        for problem in r["verify_problems"] + r["database_error_examples"]:
            print(f"  {r['database']}: {problem}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
