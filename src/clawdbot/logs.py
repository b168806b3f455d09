"""Structured logs: one JSON object per line on stderr, written by a background thread.

The event loop only puts records on a bounded queue; when stderr cannot keep up, lines are dropped and
counted rather than blocking every stream. Message text and secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

ACCESS = logging.getLogger("clawdbot.access")
LOG = logging.getLogger("clawdbot")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    def __init__(self, q: queue.Queue[logging.LogRecord], on_drop: Callable[[], None]) -> None:
        super().__init__(q)
        self.on_drop = on_drop

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.on_drop()


def setup(level: str, on_drop: Callable[[], None] = lambda: None) -> logging.handlers.QueueListener:
    """Route the `clawdbot` loggers through a bounded queue to stderr; returns the listener to stop at exit."""
    q: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10_000)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(q, stream, respect_handler_level=False)
    handler = _DroppingQueueHandler(q, on_drop)
    for logger in (LOG, logging.getLogger("aiohttp")):
        logger.handlers[:] = [handler]
        logger.propagate = False
    LOG.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    listener.start()
    return listener
