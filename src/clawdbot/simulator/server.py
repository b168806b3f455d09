"""`clawdbot simulate`: an HTTP server that answers like `ollama serve` with qwen3:32b pulled.

Shape from aiohttp's fake-server example: `Simulator(settings)`, `await start()` returns the real port,
`await stop()`. The routes and bytes follow docs/ollama-protocol.md; `/_sim/*` is ours, for tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from . import gojson
from .catalog import CATALOG, ModelInfo, normalize_name
from .engine import BatchedRunner, FlatRunner, QueueFull, Runner
from .faults import QUEUE_FULL, RUNNER_STOPPED, Fault, ScriptBook, ScriptEntry
from .guard import add_cors_headers, make_guard
from .profiles import PROFILES
from .replies import reply_seed
from .request import (
    GenRequest,
    OllamaError,
    check_format,
    check_options,
    load_body,
    parse_chat,
    parse_generate,
    parse_openai_chat,
)
from .settings import SimulatorSettings
from .stream import Generation, sequence_for
from .wire import JSON, NDJSON, ChatEmitter, GenerateEmitter, OpenAIEmitter, openai_error, openai_error_body


class Simulator:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.profile = PROFILES[settings.profile]
        self.models: dict[str, ModelInfo] = {}
        for name in settings.models:
            key = normalize_name(name)
            self.models[key] = CATALOG.get(key) or _synthesized(key)
        self.runners: dict[str, Runner] = {}
        self.script = ScriptBook(fault_rate=settings.fault_rate, fault_kinds=tuple(settings.faults), seed=settings.seed)
        self.samples = random.Random(f"replies\x00{settings.seed}")  # a reproducible run of unseeded replies
        self.requests_total = 0
        self.app = self._make_app()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.transcripts: OrderedDict[str, bytearray] = OrderedDict()
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        self.port = await self._listen(self.settings.port)
        return self.port

    async def _listen(self, port: int) -> int:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.settings.host, port, backlog=4096, reuse_address=True)
        await self._site.start()
        return int(self._runner.addresses[-1][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def refuse_for(self, seconds: float) -> None:
        """Stop listening, so connections are refused, then listen again on the same port."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
            await asyncio.sleep(seconds)
            await self._listen(self.port)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    # ---- application ---------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        loopback = self.settings.host in ("127.0.0.1", "localhost", "::1")
        app = web.Application(middlewares=[make_guard(loopback), _go_errors], client_max_size=256 * 1024 * 1024)
        app.on_response_prepare.append(_strip_server_header)
        app.on_response_prepare.append(add_cors_headers)
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/api/version", self.version)
        r.add_get("/api/tags", self.tags)
        r.add_post("/api/show", self.show)
        r.add_get("/api/ps", self.ps, allow_head=False)
        r.add_post("/api/chat", self.chat)
        r.add_post("/api/generate", self.generate)
        r.add_post("/api/pull", self.pull)
        r.add_post("/v1/chat/completions", self.openai_chat)
        r.add_get("/v1/models", self.openai_models, allow_head=False)
        r.add_get("/v1/models/{model:.+}", self.openai_model, allow_head=False)
        r.add_get("/_sim/state", self.sim_state, allow_head=False)
        r.add_post("/_sim/script", self.sim_script)
        r.add_delete("/_sim/script", self.sim_clear)
        r.add_get("/_sim/transcript/{request_id}", self.sim_transcript, allow_head=False)
        return app

    def runner(self, info: ModelInfo) -> Runner:
        runner = self.runners.get(info.name)
        if runner is None:
            s = self.settings
            common: dict[str, Any] = {
                "speed": s.speed,
                "num_parallel": s.num_parallel,
                "max_queue": s.max_queue,
                "default_keep_alive": s.keep_alive_seconds,
            }
            if s.tokens_per_second:
                runner = FlatRunner(self.profile, tokens_per_second=s.tokens_per_second, **common)
            else:
                runner = BatchedRunner(self.profile, **common)
            self.runners[info.name] = runner
        return runner

    async def preload(self, num_ctx: int | None = None) -> None:
        """Load every model now, as `ollama run` does before the first prompt (with the num_ctx chats will use)."""
        num_ctx = num_ctx or self.settings.context_length or self.profile.context_length
        for info in self.models.values():
            await self.runner(info).ensure_loaded(num_ctx)

    def lookup(self, name: str) -> ModelInfo:
        info = self.models.get(normalize_name(name))
        if info is None:
            raise OllamaError(404, f"model '{name}' not found")
        return info

    # ---- simple endpoints ----------------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        return web.Response(body=b"Ollama is running", content_type="text/plain", charset="utf-8")

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": self.settings.ollama_version})

    async def tags(self, request: web.Request) -> web.Response:
        return _json({"models": [info.tag_entry() for info in self.models.values()]})

    async def show(self, request: web.Request) -> web.Response:
        data = load_body(await request.read(), "ShowRequest")
        name = data.get("model") or data.get("name") or ""
        if not name:
            raise OllamaError(400, "model is required")
        return _json(self.lookup(str(name)).show())

    async def ps(self, request: web.Request) -> web.Response:
        loaded = []
        for name, runner in self.runners.items():
            if runner.loaded_ctx is not None:
                expires = runner.expires_at_wall
                if runner.active or runner.waiting:  # busy: the clock starts when the last request ends
                    keep = self.settings.keep_alive_seconds
                    expires = None if keep < 0 else time.time() + keep
                expiry = datetime.fromtimestamp(expires) if expires else None  # None: loaded forever
                loaded.append((expires or float("inf"), self.models[name].ps_entry(expiry, runner.loaded_ctx)))
        loaded.sort(key=lambda pair: pair[0], reverse=True)
        return _json({"models": [entry for _, entry in loaded]})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        data = load_body(await request.read(), "PullRequest")
        requested = str(data.get("model") or data.get("name") or "")
        if not requested.strip():
            raise OllamaError(400, "invalid model name")
        name = normalize_name(requested)
        info = CATALOG.get(name)
        stream = data.get("stream") is not False
        lines: list[dict[str, object]] = [{"status": "pulling manifest"}]
        if info is None:
            lines.append({"error": "pull model manifest: file does not exist"})
        else:
            have = name in self.models
            lines.append(
                {
                    "status": f"pulling {info.digest[:12]}",
                    "digest": f"sha256:{info.digest}",
                    "total": info.size,
                    "completed": info.size if have else 0,
                }
            )
            if not have:
                lines += [
                    {
                        "status": f"pulling {info.digest[:12]}",
                        "digest": f"sha256:{info.digest}",
                        "total": info.size,
                        "completed": info.size * k // 4,
                    }
                    for k in (1, 2, 3, 4)
                ]
            lines += [
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]
            self.models[name] = info
        clean = [{k: v for k, v in line.items() if v != 0} for line in lines]  # omitempty
        if not stream:  # waitForStream: Content-Type preset to application/json, then gin's c.JSON (no newline)
            status = 500 if "error" in clean[-1] else 200
            return web.Response(status=status, body=gojson.dumps(clean[-1]), content_type=JSON)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        for line in clean:
            await response.write(gojson.encode_line(line))
            await asyncio.sleep(self.profile.load_seconds and 0.06 / self.settings.speed)
        await response.write_eof()
        return response

    async def openai_models(self, request: web.Request) -> web.Response:
        data = [_openai_model(info) for info in self.models.values()] or None
        return web.Response(body=gojson.encode_line({"object": "list", "data": data}), content_type=JSON)

    async def openai_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            info = self.lookup(name)
        except OllamaError as error:
            return web.Response(status=404, body=openai_error(404, error.message), content_type=JSON)
        return web.Response(body=gojson.encode_line({**_openai_model(info), "id": name}), content_type=JSON)

    # ---- generation --------------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        req = parse_chat(await request.read())
        return await self._generate(request, req, ChatEmitter(req.model))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        req = parse_generate(await request.read())
        return await self._generate(request, req, GenerateEmitter(req.model))

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        try:
            req = parse_openai_chat(await request.read())
        except OllamaError as error:  # the middleware's own refusal: gin's c.AbortWithStatusJSON
            return _json(openai_error_body(error.status, error.message), error.status)
        try:
            if not req.model:
                raise OllamaError(400, "model is required")
            emitter = OpenAIEmitter(
                req.model, legacy=self.settings.openai_format == "legacy", include_usage=req.include_usage
            )
            return await self._generate(request, req, emitter)
        except OllamaError as error:
            return web.Response(status=error.status, body=openai_error(error.status, error.message), content_type=JSON)

    async def _generate(
        self, request: web.Request, req: GenRequest, emitter: ChatEmitter | OpenAIEmitter
    ) -> web.StreamResponse:
        started = time.monotonic()
        self.requests_total += 1
        info = self.lookup(req.model)
        if req.think and not info.thinking:
            raise OllamaError(400, f'"{req.model}" does not support thinking')
        check_options(req.options)
        plan = self.script.take(req.prompt_text)
        if plan.fault is not None:
            await self._fault_before_stream(request, req, plan.fault)
        runner = self.runner(info)
        num_ctx = req.option_int("num_ctx", self.settings.context_length or self.profile.context_length)
        if not req.messages and req.keep_alive == 0.0:
            runner.expire_now()
            return self._load_only(req, "unload")
        try:
            await runner.ensure_loaded(num_ctx)
        except QueueFull:
            raise OllamaError(503, QUEUE_FULL) from None
        if not req.messages:
            runner.touch(req.keep_alive)
            return self._load_only(req, "load")
        check_format(req.format, streaming=req.stream)  # the runner's check, once the model is loaded
        think = info.thinking if req.think is None else req.think
        seed = reply_seed(req.options, self.samples)
        seq = sequence_for(req, plan, think=think, num_ctx=num_ctx, seed=seed)
        runner.submit(seq)
        try:
            record = self._transcript(request)
            return await Generation(request, req, seq, emitter, plan.fault, started, record).run()
        finally:
            runner.release(seq)

    async def _fault_before_stream(self, request: web.Request, req: GenRequest, fault: Fault) -> None:
        if fault.kind == "refuse":
            task = asyncio.get_running_loop().create_task(self.refuse_for(fault.seconds))
            self._background.add(task)  # held so it is not collected mid-flight
            task.add_done_callback(self._background.discard)
            await _abort(request)
        elif fault.kind == "reset":
            await _abort(request)
        elif fault.kind == "http_500":
            raise OllamaError(500, fault.message or RUNNER_STOPPED, streaming=req.stream)
        elif fault.kind == "busy":
            raise OllamaError(503, QUEUE_FULL)
        elif fault.kind == "slow_first":
            await asyncio.sleep(fault.seconds)

    def _load_only(self, req: GenRequest, reason: str) -> web.Response:
        body: dict[str, Any] = {"model": req.model, "created_at": gojson.rfc3339nano()}
        if req.kind == "chat":
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        body.update(done=True, done_reason=reason)
        return _json(body)

    # ---- control, for tests ----------------------------------------------------------------------------------
    async def sim_state(self, request: web.Request) -> web.Response:
        runners = {name: runner.state() for name, runner in self.runners.items()}
        return web.json_response(
            {
                "requests_total": self.requests_total,
                "runners": runners,
                "script": self.script.describe(),
                "profile": self.profile.name,
            },
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    async def sim_script(self, request: web.Request) -> web.Response:
        data = orjson.loads(await request.read() or b"[]")
        entries = [ScriptEntry.model_validate(item) for item in (data if isinstance(data, list) else [data])]
        self.script.add(entries)
        return web.json_response({"queued": len(self.script.entries)})

    def _transcript(self, request: web.Request) -> bytearray | None:
        """A buffer recording the response bytes, when --record is on and the request carries an id."""
        request_id = request.headers.get("X-Request-ID")
        if not self.settings.record or not request_id:
            return None
        record = self.transcripts[request_id] = bytearray()
        while len(self.transcripts) > self.settings.record:
            self.transcripts.popitem(last=False)
        return record

    async def sim_transcript(self, request: web.Request) -> web.Response:
        record = self.transcripts.get(request.match_info["request_id"])
        if record is None:
            return web.json_response({"error": "no transcript for that request id"}, status=404)
        return web.Response(body=bytes(record), content_type="application/octet-stream")

    async def sim_clear(self, request: web.Request) -> web.Response:
        self.script.clear()
        return web.json_response({"queued": 0})


def _synthesized(name: str) -> ModelInfo:
    base = CATALOG["qwen3:32b"]
    return ModelInfo(
        name,
        base.family,
        base.parameter_size,
        base.quantization,
        base.size,
        base.size_vram,
        base.context_length,
        base.embedding_length,
        base.block_count,
        base.capabilities,
        base.parameters,
        base.modified_at,
    )


def _openai_model(info: ModelInfo) -> dict[str, Any]:
    namespace = info.name.split("/")[0] if "/" in info.name else "library"
    return {
        "id": info.name,
        "object": "model",
        "created": int(info.modified_at.timestamp()),
        "owned_by": namespace,
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=gojson.dumps(body), content_type="application/json", charset="utf-8")


async def _abort(request: web.Request) -> None:
    """Reset the connection; the handler is then cancelled like any whose client went away."""
    if request.transport is not None:
        request.transport.abort()
    await asyncio.Event().wait()


@web.middleware
async def _go_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Ollama's error bodies: {"error":…} JSON, and gin's plain-text 404 and 405."""
    try:
        return await handler(request)
    except OllamaError as error:
        if request.path.startswith("/v1/"):
            return web.Response(status=error.status, body=openai_error(error.status, error.message), content_type=JSON)
        if error.streaming:
            return web.Response(status=error.status, body=gojson.dumps({"error": error.message}), content_type=JSON)
        return _json({"error": error.message}, error.status)
    except web.HTTPMethodNotAllowed:
        return _plain(405, b"405 method not allowed")
    except web.HTTPNotFound:
        return _plain(404, b"404 page not found")


def _plain(status: int, body: bytes) -> web.Response:
    # gin's serveError sets exactly "text/plain", no charset (aiohttp's text= would add one)
    return web.Response(status=status, body=body, headers={"Content-Type": "text/plain"})


async def _strip_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.pop("Server", None)  # Go's net/http sends none
