"""An OpenAI-compatible model server (vLLM, llama.cpp's llama-server, SGLang, LM Studio) behind the `Backend`
interface (base.py): Ollama's /api/chat bodies sent as streaming /v1/chat/completions (openai_wire.py), its health
from /v1/models and, on llama.cpp, /props. The session, the passthrough and the naming of failures are http.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from ..errors import BackendError
from ..modelnames import model_key
from ..settings import Settings
from .base import BackendStatus, Delta, Final
from .http import HttpBackend
from .openai_wire import Events, request

_DETAILS_S = 10.0  # for /props and /slots after the server answered


class OpenAIBackend(HttpBackend):
    """A server that speaks OpenAI's API under `url` + /v1 (`url` is given without it). `api_key`, when set, goes
    as `Authorization: Bearer …` with every request, the client's passed-through ones included, and is cut out of
    every message; `name` is what to call the server (its URL when not given)."""

    def __init__(self, settings: Settings, url: str, *, api_key: str | None = None, name: str | None = None) -> None:
        url = url.rstrip("/")
        super().__init__(settings, url, auth={"Authorization": f"Bearer {api_key}"} if api_key else None)
        self.name = name or url

    async def chat(self, body: dict[str, Any]) -> AsyncGenerator[Delta | Final]:
        """Stream one reply as typed events; every failure becomes a BackendError naming its cause."""
        settings = self.settings
        started = False
        data = orjson.dumps(request(body))
        events = Events(self.url, self.redact)
        try:
            async with (
                asyncio.timeout(settings.first_byte_timeout) as deadline,
                self.posted("/v1/chat/completions", data) as response,
            ):
                if response.status != 200:
                    raise self.http_error(response.status, await response.read())
                clock = asyncio.get_running_loop().time
                moved = -1.0
                while not events.done and (chunk := await response.content.readany()):
                    started = True
                    now = clock()
                    if now - moved >= 1.0:  # a new timer per chunk is waste: the deadline moves once a second
                        deadline.reschedule(now + settings.idle_timeout + 1.0)
                        moved = now
                    for delta in events.feed(chunk):
                        yield delta
                if not events.done:  # a last line without its newline
                    for delta in events.feed(b"", end=True):
                        yield delta
        except BackendError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise self.classify(error, started=started) from None
        if events.complete:
            yield events.final()
            return
        raise BackendError(
            f"backend {self.url} ended the reply before it was complete", backend=self.url, kind="incomplete_stream"
        )

    def how_to_fix(self) -> str:
        key = ", and that it takes the API key clawdbot sends" if self.auth else ""
        return (
            f"start the OpenAI-compatible server (vLLM, llama-server, SGLang, LM Studio) where {self.url} points, "
            f"and check that {self.url}/v1/models answers{key}"
        )

    async def probe(self) -> BackendStatus:
        """Ask the server for its models (and, where it says, its version and slots); never raises."""
        status = BackendStatus(checked_at=time.time())
        contexts: dict[str, int] = {}
        try:
            async with asyncio.timeout(min(self.settings.connect_timeout + 5, 15)):
                status.models, contexts = _models(await self._get("/v1/models"))
            status.reachable, status.error = True, None
        except BackendError as error:
            status.error = error.message
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            status.error = self.classify(error, started=False).message
        except ValueError as error:
            status.error = self.redact(f"backend {self.url} answered with something that is not OpenAI's API ({error})")
        if status.reachable:
            with contextlib.suppress(TimeoutError):  # bounded, so a slow answer never stalls the health check
                async with asyncio.timeout(_DETAILS_S):
                    status.version, self.reported_slots = await self._props()
            # An OpenAI server serves what it lists, each model with the context it was started with: that size is
            # the model's own, which the gateway's defaults give way to (as to an Ollama Modelfile's num_ctx).
            status.loaded = {str(m["name"]): contexts.get(str(m["name"]), 0) for m in status.models}
            status.own = {model_key(name): {"num_ctx": size} for name, size in contexts.items()}
        self.status = status
        return status

    async def _props(self) -> tuple[str | None, int | None]:
        """llama.cpp's build and slot count (from /props, or the length of /slots); (None, None) elsewhere."""
        try:
            props = await self._get("/props")
        except (aiohttp.ClientError, OSError, ValueError, BackendError):
            return None, None  # vLLM, SGLang, LM Studio: no /props
        if not isinstance(props, dict):
            return None, None
        version = str(props["build_info"]) if props.get("build_info") else None
        slots = props.get("total_slots")
        if not isinstance(slots, int):
            with contextlib.suppress(aiohttp.ClientError, OSError, ValueError, BackendError):
                listed = await self._get("/slots")
                slots = len(listed) if isinstance(listed, list) and listed else None
        return version, slots if isinstance(slots, int) and slots > 0 else None

    async def _get(self, path: str) -> Any:
        """The JSON a GET answers; an error status is a BackendError in the server's words."""
        async with self.session.get(self.url + path) as response:
            body = await response.read()
            if response.status != 200:
                raise self.http_error(response.status, body)
            return orjson.loads(body)


def _models(listing: object) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """/v1/models as Ollama's model list, and each model's context size where the server says it (llama.cpp's
    meta.n_ctx, vLLM's max_model_len)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise ValueError("GET /v1/models has no data list")
    models, contexts = [], {}
    for entry in data:
        if not isinstance(entry, dict) or not entry.get("id"):
            continue
        name = str(entry["id"])
        models.append({"name": name, "model": name, "details": {}})
        meta = entry.get("meta")
        size = (meta.get("n_ctx") if isinstance(meta, dict) else None) or entry.get("max_model_len")
        if isinstance(size, int) and size > 0:
            contexts[name] = size
    return models, contexts
