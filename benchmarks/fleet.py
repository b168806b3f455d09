"""A fleet of backends (issue 14 §5): simulated RTX 4090s behind one gateway.

Every backend is `clawdbot simulate --profile 4090 --num-parallel 4` with the model loaded before anything is
measured; the gateway runs `--max-running 4` (each backend's slots) and no accounts. Load comes from `clawdbot bench`.

    throughput  one backend against two: requests/s and TTFT at 30 and 87 users (raw /api/chat, short replies)
    routing     affinity vs least_busy vs random: TTFT of turns 2-5 of 5-turn conversations with a long first
                prompt, so that whether the slot's prompt cache still holds the conversation shows in the prefill
    failover    two backends, 87 chat users (WebSocket, stored replies); one backend is killed mid-run and started
                again: replies lost and continued (reply.switch), their extra latency, and /readyz's view of it

    uv run python benchmarks/fleet.py throughput --levels 30,87 --duration 20
    uv run python benchmarks/fleet.py routing --users 87 --duration 30
    uv run python benchmarks/fleet.py failover --users 87 --duration 20 --kill-at 6 --restart-at 16

The gateway's own overhead with several backends is gateway_overhead.py --backends 3.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from _harness import MODEL, stop_on_sigterm
from _procs import CLAWDBOT, start

from clawdbot.bench.report import percentile

SIM = ["--profile", "4090", "--num-parallel", "4", "--keep-alive", "-1s"]


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:,.0f} ms"


class Sim:
    """One simulated 4090 on a port it keeps, so that it can be killed and started again as the same backend."""

    def __init__(self, extra: list[str]) -> None:
        self.extra, self.port = extra, 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, load: bool = True) -> None:
        self.proc, url = start(["simulate", "--port", str(self.port), *SIM, *self.extra], None)
        self.port = int(url.rsplit(":", 1)[1])
        if load:  # at the num_ctx the gateway adds to every request (8192), or the first one would reload it
            body = {"model": MODEL, "messages": [], "keep_alive": -1, "options": {"num_ctx": 8192}}
            httpx.post(f"{self.url}/api/chat", json=body, timeout=60).raise_for_status()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def gateway(sims: list[Sim], extra: list[str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    urls = [part for sim in sims for part in ("--ollama-url", sim.url)]
    args = ["serve", "--port", "0", *urls, "--max-running", "4", "--no-auth", *extra]
    proc, url = start(args, None)
    return proc, url, args


def bench(url: str, args: list[str], out: Path) -> tuple[list[dict[str, Any]], str]:
    command = ["bench", url, *args, "--no-progress", "--json", str(out)]
    subprocess.run([*CLAWDBOT, *command], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["levels"], "clawdbot " + shlex.join(command[:-2])


def steady_rate(records: list[dict[str, Any]], ramp: float, duration: float) -> float:
    """Replies finished per second between the end of the ramp and the end of the level (the queue is full)."""
    began = min(r["start"] for r in records)
    ends = [r["start"] + r["end"] for r in records if not r["failure"] and r["end"] is not None]
    return sum(began + ramp <= e <= began + duration for e in ends) / (duration - ramp)


def stop_all(*procs: subprocess.Popen[str] | Sim) -> None:
    for proc in procs:
        if isinstance(proc, Sim):
            proc.stop()
        elif proc.poll() is None:
            proc.terminate()
            proc.wait()


# ---- 1. one backend against two -------------------------------------------------------------------------------------
def throughput(args: argparse.Namespace) -> None:
    rows, commands = [], []
    load = ["--duration", str(args.duration), "--ramp-up", str(args.ramp_up), "--no-think"]
    load += ["--max-tokens", str(args.max_tokens)]
    for count in (1, 2):
        sims = [Sim([]) for _ in range(count)]
        for sim in sims:
            sim.start()
        gw, url, gw_args = gateway(sims, [])
        try:
            with tempfile.TemporaryDirectory() as tmp:
                levels, shown = bench(url, ["--concurrency", args.levels, *load], Path(tmp) / "b.json")
        finally:
            stop_all(gw, *sims)
        commands += ["clawdbot " + shlex.join(gw_args), shown]
        for level in levels:
            rate = steady_rate(level["records"], args.ramp_up, args.duration)
            rows.append((count, level, rate))
            print(f"{count} backend(s) {level['level']}: {rate:.2f} req/s", flush=True)
    print("\n| backends | users | requests/s (steady) | TTFT p50 | TTFT p99 | full reply p50 | failures | out tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for count, level, rate in rows:
        print(
            f"| {count} | {level['level'].split()[0]} | {rate:.2f} | {ms(level['ttft']['p50'])} | "
            f"{ms(level['ttft']['p99'])} | {ms(level['e2e']['p50'])} | {level['failures']}/{level['requests']} | "
            f"{level['output_tokens_per_second']:.0f} |"
        )
    print("\ncommands:\n  " + "\n  ".join(commands))


# ---- 2. routing policies and the prompt cache -----------------------------------------------------------------------
def prompts_file(path: Path, words: int, count: int) -> None:
    """Distinct long openings, so that every conversation has a prefix of its own to cache."""
    rng = random.Random(14)
    vocabulary = [f"w{n}" for n in range(5000)]
    lines = [f"Case {i}: " + " ".join(rng.choices(vocabulary, k=words)) + " Summarise." for i in range(count)]
    path.write_text("\n".join(lines) + "\n")


def routing(args: argparse.Namespace) -> None:
    rows, commands = [], []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts_file(prompts, args.prompt_words, 4000)
        load = ["--concurrency", str(args.users), "--duration", str(args.duration), "--turns", "5"]
        load += ["--ramp-up", str(args.ramp_up), "--no-think", "--max-tokens", str(args.max_tokens)]
        load += ["--prompts", str(prompts), "--think-time", str(args.think_time)]
        for mode in args.modes.split(","):
            sims = [Sim([]), Sim([])]
            for sim in sims:
                sim.start()
            gw, url, gw_args = gateway(sims, ["--routing", mode])
            try:
                levels, shown = bench(url, load, Path(tmp) / "b.json")
            finally:
                stop_all(gw, *sims)
            commands += ["clawdbot " + shlex.join(gw_args), shown.replace(str(prompts), "prompts.txt")]
            records = levels[0]["records"]
            ok = [r for r in records if not r["failure"] and r["ttft"] is not None]
            later = [r["ttft"] for r in ok if r["turn"] >= 1]
            first = [r["ttft"] for r in ok if r["turn"] == 0]
            rate = steady_rate(records, args.ramp_up, args.duration)
            rows.append((mode, first, later, rate, levels[0]))
            print(f"{mode}: turns 2-5 TTFT p50 {ms(percentile(later, 50))}, {rate:.2f} req/s", flush=True)
    print(
        f"\n{args.users} users, 2 backends; "
        f"first prompt {args.prompt_words} words (~{args.prompt_words * 4.8:.0f} tokens)"
    )
    print("| routing | TTFT turns 2–5 p50 | p99 | n | TTFT turn 1 p50 | requests/s (steady) | failures |")
    print("|---|---|---|---|---|---|---|")
    for mode, first, later, rate, level in rows:
        print(
            f"| {mode} | {ms(percentile(later, 50))} | {ms(percentile(later, 99))} | {len(later)} | "
            f"{ms(percentile(first, 50))} | {rate:.2f} | {level['failures']}/{level['requests']} |"
        )
    print("\ncommands (prompts.txt: prompts_file() in this script):\n  " + "\n  ".join(commands))


# ---- 3. a backend killed mid-run -------------------------------------------------------------------------------------
class ReadyWatch(threading.Thread):
    """Polls /readyz every 50 ms and notes when the watched backend's state changes."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(daemon=True)
        self.url, self.name, self.running = url, name, True
        self.changes: list[tuple[float, str]] = []

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while self.running:
                try:
                    report = client.get(f"{self.url}/readyz").json()
                    state = next(b["state"] for b in report["backends"] if b["name"] == self.name)
                except (httpx.HTTPError, StopIteration, KeyError, ValueError):
                    state = "?"
                if not self.changes or self.changes[-1][1] != state:
                    self.changes.append((time.perf_counter(), state))
                time.sleep(0.05)

    def first(self, state: str, after: float) -> float | None:
        return next((t - after for t, s in self.changes if s == state and t >= after), None)


