"""A conversation as a file to keep: Markdown to read, JSON to process (`GET …/export?format=`)."""

from __future__ import annotations

import time
from typing import Any

import orjson


def export_markdown(view: dict[str, Any]) -> str:
    conversation = view["conversation"]
    lines = [
        f"# {conversation['title'] or 'Untitled conversation'}",
        "",
        f"*{conversation['model']} · started {_stamp(conversation['created_at'])}*",
        "",
    ]
    if conversation["system_prompt"]:
        lines += ["> **System prompt:** " + conversation["system_prompt"].replace("\n", "\n> "), ""]
    for message in view["messages"]:
        who = "You" if message["role"] == "user" else (message["model"] or "Assistant")
        state = "" if message["status"] in ("sent", "done") else f" ({message['status']})"
        lines += [f"## {who} · {_stamp(message['created_at'])}{state}", ""]
        if message["thinking"]:
            lines += ["<details><summary>Thinking</summary>", "", message["thinking"], "", "</details>", ""]
        lines += [message["content"], ""]
    return "\n".join(lines)


def export_json(view: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"format": "clawdbot.conversation.v1", "conversation": view["conversation"], "messages": view["messages"]},
        option=orjson.OPT_INDENT_2,
    )


def _stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))
