"""Every setting in one place: a type, a default and help text per field.

Values come, highest first, from the command line, the environment (`CLAWDBOT_…` for the platform,
`CLAWDBOT_SIM_…` for the simulator), a TOML file (`--config FILE` or `CLAWDBOT_CONFIG`; the simulator reads
its `[simulate]` table) and the defaults below. docs/configuration.md lists them all; a test keeps it honest.
"""

from __future__ import annotations

import os
import tomllib
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .simulator.faults import FAULT_KINDS
from .simulator.goerrors import parse_duration
from .simulator.profiles import PROFILES


class SettingsError(Exception):
    """A setting has a bad value or a config file cannot be read; the message says which and why."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clawdbot"


def _http_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _known_profile(value: str) -> str:
    if value not in PROFILES:
        raise ValueError(f"unknown profile; choose one of {', '.join(PROFILES)}")
    return value


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    env_prefix: ClassVar[str]
    toml_table: ClassVar[str | None]


class Settings(_Base):
    """`clawdbot` / `clawdbot serve`: the platform."""

    env_prefix: ClassVar[str] = "CLAWDBOT_"
    toml_table: ClassVar[str | None] = None

    ollama_url: str = Field("http://localhost:11434", description="Base URL of the Ollama server to proxy to.")
    host: str = Field("127.0.0.1", description="Address to listen on; use 0.0.0.0 to accept other machines.")
    port: int = Field(18789, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Directory for the database and other state.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level written to stderr."
    )
    access_log: bool = Field(True, description="Write one JSON access-log line per request.")
    demo: bool = Field(
        False,
        description="Run the Ollama simulator in this process and proxy to it instead of "
        "--ollama-url, so a machine without Ollama shows a working platform.",
    )
    demo_profile: str = Field("4090", description=f"Timing profile of the --demo simulator ({', '.join(PROFILES)}).")
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
    default_model: str | None = Field(
        None, description="Model of new conversations (default: the first model the backend lists)."
    )
    num_ctx: int = Field(
        8192,
        ge=256,
        le=1_048_576,
        description="Context window of a chat turn unless its conversation sets one; sent on every turn because "
        "Ollama reloads the model whenever num_ctx changes.",
    )
    reply_room: int = Field(
        2048, ge=0, description="Tokens of the context kept free for the reply when older turns must be left out."
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
        description="Generations the backend runs at once; the rest wait in the gateway's fair queue. Set it to "
        "the backend's parallelism (default: $OLLAMA_NUM_PARALLEL if set, else 1, Ollama's default; with --demo, "
        "the demo simulator's slots).",
    )
    max_queue: int = Field(
        1000, ge=0, description="Generations that may wait for a slot, all users together; beyond it, 503."
    )
    max_queue_per_user: int = Field(
        100, ge=1, description="Generations one user may have waiting for a slot; beyond it, 429."
    )
    trusted_proxies: list[str] = Field(
        ["127.0.0.1/32", "::1/128"],
        description="Addresses (CIDR) of reverse proxies whose X-Forwarded-For names the user, for fair queueing.",
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

    _check_url = field_validator("ollama_url")(_http_url)

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

    _check_profile = field_validator("demo_profile")(_known_profile)

    @model_validator(mode="after")
    def _no_auth_only_on_loopback(self) -> Settings:
        if self.auth is False and not loopback(self.host):
            raise ValueError(
                f"--no-auth lets anyone who reaches the gateway act as its owner, so it is refused on --host "
                f"{self.host}; bind to a loopback address (127.0.0.1 or ::1), or keep accounts on"
            )
        if self.sso_header and not self.sso_proxies:
            raise ValueError("--sso-header needs --sso-proxies: the addresses whose header is believed")
        return self

    @property
    def max_command_bytes(self) -> int:
        """A chat command's or body's size limit: the longest message, 4 UTF-8 bytes a character, with room."""
        return self.max_message_chars * 4 + 65536

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


class SimulatorSettings(_Base):
    """`clawdbot simulate`: the stand-in for `ollama serve`."""

    env_prefix: ClassVar[str] = "CLAWDBOT_SIM_"
    toml_table: ClassVar[str | None] = "simulate"

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(11434, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    profile: str = Field("4090", description=f"Timing profile: {', '.join(PROFILES)}.")
    speed: float = Field(1.0, gt=0, description="Run all model times this many times faster (tests use 10–100).")
    num_parallel: int = Field(1, ge=0, description="Parallel slots per model, as OLLAMA_NUM_PARALLEL (0 = unlimited).")
    max_queue: int = Field(
        512, ge=1, description="Requests that may wait for a model load before 503, as OLLAMA_MAX_QUEUE."
    )
    tokens_per_second: float | None = Field(
        None,
        gt=0,
        description="Replace the batched engine with a fixed "
        "per-stream rate and no batching (for measuring the gateway).",
    )
    context_length: int | None = Field(
        None, ge=256, description="Default num_ctx, as OLLAMA_CONTEXT_LENGTH (default: the profile's)."
    )
    keep_alive: str = Field(
        "5m",
        description="How long a model stays loaded after its last request, as "
        "OLLAMA_KEEP_ALIVE (Go duration; negative = forever).",
    )
    models: list[str] = Field(["qwen3:32b"], min_length=1, description="Models that are pulled.")
    seed: int = Field(0, description="Seed for composed replies and random faults.")
    openai_format: Literal["current", "legacy"] = Field(
        "current", description="/v1 streaming format: current (Ollama ≥ 0.32.6) or legacy (older)."
    )
    ollama_version: str = Field("0.32.15", description="Version reported by /api/version.")
    fault_rate: float = Field(0.0, ge=0, le=1, description="Share of requests that fail at random.")
    record: int = Field(
        0,
        ge=0,
        description="Keep the bytes of this many recent generation responses, by "
        "X-Request-ID, at /_sim/transcript/{id} (for tests).",
    )
    faults: list[str] = Field(
        ["drop", "stall", "error_line", "http_500", "reset"],
        description=f"Fault kinds --fault-rate draws from ({', '.join(FAULT_KINDS)}).",
    )

    _check_profile = field_validator("profile")(_known_profile)

    @field_validator("keep_alive")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
        return value

    @property
    def keep_alive_seconds(self) -> float:
        seconds = parse_duration(self.keep_alive)
        return -1.0 if seconds < 0 else seconds


S = TypeVar("S", bound=_Base)


def env_name(cls: type[_Base], field: str) -> str:
    return cls.env_prefix + field.upper()


def load(cls: type[S], overrides: dict[str, Any] | None = None, config_file: Path | str | None = None) -> S:
    """Build settings from defaults < TOML < environment < `overrides` (the command line)."""
    values: dict[str, Any] = {}
    path = config_file or os.environ.get("CLAWDBOT_CONFIG")
    if path:
        values.update(_read_toml(Path(path), cls.toml_table))
    for field, info in cls.model_fields.items():
        raw = os.environ.get(env_name(cls, field))
        if raw is not None:
            is_list = getattr(info.annotation, "__origin__", None) is list
            values[field] = [part.strip() for part in raw.split(",") if part.strip()] if is_list else raw
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        raise SettingsError(_explain(cls, error)) from None


def _read_toml(path: Path, table: str | None) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingsError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {path} is not valid TOML: {error}") from None
    if table is None:
        return {k: v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise SettingsError(f"config file {path}: [{table}] must be a table")
    return section


def _explain(cls: type[_Base], error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        if not problem["loc"]:  # a rule across settings
            lines.append(str(problem["msg"]).removeprefix("Value error, "))
            continue
        field = str(problem["loc"][0])
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown setting {field!r}")
        else:
            flag = "--" + field.replace("_", "-")
            lines.append(f"{flag} / {env_name(cls, field)}: {problem['msg']} (got {problem.get('input')!r})")
    return "; ".join(lines)
