"""What one sign-in costs: POST /chat/api/session with the right password, against a gateway with accounts on.

A sign-in checks the password with Argon2id (argon2-cffi's default profile, RFC 9106's second recommendation:
64 MiB, 3 passes, 4 lanes) in a worker thread, at most two at once, then stores a new session. The script times:

1. the bare hash check in this process (`PasswordHasher().verify`), what each sign-in must spend at least;
2. --count sign-ins one after another, each timed from the request to the answer;
3. --count sign-ins sent all at once, which queue for the gateway's two hashing slots.

API keys are not hashed this way (a key is a SHA-256 lookup, cached): what checking one adds to a generation is
measured by `gateway_overhead.py --auth`.

    uv run python benchmarks/sign_in.py --count 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time

import httpx
from _procs import add_user, start
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="sign-ins in each of the three measurements")
    args = parser.parse_args()
    password = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="clawdbot-sign-in-") as data_dir:
        add_user(data_dir, "bench", password, admin=True)
        sim, sim_url = start(["simulate", "--port", "0", "--profile", "instant"], None)
        gw, gw_url = start(["serve", "--port", "0", "--ollama-url", sim_url, "--data-dir", data_dir, "--auth"], None)
        try:
            sequential(gw_url, password, 2)  # warm up (connection, database, the first session written)
            bare = bare_verify(password, args.count)
            one_by_one = sequential(gw_url, password, args.count)
            at_once, wall = asyncio.run(burst(gw_url, password, args.count))
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
    print(f"machine: {os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("gateway: clawdbot serve --port 0 --ollama-url SIMULATOR --data-dir TMP --auth (user made beforehand)")


if __name__ == "__main__":
    main()
