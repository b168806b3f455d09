"""What every JSON route here shares: strict bodies (a bad one is a 400 naming the field and changes nothing), a size
limit read before the body, and one JSON responder."""

from __future__ import annotations

import json as stdlib_json
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import BadRequest, PayloadTooLarge
from ..settings import Settings
from .shapes import plain

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    # strict: "yes" is not a bool and "0.5" not a number; the page sends JSON types, anything else is a mistake
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL's text cannot hold one; no one types it
            raise ValueError("must not contain a NUL character")
        return value


def json(body: Any, status: int = 200) -> web.Response:
    try:
        data = orjson.dumps(body)
    except TypeError:  # a str with a lone surrogate (text from a header that was not UTF-8): escape it instead
        data = stdlib_json.dumps(body, default=plain).encode()
    return web.Response(body=data, status=status, content_type="application/json")


async def parse(request: web.Request, model: type[M]) -> M:
    limit = request.app[SETTINGS].max_command_bytes
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
