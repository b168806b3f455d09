"""The threads SQLite's queries run in, handed work without a lock the event loop could wait on.

A ThreadPoolExecutor's `submit` takes its idle semaphore, a Python lock that the pool's threads take too as each
job ends. When the loop found it held, it waited for the GIL while a database thread ran SQLAlchemy's Python: under
streaming load `submit` was 4–5 % of the event loop's samples (py-spy), for four queries a turn. Here a job goes on
a `queue.SimpleQueue` (C; putting never blocks) and its result comes back through `call_soon_threadsafe`. With 20
tasks each handing a job to 4 threads between ~100 µs stretches of loop work, a job cost the process 210–220 µs of
CPU here against 270–285 µs through run_in_executor, 135–140 µs of it on the loop against 175–185 µs.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]


class Threads:
    def __init__(self, count: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `function(*args)` in one of the threads; its result (or exception) in the returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((function, args, future, loop))
        return future

    def shutdown(self) -> None:
        """Finish the jobs already given, then end the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, args, future, loop = job
            try:
                result, error = function(*args), None
            except BaseException as failed:  # noqa: BLE001 - handed to whoever awaits the job
                result, error = None, failed
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
