"""Who a request acts for: the `Actor` every isolated route and the admission control are given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import Forbidden

# The built-in owner account (migration 0003): conversations from before accounts, and everything under --no-auth.
OWNER_ID = "00000000-0000-7000-8000-000000000001"

Via = Literal["session", "key", "sso", "none"]


@dataclass(frozen=True, slots=True)
class Actor:
    id: str
    name: str
    role: str  # admin | user
    via: Via
    queue: str  # the fairness key: the user's id, or without accounts the client's address
    max_running: int | None = None
    requests_per_minute: int | None = None
    tokens_per_day: int | None = None  # quotas of tokens in and out (store/usage.py enforces them)
    tokens_per_month: int | None = None
    models: tuple[str, ...] | None = None  # None: every model
    session: str | None = None  # the session's id (a hash), when signed in with the cookie
    csrf_token: str | None = None
    key: str | None = None  # the API key's id, when it authenticated the request
    expires_at: int | None = None  # the session's end (ms since the epoch): an open socket ends with it

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str | None) -> bool:
        return self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        """The page and the raw API refuse a model the admin has not given this user, alike."""
        if not self.may_use(model):
            raise Forbidden(f"you may not use the model {model!r}; ask an admin", "model_not_allowed")


def nobody_needed(address: str) -> Actor:
    """Without accounts (--no-auth) every request is the owner's; fairness still tells clients apart."""
    return Actor(OWNER_ID, "local", "admin", "none", queue=address)
