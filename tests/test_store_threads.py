"""The threads SQLite's queries run in (store/threads.py): results, errors and cancelled waiters come back as an
executor's would, and shutting down finishes the work already given."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clawdbot.store.threads import Threads


@pytest.mark.asyncio
async def test_jobs_run_in_the_threads_side_by_side_and_their_results_and_errors_come_back() -> None:
    threads = Threads(3, "test-db")
    seen: set[str] = set()
    both_in = threading.Barrier(3, timeout=5)  # only if three jobs run at once

    def job(value: int) -> int:
        seen.add(threading.current_thread().name)
        both_in.wait()
        return value * 2

    def fails() -> None:
        raise ValueError("no such table")

    try:
        assert await asyncio.gather(*(threads.run(job, n) for n in (1, 2, 3))) == [2, 4, 6]
        assert seen == {"test-db_0", "test-db_1", "test-db_2"}
        with pytest.raises(ValueError, match="no such table"):
            await threads.run(fails)
    finally:
        threads.shutdown()


@pytest.mark.asyncio
async def test_a_waiter_that_gave_up_leaves_the_job_to_finish_and_the_threads_to_go_on() -> None:
    threads = Threads(1, "test-db")
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.2)
        finished.set()
        return "stored"

    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(threads.run(slow), 0.01)
        assert await threads.run(lambda: "next") == "next"  # queued behind the slow one, which still finished
        assert finished.is_set()
    finally:
        threads.shutdown()


@pytest.mark.asyncio
async def test_shutting_down_finishes_the_jobs_already_given() -> None:
    threads = Threads(2, "test-db")
    done: list[int] = []

    def job(n: int) -> None:
        time.sleep(0.01)
        done.append(n)

    pending = [threads.run(job, n) for n in range(10)]
    threads.shutdown()
    assert sorted(done) == list(range(10))
    await asyncio.gather(*pending)
