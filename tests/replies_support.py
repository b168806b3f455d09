"""Helpers for the tests of running replies across gateway processes (tests/test_live_replies*.py): replies of a
known length from the simulator, and the reply's row as the shared database has it."""

from __future__ import annotations

from typing import Any

from chat_support import FINAL, ChatApi, wait_until
from conftest import Server, script

TOKENS = 40  # the simulator's tokens a second
WORDS = 13  # a second: "w12 " is three tokens
# The gateway's lease of a reply, the sweep's grace after it and the sweep's period (live/leases.py, live/sweep.py).
LEASE_S, GRACE_S, SWEEP_S = 5, 2, 2


def text(seconds: float) -> str:
    """About `seconds` of the simulator's writing."""
    return " ".join(f"w{i}" for i in range(int(seconds * WORDS)))


def reply_row(api: ChatApi, conversation_id: str, reply_id: str) -> dict[str, Any]:
    """The reply as the database has it (through any replica)."""
    return next(m for m in api.view(conversation_id)["messages"] if m["id"] == reply_id)


def ended(api: ChatApi, conversation_id: str, reply_id: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(reply_row(api, conversation_id, reply_id))
        return found["status"] in FINAL

    try:
        wait_until(done, f"reply {reply_id} to end", timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}: {found}") from None
    return found


def writing(api: ChatApi, conversation_id: str, reply_id: str) -> None:
    """Wait until the reply has text (its writer checkpointed it)."""
    wait_until(lambda: reply_row(api, conversation_id, reply_id)["status"] == "writing", "the reply to stream")


def start_writing(a: ChatApi, simulator: Server, seconds: float, client_id: str) -> tuple[str, dict[str, Any]]:
    script(simulator, {"reply": text(seconds), "thinking": ""})
    conversation = a.create()["id"]
    sent = a.send(conversation, "write at length", client_id=client_id)
    writing(a, conversation, sent["reply"]["id"])
    return conversation, sent
