"""The chat service depends on the `Backend` interface only: a backend written for the test, which speaks no HTTP at
all, gets a turn's request and writes its reply, and the reply is stored with the counts the backend gave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from clawdbot.backends.admission import MemoryAdmission
from clawdbot.backends.base import Backend, BackendStatus, Delta, Final
from clawdbot.backends.fleet import Fleet
from clawdbot.chat.eventlog import MemoryLog
from clawdbot.chat.generation import Generation
from clawdbot.chat.generations import Generations
from clawdbot.chat.service import Chat
from clawdbot.chat.state import MemoryRunningReplies, MemorySendResults
from clawdbot.errors import BackendError
from clawdbot.identity import OWNER_ID, nobody_needed
from clawdbot.metrics import Metrics
from clawdbot.settings import Settings
from clawdbot.store.conversations import Store
from clawdbot.store.limits import Limits
from clawdbot.store.records import Message

MODEL = "fake:1b"
FINAL = Final("stop", prompt_tokens=11, output_tokens=3, total_ns=9, load_ns=1, prompt_eval_ns=2, eval_ns=5_000_000)


class FakeBackend:
    """A model server in memory: each chat is answered with the next script, items or a failure to raise."""

    url = "fake://backend"
    simulated = False
    reported_slots = None

    def __init__(self, *scripts: list[Delta | Final] | BackendError) -> None:
        self.scripts = list(scripts)
        self.bodies: list[dict[str, Any]] = []
        self.status = BackendStatus(reachable=True, version="0", models=[{"name": MODEL}], error=None)

    async def chat(self, body: dict[str, Any]) -> AsyncGenerator[Delta | Final]:
        self.bodies.append(body)
        script = self.scripts.pop(0)
        if isinstance(script, BackendError):
            raise script
        for item in script:
            await asyncio.sleep(0)
            yield item

    async def send(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str], *, limit: float | None = None
    ) -> aiohttp.ClientResponse:
        raise BackendError("this backend answers chats only", backend=self.url, kind="other")

    def classify(self, error: BaseException, *, started: bool) -> BackendError:
        return BackendError(f"failed: {error!r}", backend=self.url, kind="other")

    async def probe(self) -> BackendStatus:
        return self.status

    async def residency(self, max_age: float) -> dict[str, dict[str, int]]:
        return self.status.resident

    async def watch(self, on_change: Callable[[BackendStatus], object] | None = None) -> None:
        await asyncio.Event().wait()

    def how_to_fix(self) -> str:
        return "nothing to fix"

    async def close(self) -> None:
        pass


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/chat.db")
    await store.open()
    yield store
    await store.close()


async def _turn(store: Store, backend: Backend) -> Message:
    """One send through the chat service to `backend`: the reply as stored once its generation ended."""
    settings = Settings(max_running=1)
    limits = Limits(settings)
    await limits.open(store.db)
    fleet = Fleet.of(backend)
    admission, log = MemoryAdmission(fleet.places, max_queue=4, max_queue_per_user=4), MemoryLog()
    generations = Generations(store, fleet, log, admission, MemoryRunningReplies(), Metrics())
    ended: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
    generations.finished.append(ended.set_result)
    chat = Chat(store, generations, fleet, settings, limits, log=log, admission=admission, results=MemorySendResults())
    conversation = await store.create_conversation(user_id=OWNER_ID, model=MODEL)
    sent = await chat.send(conversation.id, "What is 2 + 2?", actor=nobody_needed("127.0.0.1"))
    await asyncio.wait_for(ended, 10)
    await generations.shutdown()
    stored = await store.get_reply(sent.reply.id, OWNER_ID)
    assert stored is not None
    return stored


@pytest.mark.asyncio
async def test_a_turn_is_answered_by_any_backend_that_implements_the_interface(store: Store) -> None:
    backend = FakeBackend([Delta(thinking="Add them."), Delta(content="It is "), Delta(content="4.", lines=2), FINAL])
    stored = await _turn(store, backend)
    (body,) = backend.bodies
    assert (body["model"], body["messages"][-1]) == (MODEL, {"role": "user", "content": "What is 2 + 2?"})
    assert (stored.status, stored.content, stored.thinking) == ("done", "It is 4.", "Add them.")
    assert (stored.done_reason, stored.prompt_tokens, stored.output_tokens, stored.eval_ms) == (
        "stop",
        11,
        3,
        5,
    )


@pytest.mark.asyncio
async def test_a_backend_failure_is_told_by_its_kind(store: Store) -> None:
    before_text = BackendError("backend fake://backend closed the connection", backend="fake", kind="reset")
    mid_reply = BackendError("backend fake://backend went quiet", backend="fake", kind="idle_timeout")

    class Dropping(FakeBackend):
        async def chat(self, body: dict[str, Any]) -> AsyncGenerator[Delta | Final]:
            async for item in super().chat(body):
                yield item
            if len(self.bodies) == 2:
                raise mid_reply

    # The first try fails before any text and is retried unseen; the second stops mid-reply: the text is kept.
    backend = Dropping(before_text, [Delta(content="It is ")])
    stored = await _turn(store, backend)
    assert len(backend.bodies) == 2
    assert (stored.status, stored.error_kind, stored.content) == ("failed", "idle_timeout", "It is ")
