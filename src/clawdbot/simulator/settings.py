"""`clawdbot simulate`'s settings: the stand-in for `ollama serve`, read as the platform's are (common/config.py),
from `CLAWDBOT_SIM_…` variables and a TOML file's `[simulate]` table.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ..common.config import SettingsModel, known_profile
from .faults import FAULT_KINDS
from .goerrors import parse_duration
from .profiles import PROFILES


class SimulatorSettings(SettingsModel):
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

    _check_profile = field_validator("profile")(known_profile)

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
