"""What the relay reads of a backend's reply: how it is framed, and at its end, the backend's own token counts and
whether it ended properly; and the one frame appended to a stream that stopped short, so the client's library
raises instead of returning a truncated reply as if it were whole."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..backends.base import Upstream
from ..backends.repeats import Repeats
from ..errors import BackendError, openai_error

GENERATION = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"})
# A generation route streams or not as the request's "stream" field says; the reply's type tells which.
_FRAMING = {"application/x-ndjson": "ndjson", "text/event-stream": "sse"}
STREAMS = frozenset(_FRAMING.values())


class Counted(Protocol):
    """Where a reply's counts go (the proxy's Exchange)."""

    model: str | None
    prompt_tokens: int
    completion_tokens: int
    load_ns: int | None  # Ollama's own durations (where the backend reports them): timing.py splits by them
    prompt_ns: int | None


def framing_of(route: str, upstream: Upstream) -> str | None:
    """How a generation reply is framed: a stream ("ndjson", "sse") or one "json" body; None for other replies."""
    if upstream.status != 200 or route not in GENERATION:
        return None
    return _FRAMING.get(upstream.content_type, "json")


def read_counts(ex: Counted, framing: str, tail: bytes) -> bool:
    """Fill the exchange's token counts from the reply's final object; True if the reply ended properly."""
    if framing == "json":
        return _read_whole(ex, tail)
    if framing == "sse":
        events = tail.rstrip(b"\n").split(b"\n\n")
        if not events or events[-1].strip() != b"data: [DONE]":
            return False
        for event in reversed(events[:-1]):
            if b'"usage"' in event:
                final = _loads(event.removeprefix(b"data: "))
                usage = final.get("usage") or {}
                ex.model = str(final.get("model") or "") or None
                ex.prompt_tokens, ex.completion_tokens = (
                    usage.get("prompt_tokens", 0),
                    usage.get("completion_tokens", 0),
                )
                break
        return True
    last = tail.rstrip().rsplit(b"\n", 1)[-1]
    if b'"done":true' not in last:
        return False
    final = _loads(last)
    ex.model = str(final.get("model") or "") or None
    ex.prompt_tokens = int(final.get("prompt_eval_count") or 0)
    ex.completion_tokens = int(final.get("eval_count") or 0)
    _durations(ex, final)
    return True


def _read_whole(ex: Counted, body: bytes) -> bool:
    """A non-streamed reply: Ollama's counts, or OpenAI's usage object."""
    reply = _loads(body)
    usage = reply.get("usage") or {}
    ex.model = str(reply.get("model") or "") or None
    ex.prompt_tokens = int(reply.get("prompt_eval_count") or usage.get("prompt_tokens") or 0)
    ex.completion_tokens = int(reply.get("eval_count") or usage.get("completion_tokens") or 0)
    _durations(ex, reply)
    return bool(reply)


def _durations(ex: Counted, final: dict[str, Any]) -> None:
    """Ollama's load and prompt-reading durations (nanoseconds), where the reply has them as numbers."""
    load, prompt = final.get("load_duration"), final.get("prompt_eval_duration")
    if isinstance(load, int) and not isinstance(load, bool):
        ex.load_ns = load
    if isinstance(prompt, int) and not isinstance(prompt, bool):
        ex.prompt_ns = prompt


def _loads(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def repeated(framing: str, tail: bytes) -> bool:
    """Whether a stream that ended short ended on Ollama's repeat guard (read from its last lines only)."""
    repeats = Repeats()
    separator = b"\n\n" if framing == "sse" else b"\n"
    for frame in tail.rstrip().split(separator)[-(Repeats.LIMIT + 1) :]:
        chunk = _loads(frame.strip().removeprefix(b"data: "))
        message = chunk.get("message") or (chunk.get("choices") or [{}])[0].get("delta") or {}
        if not isinstance(message, dict):
            return False
        text = message.get("content") or message.get("thinking") or message.get("reasoning") or ""
        repeats.saw(str(text or chunk.get("response") or chunk.get("thinking") or ""))
    return repeats.hit


def error_frame(framing: str, message: str) -> bytes:
    if framing == "sse":
        error = openai_error(message, status=BackendError.status, code=BackendError.code)
        return b"data: " + orjson.dumps(error) + b"\n\n"
    return orjson.dumps({"error": message}) + b"\n"
