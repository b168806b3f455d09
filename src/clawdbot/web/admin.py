"""The admin's platform settings under /chat/api/admin/: reply length and time limits, model-made titles, the
context size of each model (store/limits.py), and the backends (drain one, bring it back). Every route is an
admin's only."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from ..backends.fleet import Fleet
from ..errors import BadRequest, Forbidden, NotFound
from ..store.limits import Limits
from .authenticate import current
from .chatapi import CHAT
from .http import Strict, json, parse

LIMITS: web.AppKey[Limits] = web.AppKey("limits", Limits)
FLEET: web.AppKey[Fleet] = web.AppKey("fleet", Fleet)


class PlatformChange(Strict):
    """Any of these; null goes back to the command line's default."""

    num_predict: int | None = Field(None, ge=1, le=1_048_576)
    max_num_predict: int | None = Field(None, ge=1, le=1_048_576)
    max_reply_seconds: float | None = Field(None, gt=0, le=7 * 86400)
    model_titles: bool | None = None
    # By model name; null: back to --num-ctx.
    num_ctx: dict[str, int | None] = Field({}, max_length=200)


def routes(app: web.Application) -> None:
    app.router.add_get("/chat/api/admin/settings", show, allow_head=False)
    app.router.add_patch("/chat/api/admin/settings", change)
    app.router.add_get("/chat/api/admin/backends", backends, allow_head=False)
    app.router.add_patch("/chat/api/admin/backends/{name}", change_backend)


class BackendChange(Strict):
    draining: bool  # true: no new work goes to it, what runs there finishes; false: back in rotation


def _limits(request: web.Request) -> Limits:
    if not current(request).admin:
        raise Forbidden("only an admin may see or change the platform's settings")
    return request.app[LIMITS]


def _view(request: web.Request, limits: Limits) -> dict[str, Any]:
    return limits.view(request.app[CHAT].fleet.status.model_names())


async def show(request: web.Request) -> web.Response:
    return json(_view(request, _limits(request)))


async def change(request: web.Request) -> web.Response:
    limits = _limits(request)
    given = await parse(request, PlatformChange)
    settings = given.model_dump(exclude_unset=True, exclude={"num_ctx"})
    for model, size in given.num_ctx.items():
        if not model.strip() or len(model) > 200:
            raise BadRequest(f"invalid request: num_ctx: {model[:200]!r} is no model name")
        if size is not None and not 256 <= size <= 1_048_576:
            raise BadRequest(f"invalid request: num_ctx.{model}: must be from 256 to 1048576, or null")
    await limits.save(settings, given.num_ctx)
    return json(_view(request, limits))


def _fleet(request: web.Request) -> Fleet:
    if not current(request).admin:
        raise Forbidden("only an admin may see or drain the backends")
    return request.app[FLEET]


async def backends(request: web.Request) -> web.Response:
    """Every backend as /readyz reports it."""
    fleet = _fleet(request)
    return json({"backends": fleet.report(request.app[CHAT].admission.waiting_for())})


async def change_backend(request: web.Request) -> web.Response:
    """Drain a backend, or bring a drained one back; the backend as it is now."""
    fleet, name = _fleet(request), request.match_info["name"]
    if name not in fleet.by_name:
        raise NotFound(f"no backend named {name!r}; the backends are {', '.join(fleet.by_name)}")
    given = await parse(request, BackendChange)
    fleet.drain(name, given.draining)
    report = fleet.report(request.app[CHAT].admission.waiting_for())
    return json(next(b for b in report if b["name"] == name))
