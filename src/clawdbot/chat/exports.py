"""A conversation as a file to keep: Markdown to read, JSON to process (`GET …/export?format=`). Both hold the
shown messages, the versions the user picked (versions.py); the JSON also lists, for a message with several
versions, the ids of all of them."""

from __future__ import annotations

import re
import time
import unicodedata
from urllib.parse import quote

import orjson

from .results import View

UNTITLED = "Untitled conversation"
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]+')  # what Windows, macOS or Linux refuses in a file name
_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?")  # device names on Windows
_MAX_BYTES = 200  # under every file system's 255-byte limit, with room for " (2)" and the suffix


def export_markdown(view: View) -> str:
    conversation = view.conversation
    lines = [
        f"# {conversation.title or UNTITLED}",
        "",
        f"*{conversation.model} · started {_stamp(conversation.created_at)}*",
        "",
    ]
    if conversation.system_prompt:
        lines += ["> **System prompt:** " + conversation.system_prompt.replace("\n", "\n> "), ""]
    for message in view.messages:
        who = "You" if message.role == "user" else (message.model or "Assistant")
        state = "" if message.status in ("sent", "done") else f" ({message.status})"
        versions = view.versions.get(message.id, [])
        if versions:
            state += f" · version {versions.index(message.id) + 1} of {len(versions)}"
        lines += [f"## {who} · {_stamp(message.created_at)}{state}", ""]
        if message.thinking:
            lines += ["<details><summary>Thinking</summary>", "", message.thinking, "", "</details>", ""]
        lines += [message.content, ""]
    return "\n".join(lines)


def export_json(view: View) -> bytes:
    return orjson.dumps(
        {
            "format": "clawdbot.conversation.v1",
            "conversation": view.conversation,
            "messages": view.messages,
            "versions": view.versions,
        },
        option=orjson.OPT_INDENT_2,
    )


def file_name(title: str, suffix: str) -> str:
    """The conversation's title as a file name every file system takes: Unicode kept, separators and reserved
    characters turned into spaces, no leading or trailing dots, at most _MAX_BYTES of UTF-8."""
    name = " ".join(_UNSAFE.sub(" ", unicodedata.normalize("NFC", title)).split()).strip(". ")
    while len(name.encode()) > _MAX_BYTES:
        name = name[:-1]
    name = name.rstrip(". ")
    if not name or _RESERVED.fullmatch(name):
        name = name + " conversation" if name else UNTITLED
    return f"{name}.{suffix}"


def content_disposition(name: str) -> str:
    """RFC 6266: `filename*` (RFC 5987, UTF-8) for browsers, which prefer it; `filename` with the non-ASCII
    letters approximated for the rest."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r'["\\%]', "_", ascii_name)
    if not ascii_name.strip(". ") or ascii_name.startswith("."):
        ascii_name = "conversation" + name[name.rfind(".") :]
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def _stamp(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))
