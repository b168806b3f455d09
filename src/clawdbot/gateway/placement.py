"""Which backend a raw request goes to, and the model lists merged across backends.

Generations (GENERATION routes) take a slot through admission, which picks the backend (backends/routing.py);
here is what they bring to it: the model, and an affinity key — the client's `X-Clawdbot-Session` header, else a
hash of the conversation's first messages (a chat) or the prompt's start (a completion), which stay the same from
one turn to the next. Other requests go to a backend that serves their model; model management (pull, delete, …)
to the backend the admin names. `/api/*` is Ollama's own API: only Ollama backends get it.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ..backends.fleet import Fleet, Member
from ..backends.routing import serving
from ..errors import BackendError, BadRequest, NotFound
from .permissions import ADMIN_ONLY

SESSION_HEADER = "X-Clawdbot-Session"
BACKEND_HEADER = "X-Clawdbot-Backend"
_PREFIX_CHARS = 2048  # of a prompt, for its affinity key: enough to tell conversations apart
_LIST_S = 10.0  # for each backend's part of a merged model list


def model_of(path: str, parsed: dict[str, Any] | None) -> str | None:
    if path.startswith("/v1/models/"):
        return path.removeprefix("/v1/models/")
    if parsed is None:
        return None
    # Ollama reads JSON with Go's encoding/json, which takes "Model" or "MODEL" for "model" too.
    for key, value in parsed.items():
        if key.lower() in ("model", "name") and isinstance(value, str) and value:
            return value
    return None


def affinity_key(request: web.Request, parsed: dict[str, Any] | None) -> str | None:
    session = request.headers.get(SESSION_HEADER)
    if session:
        return "s:" + session[:256]
    if parsed is None:
        return None
    messages = parsed.get("messages")
    if isinstance(messages, list):
        head: list[Any] = []
        for message in messages:  # up to the first user message: the same at every turn
            head.append(message)
            if isinstance(message, dict) and message.get("role") == "user":
                break
        seed: Any = [parsed.get("model"), head]
    elif isinstance(parsed.get("prompt"), str):
        seed = [parsed.get("model"), parsed.get("system"), parsed["prompt"][:_PREFIX_CHARS]]
    else:
        return None
    try:
        data = orjson.dumps(seed)
    except TypeError:
        return None
    return "p:" + hashlib.blake2b(data, digest_size=12).hexdigest()


def native(fleet: Fleet, path: str) -> list[Member]:
    """The members a request for this path may reach: /api/* only Ollama backends."""
    if not path.startswith("/api/"):
        return fleet.members
    members = [m for m in fleet.members if m.kind == "ollama"]
    if not members:
        raise NotFound(
            f"{path} is Ollama's API and none of this gateway's backends is an Ollama server; use /v1/* instead"
        )
    return members


def foreign(fleet: Fleet, path: str, model: str | None) -> frozenset[str]:
    """The backends a generation on this path may not take a slot on: for /api/*, those that are not Ollama
    servers. NotFound when only they list the model, rather than a 404 of theirs for a path they lack."""
    members = native(fleet, path)
    if len(members) == len(fleet.members):
        return frozenset()
    others = [m for m in fleet.members if m not in members]
    # No Ollama backend lists the model: a 404 when none may serve it or another lists it; else (a model no one
    # lists, a typo) an Ollama backend answers for itself.
    ours = any(m.place.may_serve(model) and m.place.lists(model) for m in members)
    theirs = not any(m.place.may_serve(model) for m in members) or any(m.place.lists(model) for m in others)
    if model is not None and not ours and theirs:
        names = ", ".join(m.name for m in others)
        raise NotFound(
            f"model {model!r} is served only by backends that are not Ollama servers ({names}), and {path} is "
            "Ollama's API; use /v1/chat/completions instead"
        )
    return frozenset(m.name for m in others)


def target(fleet: Fleet, request: web.Request, model: str | None) -> Member:
    """The backend a request that takes no slot goes to."""
    path = request.path
    members = native(fleet, path)
    named = request.headers.get(BACKEND_HEADER) or request.query.get("backend")
    if path.startswith(ADMIN_ONLY):
        if named is None and len(members) == 1:
            return members[0]
        member = fleet.by_name.get(named or "")
        if member is None or member not in members:
            names = ", ".join(m.name for m in members)
            raise BadRequest(
                f"{path} changes one backend's models: name it with the {BACKEND_HEADER} header or ?backend= "
                f"(one of {names})"
            )
        return member
    places, _ = serving([m.place for m in members], model)
    chosen = next((p for p in places if p.name == named), None) or (places[0] if places else members[0].place)
    return fleet.by_name[chosen.name]


async def merged_list(fleet: Fleet, path: str) -> bytes | None:
    """/api/tags, /api/ps and /v1/models from every backend in rotation, each model once (the first backend's entry);
    None with a single backend, whose own answer is relayed unchanged."""
    members = [m for m in native(fleet, path) if m.place.in_rotation]
    if len(fleet.members) == 1 or path not in ("/api/tags", "/api/ps", "/v1/models"):
        return None
    field, key = ("data", "id") if path == "/v1/models" else ("models", "name")
    answers = await asyncio.gather(*(_listed(m, path, field) for m in members))
    seen: set[str] = set()
    merged = []
    for member, listed in zip(members, answers, strict=True):  # less what a [[backends]] `models` list leaves out
        for entry in listed:
            name = str(entry.get(key))
            if name not in seen and member.place.may_serve(name):
                seen.add(name)
                merged.append(entry)
    body: dict[str, Any] = {"object": "list", "data": merged} if path == "/v1/models" else {"models": merged}
    return orjson.dumps(body)


async def _listed(member: Member, path: str, field: str) -> list[dict[str, Any]]:
    try:
        async with asyncio.timeout(_LIST_S):
            response = await member.backend.send("GET", path, b"", [])
            try:
                data = orjson.loads(await response.read()) if response.status == 200 else {}
            finally:
                response.close()
    except (BackendError, aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError):
        return []  # a backend that cannot answer now lists nothing; its health check deals with it
    listed = data.get(field) if isinstance(data, dict) else None
    return [entry for entry in listed if isinstance(entry, dict)] if isinstance(listed, list) else []
