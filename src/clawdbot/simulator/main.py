"""Run the simulator until interrupted, announcing itself in one line."""

from __future__ import annotations

import os
import sys

from ..common.signals import until_signalled
from .server import Simulator
from .settings import SimulatorSettings


def describe(sim: Simulator) -> str:
    s = sim.settings
    timing = (
        f"{s.tokens_per_second:g} tok/s per stream, no batching"
        if s.tokens_per_second
        else f"profile {sim.profile.name}"
    )
    slots = "unlimited" if s.num_parallel == 0 else str(s.num_parallel)
    speed = f", {s.speed:g}× speed" if s.speed != 1 else ""
    return (
        f"clawdbot simulate: Ollama {s.ollama_version} stand-in on {sim.url} — models {', '.join(sim.models)}; "
        f"{timing}{speed}; {slots} parallel slot(s)"
    )


async def serve_forever(settings: SimulatorSettings) -> None:
    sim = Simulator(settings)
    try:
        await sim.start()
    except OSError as error:  # a port in use: one line, as `clawdbot serve` says it, not a traceback
        await sim.stop()
        reason = os.strerror(error.errno) if error.errno else str(error)  # uvloop's strerror repeats the address
        print(f"clawdbot simulate: cannot listen on {settings.host}:{settings.port}: {reason.lower()}", file=sys.stderr)
        raise SystemExit(2) from None
    print(describe(sim), flush=True)
    try:
        await until_signalled()
    finally:
        await sim.stop()
