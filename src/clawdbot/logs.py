"""Structured logs: one JSON object per line on stderr, written by a background thread.

The event loop only appends to a bounded deque (atomic under the GIL: no lock, no thread wake-up per line);
the writer thread drains it twenty times a second, formats and writes in batches. When stderr cannot keep up,
lines are dropped and counted rather than blocking every stream. Message text and secrets are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

import orjson

LOG = logging.getLogger("clawdbot")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_LIMIT = 10_000


_second: list[tuple[int, str]] = [(-1, "")]  # the last second formatted: most lines share it with the one before


def _stamp(created: float) -> str:
    second = int(created)
    last, text = _second[0]
    if second != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = (second, text)
    return f"{text}.{int(created * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _dumps(entry)


def _dumps(entry: dict[str, Any]) -> str:
    """orjson refuses a str holding a lone surrogate (a header byte that was not UTF-8): escape those instead."""
    try:
        return orjson.dumps(entry, default=str).decode()
    except TypeError:
        return json.dumps(entry, default=str)  # ensure_ascii: a lone surrogate becomes a \\udcxx escape


class LineWriter(threading.Thread):
    """Drains queued log records and access entries to a stream from its own thread."""

    def __init__(self, stream: IO[str], on_drop: Callable[[], None]) -> None:
        super().__init__(name="clawdbot-log-writer", daemon=True)
        self.stream = stream
        self.on_drop = on_drop
        self.pending: deque[logging.LogRecord | dict[str, Any]] = deque()
        self.formatter = JsonFormatter()
        self._stop_event = threading.Event()

    def put(self, item: logging.LogRecord | dict[str, Any]) -> None:
        if len(self.pending) >= _LIMIT:
            self.on_drop()
            return
        self.pending.append(item)

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        lines = []
        while self.pending:
            item = self.pending.popleft()
            try:
                lines.append(_dumps(item) if isinstance(item, dict) else self.formatter.format(item))
            except Exception:  # noqa: BLE001 - a line that cannot be written is dropped and counted, never fatal
                self.on_drop()
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing sensible left to do with logs
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


class _Handler(logging.Handler):
    """Hands records to the writer without logging's per-handler lock."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filter(record):
            self.writer.put(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.put(record)


class AccessLog:
    """One JSON line per request (and per chat reply: `msg` "reply"), built as a dict by the caller and serialised off
    the event loop."""

    def __init__(self, writer: LineWriter | None) -> None:
        self.writer = writer

    def write(self, entry: dict[str, Any], msg: str = "request") -> None:
        if self.writer is not None:
            head = {"time": _stamp(time.time()), "level": "info", "logger": "clawdbot.access", "msg": msg}
            self.writer.put(head | entry)


def setup(level: str, on_drop: Callable[[], None] = lambda: None) -> LineWriter:
    """Route the `clawdbot` and `aiohttp` loggers to stderr through one writer thread; stop() it at exit."""
    writer = LineWriter(sys.stderr, on_drop)
    handler = _Handler(writer)
    for logger in (LOG, logging.getLogger("aiohttp")):
        logger.handlers[:] = [handler]
        logger.propagate = False
    LOG.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    writer.start()
    return writer
