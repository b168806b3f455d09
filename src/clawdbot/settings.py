"""The platform's settings: a type, a default and help text per field.

Values come, highest first, from the command line, the environment (`CLAWDBOT_…`), a TOML file (`--config FILE`
or `CLAWDBOT_CONFIG`) and the defaults below (common/config.py reads them). docs/configuration.md lists them all;
a test keeps it honest.
"""

from __future__ import annotations

import os
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .common.config import (
    PROFILE_NAMES,
    TRUE,
    SettingsError,
    SettingsModel,
    default_data_dir,
    env_name,
    http_url,
    known_profile,
    load,
    toml_only,
)
from .common.redisurl import checked_redis_url

__all__ = ["BackendConfig", "Settings", "SettingsError", "env_name", "load", "loopback", "toml_only"]


def _parallel_from_env() -> int | None:
    """$OLLAMA_NUM_PARALLEL, Ollama's own setting, when it is a positive number."""
    value = os.environ.get("OLLAMA_NUM_PARALLEL", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class BackendConfig(BaseModel):
    """One model server of the fleet, as a `[[backends]]` table of the TOML file gives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    kind: Literal["ollama", "openai"] = "ollama"
    url: str
    slots: int | None = Field(None, ge=1, le=4096)
    models: list[str] | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None

    _check_url = field_validator("url")(http_url)

    def api_key(self) -> str | None:
        """The key the server wants, from the environment or a file (never from a request, never logged)."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise SettingsError(f"backend {self.url}: ${self.api_key_env} (api_key_env) is not set")
            return value.strip()
        if self.api_key_file:
            try:
                return self.api_key_file.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise SettingsError(f"backend {self.url}: cannot read api_key_file: {error.strerror}") from None
        return None


def _host_name(url: str) -> str:
    """A backend's default name: its host and port (gpu-box:11434)."""
    return url.split("://", 1)[1].split("/", 1)[0]


class Settings(SettingsModel):
    """`clawdbot` / `clawdbot serve`: the platform."""

    env_prefix: ClassVar[str] = "CLAWDBOT_"
    toml_table: ClassVar[str | None] = None

    ollama_url: list[str] = Field(
        ["http://localhost:11434"],
        description="Base URL of an Ollama server to proxy to; repeat it for several (each runs --max-running "
        "generations at once). [[backends]] tables in the TOML file replace the default.",
    )
    backends: list[BackendConfig] = Field(
        [],
        description="Model servers as [[backends]] tables of the TOML file (name, kind, url, slots, models, "
        "api_key_env or api_key_file): see docs/backends.md.",
        json_schema_extra={"toml_only": True},
    )
    host: str = Field("127.0.0.1", description="Address to listen on; use 0.0.0.0 to accept other machines.")
    port: int = Field(18789, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for the database and other state (with --demo: clawdbot-demo beside it, so demo "
        "chats stay out of a later real setup).",
    )
    public_url: str | None = Field(
        None,
        description="The address people open, when a proxy serves the gateway (https://chat.example.com): used in "
        "the links clawdbot prints (the setup link), and its origin may send changes.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level written to stderr."
    )
    access_log: bool = Field(True, description="Write one JSON access-log line per request and per chat reply.")
    usage_retention_days: int = Field(
        400, ge=1, description="Days the hourly usage rollups (requests, failures, tokens) are kept."
    )
    demo: bool = Field(
        False,
        description="Run the Ollama simulator in this process and proxy to it instead of "
        "--ollama-url, so a machine without Ollama shows a working platform.",
    )
    demo_profile: str = Field(
        "4090", description=f"Timing profile of the --demo simulator ({', '.join(PROFILE_NAMES)})."
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for a TCP connection to the backend.")
    first_byte_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds to wait for the backend's first byte; covers a model load and the wait for a free slot.",
    )
    idle_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a started stream may stay silent before the gateway gives up on the backend.",
    )
    upstream_max_connections: int = Field(
        4096,
        ge=1,
        description="Most connections open to the backend at once; requests beyond it wait for one to free.",
    )
    max_request_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes (images are sent inline, base64).",
    )
    health_interval: float = Field(10.0, gt=0, description="Seconds between checks that the backend answers.")
    database_url: str | None = Field(
        None,
        description="Where conversations are kept: sqlite:///PATH or postgresql://USER@HOST/DB "
        "(default: the SQLite file clawdbot.db in --data-dir).",
    )
    redis_url: str | None = Field(
        None,
        description="Where the live state several gateway processes share is kept (redis://HOST:PORT/DB, "
        "rediss://… for TLS (a private CA: `?ssl_ca_certs=PATH`), unix:///PATH, "
        "redis+sentinel://HOST:PORT,…/SERVICE for the primary Sentinel "
        "names, or redis+cluster://HOST:PORT,… for a Redis Cluster; rediss+… with TLS): reply events, running "
        "replies, the fair queue and slots, rate limits, sign-in throttles, credential revocations. Default: none, "
        "one process keeps them in its memory.",
    )
    redis_prefix: str = Field(
        "clawdbot",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="First part of every Redis key and channel, so deployments can share one Redis.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Gateway processes on this machine, all on --port (SO_REUSEPORT); more than one needs "
        "--redis-url, where they share their live state.",
    )
    default_model: str | None = Field(
        None, description="Model of new conversations (default: the first model the backend lists)."
    )
    num_ctx: int = Field(
        8192,
        ge=256,
        le=1_048_576,
        description="Context window (num_ctx) of every request that sets none, chat turns and raw /api requests "
        "alike, for models an admin has given no size of their own: Ollama reloads a model whenever num_ctx "
        "changes, so the page and API clients must send the same.",
    )
    reply_room: int = Field(
        2048,
        ge=0,
        description="Tokens of the context kept free for the reply when older turns must be left out (at most half "
        "the context).",
    )
    num_predict: int = Field(
        4096,
        ge=1,
        le=1_048_576,
        description="Tokens a chat reply may write unless its conversation sets a number (Ollama's num_predict); "
        "an admin may change it on the page.",
    )
    max_num_predict: int = Field(
        32768,
        ge=1,
        le=1_048_576,
        description="Most tokens any one reply may write: the highest num_predict a conversation may set, the "
        "num_predict of raw /api requests that set none, and where the gateway cuts a reply off; an admin may "
        "change it on the page.",
    )
    max_reply_seconds: float = Field(
        1800.0,
        gt=0,
        description="Seconds a reply may take once the backend has it, on the chat page and the raw APIs alike; "
        "past it the gateway cuts it off and frees its slot. An admin may change it on the page.",
    )
    model_titles: bool = Field(
        False,
        description="Let the model name each conversation after its first exchange, in the background when the "
        "backend is idle (off: the title is the first message's first line); an admin may change it on the page.",
    )
    max_message_chars: int = Field(100_000, ge=1, description="Longest chat message accepted, in characters.")
    heartbeat: float = Field(
        15.0,
        gt=0,
        le=60,
        description="Seconds between heartbeats on chat WebSockets and event streams, so no proxy closes a "
        "connection while the model thinks silently.",
    )

    max_running: int | None = Field(
        None,
        ge=1,
        description="Generations each backend runs at once (those of --ollama-url, and [[backends]] that set no "
        "slots); the rest wait in the gateway's fair queue. Set it to the backend's parallelism (default: "
        "$OLLAMA_NUM_PARALLEL if set, else 1, Ollama's default; with --demo, the demo simulator's slots).",
    )
    routing: Literal["affinity", "least_busy", "random"] = Field(
        "affinity",
        description="How a generation picks among the backends with a free slot: affinity (the backend that served "
        "the conversation last, then one with the model loaded, then the most free slots; docs/backends.md); "
        "least_busy and random (Open WebUI's way) only to compare against.",
    )
    max_queue: int = Field(
        1000, ge=0, description="Generations that may wait for a slot, all users together; beyond it, 503."
    )
    max_queue_per_user: int = Field(
        100, ge=1, description="Generations one user may have waiting for a slot; beyond it, 429."
    )
    trusted_proxies: list[str] = Field(
        ["127.0.0.1/32", "::1/128"],
        description="Addresses (CIDR) of the reverse proxies in front (nginx, Caddy): their X-Real-IP, Forwarded "
        "or X-Forwarded-For names the client (sign-in throttling, fair queueing), their X-Forwarded-Proto and "
        "X-Forwarded-Host are believed. Nobody else's are.",
    )
    client_address_header: Literal["auto", "x-real-ip", "forwarded", "x-forwarded-for"] = Field(
        "auto",
        description="Which header of a trusted proxy names the client: auto reads all three and, when they "
        "disagree (the client forged one), counts the request as the proxy's own; naming the one header the "
        "proxy writes believes that one alone.",
    )
    checkpoint_interval: float = Field(
        1.0, gt=0, le=60, description="Seconds between saves of the text of replies in flight (what a crash loses)."
    )
    reply_log_events: int = Field(
        10_000, ge=16, description="Events of one reply kept for resuming clients; older ones fold into a snapshot."
    )
    reply_log_bytes: int = Field(
        1 << 20, ge=4096, description="Bytes of one reply's events kept for resuming clients (same folding)."
    )

    auth: bool | None = Field(
        None,
        description="Require accounts (--auth), or let every request act as this machine's owner (--no-auth: one "
        "person on their own machine; refused unless --host is a loopback address). Default: accounts, except "
        "that --demo on loopback implies --no-auth.",
    )
    session_hours: float = Field(336.0, gt=0, description="Hours a sign-in lasts (the session cookie's life).")
    open_api: bool = Field(False, description="Let /api/* and /v1/* through without an API key (they still take one).")
    sso_header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="Header naming the signed-in user, set by an auth proxy in front (e.g. X-Forwarded-User); "
        "believed only from --sso-proxies.",
    )
    sso_proxies: list[str] = Field(
        [], description="Addresses (CIDR) of the auth proxies whose --sso-header is believed."
    )
    allowed_origins: list[str] = Field(
        [],
        description="Origins (scheme://host[:port]) besides the gateway's own that may send changes and open "
        "WebSockets with a user's cookie.",
    )

    # The backend's parallelism, when clawdbot's environment says it the way Ollama's does: what --max-running
    # defaults to (generation_slots).
    _ollama_num_parallel: int | None = PrivateAttr(default_factory=_parallel_from_env)

    @field_validator("ollama_url", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        urls = [value] if isinstance(value, str) else value
        return [http_url(str(url)) for url in urls] if isinstance(urls, list) else urls

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @model_validator(mode="before")
    @classmethod
    def _demo_apart(cls, values: Any) -> Any:
        """--demo keeps its chats out of the data directory a real setup uses later, unless told where."""
        if (
            isinstance(values, dict)
            and str(values.get("demo")).lower() in TRUE
            and not (values.get("data_dir") or values.get("database_url"))
        ):
            return {**values, "data_dir": default_data_dir("clawdbot-demo")}
        return values

    @field_validator("trusted_proxies", "sso_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an address or a CIDR network") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("sqlite:", "sqlite+aiosqlite:", "postgresql:", "postgres:", "postgresql+asyncpg:")
        ):
            raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST/DB")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        return None if value is None else checked_redis_url(value)

    _check_profile = field_validator("demo_profile")(known_profile)

    @model_validator(mode="after")
    def _no_auth_only_on_loopback(self) -> Settings:
        if self.auth is False and not loopback(self.host):
            raise ValueError(
                f"--no-auth lets anyone who reaches the gateway act as its owner, so it is refused on --host "
                f"{self.host}; bind to a loopback address (127.0.0.1 or ::1), or keep accounts on"
            )
        if self.workers > 1 and self.demo:
            raise ValueError(
                "--demo runs its simulator inside the gateway process; with --workers, run `clawdbot simulate` "
                "and give its address as --ollama-url"
            )
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                f"--workers {self.workers} needs --redis-url: the processes share their running replies, queue and "
                "limits there (one process keeps them in memory)"
            )
        if self.sso_header and not self.sso_proxies:
            raise ValueError("--sso-header needs --sso-proxies: the addresses whose header is believed")
        if self.num_predict > self.max_num_predict:
            raise ValueError(
                f"--num-predict {self.num_predict} is above --max-num-predict {self.max_num_predict}: a reply's "
                "default length cannot be more than any reply may write"
            )
        try:  # at start, not at the first request: two backends of one name, an API key that is not there
            for config in self.backend_configs():
                config.api_key()
        except SettingsError as error:
            raise ValueError(str(error)) from None
        return self

    @property
    def max_command_bytes(self) -> int:
        """A chat command's or body's size limit: the longest message, 4 UTF-8 bytes a character, with room."""
        return self.max_message_chars * 4 + 65536

    def generation_slots(self, stand_in: int | None = None) -> int:
        """Generations the backend runs at once (--max-running), resolved: as set, else the slots of a stand-in
        model server (--demo's simulator; its 0, unlimited, counts as 64), else $OLLAMA_NUM_PARALLEL, else 1
        (Ollama's default)."""
        if self.max_running is not None:
            return self.max_running
        if stand_in is not None:
            return stand_in or 64
        return self._ollama_num_parallel or 1

    def backend_configs(self) -> list[BackendConfig]:
        """The fleet, resolved: [[backends]], plus every --ollama-url given (the default one only when there are
        no [[backends]]), each with a name (its host, made unique) and its slots."""
        configs = list(self.backends)
        if not configs or "ollama_url" in self.model_fields_set:
            configs += [BackendConfig(url=url) for url in self.ollama_url]
        named: list[BackendConfig] = []
        taken: set[str] = set()
        for config in configs:
            name = config.name or _host_name(config.url)
            if name in taken and config.name:
                raise SettingsError(f"two backends are named {name!r}; names must differ")
            base, n = name, 2
            while name in taken:
                name, n = f"{base}-{n}", n + 1
            taken.add(name)
            named.append(config.model_copy(update={"name": name, "slots": config.slots or self.generation_slots()}))
        return named

    @property
    def accounts(self) -> bool:
        """Whether requests must name a user (see --auth)."""
        return self.auth if self.auth is not None else not (self.demo and loopback(self.host))


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
