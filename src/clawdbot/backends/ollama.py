"""Ollama behind the `Backend` interface (base.py): its stream and its health; the session, the passthrough and
how failures are named are http.py's, shared with the other kinds of server.
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
from .repeats import Repeats

_SHOW_PER_CHECK = 20  # models whose parameters one health check reads; a long list is read over a few checks
_DETAILS_S = 10.0  # for /api/ps and /api/show after the backend answered
_RESIDENCY_S = 1.5  # for the live view's own /api/ps: it asks again every 2 s


def _digest(model: dict[str, Any]) -> str:
    return str(model.get("digest") or model.get("name"))


_OWN = ("num_ctx", "num_predict")


def _parameters(text: object) -> dict[str, int]:
    """num_ctx and num_predict from /api/show's `parameters` ("num_ctx    32768" lines); a value <= 0 is no limit."""
    found = {}
    for line in str(text or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key in _OWN:
            try:
                number = int(value.strip())
            except ValueError:
                continue
            if number > 0:
                found[key] = number
    return found


class OllamaBackend(HttpBackend):
    """An Ollama server (or --demo's simulator of one): the `Backend` of base.py. Ollama does not say how many
    requests it runs at once, so `reported_slots` stays None."""

    def __init__(self, settings: Settings, url: str, *, simulated: bool = False) -> None:
        super().__init__(settings, url)
        self.simulated = simulated
        self._shown: dict[str, dict[str, int]] = {}  # a model's own parameters, by its digest: asked once
        self._asked_ps = 0.0  # when /api/ps was last asked (monotonic)

    async def chat(self, body: dict[str, Any]) -> AsyncGenerator[Delta | Final]:
        """Stream one /api/chat reply as typed events; every failure becomes a BackendError naming its cause."""
        settings = self.settings
        started = False
        request = orjson.dumps(body)
        try:
            async with (
                asyncio.timeout(settings.first_byte_timeout) as deadline,
                self.posted("/api/chat", request) as response,
            ):
                if response.status != 200:
                    raise self.http_error(response.status, await response.read())
                pending = b""
                repeats = Repeats()
                clock = asyncio.get_running_loop().time
                moved = -1.0
                while data := await response.content.readany():
                    started = True
                    now = clock()
                    if now - moved >= 1.0:  # a new timer per chunk is waste: the deadline moves once a second
                        deadline.reschedule(now + settings.idle_timeout + 1.0)
                        moved = now
                    *lines, pending = (pending + data).split(b"\n")
                    if not lines:
                        continue
                    deltas, final = _read(self.url, _parsed(self.url, lines), repeats)
                    for delta in deltas:
                        yield delta
                    if final is not None:
                        yield final
                        return
                if pending.strip():
                    event = _event(self.url, _json(self.url, pending))
                    yield event
                    if isinstance(event, Final):
                        return
        except BackendError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise self.classify(error, started=started) from None
        if repeats.hit:
            raise BackendError(
                f"backend {self.url} stopped the reply: the model repeated one token 31 times in a row",
                backend=self.url,
                kind="repeat_limit",
            )
        raise BackendError(
            f"backend {self.url} ended the reply before it was complete", backend=self.url, kind="incomplete_stream"
        )

    def how_to_fix(self) -> str:
        return (
            f"start Ollama where {self.url} points (ollama serve), or point --ollama-url at a running one; "
            "to try clawdbot without a model server, restart it with --demo"
        )

    async def probe(self) -> BackendStatus:
        """Ask the backend for its version and models; never raises."""
        status = BackendStatus(checked_at=time.time())
        try:
            async with asyncio.timeout(min(self.settings.connect_timeout + 5, 15)):
                status.version = str((await self._get_json("/api/version")).get("version"))
                status.models = list((await self._get_json("/api/tags")).get("models") or [])
            status.reachable, status.error = True, None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            status.error = (
                self.classify(error, started=False).message
                if not isinstance(error, ValueError)
                else f"backend {self.url} answered with something that is not Ollama's API ({error})"
            )
        if status.reachable:  # what is loaded, and new models' parameters: bounded, so a slow answer never stalls
            with contextlib.suppress(TimeoutError):  # the health check (what was not read is read next time)
                async with asyncio.timeout(_DETAILS_S):
                    status.loaded, status.resident = await self._loaded()
                    await self._show_new(status.models)
            status.own = {model_key(str(m.get("name"))): self._shown.get(_digest(m), {}) for m in status.models}
        self.status = status
        return status

    async def residency(self, max_age: float) -> dict[str, dict[str, int]]:
        status = self.status
        if status.reachable and time.monotonic() - self._asked_ps >= max_age:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_RESIDENCY_S):
                    status.loaded, status.resident = await self._loaded()
        return status.resident

    async def _loaded(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The context size each loaded model runs with (none where the backend does not say: older Ollama), and
        each one's size in memory and in GPU memory."""
        self._asked_ps = time.monotonic()  # before the await: callers meanwhile take the last answer
        try:
            running = (await self._get_json("/api/ps")).get("models") or []
        except (aiohttp.ClientError, OSError, ValueError):
            return {}, {}
        listed = [m for m in running if isinstance(m, dict)]
        contexts = {str(m.get("name")): int(m["context_length"]) for m in listed if _whole(m.get("context_length"))}
        sizes = {
            str(m.get("name")): {"size": int(m["size"]), "size_vram": int(m["size_vram"])}
            for m in listed
            if _whole(m.get("size")) and _whole(m.get("size_vram"))
        }
        return contexts, sizes

    async def _show_new(self, models: list[dict[str, Any]]) -> None:
        """The num_ctx and num_predict PARAMETERs of models not seen before, asked of /api/show once per model
        version (digest), a few per check."""
        new = [model for model in models if _digest(model) not in self._shown][:_SHOW_PER_CHECK]
        for model in new:
            try:
                shown = await self._post_json("/api/show", {"model": str(model.get("name"))})
            except (aiohttp.ClientError, OSError, ValueError):
                continue  # asked again at the next check
            self._shown[_digest(model)] = _parameters(shown.get("parameters"))

    async def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.url + path, data=orjson.dumps(body)) as response:
            data = orjson.loads(await response.read())
            if response.status != 200 or not isinstance(data, dict):
                raise ValueError(f"POST {path} answered {response.status}")
            return data


