"""Helpers for the scale-out tests: several gateway processes sharing one real PostgreSQL database and one real
Redis (127.0.0.1:6379), each deployment under a key prefix of its own so tests never see each other's keys."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import pytest
import redis

from chat_support import postgres_database
from conftest import Server, start_gateway

REDIS_URL = os.environ.get("CLAWDBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_or_skip() -> redis.Redis:
    """A client of the test Redis; skipped where there is none (CI has one, so it fails there instead)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {REDIS_URL}: {error}")
    return client


@contextlib.contextmanager
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix, and its keys deleted afterwards."""
    client = redis_or_skip()
    prefix = f"clawdbot-test-{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


@contextlib.contextmanager
def deployment() -> Iterator[tuple[str, str]]:
    """(database URL, Redis prefix) of a fresh deployment: a new PostgreSQL database and a new key prefix."""
    with postgres_database() as database, redis_prefix() as prefix:
        yield database, prefix


def start_replica(sim_url: str, database: str, prefix: str, *args: str) -> Server:
    """One gateway process of a deployment: the shared database and Redis, its own port."""
    return start_gateway(sim_url, "--database-url", database, "--redis-url", REDIS_URL, "--redis-prefix", prefix, *args)


def start_replicas(count: int, sim_url: str, database: str, prefix: str, *args: str) -> list[Server]:
    return [start_replica(sim_url, database, prefix, *args) for _ in range(count)]


def keys(prefix: str) -> list[str]:
    client = redis_or_skip()
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()
