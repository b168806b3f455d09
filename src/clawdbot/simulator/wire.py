"""Bytes on the wire for each endpoint, as Ollama writes them (docs/ollama-protocol.md §1, §2.1, §5).

An emitter turns the engine's events (a thinking token, a content token, done, an error) into the exact
line the real server sends. Key order follows Go's struct order; zero metrics are omitted (omitempty).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from .gojson import dumps, encode_line, encode_string, rfc3339nano

NDJSON = "application/x-ndjson"
JSON_UTF8 = "application/json; charset=utf-8"
JSON = "application/json"
SSE = "text/event-stream"


@dataclass(slots=True)
class Result:
    """Everything the final chunk reports."""

    done_reason: str
    thinking: str = ""
    content: str = ""
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    context: list[int] = field(default_factory=list)
    done: bool = True  # False: Ollama aborted the reply (engine.repeat_cut) and its last chunk stands for it

    def metrics(self) -> dict[str, int]:
        pairs = (
            ("total_duration", self.total_duration),
            ("load_duration", self.load_duration),
            ("prompt_eval_count", self.prompt_eval_count),
            ("prompt_eval_duration", self.prompt_eval_duration),
            ("eval_count", self.eval_count),
            ("eval_duration", self.eval_duration),
        )
        return {key: value for key, value in pairs if value}


class ChatEmitter:
    """POST /api/chat."""

    content_type = NDJSON

    def __init__(self, model: str) -> None:
        self.model = model
        self._head = b'{"model":' + encode_string(model) + b',"created_at":"'

    def thinking(self, text: str) -> bytes:
        return (
            self._head
            + rfc3339nano().encode()
            + b'","message":{"role":"assistant","content":"","thinking":'
            + encode_string(text)
            + b'},"done":false}\n'
        )

    def content(self, text: str) -> bytes:
        return (
            self._head
            + rfc3339nano().encode()
            + b'","message":{"role":"assistant","content":'
            + encode_string(text)
            + b'},"done":false}\n'
        )

    def final(self, result: Result, *, whole: bool = False) -> dict[str, object]:
        message: dict[str, object] = {"role": "assistant", "content": result.content if whole else ""}
        if whole and result.thinking:
            message["thinking"] = result.thinking
        body: dict[str, object] = {
            "model": self.model,
            "created_at": rfc3339nano(),
            "message": message,
            "done": result.done,
        }
        if result.done_reason:
            body["done_reason"] = result.done_reason
        body.update(result.metrics())
        return body

    def done(self, result: Result) -> bytes:
        return encode_line(self.final(result))

    def error(self, message: str) -> bytes:
        return encode_line({"error": message})

    def whole(self, result: Result) -> tuple[str, bytes]:
        return JSON_UTF8, dumps(self.final(result, whole=True))


class GenerateEmitter(ChatEmitter):
    """POST /api/generate: `response` instead of `message`, and the prompt+output token ids in `context`."""

    def thinking(self, text: str) -> bytes:
        return (
            self._head
            + rfc3339nano().encode()
            + b'","response":"","thinking":'
            + encode_string(text)
            + b',"done":false}\n'
        )

    def content(self, text: str) -> bytes:
        return self._head + rfc3339nano().encode() + b'","response":' + encode_string(text) + b',"done":false}\n'

    def final(self, result: Result, *, whole: bool = False) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "created_at": rfc3339nano(),
            "response": result.content if whole else "",
        }
        if whole and result.thinking:
            body["thinking"] = result.thinking
        body["done"] = result.done
        if result.done_reason:
            body["done_reason"] = result.done_reason
        if result.context:
            body["context"] = result.context
        body.update(result.metrics())
        return body


class OpenAIEmitter:
    """POST /v1/chat/completions, as Ollama's middleware translates the native stream.

    `legacy` reproduces Ollama before v0.32.6: role on every delta, finish_reason on the last content chunk,
    `created` per chunk. Otherwise the current format: role once, finish_reason on its own chunk, one
    `created` for the whole stream.
    """

    content_type = SSE

    def __init__(self, model: str, *, legacy: bool, include_usage: bool) -> None:
        self.model = model
        self.legacy = legacy
        self.include_usage = include_usage
        self.id = f"chatcmpl-{random.randrange(999)}"
        self._created: int | None = None
        self._first = True

    def _chunk(
        self,
        delta: dict[str, object],
        finish: str | None = None,
        *,
        model: str | None = None,
        created: int | None = None,
    ) -> dict[str, object]:
        if created is None:
            created = int(time.time())
            if not self.legacy:
                self._created = self._created or created
                created = self._created
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model if model is None else model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _delta(self, content: str, reasoning: str = "") -> dict[str, object]:
        delta: dict[str, object] = {}
        if self.legacy or self._first:
            delta["role"] = "assistant"
        delta["content"] = content
        if reasoning:
            delta["reasoning"] = reasoning
        self._first = False
        return delta

    @staticmethod
    def _event(body: dict[str, object]) -> bytes:
        return b"data: " + dumps(body) + b"\n\n"

    def thinking(self, text: str) -> bytes:
        return self._event(self._chunk(self._delta("", text)))

    def content(self, text: str) -> bytes:
        return self._event(self._chunk(self._delta(text)))

    def done(self, result: Result) -> bytes:
        if self.legacy:
            last = self._chunk(self._delta(""), result.done_reason or None)
            out = self._event(last)
        else:
            out = b"" if not self._first else self._event(self._chunk(self._delta("")))
            last = self._chunk({}, result.done_reason or "stop")
            out += self._event(last)
        if self.include_usage:
            last["choices"] = []
            last["usage"] = _usage(result)
            out += self._event(last)
        return out + b"data: [DONE]\n\n"

    def error(self, message: str) -> bytes:
        # Ollama decodes its own {"error":…} line as an empty chat response: an empty chunk, then EOF.
        return self._event(self._chunk(self._delta(""), model=""))

    def whole(self, result: Result) -> tuple[str, bytes]:
        message: dict[str, object] = {"role": "assistant", "content": result.content}
        if result.thinking:
            message["reasoning"] = result.thinking
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": message, "finish_reason": result.done_reason or None}],
            "usage": _usage(result),
        }
        return JSON, encode_line(body)


def _usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_eval_count,
        "completion_tokens": result.eval_count,
        "total_tokens": result.prompt_eval_count + result.eval_count,
    }


def openai_error_body(status: int, message: str) -> dict[str, object]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def openai_error(status: int, message: str) -> bytes:
    """A handler's error as the /v1 middleware rewrites it (json.Encoder: a trailing newline)."""
    return encode_line(openai_error_body(status, message))
