"""What one sign-in costs: POST /chat/api/session with the right password, against a gateway with accounts on.

A sign-in checks the password with Argon2id (argon2-cffi's default profile, RFC 9106's second recommendation:
64 MiB, 3 passes, 4 lanes, in 4 threads) off the event loop, `auth.hashing_slots()` hashes at once (1 on 2 cores),
then stores a new session. The script times:

1. the bare hash check in this process (`PasswordHasher().verify`), what each sign-in must spend at least;
2. --count sign-ins one after another, each timed from the request to the answer;
3. --count sign-ins sent all at once, which queue for the gateway's hashing slots;
4. what a storm of sign-ins does to everyone else: `clawdbot bench` with --streams streaming users (an API key,
   a simulator at 20 tokens/s with unlimited slots, so the backend never queues), once on a quiet gateway and
   once while --count sign-ins are kept in flight the whole time. The difference in TTFT and in the gap between
   chunks is what hashing takes from the relay.

API keys are not hashed this way (a key is a SHA-256 lookup, cached): what checking one adds to a generation is
measured by `gateway_overhead.py --auth`.

    uv run python benchmarks/sign_in.py --count 20 --streams 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _procs import CLAWDBOT, add_user, new_key, start
from argon2 import PasswordHasher


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.0f} ms | {p90:.0f} ms | {ms[-1]:.0f} ms | "
        f"{statistics.fmean(ms):.0f} ms |"
    )


def bare_verify(password: str, count: int) -> list[float]:
    hasher = PasswordHasher()
    stored = hasher.hash(password)
    times = []
    for _ in range(count):
        began = time.perf_counter()
        hasher.verify(stored, password)
        times.append(time.perf_counter() - began)
    return times


def sequential(gateway: str, password: str, count: int) -> list[float]:
    times = []
    with httpx.Client(base_url=gateway, timeout=60) as client:
        for _ in range(count):
            began = time.perf_counter()
            answer = client.post("/chat/api/session", json={"name": "bench", "password": password})
            times.append(time.perf_counter() - began)
            answer.raise_for_status()
            client.cookies.clear()
    return times


async def burst(gateway: str, password: str, count: int) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=gateway, timeout=120, limits=limits) as client:

        async def one() -> float:
            began = time.perf_counter()
            answer = await client.post("/chat/api/session", json={"name": "bench", "password": password})
            answer.raise_for_status()
            return time.perf_counter() - began

        began = time.perf_counter()
        times = await asyncio.gather(*(one() for _ in range(count)))
        return list(times), time.perf_counter() - began


def streams(gateway: str, key: str, users: int, seconds: float, out: Path) -> dict[str, Any]:
    """One `clawdbot bench` level through the gateway; its summary (the key goes in the environment)."""
    command = [*CLAWDBOT, "bench", gateway, "--concurrency", str(users), "--duration", str(seconds)]
    command += ["--ramp-up", "2", "--max-tokens", "40", "--no-think", "--warmup", "3", "--no-progress", "--json"]
    env = {**os.environ, "CLAWDBOT_API_KEY": key}
    subprocess.run([*command, str(out)], check=True, stdout=subprocess.DEVNULL, env=env)
    level: dict[str, Any] = json.loads(out.read_text())["levels"][0]
    return level


async def streams_during_sign_ins(
    gateway: str, key: str, password: str, users: int, seconds: float, at_once: int, out: Path
) -> tuple[dict[str, Any], list[float], float]:
    """The same bench level while `at_once` sign-ins are in flight from its start to its end."""
    done = asyncio.Event()
    times: list[float] = []
    limits = httpx.Limits(max_connections=at_once)
    async with httpx.AsyncClient(base_url=gateway, timeout=120, limits=limits) as client:

        async def keep_signing_in() -> None:
            while not done.is_set():
                began = time.perf_counter()
                answer = await client.post("/chat/api/session", json={"name": "bench", "password": password})
                answer.raise_for_status()
                times.append(time.perf_counter() - began)

        began = time.perf_counter()
        signing = [asyncio.create_task(keep_signing_in()) for _ in range(at_once)]
        try:
            level = await asyncio.to_thread(streams, gateway, key, users, seconds, out)
        finally:
            done.set()
            await asyncio.gather(*signing)
        return level, times, time.perf_counter() - began


def stream_row(name: str, level: dict[str, Any], sign_ins: str) -> str:
    def ms(metric: str, q: str) -> str:
        return f"{float(level[metric][q] or 0.0) * 1000:.1f} ms"

    return (
        f"| {name} | {level['requests']} | {level['failures']} | {ms('ttft', 'p50')} | {ms('ttft', 'p99')} | "
        f"{ms('itl', 'p50')} | {ms('itl', 'p99')} | {sign_ins} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="sign-ins in each measurement (4: kept in flight)")
    parser.add_argument("--streams", type=int, default=100, help="streaming users in measurement 4 (0: skip it)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds each bench of measurement 4 runs")
    args = parser.parse_args()
    password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="clawdbot-sign-in-") as data_dir:
        add_user(data_dir, "bench", password, admin=True)
        sim, sim_url = start(["simulate", "--port", "0", "--tokens-per-second", "20", "--num-parallel", "0"], None)
        gw, gw_url = start(
            [
                "serve",
                "--port",
                "0",
                "--ollama-url",
                sim_url,
                "--data-dir",
                data_dir,
                "--auth",
                "--max-running",
                "4096",
            ],
            None,
        )
        try:
            sequential(gw_url, password, 2)  # warm up (connection, database, the first session written)
            bare = bare_verify(password, args.count)
            one_by_one = sequential(gw_url, password, args.count)
            at_once, wall = asyncio.run(burst(gw_url, password, args.count))
            if args.streams:
                key, out = new_key(gw_url, "bench", password), Path(data_dir) / "bench.json"
                quiet = streams(gw_url, key, args.streams, args.seconds, out)
                busy, storm, storm_wall = asyncio.run(
                    streams_during_sign_ins(gw_url, key, password, args.streams, args.seconds, args.count, out)
                )
        finally:
            for proc in (gw, sim):
                proc.terminate()
                proc.wait()
    print("| measured | n | p50 | p90 | max | mean |")
    print("|---|---|---|---|---|---|")
    print(summary("Argon2id verify in-process (no HTTP)", bare))
    print(summary("POST /chat/api/session, one after another", one_by_one))
    print(summary(f"POST /chat/api/session, {args.count} at once", at_once))
    print(f"\n{args.count} at once: all answered in {wall * 1000:.0f} ms ({args.count / wall:.1f} sign-ins/s)")
    if args.streams:
        print(f"\n{args.streams} streaming users (clawdbot bench, 40 tokens at 20 tokens/s), quiet and in a storm")
        print("| gateway | requests | failures | TTFT p50 | TTFT p99 | gap p50 | gap p99 | sign-ins meanwhile |")
        print("|---|---|---|---|---|---|---|---|")
        print(stream_row("quiet", quiet, "–"))
        rate, p50 = len(storm) / storm_wall, statistics.median(storm) * 1000
        done = f"{len(storm)} in {storm_wall:.0f} s ({rate:.1f}/s), p50 {p50:.0f} ms"
        print(stream_row(f"{args.count} sign-ins always in flight", busy, done))
    print(f"machine: {os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("simulator: clawdbot simulate --port 0 --tokens-per-second 20 --num-parallel 0")
    print("gateway: clawdbot serve --port 0 --ollama-url SIMULATOR --data-dir TMP --auth --max-running 4096")
    print("         (its user made beforehand with clawdbot user add)")


if __name__ == "__main__":
    main()
