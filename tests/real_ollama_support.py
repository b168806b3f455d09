"""A real Ollama (Intel's ipex-llm build of 0.5.4, CPU only) with gemma3:270m, set up by scripts/real_ollama.py,
and helpers to compare what a client gets from it directly and through the gateway.

Setting it up needs PyPI and about 2 GB of disk; where that fails the tests skip, except under CI=true, where a
missing real server is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gemma3:270m"
LONG = "gemma3:270m-long"  # the same weights without the Modelfile's 64-token cap: for Stop
NUM_CTX = 2048  # the server's own default in 0.5.4: raw calls without num_ctx need no reload
# Greedy and short: a base model may otherwise ramble on, and equal requests must give equal chunks.
EXACT = {"temperature": 0, "seed": 1, "num_predict": 12}
# Fields that are clocks or durations: they differ between any two runs, direct or not.
TIMING = frozenset({"created_at", "created", "id", "total_duration", "load_duration", "prompt_eval_duration",
                    "eval_duration", "expires_at"})  # fmt: skip


def script_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("real_ollama", ROOT / "scripts" / "real_ollama.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_ollama"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@dataclass
class RealOllama:
    url: str
    log: Path
    proc: Any

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def loaded(self) -> list[str]:
        return [m["name"] for m in httpx.get(self.url + "/api/ps").json()["models"]]

    def unload(self) -> None:
        """Unload the model and wait until /api/ps no longer lists it (0.5.4 answers before the runner is gone)."""
        httpx.post(self.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=30)
        deadline = time.monotonic() + 20
        while self.loaded():
            assert time.monotonic() < deadline, "the model did not unload"
            time.sleep(0.1)


def unavailable(reason: str) -> None:
    pytest.skip(f"no real Ollama here: {reason}")  # a failure under CI=true (conftest.py)


def start_real_ollama() -> RealOllama:
    """Set up (quick once cached) and start the server on a free port, models read from the cache."""
    real_ollama = script_module()
    if not sys.platform.startswith("linux"):
        unavailable("Intel's ipex-llm build of Ollama is a Linux x86-64 binary")
    try:
        install = real_ollama.setup(log=False)
        log = Path(tempfile.mkstemp(prefix="real-ollama-", suffix=".log")[1])
        port = real_ollama.free_port()
        proc = real_ollama.start(install, port, log=log)
    except (real_ollama.SetupError, OSError) as error:
        unavailable(f"{error} (python3 scripts/real_ollama.py setup)")
    real = RealOllama(f"http://127.0.0.1:{port}", log, proc)
    create = {"model": LONG, "modelfile": f"FROM {MODEL}\nPARAMETER num_predict 2000\n", "stream": False}
    created = httpx.post(real.url + "/api/create", json=create, timeout=60)
    assert created.status_code == 200, created.text
    return real


def stop_real_ollama(real: RealOllama) -> None:
    """Stop the server; the test model goes from the cache first, so that a person's `serve` lists only gemma3."""
    httpx.request("DELETE", real.url + "/api/delete", json={"model": LONG})
    script_module().stop(real.proc)


def chunks_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON objects of an NDJSON or SSE body, in order ([DONE] left out)."""
    found = []
    for line in response.text.splitlines():
        line = line.removeprefix("data: ").strip()
        if line and line != "[DONE]":
            found.append(json.loads(line))
    return found


def without_timing(value: Any) -> Any:
    """A chunk with its clocks and durations left out, nested objects included."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value
