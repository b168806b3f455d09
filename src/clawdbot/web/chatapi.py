"""The chat page's JSON API under /chat/api/: conversations, messages, search, exports, models.

Every body is validated by a strict model; a bad one gets a 400 naming the field and changes nothing. The same
actions exist on the WebSocket (realtime.py); these routes serve curl, the SSE fallback and the tests.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from ..chat.exports import content_disposition, export_json, export_markdown, file_name
from ..chat.search import find_conversations
from ..chat.service import Chat
from ..errors import BadRequest
from .authenticate import current
from .http import Strict, json, parse
from .shapes import plain, reply_state, stopping, turn
from .urls import reply_events

CHAT: web.AppKey[Chat] = web.AppKey("chat", Chat)
CLIENT_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
MESSAGE_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


class NewConversation(Strict):
    model: str | None = Field(None, min_length=1, max_length=200)
    title: str = Field("", max_length=200)
    system_prompt: str = Field("", max_length=20_000)
    temperature: float | None = Field(None, ge=0, le=2)
    num_ctx: int | None = Field(None, ge=256, le=1_048_576)
    think: bool | None = None
    num_predict: int | None = Field(None, ge=1, le=1_048_576)  # and at most the admin's max_num_predict


class ConversationChange(Strict):
    title: str | None = Field(None, max_length=200)
    pinned: bool | None = None
    model: str | None = Field(None, min_length=1, max_length=200)
    system_prompt: str | None = Field(None, max_length=20_000)
    temperature: float | None = Field(None, ge=0, le=2)
    num_ctx: int | None = Field(None, ge=256, le=1_048_576)
    think: bool | None = None
    num_predict: int | None = Field(None, ge=1, le=1_048_576)


class NewMessage(Strict):
    content: str
    client_id: str | None = Field(None, pattern=CLIENT_ID)


class EditedMessage(Strict):
    content: str
    message_id: str | None = Field(None, pattern=MESSAGE_ID)  # which shown user message; none: the last one


class ShownVersion(Strict):
    message_id: str = Field(pattern=MESSAGE_ID)


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
    r.add_post("/chat/api/conversations/{id}/versions", switch)
    r.add_post("/chat/api/conversations/{id}/stop", stop)
    r.add_get("/chat/api/generations/{id}", generation, allow_head=False)
    r.add_get("/chat/api/search", search, allow_head=False)


async def models(request: web.Request) -> web.Response:
    return json(request.app[CHAT].models(current(request)))


async def list_conversations(request: web.Request) -> web.Response:
    return json({"conversations": await request.app[CHAT].store.list_conversations(current(request).id)})


async def create_conversation(request: web.Request) -> web.Response:
    chat, actor = request.app[CHAT], current(request)
    spec = await parse(request, NewConversation)
    model = spec.model or chat.default_model(actor)
    actor.check_model(model)
    chat.limits.check_reply_tokens(spec.num_predict)
    conversation = await chat.store.create_conversation(
        user_id=actor.id,
        model=model,
        title=spec.title.strip(),
        system_prompt=spec.system_prompt,
        temperature=spec.temperature,
        num_ctx=spec.num_ctx,
        think=spec.think,
        num_predict=spec.num_predict,
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
    chat.limits.check_reply_tokens(change.get("num_predict"))
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
    await chat.stop(conversation_id, current(request).id)  # NotFound for another's: nothing is stopped or deleted
    await chat.store.delete_conversation(conversation_id)
    return web.Response(status=204)


async def export(request: web.Request) -> web.Response:
    view = await request.app[CHAT].view(request.match_info["id"], current(request).id)
    kind = request.query.get("format", "markdown")
    if kind == "markdown":
        body, content_type, suffix = export_markdown(view).encode(), "text/markdown; charset=utf-8", "md"
    elif kind == "json":
        body, content_type, suffix = export_json(view), "application/json", "json"
    else:
        raise BadRequest("format must be markdown or json")
    name = file_name(view.conversation.title, suffix)
    return web.Response(
        body=body, headers={"Content-Type": content_type, "Content-Disposition": content_disposition(name)}
    )


async def send(request: web.Request) -> web.Response:
    message = await parse(request, NewMessage)
    chat = request.app[CHAT]
    result = await chat.send(request.match_info["id"], message.content, message.client_id, actor=current(request))
    return json(turn(result), 200 if result.duplicate else 202)  # 200: that send was already taken


async def regenerate(request: web.Request) -> web.Response:
    return json(turn(await request.app[CHAT].regenerate(request.match_info["id"], actor=current(request))), 202)


async def edit(request: web.Request) -> web.Response:
    message = await parse(request, EditedMessage)
    chat, conversation_id = request.app[CHAT], request.match_info["id"]
    result = await chat.edit(conversation_id, message.content, message.message_id, actor=current(request))
    return json(turn(result), 202)


async def switch(request: web.Request) -> web.Response:
    version = await parse(request, ShownVersion)
    chat, conversation_id = request.app[CHAT], request.match_info["id"]
    return json(plain(await chat.switch(conversation_id, version.message_id, actor=current(request))))


async def continue_reply(request: web.Request) -> web.Response:
    return json(turn(await request.app[CHAT].continue_reply(request.match_info["id"], actor=current(request))), 202)


async def generation(request: web.Request) -> web.Response:
    found = await request.app[CHAT].generation(request.match_info["id"], current(request).id)
    return json({"generation": reply_state(found, reply_events(found.id))})


async def stop(request: web.Request) -> web.Response:
    return json(stopping(await request.app[CHAT].stop(request.match_info["id"], current(request).id)))


async def search(request: web.Request) -> web.Response:
    text = request.query.get("q", "")
    if len(text) > 200:
        raise BadRequest("the search text is longer than 200 characters")
    if "\x00" in text:
        raise BadRequest("the search text must not contain a NUL character")
    found = await find_conversations(request.app[CHAT].store, text, current(request).id)
    return json({"query": text, "results": found})
