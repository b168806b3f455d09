"""Parse and validate generation requests the way Ollama does, with its exact error texts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .goerrors import GoSyntaxError, first_value_end, parse_duration


class OllamaError(Exception):
    """An error Ollama answers with a status and {"error": message}."""

    def __init__(self, status: int, message: str, *, streaming: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Raised by the runner after the handler chose to stream: streamResponse has already set
        # Content-Type application/json (no charset) when it writes the error before the first chunk.
        self.streaming = streaming


@dataclass(slots=True)
class GenRequest:
    """What the engine needs from /api/chat, /api/generate or /v1/chat/completions."""

    kind: str  # "chat" | "generate" | "openai"
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    stream: bool = True
    think: bool | None = None  # None: the server's default (on for thinking models)
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: float | None = None
    truncate: bool = True
    raw: bool = False
    include_usage: bool = False
    format: Any = None  # "json", a JSON schema object, or unset

    @property
    def prompt_text(self) -> str:
        """The text a reply is chosen by: the last user message."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content") or "")
        return ""

    def option_int(self, name: str, default: int) -> int:
        value = self.options.get(name)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


_GO_KIND = {str: "string", bool: "bool", dict: "object", list: "array", int: "number", float: "number"}
_CHAT_FIELDS = {
    "model": (str, "string"),
    "messages": (list, "[]api.Message"),
    "stream": (bool, "bool"),
    "options": (dict, "map[string]interface {}"),
    "tools": (list, "api.Tools"),
    "truncate": (bool, "bool"),
    "shift": (bool, "bool"),
    "logprobs": (bool, "bool"),
    "top_logprobs": (int, "int"),
}
_GENERATE_FIELDS = {
    "model": (str, "string"),
    "prompt": (str, "string"),
    "suffix": (str, "string"),
    "system": (str, "string"),
    "template": (str, "string"),
    "context": (list, "[]int"),
    "stream": (bool, "bool"),
    "raw": (bool, "bool"),
    "images": (list, "[]api.ImageData"),
    "options": (dict, "map[string]interface {}"),
    "truncate": (bool, "bool"),
    "shift": (bool, "bool"),
    "logprobs": (bool, "bool"),
    "top_logprobs": (int, "int"),
}
_MESSAGE_FIELDS = {
    "role": (str, "string"),
    "content": (str, "string"),
    "thinking": (str, "string"),
    "images": (list, "[]api.ImageData"),
    "tool_calls": (list, "[]api.ToolCall"),
    "tool_name": (str, "string"),
    "tool_call_id": (str, "string"),
}
_OPTION_TYPES = {
    "num_ctx": int,
    "num_predict": int,
    "num_batch": int,
    "seed": int,
    "top_k": int,
    "repeat_last_n": int,
    "num_keep": int,
    "num_gpu": int,
    "num_thread": int,
    "temperature": float,
    "top_p": float,
    "min_p": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "typical_p": float,
    "stop": list,
}
_OPTION_NAMES = {int: "integer", float: "float32", list: "array"}
_THINK_LEVELS = ("high", "medium", "low", "max")


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode(body: bytes) -> Any:
    """gin's ShouldBindJSON: json.Decoder reads the first value only, and a bad UTF-8 byte or a lone
    surrogate escape (a browser cutting an emoji in half) becomes U+FFFD instead of failing the request."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", "replace")
    try:
        end = first_value_end(text)
    except GoSyntaxError as error:
        raise OllamaError(400, str(error)) from None
    return _scrub(json.loads(text[:end]))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {_scrub(key): _scrub(item) for key, item in value.items()}
    return value


def load_body(body: bytes, struct: str) -> dict[str, Any]:
    if not body.strip():
        raise OllamaError(400, "missing request body")
    data = decode(body)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OllamaError(400, f"json: cannot unmarshal {_kind(data)} into Go value of type api.{struct}")
    return data


def _kind(value: Any) -> str:
    return _GO_KIND.get(type(value), "value")


_OPENAI_TYPES = {
    "messages": (list, "[]openai.Message"),
    "stream_options": (dict, "openai.StreamOptions"),
    "reasoning": (dict, "openai.Reasoning"),
}


def _check_types(data: dict[str, Any], fields: Mapping[str, tuple[type, str]], where: str) -> None:
    for key, (expected, go_type) in fields.items():
        value = data.get(key)
        if value is None:
            continue
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is int and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            raise OllamaError(
                400,
                f"json: cannot unmarshal {_kind(value)} into Go struct field {where}.{key} of type {go_type}",
            )


def _think(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _THINK_LEVELS:
        return True
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    raise OllamaError(400, f'invalid think value: "{shown}" (must be "high", "medium", "low", "max", true, or false)')


def _keep_alive(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return -1.0 if value < 0 else float(value)
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            raise OllamaError(400, str(error)) from None
        return -1.0 if seconds < 0 else seconds
    raise OllamaError(
        400, f"json: cannot unmarshal {_kind(value)} into Go struct field .keep_alive of type api.Duration"
    )


def check_options(options: dict[str, Any]) -> None:
    """Ollama's Options.FromMap; a wrong type surfaces from the scheduler as a 500."""
    for key, value in options.items():
        expected = _OPTION_TYPES.get(key)
        if expected is None or value is None:
            continue
        if expected is list:
            ok = isinstance(value, list)
        else:  # JSON numbers are float64 in Go; an integer option takes 4096.7 as 4096
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise OllamaError(500, f'option "{key}" must be of type {_OPTION_NAMES[expected]}')
        if expected is list and not all(isinstance(item, str) for item in value):
            raise OllamaError(500, f'option "{key}" must be of an array of strings')


