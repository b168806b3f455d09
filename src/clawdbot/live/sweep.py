"""The sweep: replies left unfinished by a gateway process that is gone, found and ended by the ones that live.

Alone on its database, a gateway marks every unfinished reply interrupted at startup (its own previous run left
them). Several processes share the database, so an unfinished reply may be another's live one: here a reply is
*orphaned* only when all of these hold:

- its lease's deadline in the replies' set (live/leases.py, in Redis's clock) passed more than `GRACE_MS` ago:
  its writer has not renewed it for `LEASE_MS + GRACE_MS`;
- no process holds its conversation's reply key for it (a writer back from an outage re-asserts that first);
- the database has it unfinished, with no checkpoint for `QUIET_MS` (a writer cut off from Redis but not from the
  database still checkpoints its text every second).

Each sweep claims the overdue members atomically (one process gets each) and hands the orphans to `orphaned`,
which marks them interrupted with their checkpointed text. A takeover (continuing a dead writer's reply) replaces
that one function. A member claimed but not orphaned goes back into the set with a fresh deadline.

Replies that never reached the set (their writer died while Redis was down, or Redis lost its data) are found by
a scan of the database at startup and whenever Redis has lost its data: the scan only gives each unfinished reply
a deadline (a later one, its writer's, wins), so a live writer is never judged by it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from ..logs import LOG
from ..store.conversations import Store
from ..store.records import Unfinished, now_ms
from .connection import GONE, Live
from .leases import LEASE_MS, Leases
from .replies import member

SWEEP_EVERY = 2.0  # seconds
GRACE_MS = 2000  # past a lease's deadline before its reply is looked at
QUIET_MS = LEASE_MS  # without a checkpoint before its reply is orphaned
_CLAIM_AT_ONCE = 500

Orphaned = Callable[[list[Unfinished]], Awaitable[None]]

# A reply a stopping process handed over: claimable at once (its deadline set GRACE_MS in the past) and orphaned
# without waiting for QUIET_MS (its writer checkpointed it and let go: nobody writes it). ARGV: the member, its id.
_HAND_OVER = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms - tonumber(ARGV[3]) - 1, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 3600)
"""

# Claim (remove and return) the members whose deadline passed more than ARGV[1] ms ago, ARGV[2] at most.
_CLAIM = """
local now = redis.call('TIME')
local before = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', before, 'LIMIT', 0, tonumber(ARGV[2]))
for _, one in ipairs(found) do redis.call('ZREM', KEYS[1], one) end
return found
"""


class Sweeper:
    def __init__(self, live: Live, leases: Leases, store: Store, *, orphaned: Orphaned | None = None) -> None:
        self.live, self.leases, self.store = live, leases, store
        self.orphaned: Orphaned = orphaned or self.interrupt  # what becomes of an orphaned reply
        self.scanned = live.key("replies", "scanned")  # absent: Redis has lost its data since the last scan
        self._claim = live.script(_CLAIM)
        self._hand_over = live.script(_HAND_OVER)
        self.handed = live.key("replies", "handed")  # ids of replies handed over, orphaned without a quiet spell
        self._scan = True  # at startup
        self._loop: asyncio.Task[None] | None = None

    def open(self) -> None:
        self._loop = asyncio.get_running_loop().create_task(self._sweeping())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)

    async def interrupt(self, found: list[Unfinished]) -> None:
        """Mark orphaned replies interrupted, with the text of their last checkpoint."""
        ended = await self.store.end_unfinished([reply.id for reply in found], "interrupted")
        if ended:
            LOG.warning(
                "replies left by a gateway process that is gone are marked interrupted", extra={"count": len(ended)}
            )

    async def hand_over(self, conversation_id: str, reply_id: str) -> None:
        """A reply this process stopped writing as it shuts down, for the next sweep anywhere to take over."""
        await self._hand_over(
            keys=[self.leases.replies, self.handed], args=[member(conversation_id, reply_id), reply_id, GRACE_MS]
        )

    async def _sweeping(self) -> None:
        while True:
            try:
                await self.sweep()
            except GONE as error:
                self.live.failed(error)
            except Exception:  # noqa: BLE001 - the database may be away too; the next sweep tries again
                LOG.exception("could not sweep replies")
            await asyncio.sleep(SWEEP_EVERY)

    async def sweep(self) -> None:
        if self._scan or not await self.live.client.exists(self.scanned):
            await self.scan()
        claimed = [m.decode() for m in await self._claim(keys=[self.leases.replies], args=[GRACE_MS, _CLAIM_AT_ONCE])]
        if not claimed:
            return
        try:
            await self._judge(claimed)
        except BaseException:
            with contextlib.suppress(*GONE):  # back in the set, judged again next time
                await self.leases.mark(*claimed, lease_ms=0)
            raise

    async def scan(self) -> None:
        """Give every unfinished reply of the database a deadline in the set (its writer's, if later, stays)."""
        found = await self.store.unfinished()
        for start in range(0, len(found), _CLAIM_AT_ONCE):
            await self.leases.mark(*(member(u.conversation_id, u.id) for u in found[start : start + _CLAIM_AT_ONCE]))
        await self.live.client.set(self.scanned, b"1")
        self._scan = False

    async def _judge(self, claimed: list[str]) -> None:
        conversations: dict[str, str] = {}  # reply id → conversation id
        for one in claimed:
            conversation_id, reply_id = one.split(" ", 1)
            conversations[reply_id] = conversation_id
        async with self.live.client.pipeline(transaction=False) as pipe:
            for conversation_id in conversations.values():
                pipe.get(self.live.key(conversation_id, "reply"))
            held = {value.decode().split(" ", 1)[0] for value in await pipe.execute() if value is not None}
        suspects = [reply_id for reply_id in conversations if reply_id not in held]
        found = await self.store.unfinished(suspects)
        now = now_ms()
        marks = await self.live.client.smismember(self.handed, suspects) if suspects else []
        handed = {reply_id for reply_id, mark in zip(suspects, marks, strict=True) if mark}
        quiet = [reply for reply in found if reply.id in handed or now - reply.active_at > QUIET_MS]
        written = [member(r.conversation_id, r.id) for r in found if r not in quiet]
        if written:
            await self.leases.mark(*written)
        if quiet:
            await self.orphaned(quiet)
        if handed:
            await self.live.client.srem(self.handed, *handed)
