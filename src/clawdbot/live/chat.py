"""The chat's live state on Redis, put together: running replies, starting turns, their leases and the sweep.

`web/app.py` builds one `SharedChat` when the deployment has Redis (--redis-url), hands `running` and `results` to
the chat service in place of the in-memory classes, opens it once the service exists and closes it after the
replies in flight were stored at shutdown.
"""

from __future__ import annotations

from ..store.conversations import Store
from .connection import Live
from .leases import Leases
from .replies import RedisRunningReplies, RedisSendResults
from .sweep import Sweeper


class SharedChat:
    def __init__(self, live: Live, store: Store) -> None:
        self.leases = Leases(live)
        self.running = RedisRunningReplies(live, self.leases, store)
        self.results = RedisSendResults(live, self.leases)
        self.sweeper = Sweeper(live, self.leases, store)

    def open(self) -> None:
        self.leases.open()
        self.running.open()
        self.sweeper.open()

    async def close(self) -> None:
        await self.sweeper.close()
        self.running.close()
        await self.leases.close()
