"""Durability at scale: three replicas behind the real nginx (deploy/nginx-replicas.conf), on one PostgreSQL
database and one Redis, twenty users each holding a conversation on the chat WebSocket through nginx, dropping
their sockets and resuming by seq; mid-run one replica dies (SIGKILL), or is restarted (SIGTERM), or Redis is
restarted empty. Every acknowledged turn must end `done`, stored once, with exactly the text its client
reassembled across reconnects; no reply may end interrupted, and the replies the lost replica was writing must have
been continued by another one.

The run is benchmarks/durability.py's replicas mode at a small scale (its clients, its checks against the
database), read back from its --json figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy_support import NGINX, binary
from live_support import REDIS_URL, redis_or_skip

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
USERS, TURNS = 20, 2


def durability(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run the benchmark with 3 replicas and return its figures; fails with its report when an invariant broke."""
    binary(NGINX)
    redis_or_skip()
    figures = tmp_path / "figures.json"
    command = [sys.executable, str(BENCHMARKS / "durability.py"), "--replicas", "3", "--database", "postgresql"]
    command += ["--redis-url", REDIS_URL, "--users", str(USERS), "--turns", str(TURNS), "--sim-profile", "instant"]
    command += ["--think-time", "0.3", "--ramp-up", "1", "--drop", "0.2", "--send-drop", "0.05", "--fault-rate", "0"]
    # 60 tokens/s: replies of a few seconds, so a blow at a third of the turns finds most of them streaming.
    command += ["--tokens-per-second", "60", "--duration", "80", "--json", str(figures), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=BENCHMARKS)
    report = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "RESULT: all invariants held" in result.stdout, report
    out: dict[str, Any] = json.loads(figures.read_text())
    out["report"] = report
    return out


def every_turn_done(figures: dict[str, Any]) -> None:
    stats, checked = figures["stats"], figures["checked"]
    report = figures["report"]
    assert stats["turns_started"] == stats["acknowledged"] == USERS * TURNS, report
    assert checked["statuses"] == {"done": USERS * TURNS}, report  # none interrupted, failed or stopped
    assert checked["whole_streams_checked"] == USERS * TURNS, report  # each client saw its reply through, by seq
    assert stats["finals"] == {"done": USERS * TURNS}, report
    for key in ("missing", "duplicates", "lost", "mismatches", "superseded", "left_active"):
        assert checked[key] == 0, report
    assert stats["gaps"] == 0, report
    assert stats["stuck"] == 0, report


@pytest.mark.slow
def test_a_replica_killed_mid_reply_loses_nothing(tmp_path: Path) -> None:
    figures = durability(tmp_path, "--kill-at", "0.3", "--no-sigterm")
    every_turn_done(figures)
    chaos = figures["chaos"]
    assert chaos["killed_at"] > 0, figures["report"]
    assert chaos["in_flight_at_kill"] > 0, figures["report"]
    # The killed replica's replies went on elsewhere: each client saw its reply end, as the same reply.
    assert figures["continued"], figures["report"]
    assert figures["continued_seen"] == len(figures["continued"]), figures["report"]
    assert figures["checked"]["resumed_streams_checked"] > 0, figures["report"]


@pytest.mark.slow
def test_a_rolling_restart_interrupts_no_reply(tmp_path: Path) -> None:
    figures = durability(tmp_path, "--no-kill", "--sigterm-at", "0.3")
    every_turn_done(figures)
    chaos = figures["chaos"]
    assert chaos["termed_at"] > 0, figures["report"]
    assert chaos["in_flight_at_term"] > 0, figures["report"]
    assert chaos["port_kept"], figures["report"]
    assert figures["continued"], figures["report"]  # handed over, and taken by another replica
    assert figures["continued_seen"] == len(figures["continued"]), figures["report"]


@pytest.mark.slow
def test_redis_restarted_empty_mid_run_and_then_a_replica_killed_loses_nothing(tmp_path: Path) -> None:
    """Redis (a private one, no persistence) restarted while replies stream: the writers put them back whole, so
    when a replica is killed afterwards its replies are still taken over. Sends made while Redis is down are
    answered 503 redis_unavailable and sent again (same client_id); nothing else is visible to the users."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server to restart")
    figures = durability(tmp_path, "--restart-redis", "--redis-at", "0.2", "--kill-at", "0.6", "--no-sigterm")
    every_turn_done(figures)
    chaos = figures["chaos"]
    assert chaos["redis_at"] > 0, figures["report"]
    assert chaos["in_flight_at_redis"] > 0, figures["report"]
    assert chaos["killed_at"] > chaos["redis_at"], figures["report"]
    assert figures["continued"], figures["report"]
    assert figures["continued_seen"] == len(figures["continued"]), figures["report"]
