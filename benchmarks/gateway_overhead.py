"""What the gateway adds: the same `clawdbot bench` against the same simulator, direct and through the gateway.

The simulator streams 20 tokens/s per stream with unlimited slots (`--tokens-per-second 20 --num-parallel 0`),
so the backend itself never queues. For each level the script runs the bench twice (direct, then through the
gateway), reads the gateway's CPU time and RSS from /proc and its relayed-chunk count from /metrics, and prints a
Markdown table plus every command it ran. With --pin (default on 2+ CPUs) the gateway gets CPU 1 to itself and the
simulator and the bench client share CPU 0, in both runs, so the difference is the gateway's own latency.

The gateway runs without accounts (--no-auth; it listens on 127.0.0.1 only). With --auth it runs with accounts
on: a user and an API key are made before the first level, and the bench through the gateway sends the key (the
direct run sends none), so the difference between the two also holds what checking the key costs.

    uv run python benchmarks/gateway_overhead.py --levels 87,500,1000 --duration 20
    uv run python benchmarks/gateway_overhead.py --levels 200 --duration 20 --auth
    uv run python benchmarks/gateway_overhead.py --levels 500 --duration 20 --backends 3

With --backends N the gateway has N such simulators behind it (repeated --ollama-url, affinity routing) and
spreads the streams over them; the direct run still goes to the first one alone, which never queues either.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from _procs import PeakRss, add_user, cpu_seconds, new_key, start


def scrape(gateway: str) -> tuple[float, dict[float, float]]:
    """Relayed chunks so far, and the cumulative buckets of the gateway's own added-latency histogram."""
    text = httpx.get(f"{gateway}/metrics").text
    match = re.search(r"^clawdbot_relayed_chunks_total (\S+)$", text, re.M)
    buckets = {
        float(le): float(count)
        for le, count in re.findall(r'^clawdbot_gateway_overhead_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    }
    return (float(match.group(1)) if match else 0.0), buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    """The histogram bucket holding quantile q of the observations made between two scrapes."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    for le, count in counts.items():
        if total and count >= q * total:
            return "> 0.25 s" if le == float("inf") else f"≤ {le * 1000:g} ms"
    return "–"


def bench(
    url: str, users: int, args: argparse.Namespace, cpus: str | None, out: Path, key: str | None = None
) -> tuple[dict[str, Any], str]:
    command = [
        "clawdbot",
        "bench",
        url,
        "--concurrency",
        str(users),
        "--duration",
        str(args.duration),
        "--ramp-up",
        str(args.ramp_up),
        "--max-tokens",
        str(args.max_tokens),
        "--no-think",
        "--workers",
        str(args.workers),
        "--warmup",
        "3",
        "--no-progress",
        "--json",
        str(out),
    ]
    prefix = ["taskset", "-c", cpus] if cpus else []
    # The key goes in the environment, not the command line (which the process list shows).
    env = {name: value for name, value in os.environ.items() if name != "CLAWDBOT_API_KEY"}
    if key:
        env["CLAWDBOT_API_KEY"] = key
    subprocess.run(
        [*prefix, sys.executable, "-m", "clawdbot", *command[1:]], check=True, stdout=subprocess.DEVNULL, env=env
    )
    shown = " ".join(shlex.quote(part) for part in [*prefix, *command])
    shown = f"CLAWDBOT_API_KEY=cbk_… {shown}" if key else shown
    return json.loads(out.read_text())["levels"][0], shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="87,500,1000")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each run starts requests in")
    parser.add_argument("--ramp-up", type=float, default=5.0, help="seconds over which users start (staggered)")
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="accounts on: the bench through the gateway sends an API key made for the run (default: --no-auth)",
    )
    parser.add_argument("--backends", type=int, default=1, help="simulators behind the gateway (default 1)")
    args = parser.parse_args()
    shared, own = ("0", "1") if args.pin else (None, None)
    flat = ["simulate", "--port", "0", "--tokens-per-second", "20", "--num-parallel", "0", "--keep-alive", "-1s"]
    sims = [start(flat, shared) for _ in range(args.backends)]
    sim, sim_url = sims[0]
    data_dir, key, password = tempfile.mkdtemp(), None, secrets.token_urlsafe(16)
    if args.auth:  # the user exists before the gateway starts (an admin, so no setup link is printed)
        add_user(data_dir, "bench", password, admin=True)
    gw, gw_url = start(
        # Unlimited slots behind: no generation may wait in the gateway's queue either (what is measured is the relay).
        [
            "serve",
            "--port",
            "0",
            *(part for _, url in sims for part in ("--ollama-url", url)),
            "--access-log",
            "--max-running",
            "4096",
            "--data-dir",
            data_dir,
            "--auth" if args.auth else "--no-auth",
        ],
        own,
    )
    rows, commands = [], []
    try:
        key = new_key(gw_url, "bench", password) if args.auth else None
        with tempfile.TemporaryDirectory() as tmp:
            for users in (int(level) for level in args.levels.split(",")):
                sim_cpu0 = cpu_seconds(sim.pid)
                direct, cmd_direct = bench(sim_url, users, args, shared, Path(tmp) / "direct.json")
                sim_cpu = cpu_seconds(sim.pid) - sim_cpu0
                (chunks0, hist0), gw_cpu0 = scrape(gw_url), cpu_seconds(gw.pid)
                peak = PeakRss(gw.pid)
                peak.start()
                proxied, cmd_proxied = bench(gw_url, users, args, shared, Path(tmp) / "gateway.json", key)
                peak.running = False
                gw_cpu, (chunks1, hist1) = cpu_seconds(gw.pid) - gw_cpu0, scrape(gw_url)
                row = figures(users, direct, proxied, gw_cpu, chunks1 - chunks0, peak.peak, sim_cpu)
                row["own_overhead_p50"] = bucket_quantile(hist0, hist1, 0.5)
                row["own_overhead_p99"] = bucket_quantile(hist0, hist1, 0.99)
                rows.append(row)
                commands += [cmd_direct, cmd_proxied]
                print(render([rows[-1]]), flush=True)
    finally:
        for proc in (gw, *(proc for proc, _ in sims)):
            proc.terminate()
            proc.wait()
    print("\n" + render(rows))
    print("\nsimulator: " + f"{sim_url}  (clawdbot simulate --port 0 --tokens-per-second 20 --num-parallel 0)")
    accounts = "--auth; the bench through it sends an API key" if args.auth else "--no-auth"
    behind = " ".join(f"--ollama-url {url}" for _, url in sims)
    print("gateway:   " + f"{gw_url}  (clawdbot serve --port 0 {behind} {accounts})")
    print("pinning:   " + ("gateway on CPU 1; simulator and bench on CPU 0" if args.pin else "none"))
    print("commands:\n  " + "\n  ".join(commands))
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "commands": commands, "auth": args.auth, "backends": args.backends}, indent=1)
        )


def figures(
    users: int,
    direct: dict[str, Any],
    proxied: dict[str, Any],
    gw_cpu: float,
    chunks: float,
    rss: float,
    sim_cpu: float,
) -> dict[str, Any]:
    def ms(level: dict[str, Any], metric: str, q: str) -> float:
        return float(level[metric][q] or 0.0) * 1000

    return {
        "users": users,
        "requests_direct": direct["requests"],
        "requests_gateway": proxied["requests"],
        "ttft_p50_direct_ms": ms(direct, "ttft", "p50"),
        "ttft_p50_gateway_ms": ms(proxied, "ttft", "p50"),
        "ttft_p99_direct_ms": ms(direct, "ttft", "p99"),
        "ttft_p99_gateway_ms": ms(proxied, "ttft", "p99"),
        "added_ttft_p50_ms": ms(proxied, "ttft", "p50") - ms(direct, "ttft", "p50"),
        "added_ttft_p99_ms": ms(proxied, "ttft", "p99") - ms(direct, "ttft", "p99"),
        "gap_p99_direct_ms": ms(direct, "itl", "p99"),
        "gap_p99_gateway_ms": ms(proxied, "itl", "p99"),
        "added_gap_p99_ms": ms(proxied, "itl", "p99") - ms(direct, "itl", "p99"),
        "failures": f"{direct['failures']} / {proxied['failures']}",
        "gateway_cpu_s_per_1000_chunks": 1000 * gw_cpu / chunks if chunks else None,
        "gateway_peak_rss_mib": rss,
        "simulator_cpu_us_per_token": 1e6 * sim_cpu / direct["output_tokens"] if direct["output_tokens"] else None,
        "client_lag_p99_ms": f"{direct['client']['loop_lag_p99_ms']:.1f} / {proxied['client']['loop_lag_p99_ms']:.1f}",
    }


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        "| streams | TTFT p50 direct → gateway | added p50 | TTFT p99 direct → gateway | added p99 | "
        "added p99 gap | failures (direct / gw) | gw CPU-s per 1k chunks | gw peak RSS | sim CPU per token | "
        "client lag p99 | gateway's own count p50 / p99 |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        cpu = r["gateway_cpu_s_per_1000_chunks"]
        lines.append(
            f"| {r['users']} | {r['ttft_p50_direct_ms']:.1f} → {r['ttft_p50_gateway_ms']:.1f} ms | "
            f"{r['added_ttft_p50_ms']:+.1f} ms | {r['ttft_p99_direct_ms']:.1f} → {r['ttft_p99_gateway_ms']:.1f} ms | "
            f"{r['added_ttft_p99_ms']:+.1f} ms | {r['added_gap_p99_ms']:+.1f} ms | {r['failures']} | "
            f"{'–' if cpu is None else f'{cpu:.3f}'} | {r['gateway_peak_rss_mib']:.0f} MiB | "
            f"{r['simulator_cpu_us_per_token'] or 0:.0f} µs | {r['client_lag_p99_ms']} ms | "
            f"{r.get('own_overhead_p50', '–')} / {r.get('own_overhead_p99', '–')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
