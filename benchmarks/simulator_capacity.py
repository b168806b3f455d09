"""Can one simulator process carry a large benchmark? Many concurrent streams, its CPU cost per token, and
whether every stream still gets its tokens on time (so the simulator is never the bottleneck).

    uv run python benchmarks/simulator_capacity.py --streams 2000 --rate 10 --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from _procs import PeakRss, cpu_seconds, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0, help="tokens per second per stream")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    args = parser.parse_args()
    sim_cpus, client_cpus = ("0", "1") if args.pin else (None, None)
    sim_args = [
        "simulate",
        "--port",
        "0",
        "--tokens-per-second",
        f"{args.rate:g}",
        "--num-parallel",
        "0",
        "--keep-alive",
        "-1s",
        "--profile",
        "instant",
    ]
    sim, url = start(sim_args, sim_cpus)
    try:
        out = Path(tempfile.mkdtemp()) / "capacity.json"
        command = [
            "clawdbot",
            "bench",
            url,
            "--concurrency",
            str(args.streams),
            "--duration",
            str(args.duration),
            "--ramp-up",
            str(args.max_tokens / args.rate),
            "--max-tokens",
            str(args.max_tokens),
            "--no-think",
            "--warmup",
            "3",
            "--workers",
            str(args.workers),
            "--no-progress",
            "--json",
            str(out),
        ]
        prefix = ["taskset", "-c", client_cpus] if client_cpus else []
        cpu0 = cpu_seconds(sim.pid)
        peak = PeakRss(sim.pid)
        peak.start()
        subprocess.run([*prefix, sys.executable, "-m", "clawdbot", *command[1:]], check=True, stdout=subprocess.DEVNULL)
        peak.running = False
        cpu = cpu_seconds(sim.pid) - cpu0
        level = json.loads(out.read_text())["levels"][0]
    finally:
        sim.terminate()
        sim.wait()
    tokens = level["output_tokens"]
    nominal_ms = 1000 / args.rate
    print(
        f"| streams (peak in flight) | failures | tokens | sim CPU per token | sim CPU cores | TPOT avg (nominal "
        f"{nominal_ms:.0f} ms) | gap p50 / p99 | sim peak RSS | client lag p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.streams} ({level['peak_in_flight']}) | {level['failures']}/{level['requests']} | {tokens:,} | "
        f"{1e6 * cpu / max(tokens, 1):.1f} µs | {cpu / level['window_seconds']:.2f} | "
        f"{1000 * (level['tpot']['avg'] or 0):.1f} ms | {1000 * (level['itl']['p50'] or 0):.1f} / "
        f"{1000 * (level['itl']['p99'] or 0):.1f} ms | {peak.peak:.0f} MiB | "
        f"{level['client']['loop_lag_p99_ms']:.1f} ms |"
    )
    print(
        "\nsimulator: " + " ".join(["taskset", "-c", sim_cpus] if sim_cpus else []) + " clawdbot " + " ".join(sim_args)
    )
    print("bench:     " + " ".join(shlex.quote(p) for p in [*prefix, *command]))


if __name__ == "__main__":
    main()