def failover(args: argparse.Namespace) -> None:
    sims = [Sim([]), Sim([])]
    for sim in sims:
        sim.start()
    data = tempfile.mkdtemp()
    gw, url, gw_args = gateway(sims, ["--data-dir", data])
    victim = f"127.0.0.1:{sims[0].port}"
    watch = ReadyWatch(url, victim)
    watch.start()
    out = Path(data) / "bench.json"
    load = ["--target", "chat", "--concurrency", str(args.users), "--duration", str(args.duration)]
    load += ["--turns", "3", "--ramp-up", str(args.ramp_up), "--no-think"]
    command = [*CLAWDBOT, "bench", url, *load, "--no-progress", "--json", str(out)]
    began = time.perf_counter()
    runner = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        time.sleep(args.kill_at)
        killed = time.perf_counter()
        sims[0].kill()
        time.sleep(max(args.restart_at - args.kill_at, 0))
        restarted = time.perf_counter()
        sims[0].start(load=False)  # a restarted Ollama has no model loaded: the first request loads it
        runner.wait(timeout=600)
        time.sleep(1)
    finally:
        watch.running = False
        stop_all(runner, gw, *sims)
    level = json.loads(out.read_text())["levels"][0]
    records = level["records"]
    stored = stored_replies(Path(data) / "clawdbot.db")
    report_failover(args, records, stored, watch, began, killed, restarted)
    print(f"victim: {victim}\ncommands:\n  clawdbot {shlex.join(gw_args)}\n  clawdbot {shlex.join(command[3:-2])}")


