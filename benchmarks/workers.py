"""One gateway process against several (`--workers`), at the highest load this machine can generate.

A simulator with unlimited slots paces short replies; for each worker count the gateway runs with its state in
Redis (the same for every count, so that only the number of processes differs), and `clawdbot bench` (a process
of its own) drives the raw /api/chat path as hard as it can for --duration seconds. Reported per worker count:
requests per second, TTFT, and the CPU (cores) of the gateway (supervisor and workers together), of the load
generator and of the simulator. When the load generator's or simulator's cores reach about one, they are the limit,
not the gateway: the table says so.

    uv run python benchmarks/workers.py --workers 1,2 --concurrency 200 --duration 20
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _procs import CLAWDBOT, start
from cpu_cost import cpu_tree, stop


def run(workers: int, sim_url: str, args: argparse.Namespace, tmp: Path, sim_pid: int) -> dict[str, Any]:
    prefix = f"clawdbot-workers-{secrets.token_hex(3)}"
    gateway, url = start(
        [
            "serve",
            "--port",
            "0",
            "--ollama-url",
            sim_url,
            "--no-auth",
            "--max-running",
            "4096",
            "--no-access-log",
            "--data-dir",
            str(tmp / f"data-{workers}"),
            "--redis-url",
            args.redis_url,
            "--redis-prefix",
            prefix,
            "--workers",
            str(workers),
        ],
        None,
    )
    out = tmp / f"bench-{workers}.json"
    command = [
        *CLAWDBOT,
        "bench",
        url,
        "--concurrency",
        str(args.concurrency),
        "--duration",
        str(args.duration),
        "--ramp-up",
        "2",
        "--max-tokens",
        str(args.tokens),
        "--no-think",
        "--json",
        str(out),
    ]
    try:
        time.sleep(1.0)
        before = {"gateway": cpu_tree(gateway.pid), "simulator": cpu_tree(sim_pid)}
        started = time.monotonic()
        bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bench_cpu = 0.0
        while bench.poll() is None:
            bench_cpu = max(bench_cpu, cpu_tree(bench.pid))
            time.sleep(0.2)
        wall = time.monotonic() - started
        used = {
            "gateway": cpu_tree(gateway.pid) - before["gateway"],
            "simulator": cpu_tree(sim_pid) - before["simulator"],
        }
    finally:
        stop(gateway)
    report = json.loads(out.read_text())
    level = report["levels"][0] if "levels" in report else report
    return {
        "workers": workers,
        "summary": level,
        "gateway_cores": used["gateway"] / wall,
        "simulator_cores": used["simulator"] / wall,
        "load_cores": bench_cpu / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=20, help="tokens per reply")
    parser.add_argument("--tokens-per-second", type=float, default=200.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    sim_args = ["simulate", "--port", "0", "--profile", "instant", "--num-parallel", "0"]
    sim_args += ["--tokens-per-second", f"{args.tokens_per_second:g}", "--keep-alive", "-1s"]
    results = []
    with tempfile.TemporaryDirectory(prefix="clawdbot-workers-") as tmp:
        sim, sim_url = start(sim_args, None)
        try:
            for workers in counts:
                results.append(run(workers, sim_url, args, Path(tmp), sim.pid))
                print(json.dumps({k: v for k, v in results[-1].items() if k != "summary"}), flush=True)
        finally:
            stop(sim)
    print(
        "\n| workers | requests/s | TTFT p50 | TTFT p99 | failures | gateway cores | load generator cores | "
        "simulator cores |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        level = row["summary"]
        ttft = level["ttft"]
        print(
            f"| {row['workers']} | {level['requests_per_second']:.0f} | {ttft['p50'] * 1000:.0f} ms | "
            f"{ttft['p99'] * 1000:.0f} ms | {level['failures']}/{level['requests']} | {row['gateway_cores']:.2f} | "
            f"{row['load_cores']:.2f} | {row['simulator_cores']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
