"""How the chat platform reads a backend's stream: the lines that arrive together become one delta, in order.

A backend that answers with exactly chosen writes (several NDJSON lines in one write, a line split across writes)
shows what `OllamaBackend.chat` hands the generation: one event per read, so a busy gateway does less per token, and
the text is the same whatever the boundaries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from clawdbot.backends.base import Delta, Final
from clawdbot.backends.ollama import OllamaBackend
from clawdbot.errors import BackendError
from clawdbot.settings import Settings


def line(thinking: str = "", content: str = "", done: bool = False) -> bytes:
    chunk: dict[str, object] = {"model": "m", "message": {"role": "assistant", "content": content}, "done": done}
    if thinking:
        chunk["message"] = {"role": "assistant", "content": content, "thinking": thinking}
    if done:
        chunk.update(done_reason="stop", prompt_eval_count=7, eval_count=4, eval_duration=1_000_000)
    return orjson.dumps(chunk) + b"\n"


async def serve(writes: list[bytes], pause: float = 0.05) -> TestServer:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for data in writes:
            await response.write(data)
            await asyncio.sleep(pause)  # each write reaches the gateway as a read of its own
        return response

    app = web.Application()
    app.router.add_post("/api/chat", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def events(writes: list[bytes], **settings: float) -> AsyncIterator[Delta | Final]:
    server = await serve(writes, settings.pop("pause", 0.05))
    backend = OllamaBackend(Settings(**settings), f"http://127.0.0.1:{server.port}")
    try:
        async for event in backend.chat({"model": "m", "messages": [], "stream": True}):
            yield event
    finally:
        await backend.close()
        await server.close()


async def collect(writes: list[bytes], **settings: float) -> list[Delta | Final]:
    return [event async for event in events(writes, **settings)]


@pytest.mark.asyncio
async def test_lines_that_arrive_together_are_one_delta() -> None:
    got = await collect(
        [
            line(thinking="Let ") + line(thinking="me think.") + line(content="The "),
            line(content="answer") + line(content=" is 4."),
            line(done=True),
        ]
    )
    assert got[:2] == [Delta(thinking="Let me think.", content="The ", lines=3), Delta(content="answer is 4.", lines=2)]
    assert isinstance(got[2], Final)
    assert (got[2].prompt_tokens, got[2].output_tokens) == (7, 4)
    assert len(got) == 3


@pytest.mark.asyncio
async def test_thinking_after_answer_text_in_one_read_keeps_its_order() -> None:
    got = await collect([line(content="A") + line(thinking="B") + line(content="C"), line(done=True)])
    assert got[:2] == [Delta(content="A"), Delta(thinking="B", content="C", lines=2)]


@pytest.mark.asyncio
async def test_a_line_split_across_reads_and_the_final_line_in_the_same_read() -> None:
    whole = line(content="héllo ") + line(content="wörld") + line(done=True)
    cut = len(line(content="héllo ")) + 5  # in the middle of the second line
    got = await collect([whole[:cut], whole[cut:]])
    assert got[0] == Delta(content="héllo ")
    assert got[1] == Delta(content="wörld")
    assert isinstance(got[2], Final)


@pytest.mark.asyncio
async def test_a_stream_that_goes_silent_fails_within_a_second_of_the_idle_timeout() -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(BackendError) as failed:
        await collect([line(content="a"), line(content="b")], idle_timeout=1.0, pause=4.0)
    assert failed.value.kind == "idle_timeout"
    assert 1.0 <= asyncio.get_running_loop().time() - started < 3.0


@pytest.mark.asyncio
async def test_a_read_of_many_lines_is_read_as_the_lines_would_be_one_by_one() -> None:
    """A read's lines are parsed in one call; whatever is not one JSON value per line is read again line by line:
    blank lines are skipped, a line that is not JSON (or not an object) fails the reply as malformed, and an error
    line fails it with the model's words."""
    got = await collect([line(content="a") + b"\n   \n" + line(content="b") + line(content="c"), line(done=True)])
    assert got[0] == Delta(content="abc", lines=3)
    assert isinstance(got[1], Final)

    with pytest.raises(BackendError) as failed:
        await collect([line(content="a") + b'{"message": {"content": "b"}, \n' + line(content="c")])
    assert failed.value.kind == "malformed"
    with pytest.raises(BackendError) as failed:
        await collect([line(content="a") + b"[1, 2]\n" + line(content="c")])
    assert failed.value.kind == "malformed"  # JSON, but not an object
    with pytest.raises(BackendError) as failed:
        await collect([line(content="a") + orjson.dumps({"error": "out of memory"}) + b"\n" + line(content="c")])
    assert (failed.value.kind, "out of memory" in failed.value.message) == ("error_line", True)
