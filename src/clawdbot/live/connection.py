"""One process's link to the deployment's Redis: the client, key names, its own name, and one pub/sub reader.

Every module of `live/` goes through a `Live`: commands on `client` (redis-py's asyncio client, hiredis parsing
the replies), messages through `on`/`off` (any number of handlers per channel on one pub/sub connection, which the
reader keeps subscribed to exactly the channels some handler wants, again after a reconnect) and `publish`.

Redis going away is not a crash: `error` says why (on /readyz and in the log, once per outage), the reader retries
with a growing pause, and the channels come back when Redis does. Callers that cannot do without Redis raise
`errors.RedisUnavailable` (503) to the user; see docs/scaling.md for what still works meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..common.redisurl import CLUSTER_SCHEMES, SENTINEL_SCHEMES, sentinel_service, tls_settings
from ..errors import RedisUnavailable as Unavailable
from ..logs import LOG

Handler = Callable[[bytes], None]
# What a command raises when Redis cannot be reached or answer: an outage, not a bug. A Redis Cluster none of whose
# nodes answers raises RedisClusterUnreachableError, which is no RedisError.
GONE: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
# Seconds between the reader's pings while no message comes: how soon an outage shows on /readyz.
PING_EVERY = 1.0
# Seconds `listening` waits for a subscription before telling the user Redis is unavailable.
SUBSCRIBE_WAIT = 5.0
# On a Redis Cluster every process subscribes, and every message is published, on one node: the one holding this
# hash tag's slot. A PUBLISH's count of receivers is then everyone's (a node counts only its own subscribers), and
# one sender's messages on a channel arrive in order (over the cluster bus they do only from one node).
HUB = "hub"
_PUBLISH = "return redis.call('PUBLISH', ARGV[1], ARGV[2])"


_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 30,
    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
    "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    "max_connections": 256,
}


def connect(url: str) -> aioredis.Redis:
    """A client for `url`: redis://, rediss:// or unix:// (one Redis); redis+sentinel:// (rediss+sentinel:// with
    TLS) [:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB][?ssl_ca_certs=PATH…] (the primary that Sentinel names for
    SERVICE, found again after a failover); or redis+cluster:// (rediss+cluster:// with TLS)
    [USER:PASSWORD@]HOST:PORT[,HOST:PORT…][?ssl_ca_certs=PATH…], a Redis Cluster reached through any of the nodes
    named (the rest are found from them)."""
    if url.startswith(CLUSTER_SCHEMES):
        return _cluster(url)
    if not url.startswith(SENTINEL_SCHEMES):
        return aioredis.Redis.from_url(url, **_OPTIONS)
    parsed = urlsplit(url)
    password = unquote(parsed.password) if parsed.password else None
    service, db = sentinel_service(parsed)
    tls = tls_settings(parsed)
    kwargs = {k: v for k, v in _OPTIONS.items() if k != "max_connections"}
    # The Sentinels speak TLS when the primary does (a deployment's `tls-port` on both), trusted the same way. Given
    # no sentinel_kwargs, redis-py would take the socket_* options alone; the password is the primary's.
    watchers = {k: v for k, v in kwargs.items() if k.startswith("socket_")} | tls
    sentinel = Sentinel(
        _hosts(parsed.netloc, 26379), sentinel_kwargs=watchers, password=password, db=db, **tls, **kwargs
    )
    primary: aioredis.Redis = sentinel.master_for(service, max_connections=_OPTIONS["max_connections"])
    return primary


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for host in netloc.rsplit("@", 1)[-1].split(","):
        name, _, port = host.rpartition(":")
        hosts.append((name.strip("[]"), int(port or default_port)))
    return hosts


def _cluster(url: str) -> aioredis.Redis:
    parsed = urlsplit(url)  # no database in the path: a cluster has only 0 (settings.py checks)
    nodes = [ClusterNode(host, port) for host, port in _hosts(parsed.netloc, 6379)]
    client = RedisCluster(
        startup_nodes=nodes,
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        **tls_settings(parsed),
        **_OPTIONS,
    )
    # The commands live/ sends are answered alike by one Redis and by a cluster, each command's keys in one slot
    # (their hash tags see to it); the two places where a cluster needs more (a flush of several replies, the
    # pub/sub reader) look at `Live.cluster`.
    return cast(aioredis.Redis, client)


class Live:
    def __init__(self, url: str, prefix: str = "clawdbot") -> None:
        self.url, self.prefix = url, prefix
        self.client: aioredis.Redis = connect(url)
        self.cluster = url.startswith(CLUSTER_SCHEMES)
        self.hub = self.key(HUB, "pubsub")  # a key of the hub's slot, never written
        # This process, as other processes name it (leases, messages addressed to it): unique even if a pid is
        # reused after a crash.
        self.node = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self.error: str | None = "not connected yet"
        self.down_since: float | None = time.time()
        # Times messages may have been missed so far: outages (one that came and went between two looks at `up`
        # still shows here), and reconnects redis-py made by itself (it subscribes again, but what was published
        # meanwhile is lost).
        self.gaps = 0
        self._told = 0  # `gaps` as the `resubscribed` hooks last heard of it
        # Told once the channels are subscribed again after a gap: what was published meanwhile never comes.
        self.resubscribed: list[Callable[[], None]] = []
        self.handlers: defaultdict[bytes, set[Handler]] = defaultdict(set)
        self._pubsub: PubSub | None = None
        self._subscribed: set[bytes] = set()
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._scripts: list[AsyncScript] = []
        self._loading: asyncio.Task[None] | None = None
        self._publish = self.script(_PUBLISH)

    def script(self, text: str) -> AsyncScript:
        """A Lua script to run by its hash. One Redis loads it when a command or pipeline finds it missing; a
        cluster's pipelines cannot, so there it is loaded on every primary when the process starts and again
        whenever a node answers that it lacks one (a node restarted empty, or one added)."""
        script = self.client.register_script(text)
        self._scripts.append(script)
        return script

    async def load_scripts(self) -> None:
        for script in self._scripts:
            script.sha = await self.client.script_load(script.script)  # on a cluster: on every primary

    # ---- names -----------------------------------------------------------------------------------------------------
    def key(self, tag: str, *parts: str) -> str:
        """`prefix:{tag}:parts…`: keys of one tag share a Redis Cluster slot."""
        return ":".join((self.prefix, "{" + tag + "}", *parts))

    def channel(self, tag: str, *parts: str) -> bytes:
        return self.key(tag, "ch", *parts).encode()

    @property
    def inbox(self) -> bytes:
        """The channel of messages addressed to this process alone."""
        return self.channel("node:" + self.node)

    # ---- lifetime --------------------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Start the reader; Redis need not be up yet (/readyz says so until it is)."""
        self.handlers.setdefault(self.inbox, set())  # always one subscription, so the reader has a connection to read
        self._reader = asyncio.create_task(self._read())
        if await self.check() and self.cluster:
            await self._load()

    async def _load(self) -> None:
        try:
            await self.load_scripts()
        except GONE as error:
            self.failed(error)

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self.client.aclose()

    async def check(self) -> bool:
        """Ping; record the outcome. True when Redis answered."""
        try:
            await self.client.ping()
        except GONE as error:
            self.failed(error)
            return False
        self.recovered()
        return True

    def failed(self, error: BaseException) -> None:
        """A command failed for want of Redis: /readyz shows it, the log says it once per outage."""
        if isinstance(error, NoScriptError):
            # Not an outage: a node without our scripts (a cluster's pipelines cannot load them). Load them; the
            # failed round goes again as it would after an outage.
            if self._loading is None or self._loading.done():
                self._loading = asyncio.get_running_loop().create_task(self._load())
            return
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if self.down_since is None or self.error == "not connected yet":
            LOG.warning("redis is unavailable", extra={"reason": reason})
        if self.down_since is None:
            self.down_since = time.time()
            self.gaps += 1
        self.error = reason

    def recovered(self) -> None:
        if self.down_since is not None and self.error != "not connected yet":
            LOG.info("redis is back", extra={"down_s": round(time.time() - self.down_since, 1)})
        self.error, self.down_since = None, None

    @property
    def up(self) -> bool:
        return self.error is None

    def report(self) -> dict[str, object]:
        """/readyz's `redis` entry. The URL's password, if any, is not shown."""
        return {"status": "ok" if self.up else "unavailable", "error": self.error, "node": self.node}

    # ---- messages --------------------------------------------------------------------------------------------------
    def on(self, channel: bytes, handler: Handler) -> None:
        """Call `handler` with every message on `channel` from now on (in order, on the event loop, never
        blocking: it must only hand the message on)."""
        self.handlers[channel].add(handler)
        if channel not in self._subscribed:
            self._changed.set()

    def off(self, channel: bytes, handler: Handler) -> None:
        handlers = self.handlers.get(channel)
        if handlers is not None:
            handlers.discard(handler)
            if not handlers and channel != self.inbox:
                del self.handlers[channel]
                self._changed.set()

    def subscribed(self, channel: bytes) -> bool:
        """Whether messages on `channel` reach this process now."""
        return channel in self._subscribed

    async def listening(self, channel: bytes) -> None:
        """Wait until messages on `channel` reach this process (so nothing published after it is missed)."""
        deadline = time.monotonic() + SUBSCRIBE_WAIT
        while channel not in self._subscribed:
            if time.monotonic() > deadline:
                raise Unavailable("Redis is unavailable: cannot follow live events now, try again shortly")
            self._changed.set()
            await asyncio.sleep(0.002)

    async def publish(self, channel: bytes, data: bytes) -> int:
        """Send to every process listening on `channel`; how many connections got it."""
        try:
            if self.cluster:
                count = int(await self._publish(keys=[self.hub], args=[channel, data]))
            else:
                count = await self.client.publish(channel, data)
        except GONE as error:
            self.failed(error)
            raise Unavailable("Redis is unavailable: the other gateway processes cannot be told") from error
        return count

    async def _read(self) -> None:
        pause = 0.05
        while True:
            try:
                self._pubsub = await self._new_pubsub()
                self._subscribed.clear()
                await self._sync()
                if self._pubsub.connection is not None:
                    self._pubsub.connection.register_connect_callback(self._reconnected)
                self.recovered()
                self._after_gap()
                pause = 0.05
                await self._loop(self._pubsub)
            except asyncio.CancelledError:
                raise
            except GONE as error:
                self.failed(error)
                if self._pubsub is not None:
                    await asyncio.gather(self._pubsub.aclose(), return_exceptions=True)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _new_pubsub(self) -> PubSub:
        if not self.cluster:
            return self.client.pubsub(ignore_subscribe_messages=True)
        cluster = cast(RedisCluster, self.client)
        await cluster.initialize()  # the slots' owners, as the cluster says now (again after a failover)
        hub = cluster.get_node_from_key(self.hub)
        return cast(PubSub, cluster.pubsub(node=hub, ignore_subscribe_messages=True))

    async def _reconnected(self, connection: object) -> None:
        self.gaps += 1
        LOG.info("redis: the pub/sub connection was made again; messages sent meanwhile are lost")
        self._after_gap()  # redis-py's own callback, registered before this one, has subscribed again

    def _after_gap(self) -> None:
        if self.gaps == self._told:
            return
        self._told = self.gaps
        for hook in list(self.resubscribed):
            try:
                hook()
            except Exception:  # noqa: BLE001 - one hook's failure must not keep the others from being told
                LOG.exception("a hook after a pub/sub gap failed")

    async def _loop(self, pubsub: PubSub) -> None:
        quiet_since = time.monotonic()
        while True:
            if self._changed.is_set():
                await self._sync()
            message = await pubsub.get_message(timeout=0.05)
            if message is not None and message["type"] == "message":
                quiet_since = time.monotonic()
                for handler in list(self.handlers.get(message["channel"], ())):
                    handler(message["data"])
            elif time.monotonic() - quiet_since > PING_EVERY:
                await pubsub.ping()
                quiet_since = time.monotonic()
                self.recovered()

    async def _sync(self) -> None:
        """Subscribe to the channels some handler wants and leave the others, in one command each."""
        assert self._pubsub is not None
        self._changed.clear()
        wanted = set(self.handlers)
        new, gone = wanted - self._subscribed, self._subscribed - wanted
        # Only what Redis has confirmed counts as subscribed (the reply logs' flush sends a channel's messages
        # unless this process is the only one subscribed): one being left is no longer, one being joined not yet.
        self._subscribed -= gone
        if new:
            await self._pubsub.subscribe(*new)
        if gone:
            await self._pubsub.unsubscribe(*gone)
        self._subscribed |= new
