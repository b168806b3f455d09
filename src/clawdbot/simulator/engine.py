"""The simulated runner: parallel slots, FIFO wait, model load, prompt cache and the engine loop.

One `Runner` per model mirrors Ollama's scheduler plus llama-server: `num_parallel` slots (0 = unlimited),
requests beyond them wait first-in first-out without bound, a cold model loads on first use and again when
`num_ctx` changes, and unloads after `keep_alive`. `BatchedRunner` runs one loop in discrete steps: every
generating stream gets its token at the end of the same step, and prompt tokens of newly admitted streams
ride in the batch, lengthening the step for everyone. `FlatRunner` is an idealised backend with a fixed
per-stream rate and no batching, used to measure the gateway alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from .profiles import Profile


class QueueFull(Exception):
    """More requests are waiting for a model load than max_queue allows (Ollama answers 503)."""


ABORTED = "aborted"  # a done_reason never sent: Ollama ended the stream with no final chunk (see repeat_cut)
REPEAT_LIMIT = 30  # llm/server.go: "30 picked as an arbitrary max token repeat limit"


def repeat_cut(texts: list[str]) -> int | None:
    """Where Ollama aborts a reply that repeats itself: the index of the token whose trimmed text equals the last
    30 before it (starting from ""). Ollama reads it from the runner, sends nothing more, and its `return
    ctx.Err()` is nil, so the handler closes the stream with 200: no final chunk, no error line."""
    last, repeats = "", 0
    for index, text in enumerate(texts):
        if text.strip() == last:
            repeats += 1
            if repeats > REPEAT_LIMIT:
                return index
        else:
            last, repeats = text.strip(), 0
    return None


class TokenKind(Enum):
    HIDDEN = 0  # generated but never sent: <think>, </think>, whitespace the parser trims
    THINKING = 1
    CONTENT = 2


@dataclass(slots=True)
class Slot:
    """A parallel slot and the prompt its KV cache still holds, as (prefix hash, tokens) per message."""

    prefix: list[tuple[int, int]] = field(default_factory=list)

    def common_tokens(self, prefix: list[tuple[int, int]]) -> int:
        shared = 0
        for mine, theirs in zip(self.prefix, prefix, strict=False):
            if mine[0] != theirs[0]:
                break
            shared = theirs[1]
        return shared


@dataclass(slots=True, eq=False)
class Sequence:
    plan: list[tuple[TokenKind, str]]
    prompt_tokens: int
    prefix: list[tuple[int, int]]  # cumulative (hash, tokens) after each prompt message
    cache_after: list[tuple[int, int]] | None  # what the slot's cache holds once this reply is done, for the next turn
    num_predict: int
    num_ctx: int
    keep_alive: float | None  # seconds; None = server default, < 0 = forever
    cut_at: int | None = None  # the token at which Ollama aborts the reply (repeat_cut)
    arrived: float = field(default_factory=time.monotonic)
    loaded_at: float = 0.0
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    finished_at: float = 0.0
    first_step: float = 0.0  # decode-only duration of the step that produced the first token
    cached_tokens: int = 0
    prefill_left: int = 0
    generated: int = 0
    done_reason: str = ""
    slot: Slot | None = None
    waiter: asyncio.Future[None] | None = None
    loop_from: int | None = None  # endless: past the plan, its tokens from here on repeat for ever

    def pieces(self, start: int, stop: int) -> list[tuple[TokenKind, str]]:
        """Tokens start..stop of the reply (an endless one goes round its loop past the plan)."""
        plan = self.plan
        if self.loop_from is None or stop <= len(plan):
            return plan[start:stop]
        loop = plan[self.loop_from :] or [(TokenKind.CONTENT, " ")]
        return [plan[i] if i < len(plan) else loop[(i - len(plan)) % len(loop)] for i in range(start, stop)]

    @property
    def finished(self) -> bool:
        return bool(self.done_reason)

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generated

    def advance(self, now: float) -> None:
        """One more token; when the plan is spent the next step samples EOS and the reply is done."""
        if self.generated == self.cut_at:  # made, read by Ollama, and never sent: the stream just ends
            self.done_reason, self.finished_at = ABORTED, now
            return
        if self.generated >= len(self.plan) and self.loop_from is None:
            self.done_reason, self.finished_at = "stop", now
            return
        self.generated += 1
        if self.generated == 1:
            self.first_token_at = now
        if self.generated >= self.num_predict:
            self.done_reason, self.finished_at = "length", now

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def progress(self, seen: int) -> None:
        """Wait until more than `seen` tokens were generated or the reply finished."""
        while self.generated <= seen and not self.finished:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class Runner:
    """Scheduling shared by both engines: load, slots, FIFO wait, cache reuse, keep-alive."""

    def __init__(
        self,
        profile: Profile,
        *,
        speed: float,
        num_parallel: int,
        max_queue: int,
        default_keep_alive: float,
        on_unload: Callable[[], None] | None = None,
    ) -> None:
        self.profile = profile
        self.speed = speed
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self.on_unload = on_unload
        self.loaded_ctx: int | None = None
        self.loaded_at_wall = 0.0
        self.expires_at_wall: float | None = None
        self._loading: asyncio.Future[None] | None = None
        self._load_waiters = 0
        self.running: dict[Sequence, None] = {}  # admission order, O(1) removal
        self.waiting: deque[Sequence] = deque()
        self.idle_slots: list[Slot] = [Slot() for _ in range(num_parallel)]
        self._idle = asyncio.Event()
        self._idle.set()
        self._unload_timer: asyncio.TimerHandle | None = None
        self.default_keep_alive_once: float | None = None
        self.cancelled_total = 0
        self.completed_total = 0
        self.loads_total = 0  # loads and reloads: a num_ctx that changes shows here

    @property
    def active(self) -> int:
        return len(self.running)

    def scaled(self, seconds: float) -> float:
        return seconds / self.speed

    async def ensure_loaded(self, num_ctx: int) -> None:
        """Return once the model runs with this num_ctx; a different num_ctx reloads it, as Ollama does."""
        while self.loaded_ctx != num_ctx or self._loading is not None:
            if self._loading is not None:
                await self._wait_for_load()
                continue
            if self.loaded_ctx is not None:  # reload: wait until the runner is idle, then unload
                await self._idle.wait()
                if self._loading is not None or self.loaded_ctx == num_ctx:
                    continue
            self._loading = asyncio.get_running_loop().create_future()
            try:
                await asyncio.sleep(self.scaled(self.profile.load_seconds))
            finally:
                loading, self._loading = self._loading, None
                if not loading.done():
                    loading.set_result(None)
            self.loaded_ctx = num_ctx
            self.loaded_at_wall = time.time()
            self.loads_total += 1

    async def _wait_for_load(self) -> None:
        assert self._loading is not None
        if self._load_waiters >= self.max_queue:
            raise QueueFull
        self._load_waiters += 1
        try:
            await asyncio.shield(self._loading)
        finally:
            self._load_waiters -= 1

    def submit(self, seq: Sequence) -> None:
        seq.loaded_at = time.monotonic()
        self._cancel_unload()
        self._idle.clear()
        self.waiting.append(seq)
        self._admit()

    def release(self, seq: Sequence) -> None:
        """The handler is done with `seq`: finished, or its client went away (free the slot at once)."""
        if seq in self.running:
            self.cancelled_total += 1
            self._stop(seq)
            self._finish(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
            self.cancelled_total += 1
        if not self.running and not self.waiting and not self._idle.is_set():
            self._idle.set()
            self._schedule_unload(seq.keep_alive)

    def _finish(self, seq: Sequence) -> None:
        """Take `seq` out of the batch, keep what its slot's cache now holds, and admit the next in line."""
        del self.running[seq]
        slot = seq.slot or Slot()
        slot.prefix = seq.cache_after if seq.cache_after is not None and seq.finished else seq.prefix
        self.idle_slots.append(slot)
        if self.num_parallel == 0 and len(self.idle_slots) > 256:  # unlimited slots: keep a bounded cache
            del self.idle_slots[0]
        if seq.finished:
            self.completed_total += 1
        self._admit()

    def _admit(self) -> None:
        while self.waiting and (self.num_parallel == 0 or self.idle_slots):
            seq = self.waiting.popleft()
            seq.slot = self._take_slot(seq.prefix)
            seq.cached_tokens = min(seq.slot.common_tokens(seq.prefix), seq.prompt_tokens - 1)
            seq.prefill_left = seq.prompt_tokens - seq.cached_tokens
            seq.admitted_at = time.monotonic()
            self.running[seq] = None
            self._start(seq)

    def _take_slot(self, prefix: list[tuple[int, int]]) -> Slot:
        """The idle slot whose cache shares the longest prefix (llama-server's slot choice)."""
        if not self.idle_slots:
            return Slot()
        best = max(range(len(self.idle_slots)), key=lambda i: self.idle_slots[i].common_tokens(prefix))
        return self.idle_slots.pop(best)

    def _schedule_unload(self, keep_alive: float | None) -> None:
        seconds = self.default_keep_alive if keep_alive is None else keep_alive
        if self.default_keep_alive_once is not None:
            seconds, self.default_keep_alive_once = self.default_keep_alive_once, None
        if seconds < 0:
            self.expires_at_wall = None
            return
        self.expires_at_wall = time.time() + seconds
        self._unload_timer = asyncio.get_running_loop().call_later(seconds, self._unload)

    def touch(self, keep_alive: float | None) -> None:
        """A load-only request: restart the keep-alive clock when the model is idle."""
        if not self.running and not self.waiting:
            self._cancel_unload()
            self._schedule_unload(keep_alive)

    def expire_now(self) -> None:
        """keep_alive 0 with no messages: unload now, or as soon as the running requests finish."""
        if self.running or self.waiting or self._loading is not None:
            self.default_keep_alive_once = 0.0  # taken by the release of the last request
            return
        self._cancel_unload()
        self._unload()

    def _cancel_unload(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None

    def _unload(self) -> None:
        self._unload_timer = None
        if not self.running and not self.waiting and self._loading is None:
            self.loaded_ctx = None
            self.idle_slots = [Slot() for _ in range(self.num_parallel)]
            if self.on_unload is not None:
                self.on_unload()

    def state(self) -> dict[str, object]:
        return {
            "loaded": self.loaded_ctx is not None,
            "num_ctx": self.loaded_ctx,
            "active": len(self.running),
            "waiting": len(self.waiting),
            "slots": self.num_parallel,
            "cancelled_total": self.cancelled_total,
            "completed_total": self.completed_total,
            "loads_total": self.loads_total,
        }

    def _start(self, seq: Sequence) -> None:
        raise NotImplementedError

    def _stop(self, seq: Sequence) -> None:
        """A running sequence was cancelled; engines drop any timers they hold for it."""


class BatchedRunner(Runner):
    """One engine loop; each step decodes one token for every generating stream plus a prefill budget."""

    _task: asyncio.Task[None] | None = None

    def _start(self, seq: Sequence) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        step_end = loop.time()
        while self.running:
            decode = [s for s in self.running if s.prefill_left == 0]
            budget = max(self.profile.num_batch - len(decode), 0)
            prefill: list[tuple[Sequence, int]] = []
            for seq in self.running:
                if seq.prefill_left and budget:
                    take = min(seq.prefill_left, budget)
                    prefill.append((seq, take))
                    budget -= take
            tokens = len(decode) + sum(take for _, take in prefill)
            context = sum(s.context for s in self.running)
            duration = self.scaled(self.profile.step_seconds(tokens, context))
            # Keep the step cadence when the event loop runs a little late; never race to catch up.
            step_end = max(step_end + duration, loop.time() + duration / 2)
            await asyncio.sleep(step_end - loop.time())
            now = time.monotonic()
            running = self.running  # a stream cancelled during the step has left it
            for seq in decode:
                if seq in running:
                    seq.advance(now)
            for seq, take in prefill:
                if seq in running:
                    seq.prefill_left -= take
                    if seq.prefill_left == 0:
                        seq.first_step = self.scaled(self.profile.step_seconds(1, seq.context))
                        seq.advance(now)
            for seq in [*decode, *(s for s, _ in prefill)]:
                if seq in running:
                    seq.wake()
                    if seq.finished:
                        self._finish(seq)


class FlatRunner(Runner):
    """Every stream gets a token each 1/rate seconds on its own clock: an ideal backend, no batching."""

    def __init__(self, profile: Profile, *, tokens_per_second: float, **kwargs: object) -> None:
        super().__init__(profile, **kwargs)  # type: ignore[arg-type]
        self.interval = 1.0 / tokens_per_second
        self._timers: dict[Sequence, asyncio.TimerHandle] = {}

    def _start(self, seq: Sequence) -> None:
        seq.first_step = self.scaled(self.interval)
        self._schedule(seq)

    def _schedule(self, seq: Sequence) -> None:
        loop = asyncio.get_running_loop()
        self._timers[seq] = loop.call_later(self.scaled(self.interval), self._tick, seq)

    def _tick(self, seq: Sequence) -> None:
        self._timers.pop(seq, None)
        if seq.prefill_left:
            seq.prefill_left = 0
        seq.advance(time.monotonic())
        seq.wake()
        if seq.finished:
            self._finish(seq)
        else:
            self._schedule(seq)

    def _stop(self, seq: Sequence) -> None:
        timer = self._timers.pop(seq, None)
        if timer is not None:
            timer.cancel()
