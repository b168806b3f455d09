"""The durability and fairness benchmarks (benchmarks/) run end to end at a tiny scale and report success."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=BENCHMARKS,
    )


@pytest.mark.slow
def test_durability_survives_faults_drops_and_a_crash() -> None:
    result = run(
        "durability.py",
        *("--users", "12", "--turns", "2", "--think-time", "0.2", "--ramp-up", "0.5"),
        *("--drop", "0.5", "--send-drop", "0.3", "--fault-rate", "0.1", "--duration", "90"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIGKILL at" in result.stdout
    assert "RESULT: all invariants held" in result.stdout
    assert "| turns started / acknowledged | 24 / 24 |" in result.stdout


@pytest.mark.slow
def test_fairness_round_robin_and_limits() -> None:
    result = run(
        "fairness.py",
        *("--greedy", "20", "--light", "3", "--first-light", "0.3", "--stagger", "0.5"),
        *("--reply-tokens", "10", "--tokens-per-second", "40", "--slack", "1.0", "--timeout", "60"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "14 / 6 × 429 too_many_waiting" in result.stdout
    assert "12 / 8 × 503 overloaded" in result.stdout
