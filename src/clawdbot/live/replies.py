"""Running replies and starting turns shared by every gateway process: the 409, a retried send, Stop and Delete.

Two leases per conversation (live/leases.py), hash-tagged with the conversation:

- `{conversation}:turn`, a turn being started: `node token client_id`. Taken atomically with a check of the
  reply key (`_BEGIN`), so two sends on two processes cannot both start; let go when the reply exists (or the turn
  failed), with a message on `{conversation}:ch:turn` for a retried send waiting in another process.
- `{conversation}:reply`, the reply being written: `reply_id node client_id`. It names the writer, so a Stop or a
  Delete on any process reaches it: `reply.stop <id>` on the writer's inbox, and the writer stops the reply as a
  local Stop does. A writer that does not hear (none listening on its inbox) for as long as its lease lasts is gone:
  the caller stores the reply as stopped itself.

A retried send (same client id) on another process waits for the first one's turn to settle there (woken by the
turn channel, or by the lease running out if that process died), then finds the first send's message and reply in
the database, whose write was committed before the reply started: the answer crosses processes by the database,
not by Redis.

Without Redis, a turn cannot be checked against the other processes: it is refused (RedisUnavailable, 503). Replies
already running keep running, and their leases are re-asserted when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..chat.state import Running
from ..errors import RedisUnavailable
from ..logs import LOG
from ..store.conversations import Store
from .connection import GONE, Live
from .leases import LEASE_MS, Leases

if TYPE_CHECKING:
    from ..chat.generation import Generation
    from ..chat.results import TurnResult
    from ..chat.state import Answer

STOP = b"reply.stop "  # on a writer's inbox, followed by the reply's id
# Seconds between tries to reach a writer that does not listen (its pub/sub reconnecting, or it died): until its
# lease runs out.
_STOP_RETRY = 0.2
# The longest a retried send waits for the first one's turn to settle in another process.
_RETRY_WAIT = 30.0

# Take the conversation for a turn (KEYS: turn, reply): 1, or 0 while a turn is starting or a reply running there.
_BEGIN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


def _unavailable(live: Live, error: BaseException) -> RedisUnavailable:
    live.failed(error)
    return RedisUnavailable(
        "Redis is unavailable: the conversation cannot be checked against the other gateway "
        "processes now; try again shortly"
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def member(conversation_id: str, reply_id: str) -> str:
    """A reply's place in the replies' sorted set."""
    return f"{conversation_id} {reply_id}"


class RedisRunningReplies:
    """`RunningReplies` on Redis: this process's own replies in memory, everyone's in one lease per conversation."""

    def __init__(self, live: Live, leases: Leases, store: Store) -> None:
        self.live, self.leases, self.store = live, leases, store
        self.by_conversation: dict[str, Generation] = {}
        self._stop: Callable[[Generation], None] = lambda generation: None

    def key(self, conversation_id: str) -> str:
        return self.live.key(conversation_id, "reply")

    def open(self) -> None:
        self.live.on(self.live.inbox, self._message)

    def close(self) -> None:
        self.live.off(self.live.inbox, self._message)

    async def add(self, generation: Generation) -> None:
        self.by_conversation[generation.conversation_id] = generation
        value = f"{generation.id} {self.live.node} {generation.client_id or ''}"
        # Set, not checked: this process holds the conversation's turn, so nobody else may hold the reply key.
        await self.leases.take(
            self.key(generation.conversation_id), value, member(generation.conversation_id, generation.id)
        )

    async def get(self, conversation_id: str) -> Running | None:
        generation = self.by_conversation.get(conversation_id)
        if generation is not None:
            return Running(generation.id, conversation_id, generation.client_id, generation, self.live.node)
        try:
            value = await self.live.client.get(self.key(conversation_id))
        except GONE as error:
            raise _unavailable(self.live, error) from error
        if value is None:
            return None
        reply_id, writer, client_id = _text(value).split(" ", 2)
        return Running(reply_id, conversation_id, client_id or None, None, writer)

    def local(self, conversation_id: str) -> Generation | None:
        return self.by_conversation.get(conversation_id)

    async def remove(self, generation: Generation) -> None:
        if self.by_conversation.get(generation.conversation_id) is not generation:
            return
        del self.by_conversation[generation.conversation_id]
        await asyncio.shield(self.leases.release(self.key(generation.conversation_id)))

    async def let_go(self, generation: Generation) -> None:
        """This process stops writing the reply without ending it (it shuts down and hands it over): no longer
        running here, its conversation's key given up for whoever takes it over."""
        if self.by_conversation.get(generation.conversation_id) is generation:
            del self.by_conversation[generation.conversation_id]
        lease = self.leases.held.pop(self.key(generation.conversation_id), None)
        if lease is not None:
            await self.leases.let_go(lease.key, lease.value, None)

    def here(self) -> list[Generation]:
        return list(self.by_conversation.values())

    def on_stop(self, stop: Callable[[Generation], None]) -> None:
        self._stop = stop

    def _message(self, data: bytes) -> None:
        """A message on this process's inbox: a Stop (or Delete) of one of its replies from another process."""
        if not data.startswith(STOP):
            return  # another module's message
        reply_id = data[len(STOP) :].decode(errors="replace")
        generation = next((g for g in self.by_conversation.values() if g.id == reply_id), None)
        if generation is not None:
            LOG.info("reply stopped from another gateway process", extra={"reply_id": reply_id})
            self._stop(generation)

    async def stop_elsewhere(self, conversation_id: str) -> str | None:
        key = self.key(conversation_id)
        deadline = time.monotonic() + LEASE_MS / 1000 + 1
        try:
            while True:
                value = await self.live.client.get(key)
                if value is None:
                    return await self._stop_orphan(conversation_id)
                reply_id, writer, _ = _text(value).split(" ", 2)
                if writer == self.live.node:
                    return None  # ours, and it ended just now
                if await self.live.publish(self._inbox(writer), STOP + reply_id.encode()) > 0:
                    return reply_id
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(_STOP_RETRY)
        except GONE as error:
            raise _unavailable(self.live, error) from error
        # Its writer held the lease all along but never heard: it is gone (or cut off from Redis; its own final
        # write, if it comes, wins).
        LOG.warning("stopping a reply whose gateway process does not answer", extra={"reply_id": reply_id})
        await self.store.end_unfinished([reply_id], "stopped")
        await self.leases.let_go(key, _text(value), member(conversation_id, reply_id))
        return reply_id

    async def _stop_orphan(self, conversation_id: str) -> str | None:
        """No process holds the conversation's reply: one still unfinished in the database was left by a process
        that died, and the sweep has not ended it yet. Stop ends it now (unless a turn is starting there)."""
        if await self.live.client.exists(self.live.key(conversation_id, "turn")):
            return None
        found = await self.store.unfinished(conversation_id=conversation_id)
        ended = await self.store.end_unfinished([u.id for u in found], "stopped")
        for reply_id in ended:
            await self.live.client.zrem(self.leases.replies, member(conversation_id, reply_id))
        return ended[-1] if ended else None

    def _inbox(self, node: str) -> bytes:
        return self.live.channel("node:" + node)  # as Live.inbox names it in that process


