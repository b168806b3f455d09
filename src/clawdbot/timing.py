"""Where a reply's time went: the gateway's own clocks, split further by the model server's own durations.

Every reply, chat and raw, is timed at the same points (`Clocks`, perf_counter seconds): the request reached the
gateway, it was sent to the backend (after its wait for a slot), the backend's first byte of text came, that text
went out to the client, the backend's last byte came, and the reply was finished. The parts between them add up to
the time to first token and to the total the client saw, less the network between it and the gateway:

    gateway_ms (received -> sent upstream, less the queue)  +  queue_ms
    + model_load_ms + prompt_eval_ms + first_token_ms          (sent upstream -> first byte of text)
    + relay_ms (first byte of text -> the client had it)        = ttft_ms
    + generation_ms (-> the backend's last byte) + finish_ms   = total_ms

Ollama reports how long the model took to load and to read the prompt (load_duration, prompt_eval_duration); those
split the wait for the first token, and `first_token_ms` is the rest of it (the first token itself, and the model
server's own handling). A server that reports neither (OpenAI-compatible ones) has the whole wait as
`first_token_ms` and null for the other two.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

# When the request that started a reply reached the gateway: set where requests and WebSocket commands arrive, read
# where the reply starts (the layers between need not carry it).
RECEIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("clawdbot_received", default=None)

PARTS = (
    "gateway_ms",
    "queue_ms",
    "model_load_ms",
    "prompt_eval_ms",
    "first_token_ms",
    "relay_ms",
    "generation_ms",
    "finish_ms",
)


def received() -> float:
    """When the current request arrived (now, where nothing set it)."""
    at = RECEIVED.get()
    return time.perf_counter() if at is None else at


@dataclass(slots=True)
class Clocks:
    """The points a reply is timed at, perf_counter seconds; 0.0 for one it never reached."""

    received: float
    queued: float = 0.0  # seconds it waited for a slot
    forwarded: float = 0.0  # the request went to the backend
    first_byte: float = 0.0  # the backend's first text arrived
    first_sent: float = 0.0  # that text went out to the client
    last_byte: float = 0.0  # the backend's last byte arrived

    def breakdown(
        self, ended: float, load_ns: int | None = None, prompt_ns: int | None = None
    ) -> dict[str, float | None]:
        """The parts, in milliseconds (to 0.1), with `ttft_ms` and `total_ms`; a part the reply never reached is
        null (a reply that failed before its first token has no first_token_ms, relay_ms or generation_ms)."""
        out: dict[str, float | None] = dict.fromkeys(PARTS)
        forwarded = self.forwarded or ended
        out["gateway_ms"] = _ms(forwarded - self.received - self.queued)
        out["queue_ms"] = _ms(self.queued)
        if self.first_byte:
            wait = max(self.first_byte - forwarded, 0.0)
            load = min(load_ns / 1e9, wait) if load_ns is not None else None
            prompt = min(prompt_ns / 1e9, wait - (load or 0.0)) if prompt_ns is not None else None
            out["model_load_ms"] = None if load is None else _ms(load)
            out["prompt_eval_ms"] = None if prompt is None else _ms(prompt)
            out["first_token_ms"] = _ms(wait - (load or 0.0) - (prompt or 0.0))
        first_sent = self.first_sent or self.first_byte
        if self.first_byte and self.first_sent:
            out["relay_ms"] = _ms(self.first_sent - self.first_byte)
        last = max(self.last_byte, first_sent) if first_sent else self.last_byte
        if first_sent and last:
            out["generation_ms"] = _ms(last - first_sent)
        out["finish_ms"] = _ms(ended - (last or forwarded))
        out["ttft_ms"] = _ms(self.first_sent - self.received) if self.first_sent else None
        out["total_ms"] = _ms(ended - self.received)
        return out


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000, 1)
