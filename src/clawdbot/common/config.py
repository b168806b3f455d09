"""The settings machinery the server, the simulator and the bench share: a model per program whose fields carry a
type, a default and help text, read, highest first, from the command line, the environment, a TOML file and the
defaults. Each program declares its own model; nothing here knows any of them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

TRUE = frozenset({"true", "1", "t", "yes", "y", "on"})  # what pydantic reads as True from text

# The simulator's timing profiles by name: the simulator defines each (simulator/profiles.py, a test keeps the two
# alike), and the server's --demo-profile names one without importing the simulator.
PROFILE_NAMES = ("4090", "2x4090", "h100", "vllm-h100", "instant")


class SettingsError(Exception):
    """A setting has a bad value or a config file cannot be read; the message says which and why."""


def default_data_dir(name: str = "clawdbot") -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / name


def http_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError("must be an http:// or https:// URL")
    return value


def known_profile(value: str) -> str:
    if value not in PROFILE_NAMES:
        raise ValueError(f"unknown profile; choose one of {', '.join(PROFILE_NAMES)}")
    return value


class SettingsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    env_prefix: ClassVar[str]
    toml_table: ClassVar[str | None]


S = TypeVar("S", bound=SettingsModel)


def toml_only(field: FieldInfo) -> bool:
    """A setting given only as TOML tables (a list of them): no flag, no environment variable."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("toml_only"))


def env_name(cls: type[SettingsModel], field: str) -> str:
    return cls.env_prefix + field.upper()


def load(cls: type[S], overrides: dict[str, Any] | None = None, config_file: Path | str | None = None) -> S:
    """Build settings from defaults < TOML < environment < `overrides` (the command line)."""
    values: dict[str, Any] = {}
    path = config_file or os.environ.get("CLAWDBOT_CONFIG")
    if path:
        values.update(_read_toml(Path(path), cls.toml_table))
    for field, info in cls.model_fields.items():
        if toml_only(info):
            continue
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


def _explain(cls: type[SettingsModel], error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        if not problem["loc"]:  # a rule across settings
            lines.append(str(problem["msg"]).removeprefix("Value error, "))
            continue
        field = str(problem["loc"][0])
        if toml_only(cls.model_fields[field]) if field in cls.model_fields else False:
            # a table of a list of them: name it as the TOML file does ([[backends]] #2, url: …)
            where = f"[[{field}]] #{int(problem['loc'][1]) + 1}" if len(problem["loc"]) > 1 else f"[[{field}]]"
            key = ".".join(str(part) for part in problem["loc"][2:])
            said = "unknown key" if problem["type"] == "extra_forbidden" else str(problem["msg"])
            said = said.removeprefix("Value error, ")
            lines.append(f"{where}{', ' + key if key else ''}: {said} (got {problem.get('input')!r})")
        elif problem["type"] == "extra_forbidden":
            lines.append(f"unknown setting {field!r}")
        else:
            flag = "--" + field.replace("_", "-")
            lines.append(f"{flag} / {env_name(cls, field)}: {problem['msg']} (got {problem.get('input')!r})")
    return "; ".join(lines)
