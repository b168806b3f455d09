"""JSON exactly as Go's encoding/json writes it, which is what Ollama sends.

Go keeps struct field order (our dicts keep insertion order), writes compact output, and escapes
`<`, `>`, `&`, U+2028 and U+2029 inside strings. orjson already matches Go for everything else
(control characters as \\b \\f \\n \\r \\t or \\u00XX, raw UTF-8), and those five characters can only
occur inside strings, so replacing them in the encoded bytes is safe.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import orjson

_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def escape_html(encoded: bytes) -> bytes:
    for raw, escaped in _ESCAPES:
        if raw in encoded:
            encoded = encoded.replace(raw, escaped)
    return encoded


def dumps(value: Any) -> bytes:
    """Go's json.Marshal: no trailing newline (what gin's c.JSON writes)."""
    return escape_html(orjson.dumps(value))


def encode_line(value: Any) -> bytes:
    """Go's json.NewEncoder(w).Encode: the same bytes plus a newline (NDJSON lines, /v1 bodies)."""
    return escape_html(orjson.dumps(value)) + b"\n"


def encode_string(text: str) -> bytes:
    """One JSON string literal, quotes included, for splicing into a prebuilt line."""
    return escape_html(orjson.dumps(text))


_second: tuple[int, str] = (-1, "")


def rfc3339nano(ns: int | None = None) -> str:
    """Go's time.Now().UTC().Format(time.RFC3339Nano): trailing zeros trimmed, no fraction when zero."""
    if ns is None:
        ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    global _second
    if seconds != _second[0]:  # one strftime a second, not one per token
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    base = _second[1]
    if frac == 0:
        return base + "Z"
    return f"{base}.{frac:09d}".rstrip("0") + "Z"


def local_rfc3339nano(moment: datetime) -> str:
    """Server-local time with its offset, as Ollama writes `modified_at` and `expires_at`."""
    local = moment.astimezone()
    offset = local.utcoffset() or timedelta(0)
    base = local.strftime("%Y-%m-%dT%H:%M:%S")
    micro = local.microsecond
    frac = f".{micro:06d}".rstrip("0") if micro else ""
    frac = "" if frac == "." else frac
    if offset == timedelta(0):
        return f"{base}{frac}Z"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{base}{frac}{sign}{minutes // 60:02d}:{minutes % 60:02d}"
