"""The chat's live state on Redis, put together: running replies, starting turns, their leases and the sweep.

`web/app.py` builds one `SharedChat` when the deployment has Redis (--redis-url), hands `running` and `results` to
the chat service in place of the in-memory classes, opens it once the service exists and closes it after the
replies in flight were stored at shutdown.
"""

from __future__ import annotations

from ..chat.generation import Generation
from ..chat.service import Chat
from ..chat.takeover import take_over
from ..logs import LOG
from ..store.conversations import Store
from ..store.records import Unfinished
from .connection import GONE, Live
from .eventlog import RedisLog
from .leases import Leases
from .replies import RedisRunningReplies, RedisSendResults
from .sweep import Sweeper


class SharedChat:
    def __init__(self, live: Live, store: Store) -> None:
        self.leases = Leases(live)
        self.running = RedisRunningReplies(live, self.leases, store)
        self.results = RedisSendResults(live, self.leases)
        self.sweeper = Sweeper(live, self.leases, store)

    def take_over_orphans(self, chat: Chat, log: RedisLog) -> None:
        """Orphaned replies go on in this process from their last event (chat/takeover.py) instead of ending as
        interrupted; those that cannot (Redis lost their log, the queue is full) are still interrupted."""
        interrupt = self.sweeper.interrupt

        async def orphaned(found: list[Unfinished]) -> None:
            left = []
            for reply in found:
                try:
                    state = await log.state(reply.id)
                    taken = state is not None and not state["finished"]
                    if not (taken and await take_over(chat, reply.id, reply.conversation_id, state or {})):
                        left.append(reply)
                except Exception:  # noqa: BLE001 - a reply that cannot be taken over is still ended, with its text
                    LOG.exception("taking over a reply failed", extra={"reply_id": reply.id})
                    left.append(reply)
            if left:
                await interrupt(left)

        self.sweeper.orphaned = orphaned

    async def hand_over(self, generations: list[Generation]) -> None:
        """Replies this process stopped writing as it shuts down (a rolling restart): for a process that lives on
        to take over at its next sweep, from their last event. If Redis cannot be told, their leases run out and
        the sweep finds them a few seconds later all the same."""
        for generation in generations:
            try:
                await self.running.let_go(generation)
                await self.sweeper.hand_over(generation.conversation_id, generation.id)
            except GONE as error:
                self.sweeper.live.failed(error)
        if generations:
            LOG.info("replies handed over to the processes that live on", extra={"count": len(generations)})

    def open(self) -> None:
        self.leases.open()
        self.running.open()
        self.sweeper.open()

    async def close(self) -> None:
        await self.sweeper.close()
        self.running.close()
        await self.leases.close()
