"""`clawdbot --workers N`: N gateway processes on one port of one machine, so the gateway uses N cores.

The first process (the supervisor) serves nothing itself. It reserves the port, starts N `clawdbot serve`
processes that each listen on it with SO_REUSEPORT (the kernel spreads new connections over them), prints one
startup line once all are up, starts again a worker that dies (with a growing pause), and on SIGINT/SIGTERM passes
the signal on and waits for every worker to finish its replies. The workers share their live state through Redis
(--redis-url, required), so any of them can serve any request; a worker whose supervisor is gone stops itself.

`/metrics` and the live operations view on any worker answer for the whole instance: each worker also serves its
own figures on a Unix socket in a private folder the supervisor made, and the one asked adds its siblings' to its
own (metrics.merge, web/monitor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ..settings import Settings

WORKER_ENV = "CLAWDBOT_WORKER"  # the worker's number, 0 to N-1; set only in workers
FOLDER_ENV = "CLAWDBOT_WORKER_DIR"  # where the workers' metrics sockets are
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_SIBLING_TIMEOUT = aiohttp.ClientTimeout(total=1.0)  # replies in flight get this long to finish or be handed over


@dataclass(frozen=True)
class Worker:
    """What a worker process knows of its place among its siblings."""

    index: int
    folder: Path

    @classmethod
    def from_env(cls) -> Worker | None:
        index, folder = os.environ.get(WORKER_ENV), os.environ.get(FOLDER_ENV)
        if index is None or folder is None or not index.isdigit():
            return None
        return cls(int(index), Path(folder))

    @property
    def socket(self) -> Path:
        return self.folder / f"worker-{self.index}.sock"

    def siblings(self) -> list[Path]:
        return sorted(path for path in self.folder.glob("worker-*.sock") if path != self.socket)

    async def from_siblings(self, target: str) -> list[bytes]:
        """Each sibling's answer to GET `target` on its Unix socket (its own /metrics, its own monitor figures);
        one that does not answer within a second is left out (it is starting again, or stuck: its figures come
        back with it)."""

        async def one(path: Path) -> bytes | None:
            try:
                connector = aiohttp.UnixConnector(path=str(path))
                async with (
                    aiohttp.ClientSession(connector=connector, timeout=_SIBLING_TIMEOUT) as session,
                    session.get(f"http://worker{target}") as response,
                ):
                    return await response.read() if response.status == 200 else None
            except (aiohttp.ClientError, OSError, TimeoutError):
                return None

        found = await asyncio.gather(*(one(path) for path in self.siblings()))
        return [body for body in found if body is not None]

    async def orphaned(self) -> None:
        """Return when the supervisor is gone (killed with -9: nobody else would stop this worker)."""
        parent = os.getppid()
        while os.getppid() == parent:  # noqa: ASYNC110 - nothing tells a process its parent died; it must look
            await asyncio.sleep(1.0)


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to the port with SO_REUSEPORT and never listening: it holds the port (and names it, when
    --port is 0) for the workers' own sockets, which join it."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class Supervisor:
    def __init__(self, settings: Settings, args: list[str]) -> None:
        self.settings, self.args = settings, args
        self.folder = Path(tempfile.mkdtemp(prefix="clawdbot-workers-"))
        os.chmod(self.folder, 0o700)  # the metrics sockets answer whoever can reach them
        self.stopping = False
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            reserved = _reserve(self.settings.host, self.settings.port)
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            print(f"clawdbot: cannot listen on {self.settings.host}:{self.settings.port}: {reason}", file=sys.stderr)
            raise SystemExit(2) from None
        port = reserved.getsockname()[1]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            lines = await asyncio.gather(*(self._start(index, port) for index in range(self.settings.workers)))
            first = lines[0].replace(f":{port} — ", f":{port} ({self.settings.workers} workers) — ", 1)
            print(first, flush=True)
            for index in range(self.settings.workers):
                self._spawn(self._keep(index, port))
            await stop.wait()
        finally:
            self.stopping = True
            await self._stop_all()
            for task in self.tasks:
                task.cancel()
            reserved.close()
            for path in self.folder.glob("*"):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    async def _start(self, index: int, port: int) -> str:
        """Start worker `index`; its startup line (the first on its stdout) once it listens."""
        env = {**os.environ, WORKER_ENV: str(index), FOLDER_ENV: str(self.folder)}
        args = [*self.args, "--workers", "1", "--port", str(port)]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clawdbot", "serve", *args, stdout=asyncio.subprocess.PIPE, env=env
        )
        self.processes[index] = process
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"clawdbot "):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise SystemExit(f"clawdbot: worker {index} did not start (exit {await process.wait()})")
        self._spawn(self._echo(process.stdout))
        return line.decode().rstrip("\n")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _echo(self, stream: asyncio.StreamReader) -> None:
        """A worker's later lines (the setup link) go to the supervisor's stdout."""
        while line := await stream.readline():
            sys.stdout.write(line.decode())
            sys.stdout.flush()

    async def _keep(self, index: int, port: int) -> None:
        """Start the worker again whenever it dies, pausing longer each time it died soon after starting."""
        pause = 0.5
        while not self.stopping:
            started = time.monotonic()
            code = await self.processes[index].wait()
            if self.stopping:
                return
            print(f"clawdbot: worker {index} exited ({code}); starting it again", file=sys.stderr, flush=True)
            pause = 0.5 if time.monotonic() - started > 30 else min(pause * 2, 10.0)
            await asyncio.sleep(pause)
            with contextlib.suppress(SystemExit):
                await self._start(index, port)

    async def _stop_all(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        waits = [process.wait() for process in self.processes.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), STOP_TIMEOUT)
        except TimeoutError:
            for process in self.processes.values():
                if process.returncode is None:
                    process.kill()
