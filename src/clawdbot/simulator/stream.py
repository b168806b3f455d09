"""One generation from request to last byte: build the sequence, then write its chunks as the engine makes them.

Nothing is written, not even headers, until the first visible chunk exists (Ollama blocks on its channel
before the first Write). Mid-stream faults strike after a given number of chunks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .continuation import Partial, partial_of, rest_of
from .engine import ABORTED, Sequence, TokenKind, repeat_cut
from .faults import BEFORE_STREAM, MID_STREAM, Fault, Plan
from .replies import compose, count_tokens, tokenize
from .request import GenRequest, OllamaError
from .wire import ChatEmitter, OpenAIEmitter, Result

_TEMPLATE_TOKENS = 4  # <|im_start|>role\n … <|im_end|>\n around every message
_ASSISTANT_HEADER = 3
_EMPTY_THINK_BLOCK = 4  # think:false renders "<think>\n\n</think>\n\n" into the prompt
_IMAGE_TOKENS = 768
_UNLIMITED = 1 << 30


def _message_tokens(message: dict[str, Any]) -> int:
    return (
        count_tokens(str(message.get("content") or ""))
        + _TEMPLATE_TOKENS
        + _IMAGE_TOKENS * len(message.get("images") or ())
    )


def _fit(messages: list[dict[str, Any]], num_ctx: int, extra: int) -> list[dict[str, Any]]:
    """Ollama's chatPrompt truncation: drop the oldest messages, never system prompts or the last one."""
    sizes = [_message_tokens(m) for m in messages]
    total = sum(sizes) + extra
    keep = [True] * len(messages)
    for i, message in enumerate(messages[:-1]):
        if total <= num_ctx:
            break
        if message.get("role") != "system":
            keep[i] = False
            total -= sizes[i]
    return [m for m, k in zip(messages, keep, strict=True) if k]


@dataclass(frozen=True, slots=True)
class _Prompt:
    prefix: list[tuple[int, int]]  # cumulative (hash, tokens) after each message, as a slot's cache holds them
    tokens: int
    reply_from: tuple[int, str]  # the hash the reply's message extends, and the text it starts with


def _prompt(messages: list[dict[str, Any]], partial: Partial | None, extra: int) -> _Prompt:
    """The rendered prompt's tokens. After the last message comes an open assistant turn: a new one (`extra`: its
    header, and with thinking off the empty think block), or the partial message itself, whose text is prompt."""
    closed = messages[:-1] if partial is not None else messages
    prefix: list[tuple[int, int]] = []
    digest, tokens = 0, extra
    for message in closed:
        digest = hash((digest, message.get("role"), message.get("content")))
        tokens += _message_tokens(message)
        prefix.append((digest, tokens))
    if partial is None:
        return _Prompt(prefix, tokens, (digest, ""))
    tokens += _ASSISTANT_HEADER + count_tokens(partial.content)
    if partial.thinking_open:  # "<think>" and the thought so far
        tokens += 1 + count_tokens(partial.thinking)
    prefix.append((hash((digest, "assistant", partial.content, partial.thinking_open and partial.thinking)), tokens))
    return _Prompt(prefix, tokens, (digest, partial.content))


def _texts(req: GenRequest, plan: Plan, partial: Partial | None, *, think: bool, seed: int) -> tuple[bool, str, str]:
    """Whether the reply thinks, its thinking and its content; after a partial message, what is left of them."""
    reply = compose(seed, req.prompt_text, think=think)
    thinking = (plan.thinking if plan.thinking is not None else reply.thinking).strip()
    content = plan.reply if plan.reply is not None else reply.content
    if partial is None:
        return think, thinking, content
    if partial.thinking_open:
        return True, _rest(thinking, partial.thinking, scripted=plan.thinking is not None), content
    return False, "", _rest(content, partial.content, scripted=plan.reply is not None)  # past thinking


def _rest(text: str, said: str, *, scripted: bool) -> str:
    # A scripted text that does not start with the partial one is the continuation a test chose: it goes as written.
    return text.removeprefix(said) if scripted else rest_of(text, said)


def sequence_for(req: GenRequest, plan: Plan, *, think: bool, num_ctx: int, seed: int) -> Sequence:
    """The tokens to generate for `req`: the scripted text, or the reply composed with `seed` (see reply_seed); after
    a partial assistant message, the rest of that text (continuation.py)."""
    partial = partial_of(req.messages, think=think)
    extra = _ASSISTANT_HEADER + (0 if think else _EMPTY_THINK_BLOCK) if partial is None else 0
    messages = _fit(req.messages, num_ctx, extra) if req.truncate else req.messages
    prompt = _prompt(messages, partial, extra)
    thinks, thinking, content = _texts(req, plan, partial, think=think, seed=seed)
    num_predict = req.option_int("num_predict", -1)
    limit = num_predict if num_predict > 0 and not plan.endless else _UNLIMITED
    tokens_plan: list[tuple[TokenKind, str]] = []
    loop_from = None  # endless: where the tokens that repeat for ever begin
    if thinks:
        if partial is None:  # a continued thought is already inside <think>
            tokens_plan.append((TokenKind.HIDDEN, "<think>"))
        thought_from = len(tokens_plan)
        tokens_plan += [(TokenKind.THINKING, t) for t in tokenize(thinking, limit)]
        if plan.endless and not content:
            loop_from = thought_from  # thinking in circles: it never closes
        else:
            tokens_plan += [(TokenKind.HIDDEN, "</think>"), (TokenKind.HIDDEN, "\n\n")]
    if plan.endless and loop_from is None:
        loop_from = len(tokens_plan)
    answer = tokenize(content, limit - len(tokens_plan))  # num_predict ends the reply there anyway
    tokens_plan += [(TokenKind.CONTENT, t) for t in answer]
    # The slot's cache holds the reply too; qwen3's template drops thinking from history, so only a
    # reply without thinking can match the next turn's prompt, and only as far as it was generated.
    # A continued reply joins its partial message: the next turn has them as one.
    cached = not thinks and not plan.endless
    digest, said = prompt.reply_from
    reply = (hash((digest, "assistant", said + "".join(answer))), prompt.tokens + len(tokens_plan) + 4)
    held = prompt.prefix[:-1] if partial is not None else prompt.prefix
    return Sequence(
        cut_at=repeat_cut([text for _, text in tokens_plan]),
        plan=tokens_plan,
        prompt_tokens=max(prompt.tokens, 1),
        prefix=prompt.prefix,
        cache_after=[*held, reply] if cached else None,
        num_predict=limit,
        num_ctx=num_ctx,
        keep_alive=req.keep_alive,
        loop_from=loop_from,
    )


