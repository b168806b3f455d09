"""The chat page's JSON API under /chat/api/: conversations, messages, search, exports, models.

Every body is validated by a strict model; a bad one gets a 400 naming the field and changes nothing. The same
actions exist on the WebSocket (realtime.py); these routes serve curl, the SSE fallback and the tests.
"""

from __future__ import annotations

import json as stdlib_json
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .auth import current
from .chat import Chat
from .errors import BadRequest, PayloadTooLarge
from .exports import export_json, export_markdown
from .search import find_conversations

CHAT: web.AppKey[Chat] = web.AppKey("chat", Chat)
M = TypeVar("M", bound=BaseModel)
CLIENT_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class Strict(BaseModel):
    # strict: "yes" is not a bool and "0.5" not a number; the page sends JSON types, anything else is a mistake
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL's text cannot hold one; no one types it
            raise ValueError("must not contain a NUL character")
        return value


class NewConversation(Strict):
    model: str | None = Field(None, min_length=1, max_length=200)
    title: str = Field("", max_length=200)
    system_prompt: str = Field("", max_length=20_000)
    temperature: float | None = Field(None, ge=0, le=2)
    num_ctx: int | None = Field(None, ge=256, le=1_048_576)
    think: bool | None = None


class ConversationChange(Strict):
    title: str | None = Field(None, max_length=200)
    pinned: bool | None = None
    model: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, max_length=20_000)
    temperature: float | None = Field(None, ge=0, le=2)
    num_ctx: int | None = Field(None, ge=256, le=1_048_576)
    think: bool | None = None


class NewMessage(Strict):
    content: str
    client_id: str | None = Field(None, pattern=CLIENT_ID)


class EditedMessage(Strict):
    content: str


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/chat/api/models", models, allow_head=False)
    r.add_get("/chat/api/conversations", list_conversations, allow_head=False)
    r.add_post("/chat/api/conversations", create_conversation)
    r.add_get("/chat/api/conversations/{id}", get_conversation, allow_head=False)
    r.add_patch("/chat/api/conversations/{id}", change_conversation)
    r.add_delete("/chat/api/conversations/{id}", delete_conversation)
    r.add_get("/chat/api/conversations/{id}/export", export, allow_head=False)
    r.add_post("/chat/api/conversations/{id}/messages", send)
    r.add_post("/chat/api/conversations/{id}/regenerate", regenerate)
    r.add_post("/chat/api/conversations/{id}/edit", edit)
    r.add_post("/chat/api/conversations/{id}/continue", continue_reply)
    r.add_post("/chat/api/conversations/{id}/stop", stop)
    r.add_get("/chat/api/generations/{id}", generation, allow_head=False)
    r.add_get("/chat/api/search", search, allow_head=False)


def json(body: Any, status: int = 200) -> web.Response:
    try:
        data = orjson.dumps(body)
    except TypeError:  # a str with a lone surrogate (text from a header that was not UTF-8): escape it instead
        data = stdlib_json.dumps(body).encode()
    return web.Response(body=data, status=status, content_type="application/json")


async def parse(request: web.Request, model: type[M]) -> M:
    limit = request.app[CHAT].settings.max_command_bytes
    # A declared length over the limit is refused before anything is read.
    if (request.content_length or 0) > limit or len(raw := await request.read()) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes (from --max-message-chars)")
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise BadRequest("the request body is not valid JSON") from None
    return checked(model, data)


def checked(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise BadRequest(f"invalid request: {problems}") from None


async def models(request: web.Request) -> web.Response:
    return json(request.app[CHAT].models(current(request)))


async def list_conversations(request: web.Request) -> web.Response:
    return json({"conversations": await request.app[CHAT].store.list_conversations(current(request).id)})


async def create_conversation(request: web.Request) -> web.Response:
    chat, actor = request.app[CHAT], current(request)
    spec = await parse(request, NewConversation)
    model = spec.model or chat.default_model(actor)
    actor.check_model(model)
    conversation = await chat.store.create_conversation(
        user_id=actor.id,
        model=model,
        title=spec.title.strip(),
        system_prompt=spec.system_prompt,
        temperature=spec.temperature,
        num_ctx=spec.num_ctx,
        think=spec.think,
    )
    return json({"conversation": conversation}, 201)


async def get_conversation(request: web.Request) -> web.Response:
    return json(await request.app[CHAT].view(request.match_info["id"], current(request).id))


async def change_conversation(request: web.Request) -> web.Response:
    chat, actor = request.app[CHAT], current(request)
    conversation_id = request.match_info["id"]
    await chat.conversation(conversation_id, actor.id)
    change = (await parse(request, ConversationChange)).model_dump(exclude_unset=True)
    if change.get("model") is not None:
        actor.check_model(change["model"])
    if "title" in change:
        title = (change.pop("title") or "").strip()
        change.update(title=title or await chat.first_title(conversation_id), title_set=bool(title))
    if "model" in change and change["model"] is None:
        raise BadRequest("invalid request: model: a conversation always has a model")
    for key in ("pinned", "system_prompt"):
        if key in change and change[key] is None:
            raise BadRequest(f"invalid request: {key}: may not be null")
    return json({"conversation": await chat.store.update_conversation(conversation_id, **change)})


async def delete_conversation(request: web.Request) -> web.Response:
    chat = request.app[CHAT]
    conversation_id = request.match_info["id"]
    await chat.conversation(conversation_id, current(request).id)
    chat.generations.stop(conversation_id)
    await chat.store.delete_conversation(conversation_id)
    return web.Response(status=204)


async def export(request: web.Request) -> web.Response:
    view = await request.app[CHAT].view(request.match_info["id"], current(request).id)
    kind = request.query.get("format", "markdown")
    name = "conversation-" + view["conversation"]["id"]
    if kind == "markdown":
        body, content_type, suffix = export_markdown(view).encode(), "text/markdown; charset=utf-8", "md"
    elif kind == "json":
        body, content_type, suffix = export_json(view), "application/json", "json"
    else:
        raise BadRequest("format must be markdown or json")
    return web.Response(
        body=body,
        headers={"Content-Type": content_type, "Content-Disposition": f'attachment; filename="{name}.{suffix}"'},
    )


async def send(request: web.Request) -> web.Response:
    message = await parse(request, NewMessage)
    chat = request.app[CHAT]
    result = await chat.send(request.match_info["id"], message.content, message.client_id, actor=current(request))
    return json(result, 200 if result.get("duplicate") else 202)  # 200: that send was already taken


async def regenerate(request: web.Request) -> web.Response:
    return json(await request.app[CHAT].regenerate(request.match_info["id"], actor=current(request)), 202)


async def edit(request: web.Request) -> web.Response:
    message = await parse(request, EditedMessage)
    return json(await request.app[CHAT].edit(request.match_info["id"], message.content, actor=current(request)), 202)


async def continue_reply(request: web.Request) -> web.Response:
    return json(await request.app[CHAT].continue_reply(request.match_info["id"], actor=current(request)), 202)


async def generation(request: web.Request) -> web.Response:
    return json({"generation": await request.app[CHAT].generation(request.match_info["id"], current(request).id)})


async def stop(request: web.Request) -> web.Response:
    return json(await request.app[CHAT].stop(request.match_info["id"], current(request).id))


async def search(request: web.Request) -> web.Response:
    text = request.query.get("q", "")
    if len(text) > 200:
        raise BadRequest("the search text is longer than 200 characters")
    if "\x00" in text:
        raise BadRequest("the search text must not contain a NUL character")
    found = await find_conversations(request.app[CHAT].store, text, current(request).id)
    return json({"query": text, "results": found})