def _parsed(url: str, lines: list[bytes]) -> list[Any]:
    """One read's lines as JSON values, in one orjson call for them all: a call per line cost more than the rest of
    the line's handling. A read that does not come out as one value per line (an empty line, one that is not
    JSON) is read again line by line, which names the bad line. (Lines that are JSON only together, in as many
    values as lines, pass: nothing a backend could not have sent as proper lines.)"""
    try:
        values = orjson.loads(b"[" + b",".join(lines) + b"]")
    except orjson.JSONDecodeError:
        values = None
    if isinstance(values, list) and len(values) == len(lines):
        return values
    return [_json(url, line) for line in lines if line.strip()]


def _json(url: str, line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BackendError(f"backend {url} sent a line that is not JSON", backend=url, kind="malformed") from None


def _read(url: str, chunks: list[Any], repeats: Repeats) -> tuple[list[Delta], Final | None]:
    """The deltas of one read's lines, merged as base.join merges them (without a Delta per line: this runs for
    every token), and the final line if it came; nothing after it counts."""
    deltas: list[Delta] = []
    last: Delta | None = None
    for chunk in chunks:
        message = chunk.get("message") if type(chunk) is dict else None
        if type(message) is dict and not chunk.get("done") and "error" not in chunk:  # a token's line
            thinking, content = str(message.get("thinking") or ""), str(message.get("content") or "")
        else:
            event = _event(url, chunk)
            if isinstance(event, Final):
                return deltas, event
            thinking, content = event.thinking, event.content
        repeats.saw(content or thinking)
        if last is None or (thinking and last.content):
            last = Delta(thinking, content)
            deltas.append(last)
        else:
            last.thinking += thinking
            last.content += content
            last.lines += 1
    return deltas, None


def _event(url: str, chunk: Any) -> Delta | Final:
    if not isinstance(chunk, dict):
        raise BackendError(f"backend {url} sent JSON that is not an object", backend=url, kind="malformed")
    if "error" in chunk:
        raise BackendError(f"the model failed: {chunk['error']}", backend=url, kind="error_line")
    if chunk.get("done"):
        return Final(
            done_reason=str(chunk.get("done_reason") or "stop"),
            prompt_tokens=int(chunk.get("prompt_eval_count") or 0),
            output_tokens=int(chunk.get("eval_count") or 0),
            total_ns=int(chunk.get("total_duration") or 0),
            load_ns=int(chunk.get("load_duration") or 0),
            prompt_eval_ns=int(chunk.get("prompt_eval_duration") or 0),
            eval_ns=int(chunk.get("eval_duration") or 0),
        )
    message = chunk.get("message") or {}
    return Delta(thinking=str(message.get("thinking") or ""), content=str(message.get("content") or ""))


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
