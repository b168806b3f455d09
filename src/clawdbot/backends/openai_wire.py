"""The wire of an OpenAI-compatible server (openai.py): an Ollama /api/chat body turned into a streaming
/v1/chat/completions request, and that request's server-sent events read back as Deltas and the counts for a Final.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import BackendError
from .base import Delta, Final, join

# Ollama's option → OpenAI's field, where the meaning is the same. top_k is no OpenAI field, but vLLM, SGLang,
# llama.cpp and LM Studio all take it. num_ctx and keep_alive have no equivalent: such a server's context and
# memory are its own.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}  # Ollama's think levels
_REASONS = {"stop": "stop", "length": "length"}
# The first bytes of an image, base64-encoded: what an image_url data: URL must name.
_IMAGE_TYPES = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif", "UklGR": "image/webp"}


def request(body: dict[str, Any]) -> dict[str, Any]:
    """The /v1/chat/completions body for an Ollama /api/chat body."""
    messages = [_message(m) for m in body.get("messages") or [] if isinstance(m, dict)]
    out: dict[str, Any] = {
        "model": body.get("model"),
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    options = body.get("options") or {}
    if isinstance(num_predict := options.get("num_predict"), int) and num_predict > 0:  # -1, -2: no limit
        out["max_tokens"] = num_predict
    out |= {theirs: options[ours] for ours, theirs in _OPTIONS.items() if options.get(ours) is not None}
    think = body.get("think")
    if isinstance(think, bool):  # the switch of Qwen 3's and others' chat templates
        out["chat_template_kwargs"] = {"enable_thinking": think}
    elif isinstance(think, str) and think in _EFFORT:
        out["reasoning_effort"] = _EFFORT[think]
    if body.get("format") == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(body.get("format"), dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": body["format"]}}
    if messages and messages[-1]["role"] == "assistant":
        # Ollama goes on from a last assistant message (Continue); vLLM and SGLang do when asked so, llama.cpp
        # does by itself (its prefill_assistant) and ignores these fields.
        out |= {"continue_final_message": True, "add_generation_prompt": False}
    return out


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """Role and content; images become content parts, and an assistant's `thinking` is left out (OpenAI's API
    takes none back)."""
    content = str(message.get("content") or "")
    images = [str(image) for image in message.get("images") or []]
    if not images:
        return {"role": message.get("role"), "content": content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
    parts += [{"type": "image_url", "image_url": {"url": _data_url(image)}} for image in images]
    return {"role": message.get("role"), "content": parts}


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    kind = next((kind for start, kind in _IMAGE_TYPES.items() if image.startswith(start)), "image/png")
    return f"data:{kind};base64,{image}"


class Events:
    """One reply's server-sent events as they arrive: `feed()` turns each read into Deltas (the events that
    arrived together merged into one, as Ollama's lines are), and keeps what the Final is made of."""

    def __init__(self, url: str, redact: Callable[[str], str]) -> None:
        self.url, self.redact = url, redact
        self.pending = b""
        self.done = False  # [DONE] came: nothing after it is read
        self.finish_reason: str | None = None
        self.prompt_tokens = self.output_tokens = 0
        self.started_ns = time.perf_counter_ns()
        self.first_ns: int | None = None  # when the first text came

    def feed(self, data: bytes, *, end: bool = False) -> list[Delta]:
        """The Deltas of `data`; `end`: the stream is over, so a last line without its newline is read too."""
        *lines, self.pending = (self.pending + data).split(b"\n")
        if end:
            lines.append(self.pending)
            self.pending = b""
        out: list[Delta] = []
        for line in lines:
            delta = self._line(line.strip())
            if self.done:
                break
            if delta is not None:
                join(out, delta)
        return out

    @property
    def complete(self) -> bool:
        """The server ended the reply itself ([DONE], or at least a finish_reason) rather than dropping it."""
        return self.done or self.finish_reason is not None

    def final(self) -> Final:
        now = time.perf_counter_ns()
        first = self.first_ns or now
        return Final(
            done_reason=_REASONS.get(self.finish_reason or "stop", str(self.finish_reason)),
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            total_ns=now - self.started_ns,
            load_ns=0,
            prompt_eval_ns=first - self.started_ns,
            eval_ns=now - first,
        )

    def _line(self, line: bytes) -> Delta | None:
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                return None
            return self._chunk(self._json(payload))
        if line.startswith(b"error:"):  # llama.cpp's event for a failure once the stream began
            raise self._failed(self._json(line[6:].strip()))
        return None  # the blank line between events, a ": ping" comment, event:, id:

    def _chunk(self, chunk: dict[str, Any]) -> Delta | None:
        if "error" in chunk or chunk.get("object") == "error":
            raise self._failed(chunk)
        if isinstance(usage := chunk.get("usage"), dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.output_tokens = int(usage.get("completion_tokens") or 0)
        choices = chunk.get("choices")
        if not choices or not isinstance(choice := choices[0], dict):
            return None  # the usage chunk has none
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta") or {}
        # llama.cpp, SGLang and older vLLM name it reasoning_content, newer vLLM reasoning.
        thinking = str(delta.get("reasoning_content") or delta.get("reasoning") or "")
        content = str(delta.get("content") or "")
        if not (thinking or content):
            return None  # the role's chunk, the finish_reason's
        if self.first_ns is None:
            self.first_ns = time.perf_counter_ns()
        return Delta(thinking=thinking, content=content)

    def _json(self, payload: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            raise BackendError(
                f"backend {self.url} sent an event that is not a JSON object", backend=self.url, kind="malformed"
            )
        return chunk

    def _failed(self, chunk: dict[str, Any]) -> BackendError:
        error = chunk.get("error", chunk)
        detail = error.get("message") if isinstance(error, dict) else error
        message = self.redact(f"the model failed: {detail}")
        return BackendError(message, backend=self.url, kind="error_line")