class RedisSendResults:
    """`SendResults` on Redis: a lease per conversation while a turn starts there."""

    def __init__(self, live: Live, leases: Leases) -> None:
        self.live, self.leases = live, leases
        self.starting_now: dict[str, tuple[str | None, Answer, str]] = {}  # this process's: client id, answer, value
        self._begin = live.script(_BEGIN)

    def key(self, conversation_id: str) -> str:
        return self.live.key(conversation_id, "turn")

    def channel(self, conversation_id: str) -> bytes:
        return self.live.channel(conversation_id, "turn")

    async def begin(self, conversation_id: str, client_id: str | None, answer: Answer) -> bool:
        if conversation_id in self.starting_now:
            return False
        value = f"{self.live.node} {secrets.token_hex(6)} {client_id or ''}"
        keys = [self.key(conversation_id), self.live.key(conversation_id, "reply")]
        self.starting_now[conversation_id] = (client_id, answer, value)  # before any await: no local race
        try:
            taken = await self._begin(keys=keys, args=[value, LEASE_MS])
        except GONE as error:
            del self.starting_now[conversation_id]
            raise _unavailable(self.live, error) from error
        if not taken:
            del self.starting_now[conversation_id]
            return False
        await self.leases.hold(keys[0], value)
        return True

    async def answer(self, conversation_id: str, client_id: str) -> TurnResult | None:
        found = self.starting_now.get(conversation_id)
        if found is not None:
            return await asyncio.shield(found[1]) if found[0] == client_id else None
        if await self._starting_elsewhere(conversation_id, client_id):
            await self._settled(conversation_id, client_id)
        return None

    async def end(self, conversation_id: str) -> None:
        self.starting_now.pop(conversation_id, None)
        await asyncio.shield(
            self.leases.release(self.key(conversation_id), channel=self.channel(conversation_id), message=b"ended")
        )

    async def _starting_elsewhere(self, conversation_id: str, client_id: str) -> bool:
        try:
            value = await self.live.client.get(self.key(conversation_id))
        except GONE as error:
            raise _unavailable(self.live, error) from error
        return value is not None and _text(value).split(" ", 2)[2] == client_id

    async def _settled(self, conversation_id: str, client_id: str) -> None:
        """Wait until the send with this client id is no longer starting in another process: it ended there (its
        message on the turn channel), or that process died (its lease ran out; checked every second)."""
        channel, woken = self.channel(conversation_id), asyncio.Event()

        def wake(data: bytes) -> None:
            woken.set()

        self.live.on(channel, wake)
        try:
            await self.live.listening(channel)
            deadline = time.monotonic() + _RETRY_WAIT
            while True:
                woken.clear()  # before the check: a wake after it is not lost
                if not await self._starting_elsewhere(conversation_id, client_id):
                    return
                if time.monotonic() > deadline:
                    return  # the send goes on, and meets the 409 or the history
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=1.0)
        finally:
            self.live.off(channel, wake)
