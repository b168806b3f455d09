"""What a key may do on the raw APIs: Ollama's model management is an admin's, and a user limited to some models
sees and uses only those."""

from __future__ import annotations

import orjson

from ..errors import Forbidden
from ..identity import Actor

# Ollama's model management: it changes the server everyone shares, so only an admin's key may.
ADMIN_ONLY = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/")
MODEL_LISTS = frozenset({"/api/tags", "/api/ps", "/v1/models"})


def visible_models(body: bytes, actor_: Actor) -> bytes:
    """A model list (Ollama's `models` or OpenAI's `data`) with only the models this user may use."""
    try:
        listed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return b'{"models":[]}'  # an unreadable list shows nothing rather than everything
    if not isinstance(listed, dict):
        return b'{"models":[]}'
    for field, name in (("models", "name"), ("data", "id")):
        if isinstance(listed.get(field), list):
            listed[field] = [m for m in listed[field] if isinstance(m, dict) and actor_.may_use(m.get(name))]
    return orjson.dumps(listed)


def check_raw(actor_: Actor, path: str, models: list[str]) -> None:
    """What a key may do on /api and /v1: no model management unless an admin's, only its user's models."""
    if path.startswith(ADMIN_ONLY) and not actor_.admin:
        raise Forbidden(f"{path} changes the models everyone shares; only an admin's key may use it")
    for model in models:
        actor_.check_model(model)