def stored_replies(db: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        query = "SELECT id, status, backend, switches FROM messages WHERE role = 'assistant'"
        return {row["id"]: dict(row) for row in conn.execute(query)}
    finally:
        conn.close()


def report_failover(
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    stored: dict[str, dict[str, Any]],
    watch: ReadyWatch,
    began: float,
    killed: float,
    restarted: float,
) -> None:
    failed = [r for r in records if r["failure"]]
    statuses = Counter(row["status"] for row in stored.values())
    switched, retried, plain = [], [], []
    for r in records:
        row = stored.get(r.get("reply_id") or "")
        if r["failure"] or row is None:
            continue
        switches = json.loads(row["switches"] or "[]") if isinstance(row["switches"], str) else row["switches"]
        if switches:
            switched.append(r)
        elif "," in (row["backend"] or ""):
            retried.append(r)
        else:
            plain.append(r)
    # The same moment's ordinary replies: those that were running when the backend died and were not on it.
    around = [r for r in plain if r["start"] <= killed <= r["start"] + r["end"]]
    stall = [max(r["gaps"], default=0.0) for r in switched]
    normal_gap = [g for r in plain for g in r["gaps"]]
    print(
        f"\n{args.users} chat users on 2 backends; backend killed at {killed - began:.1f} s, restarted at "
        f"{restarted - began:.1f} s"
    )
    print(
        f"turns: {len(records)}, failed as the client saw them: {len(failed)} {Counter(r['failure'] for r in failed)}"
    )
    print(f"stored replies by status: {dict(statuses)}")
    print(
        f"continued on the other backend (reply.switch): {len(switched)}; retried before the first token: "
        f"{len(retried)}"
    )
    print(
        f"full reply of the switched: p50 {ms(percentile([r['end'] for r in switched], 50))}, max "
        f"{ms(max((r['end'] for r in switched), default=None))}; of the others running at the kill: p50 "
        f"{ms(percentile([r['end'] for r in around], 50))} (n={len(around)})"
    )
    print(
        f"longest gap in a switched reply (the stall while it moves): p50 {ms(percentile(stall, 50))}, max "
        f"{ms(max(stall, default=None))}; ordinary gap p99 {ms(percentile(normal_gap, 99))}"
    )
    print(
        f"/readyz: out after {ms(watch.first('out', killed))}; after the restart half_open after "
        f"{ms(watch.first('half_open', restarted))}, healthy after {ms(watch.first('healthy', restarted))}"
    )
    print("state changes:", [(round(t - began, 2), s) for t, s in watch.changes])


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("throughput")
    one.add_argument("--levels", default="30,87")
    one.add_argument("--duration", type=float, default=20.0)
    one.add_argument("--ramp-up", type=float, default=2.0)
    one.add_argument("--max-tokens", type=int, default=40)
    two = sub.add_parser("routing")
    two.add_argument("--users", type=int, default=87)
    two.add_argument("--duration", type=float, default=30.0)
    two.add_argument("--ramp-up", type=float, default=2.0)
    two.add_argument("--max-tokens", type=int, default=40)
    two.add_argument("--think-time", type=float, default=0.0)
    two.add_argument("--prompt-words", type=int, default=200)
    two.add_argument("--modes", default="affinity,least_busy,random")
    three = sub.add_parser("failover")
    three.add_argument("--users", type=int, default=87)
    three.add_argument("--duration", type=float, default=20.0)
    three.add_argument("--ramp-up", type=float, default=2.0)
    three.add_argument("--kill-at", type=float, default=6.0)
    three.add_argument("--restart-at", type=float, default=16.0)
    args = parser.parse_args()
    {"throughput": throughput, "routing": routing, "failover": failover}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
