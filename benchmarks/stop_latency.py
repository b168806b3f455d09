"""How soon Stop frees the model's slot: from the Stop request to the simulator counting its stream as gone.

    uv run python benchmarks/stop_latency.py --trials 20

Each trial starts a long reply, lets it stream for a moment, sends Stop and polls the simulator's own state until
its slot is free. The figure includes the Stop round trip and the polling (a few milliseconds), so it is an upper
bound on how long the backend keeps generating for a reply nobody wants any more.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import httpx
from _procs import start

LONG = " ".join(f"w{i}" for i in range(400))


def active(sim: str) -> int:
    runners = httpx.get(f"{sim}/_sim/state").json()["runners"]
    return int((runners.get("qwen3:32b") or {}).get("active", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    sim_proc, sim = start(["simulate", "--port", "0", "--profile", "instant", "--tokens-per-second", "40"], None)
    data = tempfile.mkdtemp(prefix="clawdbot-stop-")
    gw_proc, gateway = start(["serve", "--port", "0", "--ollama-url", sim, "--data-dir", data, "--no-auth"], None)
    times: list[float] = []
    try:
        with httpx.Client(base_url=gateway + "/chat/api", timeout=10) as api:
            for _ in range(args.trials):
                httpx.post(f"{sim}/_sim/script", json=[{"reply": LONG, "thinking": ""}]).raise_for_status()
                cid = api.post("/conversations", json={}).json()["conversation"]["id"]
                api.post(f"/conversations/{cid}/messages", json={"content": "go"}).raise_for_status()
                deadline = time.monotonic() + 10
                while active(sim) == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(0.3)  # streaming by now
                began = time.perf_counter()
                api.post(f"/conversations/{cid}/stop").raise_for_status()
                while active(sim) != 0:
                    time.sleep(0.001)
                times.append((time.perf_counter() - began) * 1000)
    finally:
        gw_proc.terminate()
        sim_proc.terminate()
        gw_proc.wait()
        sim_proc.wait()
    print(
        f"Stop → the simulator's slot free, {len(times)} trials: median {statistics.median(times):.1f} ms, "
        f"max {max(times):.1f} ms"
    )


if __name__ == "__main__":
    main()
