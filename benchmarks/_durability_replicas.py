"""durability.py --replicas N: N gateway replicas sharing one throwaway PostgreSQL database and one Redis, behind a
real nginx running deploy/nginx-replicas.conf, and what is done to them mid-run.

The clients talk to nginx only. When --kill-at of the planned turns are acknowledged, the first replica is killed
with SIGKILL and left dead (nginx passes over it); at --sigterm-at the second is stopped with SIGTERM and started
again on the same port (a rolling restart); with --restart-redis, a private redis-server (started here, on a port
of its own, without persistence) is stopped and started again at --redis-at, so everything Redis held is gone.
Replies whose writer went away must be continued by another replica (chat/takeover.py): the gateways' logs say
which ("took over a reply"), and none may end interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis
from _harness import Gateway, memory_mib
from _procs import free_port, listening

ROOT = Path(__file__).resolve().parent.parent
_UPSTREAM = re.compile(r"^    server 10\.0\.0\.\d+:18789 .*$", re.M)
TAKEOVER = "took over a reply whose writer is gone"


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    if not listening(port, proc):
        proc.kill()
        raise SystemExit(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")


# ---- processes ------------------------------------------------------------------------------------------------------
class Nginx:
    """deploy/nginx-replicas.conf with the replicas' addresses in its upstream, in the foreground, its files in
    `tmp` (as tests/test_replicas.py runs it)."""

    def __init__(self, tmp: Path, ports: list[int]) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = (ROOT / "deploy" / "nginx-replicas.conf").read_text(encoding="utf-8")
        upstreams = _UPSTREAM.findall(conf)
        if len(upstreams) < len(ports):
            raise SystemExit(f"deploy/nginx-replicas.conf names {len(upstreams)} replicas; asked for {len(ports)}")
        for line in upstreams[len(ports) :]:
            conf = conf.replace(line + "\n", "")
        addresses = iter(f"127.0.0.1:{port}" for port in ports)
        conf = re.sub(r"10\.0\.0\.\d+:18789", lambda _: next(addresses), conf)
        self.port = free_port()
        conf = conf.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        temp = "\n".join(f"    {k}_temp_path {tmp / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user root root;\n" if os.geteuid() == 0 else ""  # root's workers would be "nobody", shut out of tmp
        (tmp / "nginx.conf").write_text(
            f"{user}pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} warn;\nworker_processes 1;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{\n    access_log off;\n{temp}\n{conf}\n}}\n"
        )
        self.log = tmp / "nginx.out"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_listening(self.port, self.proc, "nginx", self.log)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class RedisServer:
    """A private redis-server without persistence: a restart loses every key, as a crashed cache would."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.log, self.dir = free_port(), tmp / "redis.log", tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*args, "--dir", str(self.dir)], stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.proc, "redis-server", self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Deployment:
    """The replicas, nginx in front, and (with --restart-redis) the Redis they share."""

    def __init__(self, count: int, args: list[str], tmp: Path, redis_url: str | None) -> None:
        self.redis = RedisServer(tmp) if redis_url is None else None
        self.redis_url = self.redis.url if self.redis is not None else str(redis_url)
        self.prefix = f"clawdbot-durability-{os.urandom(4).hex()}"
        shared = ["--redis-url", self.redis_url, "--redis-prefix", self.prefix]
        # nginx sets X-Real-IP to its own peer (127.0.0.1 here); the users' addresses are in X-Forwarded-For.
        shared += ["--client-address-header", "x-forwarded-for"]
        self.replicas = [Gateway([*args, *shared], tmp / f"replica{n}.log") for n in range(count)]
        self.nginx: Nginx | None = None
        self.dead: set[int] = set()
        self.tmp = tmp

    async def start(self) -> None:
        """The replicas (at once: they migrate under a lock), then nginx in front of them."""
        await asyncio.gather(*(asyncio.to_thread(replica.start) for replica in self.replicas))
        self.nginx = Nginx(self.tmp, [r.port for r in self.replicas])

    def live(self) -> list[Gateway]:
        return [r for n, r in enumerate(self.replicas) if n not in self.dead]

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for replica in self.live():
            replica.stop()
        if self.redis is not None:
            self.redis.stop()
        else:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis.from_url(self.redis_url)
                for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                    client.delete(key)
                client.close()

    def logs(self) -> str:
        return "".join(r.log.read_text(errors="replace") for r in self.replicas)


