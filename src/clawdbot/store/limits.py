"""Platform limits an admin sets on the page (migration 0004): how long a reply may get, in tokens and seconds;
whether the model names conversations; and, per model, the context size (num_ctx) of every request that sets none.

The command line gives the defaults (--num-predict, --max-num-predict, --max-reply-seconds, --model-titles,
--num-ctx); what an admin saves is kept in the database and wins over them, and saving null goes back to the
default. Every gateway keeps the values in memory, because the relay reads them on every request and must not wait
for the database, and re-reads them every --health-interval, so gateways sharing one database agree within that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import BigInteger, Column, Integer, String, Table, Text, delete, select
from sqlalchemy.engine import Connection

from ..errors import BadRequest
from ..logs import LOG
from ..modelnames import model_key
from ..settings import Settings
from .database import Database
from .records import now_ms
from .tables import metadata

platform_settings = Table(
    "platform_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON: a number or a boolean
    Column("updated_at", BigInteger, nullable=False),
)

model_settings = Table(
    "model_settings",
    metadata,
    Column("model", String(200), primary_key=True),  # model_key() of the name
    Column("num_ctx", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# What an admin may set, each with its command-line default of the same name.
NAMES = ("num_predict", "max_num_predict", "max_reply_seconds", "model_titles")


class Limits:
    """The defaults until open() reads what an admin saved."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.saved: dict[str, Any] = {}  # the admin's values, by name; a name not here has its default
        self.contexts: dict[str, int] = {}  # num_ctx an admin gave a model, by model_key()
        # Each model's own num_ctx and num_predict (its Modelfile), by model_key(): the backend's health check reads
        # them (backends.BackendStatus.own); web/app.py points this at it.
        self.own_of: Callable[[], dict[str, dict[str, int]]] = dict
        self.db: Database | None = None

    @property
    def own(self) -> dict[str, dict[str, int]]:
        return self.own_of()

    async def open(self, db: Database) -> None:
        self.db = db
        await self.load()

    # ---- what is in effect ---------------------------------------------------------------------------------
    def value(self, name: str) -> Any:
        return self.saved.get(name, getattr(self.settings, name))

    @property
    def num_predict(self) -> int:
        return int(self.value("num_predict"))

    @property
    def max_num_predict(self) -> int:
        return int(self.value("max_num_predict"))

    @property
    def max_reply_seconds(self) -> float:
        return float(self.value("max_reply_seconds"))

    @property
    def model_titles(self) -> bool:
        return bool(self.value("model_titles"))

    def num_ctx(self, model: object) -> int:
        """The context size of a request to `model` that sets none: an admin's for that model, else the model's
        own (a Modelfile's PARAMETER num_ctx), else --num-ctx (any value that is no model name: --num-ctx)."""
        if not isinstance(model, str) or not (self.contexts or self.own):
            return self.settings.num_ctx
        key = model_key(model)
        return self.contexts.get(key) or self.own.get(key, {}).get("num_ctx") or self.settings.num_ctx

    def own_num_predict(self, model: object) -> int | None:
        """A model's own cap on a reply (its Modelfile's PARAMETER num_predict), if it has one."""
        return self.own.get(model_key(model), {}).get("num_predict") if isinstance(model, str) else None

    def reply_tokens(self, wanted: int | None, model: object = None) -> int:
        """The num_predict of a chat reply: the conversation's own, else the default (or the model's own cap when
        that is lower), never above the limit (an admin may have lowered it since the conversation chose)."""
        default = min(self.num_predict, self.own_num_predict(model) or self.num_predict)
        return min(wanted or default, self.max_num_predict)

    def check_reply_tokens(self, wanted: int | None) -> None:
        if wanted is not None and wanted > self.max_num_predict:
            raise BadRequest(
                f"num_predict {wanted} is above this gateway's limit of {self.max_num_predict} tokens a reply "
                "(an admin sets it)"
            )

    def view(self, models: list[str]) -> dict[str, Any]:
        """Every setting with its value, default and whether an admin set it; the context size of each model the
        backend lists (and of any other an admin gave one)."""
        settings = {
            name: {"value": self.value(name), "default": getattr(self.settings, name), "saved": name in self.saved}
            for name in NAMES
        }
        names = {model_key(name): name for name in models}
        for key in self.contexts:
            names.setdefault(key, key)
        listed = [
            {
                "name": name,
                "num_ctx": self.num_ctx(name),
                "own": self.own.get(key, {}).get("num_ctx"),  # the Modelfile's, which wins over --num-ctx
                "saved": key in self.contexts,
            }
            for key, name in sorted(names.items())
        ]
        return {"settings": settings, "num_ctx_default": self.settings.num_ctx, "models": listed}

    def in_effect(self, models: list[str], loaded: dict[str, int]) -> dict[str, Any]:
        """For /readyz: the context size each model gets, and a warning for each model the backend holds with
        another (a /v1 request, which cannot name one, or a client that sets its own, loaded it so)."""
        sizes = {model: self.num_ctx(model) for model in models}
        warnings = [
            f"{model} is loaded with num_ctx {held}, but the gateway sends {self.num_ctx(model)}: another client "
            "loaded it (a /v1 request cannot set num_ctx, OpenAI's API has none), and Ollama reloads a model "
            f"whenever the size changes. Start Ollama with OLLAMA_CONTEXT_LENGTH={self.num_ctx(model)} so that every "
            "client gets the same (a model trained on a shorter context stays at its own)."
            for model, held in sorted(loaded.items())
            if held != self.num_ctx(model)
        ]
        return {"default": self.settings.num_ctx, "models": sizes, "warnings": warnings}

    # ---- the database --------------------------------------------------------------------------------------
    async def load(self) -> None:
        assert self.db is not None, "open() first"

        def query(conn: Connection) -> tuple[dict[str, Any], dict[str, int]]:
            saved = {row.name: orjson.loads(row.value) for row in conn.execute(select(platform_settings))}
            contexts = {row.model: int(row.num_ctx) for row in conn.execute(select(model_settings))}
            return {k: v for k, v in saved.items() if k in NAMES}, contexts

        self.saved, self.contexts = await self.db.read(query)

    async def save(self, change: dict[str, Any], contexts: dict[str, int | None]) -> None:
        """Store an admin's change in one write (null: back to the default), after checking that it leaves the
        limits consistent; takes effect at once for everything that starts after it."""
        after = {**self.saved, **change}
        length = after.get("num_predict") or self.settings.num_predict
        limit = after.get("max_num_predict") or self.settings.max_num_predict
        if length > limit:
            raise BadRequest(
                f"num_predict {length} (a reply's default length) is above max_num_predict {limit} (the most any "
                "reply may write)"
            )
        stamp = now_ms()
        assert self.db is not None, "open() first"

        def query(conn: Connection) -> None:
            for name, value in change.items():
                conn.execute(delete(platform_settings).where(platform_settings.c.name == name))
                if value is not None:
                    row = {"name": name, "value": orjson.dumps(value).decode(), "updated_at": stamp}
                    conn.execute(platform_settings.insert().values(**row))
            for model, num_ctx in contexts.items():
                key = model_key(model)
                conn.execute(delete(model_settings).where(model_settings.c.model == key))
                if num_ctx is not None:
                    conn.execute(model_settings.insert().values(model=key, num_ctx=num_ctx, updated_at=stamp))

        await self.db.write(query)
        await self.load()

    async def watch(self, interval: float) -> None:
        """Pick up what an admin saved through another gateway sharing the database."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except Exception:  # noqa: BLE001 - the values in memory stay; the next read may work
                LOG.exception("could not re-read the platform limits")