class Generation:
    def __init__(
        self,
        request: web.Request,
        req: GenRequest,
        seq: Sequence,
        emitter: ChatEmitter | OpenAIEmitter,
        fault: Fault | None,
        started: float,
        record: bytearray | None = None,
    ) -> None:
        self.request = request
        self.record = record
        self.seq = seq
        self.emitter = emitter
        self.stream = req.stream
        self.with_context = req.kind == "generate" and not req.raw
        self.fault = fault if fault is not None and fault.kind not in BEFORE_STREAM else None
        self.started = started
        self.response: web.StreamResponse | None = None
        self.chunks = 0

    async def run(self) -> web.StreamResponse:
        seq = self.seq
        seen = 0
        stream = self.stream
        while True:
            await seq.progress(seen)
            # One snapshot per batch: the engine may finish the sequence while a write below waits on a slow
            # client, and the tokens made meanwhile must still be sent before the final chunk.
            generated, finished = seq.generated, seq.finished
            if not stream:
                if finished:
                    return await self._whole()
                seen = generated
                continue
            lines = [
                self._line(kind, text) for kind, text in seq.pieces(seen, generated) if kind is not TokenKind.HIDDEN
            ]
            seen = generated
            if finished and seq.done_reason != ABORTED:
                lines.append(self.emitter.done(self.result()))
            for line in lines:
                if self.fault is not None and await self._fault_strikes():
                    return self._response()
                await self._write(line)
            if finished:
                await self._response().write_eof()
                return self._response()

    def _line(self, kind: TokenKind, text: str) -> bytes:
        return self.emitter.thinking(text) if kind is TokenKind.THINKING else self.emitter.content(text)

    def _response(self) -> web.StreamResponse:
        assert self.response is not None
        return self.response

    async def _prepare(self) -> web.StreamResponse:
        if self.response is None:
            self.response = web.StreamResponse(headers={"Content-Type": self.emitter.content_type})
            await self.response.prepare(self.request)
        return self.response

    async def _write(self, data: bytes) -> None:
        response = self.response or await self._prepare()
        if self.record is not None:
            self.record += data
        await response.write(data)
        self.chunks += 1

    async def _fault_strikes(self) -> bool:
        """Apply a mid-stream fault when its chunk comes up; True when the stream must end here."""
        fault = self.fault
        if fault is None or self.chunks != fault.after:
            return False
        self.fault = None
        if fault.kind == "drop":
            await self._prepare()
            assert self.request.transport is not None
            self.request.transport.abort()
            await asyncio.Event().wait()  # the handler is cancelled when the connection is gone
        if fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "malformed":
            await self._write(b'{"model":"qwen3:32b","created_at":"2025-10-20T10:00:00Z","message":{"role":\n')
        elif fault.kind == "error_line":
            await self._write(self.emitter.error(fault.message or MID_STREAM))
            await self._response().write_eof()
            return True
        return False

    async def _whole(self) -> web.StreamResponse:
        fault = self.fault
        if fault is not None and fault.kind == "error_line":
            raise OllamaError(500, fault.message or MID_STREAM)
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
        content_type, body = self.emitter.whole(self.result())
        if self.record is not None:
            self.record += body
        return web.Response(body=body, headers={"Content-Type": content_type})

    def result(self) -> Result:
        seq = self.seq
        now = time.monotonic()
        text: dict[TokenKind, list[str]] = {kind: [] for kind in TokenKind}
        for kind, piece in seq.pieces(0, seq.generated):
            text[kind].append(piece)
        if seq.done_reason == ABORTED:  # what a non-streaming answer is made of: the last chunk, no counts
            thinking, content = "".join(text[TokenKind.THINKING]), "".join(text[TokenKind.CONTENT])
            return Result(done_reason="", thinking=thinking, content=content, done=False)
        prompt_eval = max(seq.first_token_at - seq.admitted_at - seq.first_step, 1e-6)
        eval_time = (seq.finished_at or now) - seq.first_token_at + seq.first_step
        result = Result(
            done_reason=seq.done_reason,
            thinking="".join(text[TokenKind.THINKING]),
            content="".join(text[TokenKind.CONTENT]),
            total_duration=int((now - self.started) * 1e9),
            load_duration=int((seq.loaded_at - self.started) * 1e9),
            prompt_eval_count=seq.prompt_tokens,
            prompt_eval_duration=int(prompt_eval * 1e9),
            eval_count=seq.generated,
            eval_duration=int(eval_time * 1e9),
        )
        if self.with_context:
            result.context = [(i * 2654435761 + 151643) % 151936 for i in range(seq.prompt_tokens + seq.generated)]
        return result
