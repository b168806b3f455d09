"""The models the chat page offers a user: the backend's, less those the user may not use, with the limits a
conversation gets unless it sets its own, and why no reply can come when the backend is down."""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.fleet import Fleet
from ..identity import Actor
from ..settings import Settings
from ..store.limits import Limits

_FALLBACK = "qwen3:32b"  # the model named when neither the backend nor the settings name one the user may use


@dataclass(frozen=True, slots=True)
class Model:
    """One of the backend's models as its listing describes it (Ollama's /api/tags, which may leave any out)."""

    name: str | None
    size: int | None
    parameter_size: str | None
    quantization: str | None
    family: str | None
    capabilities: list[str]
    num_ctx: int  # what a conversation with it gets unless it sets one
    backends: list[str]  # the backends in rotation that serve it; none: unavailable now


@dataclass(frozen=True, slots=True)
class Models:
    models: list[Model]
    default: str
    num_ctx: int
    num_predict: int
    max_num_predict: int
    reachable: bool
    simulated: bool
    problem: str | None  # why no reply can come now; None while the backend answers


def listing(fleet: Fleet, settings: Settings, limits: Limits, actor: Actor) -> Models:
    """The models this user may use, from every backend, with where each runs."""
    listed = [
        Model(
            name=m.get("name"),
            size=m.get("size"),
            parameter_size=(m.get("details") or {}).get("parameter_size"),
            quantization=(m.get("details") or {}).get("quantization_level"),
            family=(m.get("details") or {}).get("family"),
            capabilities=m.get("capabilities") or [],
            num_ctx=limits.num_ctx(m.get("name")),
            backends=where,
        )
        for m, where in fleet.catalog()
        if actor.may_use(m.get("name"))
    ]
    return Models(
        models=listed,
        default=default_model(fleet, settings, actor),
        num_ctx=settings.num_ctx,
        num_predict=limits.num_predict,
        max_num_predict=limits.max_num_predict,
        reachable=fleet.status.reachable,
        simulated=fleet.simulated,
        problem=_problem(fleet, actor),
    )


def default_model(fleet: Fleet, settings: Settings, actor: Actor) -> str:
    names = [name for name in fleet.status.model_names() if actor.may_use(name)]
    if settings.default_model and actor.may_use(settings.default_model):
        return settings.default_model
    return names[0] if names else (actor.models or (_FALLBACK,))[0]


def _problem(fleet: Fleet, actor: Actor) -> str | None:
    """Why no reply can come now, in words the reader can act on (the fix only for those who can apply it)."""
    status = fleet.status
    if status.reachable:
        return None
    if not actor.admin:
        return "The model server is not answering right now; replies will fail until it is back. Tell your admin."
    return f"The model server is not answering: {status.error}. To fix it, {fleet.how_to_fix()}."