def _common(data: dict[str, Any], req: GenRequest) -> GenRequest:
    top = data.get("top_logprobs") or 0
    if top < 0 or top > 20:
        raise OllamaError(400, "top_logprobs must be between 0 and 20")
    req.think = _think(data.get("think"))
    req.keep_alive = _keep_alive(data.get("keep_alive"))
    req.stream = data.get("stream") is not False
    req.options = dict(data.get("options") or {})
    req.truncate = data.get("truncate") is not False
    req.format = data.get("format")
    return req


def check_format(value: Any, *, streaming: bool) -> None:
    """The runner's check of `format` (json.RawMessage): null, "", "json" or an object; anything else fails the
    request with a 500 after the model has loaded."""
    if value is None or value in ("", "json") or isinstance(value, dict):
        return
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    raise OllamaError(
        500,
        f'invalid format: {_strconv_quote(raw)}; expected "json" or a valid JSON Schema object',
        streaming=streaming,
    )


def _strconv_quote(text: str) -> str:
    """Go's %q (strconv.Quote) for printable text: quotes and backslashes escaped, control characters spelled."""
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return (
        '"' + "".join(named.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 or c == "\x7f" else c) for c in text) + '"'
    )


def parse_chat(body: bytes) -> GenRequest:
    data = load_body(body, "ChatRequest")
    _check_types(data, _CHAT_FIELDS, "ChatRequest")
    messages = []
    for message in data.get("messages") or []:
        if not isinstance(message, dict):
            raise OllamaError(
                400,
                f"json: cannot unmarshal {_kind(message)} into Go struct field "
                "ChatRequest.messages of type api.Message",
            )
        _check_types(message, _MESSAGE_FIELDS, "ChatRequest.messages")
        messages.append({**message, "role": str(message.get("role") or "").lower()})
    req = _common(data, GenRequest("chat", str(data.get("model") or ""), messages))
    if not req.model:
        raise OllamaError(400, "model is required")
    return req


def parse_generate(body: bytes) -> GenRequest:
    data = load_body(body, "GenerateRequest")
    _check_types(data, _GENERATE_FIELDS, "GenerateRequest")
    req = _common(data, GenRequest("generate", str(data.get("model") or "")))
    req.raw = bool(data.get("raw"))
    if req.raw and (data.get("template") or data.get("system") or data.get("context")):
        raise OllamaError(400, "raw mode does not support template, system, or context")
    if not req.model:
        raise OllamaError(404, "model '' not found")
    if data.get("system"):
        req.messages.append({"role": "system", "content": data["system"]})
    if data.get("prompt"):
        req.messages.append({"role": "user", "content": data["prompt"]})
    return req


def parse_openai_chat(body: bytes) -> GenRequest:
    """Ollama's ChatMiddleware: bind, reject empty messages, map the OpenAI fields onto a native request."""
    data = decode(body) if body.strip() else None
    if not isinstance(data, dict):
        raise OllamaError(
            400,
            "EOF"
            if data is None
            else f"json: cannot unmarshal {_kind(data)} into Go value of type openai.ChatCompletionRequest",
        )
    if not data.get("messages"):
        raise OllamaError(400, "[] is too short - 'messages'")
    _check_types(data, _OPENAI_TYPES, "ChatCompletionRequest")
    messages = []
    for message in data["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts = [part.get("text", "") for part in content if isinstance(part, dict)]
            if not all(isinstance(part, str) for part in parts):
                raise OllamaError(400, "invalid message format")
            content = "".join(parts)
        if not isinstance(message, dict) or not isinstance(content, str | None):
            raise OllamaError(400, "invalid message format")
        messages.append({"role": str(message.get("role") or "").lower(), "content": content or ""})
    options: dict[str, Any] = {"temperature": data.get("temperature", 1.0), "top_p": data.get("top_p", 1.0)}
    for source, target in (("max_tokens", "num_predict"), ("seed", "seed"), ("stop", "stop")):
        if data.get(source) is not None:
            options[target] = data[source]
    effort = data.get("reasoning_effort") or (data.get("reasoning") or {}).get("effort")
    think = None if effort is None else effort != "none"
    stream_options = data.get("stream_options") or {}
    return GenRequest(
        "openai",
        str(data.get("model") or ""),
        messages,
        stream=bool(data.get("stream")),
        think=think,
        options=options,
        include_usage=bool(stream_options.get("include_usage")),
    )
