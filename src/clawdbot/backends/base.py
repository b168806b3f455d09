"""What the gateway needs of a model server: the `Backend` interface and the typed items of its reply stream.

Everything above this package (the relay, the chat service, titles, the web app) holds a `Backend` and nothing
more specific; only the app's startup names an implementation (ollama.py for Ollama, openai.py for an
OpenAI-compatible server). Failures surface as the BackendError kinds of errors.py, named by the implementation's
`classify()`, so a caller never sees a client library's exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from ..errors import BackendError
from . import h1

# A passed-through response: the lean client's for plain-http backends (h1.py), aiohttp's for the rest; the relay
# reads what both have.
Upstream = aiohttp.ClientResponse | h1.Response


@dataclass(slots=True)
class BackendStatus:
    """The last health check: whether the backend answered, and the models it lists."""

    reachable: bool = False
    version: str | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = "not checked yet"
    checked_at: float = 0.0
    loaded: dict[str, int] = field(default_factory=dict)  # models in memory and their context size (/api/ps)
    # The same models' size in memory and how much of it is in GPU memory (/api/ps size, size_vram), in bytes.
    resident: dict[str, dict[str, int]] = field(default_factory=dict)
    # Each model's own num_ctx and num_predict, from its Modelfile's PARAMETERs (/api/show), by limits.model_key():
    # the gateway's defaults give way to them.
    own: dict[str, dict[str, int]] = field(default_factory=dict)

    def model_names(self) -> list[str]:
        return [str(m.get("name")) for m in self.models]


@dataclass(slots=True)
class Delta:
    """A piece of the reply: thinking or answer text, from `lines` of the backend's stream (about a token each)."""

    thinking: str = ""
    content: str = ""
    lines: int = 1


def join(deltas: list[Delta], delta: Delta) -> None:
    """Add a delta to those of one read, merged into the last where the order allows (thinking that follows answer
    text starts a new one): when the gateway is busy, it handles fewer, larger pieces."""
    last = deltas[-1] if deltas else None
    if last is None or (delta.thinking and last.content):
        deltas.append(delta)
    else:
        last.thinking += delta.thinking
        last.content += delta.content
        last.lines += delta.lines


@dataclass(slots=True)
class Final:
    """The backend's own account of the finished reply: why it ended, its token counts and durations."""

    done_reason: str
    prompt_tokens: int
    output_tokens: int
    total_ns: int
    load_ns: int
    prompt_eval_ns: int
    eval_ns: int


class Backend(Protocol):
    """A model server. `status` is the last health check, its `models` the model listing the page and the limits
    read; `probe()` refreshes it and `watch()` keeps refreshing it."""

    url: str
    simulated: bool  # a stand-in (--demo's simulator), not a real model server
    status: BackendStatus
    # How many requests the server says it runs at once (llama.cpp's /props total_slots), read by probe(); None
    # where it does not say (Ollama, vLLM): then the gateway's own setting is all there is to go by.
    reported_slots: int | None

    def chat(self, body: dict[str, Any]) -> AsyncGenerator[Delta | Final]:
        """Stream one chat reply (Ollama's /api/chat body) as Deltas and, once it ended properly, one Final; every
        failure, a reply that stops short included, is raised as a BackendError. Closing the generator closes the
        request, which frees the backend's slot."""
        ...

    async def send(self, method: str, target: str, body: bytes, headers: list[tuple[str, str]]) -> Upstream:
        """Pass a request through unchanged (`target`: path and query, as the client sent them) and return the
        response once its headers arrived, its body unread: the relay reads it as it comes. A failure to get that
        far is a BackendError. How long it may wait is the caller's to bound (the relay's watchdog does)."""
        ...

    def classify(self, error: BaseException, *, started: bool) -> BackendError:
        """Name a failure reading a response; `started` is whether its bytes had begun to arrive (a TimeoutError
        after that is the backend falling silent mid-reply)."""
        ...

    async def probe(self) -> BackendStatus:
        """Check the backend now and keep the result as `status`; never raises."""
        ...

    async def residency(self, max_age: float) -> dict[str, dict[str, int]]:
        """`status.resident`, asked of the server again first when the last answer is older than `max_age` seconds
        (the health check asks only every --health-interval; the live view wants what is loaded now); never
        raises."""
        ...

    async def watch(self, on_change: Callable[[BackendStatus], object] | None = None) -> None:
        """Probe forever, telling `on_change` when the backend comes or goes."""
        ...

    def how_to_fix(self) -> str:
        """What the person who runs clawdbot can do about a backend that does not answer."""
        ...

    async def close(self) -> None: ...
