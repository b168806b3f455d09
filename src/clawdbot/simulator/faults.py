"""Faults on demand and scripted answers, so tests can make the simulator misbehave or say given text.

A test enqueues entries through `POST /_sim/script` (or the `ScriptBook` directly); each request takes the
first entry whose `match` is a substring of its last user message (or any request when `match` is empty).
With `--fault-rate`, requests that no script claims fail at random with one of the configured kinds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

FaultKind = Literal["refuse", "reset", "http_500", "busy", "drop", "stall", "error_line", "malformed", "slow_first"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
BEFORE_STREAM = frozenset({"refuse", "reset", "http_500", "busy", "slow_first"})

RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal "
    "error, check ollama server logs for details"
)
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
MID_STREAM = "an error was encountered while running the model: CUDA error: an illegal memory access was encountered"


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    after: int = Field(3, ge=0, description="chunks sent before a mid-stream fault strikes")
    seconds: float = Field(5.0, ge=0, description="how long a stall, slow first token or refusal lasts")
    message: str | None = Field(None, description="error text for http_500 and error_line")


class ScriptEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = Field("", description="substring of the last user message; empty matches any request")
    reply: str | None = Field(None, description="answer text to stream instead of a composed reply")
    thinking: str | None = Field(None, description="thinking text; empty string for none")
    fault: Fault | None = None
    endless: bool = Field(
        False,
        description="never finish: after the text, repeat the answer (or, with no answer, the thinking) until the "
        "client hangs up, whatever num_predict says, as a base model or a model caught in a loop can",
    )
    times: int = Field(1, ge=-1, description="how many requests it serves; -1 for all")

    @field_validator("times")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("an entry that serves no request is a mistake; use 1 or more, or -1 for all")
        return value


@dataclass(slots=True)
class Plan:
    reply: str | None
    thinking: str | None
    fault: Fault | None
    endless: bool = False


class ScriptBook:
    def __init__(self, *, fault_rate: float = 0.0, fault_kinds: tuple[str, ...] = (), seed: int = 0) -> None:
        self.entries: list[ScriptEntry] = []
        self.fault_rate = fault_rate
        self.fault_kinds = fault_kinds or ("drop", "stall", "error_line", "http_500", "reset")
        self._rng = random.Random(seed)

    def add(self, entries: list[ScriptEntry]) -> None:
        self.entries.extend(entries)

    def clear(self) -> None:
        self.entries.clear()

    def take(self, prompt: str) -> Plan:
        for entry in self.entries:
            if entry.match and entry.match not in prompt:
                continue
            if entry.times > 0:
                entry.times -= 1
                if entry.times == 0:
                    self.entries.remove(entry)
            return Plan(entry.reply, entry.thinking, entry.fault, entry.endless)
        if self.fault_rate and self._rng.random() < self.fault_rate:
            kind = self._rng.choice(self.fault_kinds)
            fault = Fault.model_validate(
                {"kind": kind, "after": self._rng.randint(0, 40), "seconds": self._rng.uniform(1, 5)}
            )
            return Plan(None, None, fault)
        return Plan(None, None, None)

    def describe(self) -> list[dict[str, Any]]:
        return [entry.model_dump() for entry in self.entries]
