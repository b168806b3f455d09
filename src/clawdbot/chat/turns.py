"""One turn at a time in each conversation: a send, edit, regenerate, continue or version switch holds its
conversation (in every gateway process, where several share the state) from "may I start?" until its reply's
generation exists, and a turn runs to its end even when the client that asked goes away. Ownership is the caller's
(service.py) to check."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from ..errors import Conflict
from .generations import Generations
from .results import TurnResult
from .state import Answer, SendResults


class Busy(Conflict):
    """A turn refused because another is starting or running in the conversation; web/ adds where to attach (the
    running reply's event stream, else the conversation's)."""

    def __init__(self, conversation_id: str, reply_id: str | None) -> None:
        ids = {"conversation_id": conversation_id, **({"reply_id": reply_id} if reply_id is not None else {})}
        super().__init__("a reply is still being written in this conversation; stop it or wait for it", **ids)
        self.conversation_id, self.reply_id = conversation_id, reply_id


class Turns:
    def __init__(self, generations: Generations, results: SendResults) -> None:
        self.generations = generations
        # Conversations between "may I start?" and the generation existing, with the client id of the send
        # starting there and what it will answer: a retry of that very send waits for the same answer.
        self.results = results
        self._running: set[asyncio.Task[TurnResult]] = set()  # turns whose client left: they still finish

    async def begin(self, conversation_id: str, client_id: str | None = None) -> Turn:
        """The conversation, taken for an `async with` block; Busy (a Conflict) while it has a reply in flight or
        another turn is starting there."""
        running = await self.generations.running(conversation_id)
        turn = Turn(self.results, conversation_id, client_id)
        if running is None and await self.results.begin(conversation_id, client_id, turn.answer):
            return turn
        if running is None:  # refused by a check only the shared state can make: the running reply, if any now
            running = await self.generations.running(conversation_id)
        raise Busy(conversation_id, running.id if running is not None else None)

    async def sent_before(self, conversation_id: str, client_id: str) -> TurnResult | None:
        """The answer already given to a send with this client id, if it is starting or running now."""
        starting = await self.results.answer(conversation_id, client_id)
        if starting is not None:
            return replace(starting, duplicate=True)
        running = await self.generations.running(conversation_id)
        if running is None or running.client_id != client_id:
            return None  # a send that finished is found in the history the turn reads anyway
        generation = running.generation
        if generation is not None and generation.prompt is not None:
            return TurnResult(generation.prompt, generation.reply, duplicate=True)
        # Another process writes it: the turn's write was committed before its reply started.
        message, reply = await self.generations.store.by_client_id(conversation_id, client_id)
        return TurnResult(message, reply, duplicate=True) if message is not None else None

    async def to_the_end(self, turn: Coroutine[Any, Any, TurnResult]) -> TurnResult:
        """Run a turn to its end even if the client that asked goes away (aiohttp cancels its handler): a turn
        whose write was committed must start its reply, or the reply would be left waiting forever."""
        task = asyncio.ensure_future(turn)
        self._running.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def finish(self) -> None:
        await asyncio.gather(*self._running, return_exceptions=True)


class Turn:
    """A conversation taken for a starting turn (Turns.begin) until the end of an `async with` block, so two sends
    cannot race; a retry of the same send (same client id) waits for this one's answer instead."""

    def __init__(self, results: SendResults, conversation_id: str, client_id: str | None):
        self.results, self.conversation_id = results, conversation_id
        self.answer: Answer = asyncio.get_running_loop().create_future()
        self.answer.add_done_callback(lambda answer: answer.cancelled() or answer.exception())  # no retry waited
        self.client_id = client_id

    async def __aenter__(self) -> Turn:
        return self

    def done(self, result: TurnResult) -> TurnResult:
        self.answer.set_result(result)
        return result

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, *rest: object) -> None:
        try:
            await self.results.end(self.conversation_id)
        finally:
            if not self.answer.done():
                if isinstance(error, Exception):
                    self.answer.set_exception(error)
                else:
                    self.answer.cancel()


def _settled(task: asyncio.Task[Any]) -> None:
    """A turn's error reaches its caller; with the caller gone, it is only retrieved here (no asyncio warning)."""
    if not task.cancelled():
        task.exception()
