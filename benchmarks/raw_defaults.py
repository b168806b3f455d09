"""What adding the defaults to a raw request costs the relay: CPU per request, by body, for the three paths a body
can take (rawdefaults.py). Runs in this process, no servers: it times the very functions the relay calls.

- as sent: the body sets num_ctx and num_predict; it is parsed (to find that out) and forwarded as it came;
- appended: no `options`; the defaults are appended to the client's bytes;
- rewritten: `options` without num_ctx (what `clawdbot bench` and most clients send); the body is written anew.

The parse is the part the relay already paid before this change for a user limited to some models; "parse only"
is that alone, for comparison.

    uv run python benchmarks/raw_defaults.py
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from collections.abc import Callable

import orjson

from clawdbot.gateway.rawdefaults import parse, with_defaults
from clawdbot.settings import Settings
from clawdbot.store.limits import Limits


def bodies() -> dict[str, dict[str, object]]:
    turn = "Explain how the gateway keeps one model loaded for the page and the API alike. " * 4
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(20)]
    image = base64.b64encode(bytes(range(256)) * 4096).decode()  # 1 MiB of picture, as a client sends it
    return {
        "one message (0.1 KB)": {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hello"}]},
        "20-turn history (7 KB)": {"model": "qwen3:32b", "messages": history},
        "an image (1.4 MB)": {"model": "qwen3:32b", "messages": [{"role": "user", "content": "?", "images": [image]}]},
    }


def timed(run: Callable[[], object], rounds: int) -> float:
    """Median microseconds of one call, over `rounds` batches."""
    batch = max(1, 20_000 // rounds)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(batch):
            run()
        samples.append((time.perf_counter() - started) / batch * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    limits = Limits(Settings())
    print("| body | parse only | as sent | appended | rewritten |")
    print("|---|---|---|---|---|")
    for name, body in bodies().items():
        rounds = args.rounds if len(orjson.dumps(body)) < 100_000 else max(5, args.rounds // 10)
        variants = {
            "as sent": orjson.dumps({**body, "options": {"num_ctx": 8192, "num_predict": 100}}),
            "appended": orjson.dumps(body),
            "rewritten": orjson.dumps({**body, "options": {"num_predict": 100}}),
        }
        cells = [f"{timed(lambda raw=variants['appended']: parse(raw), rounds):.1f} µs"]
        for raw in variants.values():
            cells.append(f"{timed(lambda raw=raw: with_defaults('/api/chat', raw, parse(raw), limits), rounds):.1f} µs")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