# ---- what is done to them -------------------------------------------------------------------------------------------
@dataclass
class Chaos:
    """When each blow fell (seconds after the users began), how many replies were in flight then (as the clients
    saw it)."""

    killed_at: float = 0.0
    in_flight_at_kill: int = 0
    killed_memory: dict[str, float] = field(default_factory=dict)
    termed_at: float = 0.0
    in_flight_at_term: int = 0
    term_stop_s: float = 0.0  # SIGTERM to exit: the handover included
    term_down_s: float = 0.0  # SIGTERM to listening again
    port_kept: bool = True
    redis_at: float = 0.0
    in_flight_at_redis: int = 0
    redis_down_s: float = 0.0
    events: list[str] = field(default_factory=list)


async def chaos(
    deployment: Deployment,
    triggers: dict[str, asyncio.Event],
    in_flight: Callable[[], int],
    t0: float,
) -> Chaos:
    """SIGKILL replica 0, SIGTERM-and-restart replica 1, restart Redis: each when its trigger is set (those without
    a trigger are not done)."""
    out = Chaos()

    async def kill() -> None:
        await triggers["kill"].wait()
        out.in_flight_at_kill, out.killed_at = in_flight(), time.monotonic() - t0
        out.killed_memory = memory_mib(deployment.replicas[0].pid)
        deployment.replicas[0].kill()
        deployment.dead.add(0)
        out.events.append(f"SIGKILL replica 0 at {out.killed_at:.1f} s (not restarted)")

    async def term() -> None:
        await triggers["term"].wait()
        replica = deployment.replicas[1]
        out.in_flight_at_term, out.termed_at = in_flight(), time.monotonic() - t0
        old_port = replica.port
        began = time.monotonic()
        await asyncio.to_thread(replica.stop)
        out.term_stop_s = time.monotonic() - began
        await asyncio.to_thread(replica.start)
        out.term_down_s = time.monotonic() - began
        out.port_kept = replica.port == old_port
        out.events.append(f"SIGTERM replica 1 at {out.termed_at:.1f} s, listening again {out.term_down_s:.1f} s later")

    async def restart_redis() -> None:
        server = deployment.redis
        assert server is not None
        await triggers["redis"].wait()
        out.in_flight_at_redis, out.redis_at = in_flight(), time.monotonic() - t0
        began = time.monotonic()
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)  # long enough for every replica to notice
        await asyncio.to_thread(server.start)
        out.redis_down_s = time.monotonic() - began
        out.events.append(f"Redis restarted (empty) at {out.redis_at:.1f} s, down {out.redis_down_s:.1f} s")

    blows = {"kill": kill, "term": term, "redis": restart_redis}
    await asyncio.gather(*(blow() for name, blow in blows.items() if name in triggers))
    return out


def replica_lines(chaos: Chaos, continued: set[str], seen: int) -> list[str]:
    """durability.py's report: what was done to the replicas, and what became of the replies they were writing."""
    lines = [
        f"| SIGKILL (replica 0, not restarted): at / replies in flight then (client view) | "
        f"{_at(chaos.killed_at)} / {chaos.in_flight_at_kill} |",
        f"| SIGTERM + restart (replica 1): at / in flight then / stopped in / listening again after | "
        f"{_at(chaos.termed_at)} / {chaos.in_flight_at_term} / {chaos.term_stop_s:.1f} s / {chaos.term_down_s:.1f} s "
        f"(port {'kept' if chaos.port_kept else 'CHANGED'}) |",
        f"| replies continued by another replica (its log: took over) / of which the client saw end | "
        f"{len(continued)} / {seen} |",
    ]
    if chaos.redis_down_s:
        lines.append(
            f"| Redis restarted empty: at / in flight then / down for | {_at(chaos.redis_at)} / "
            f"{chaos.in_flight_at_redis} / {chaos.redis_down_s:.1f} s |"
        )
    return lines


def _at(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds else "not reached"


def taken_over(log_text: str) -> set[str]:
    """The replies some replica continued after their writer went away, from the gateways' log lines."""
    ids: set[str] = set()
    for line in log_text.splitlines():
        if TAKEOVER in line:
            with contextlib.suppress(ValueError):
                entry = orjson.loads(line)
                ids.add(str(entry.get("reply_id")))
    return ids
