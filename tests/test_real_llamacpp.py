"""`OpenAIBackend` in front of a real llama.cpp server: llama-server's HTTP server run by the xllamacpp wheel
(scripts/real_llamacpp.py) with gemma3:270m, two slots, an API key, on a free port.

The GGUF is the one the real-Ollama setup keeps (`python3 scripts/real_ollama.py setup`, which CI runs first);
without it these tests skip. gemma3:270m is a base model that may never stop: every request is bounded.
"""

from __future__ import annotations

import importlib.util
import selectors
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import orjson
import pytest
import pytest_asyncio

from clawdbot.backends.base import Delta, Final
from clawdbot.backends.openai import OpenAIBackend
from clawdbot.errors import BackendError
from clawdbot.settings import Settings

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "real_llamacpp.py"
MODEL = "gemma3:270m"
KEY = "real-llamacpp-test-key"
GREEDY = {"temperature": 0, "seed": 1}


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("real_llamacpp", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_line(proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> str:
    """The line the server prints once it listens, waited for within `seconds`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=seconds):
            raise AssertionError(f"llama.cpp did not start within {seconds} s:\n{log.read_text()[-2000:]}")
    line = proc.stdout.readline().decode()
    assert line, f"llama.cpp exited with {proc.wait()}:\n{log.read_text()[-2000:]}"
    return line


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The server's URL; it runs for the module and is stopped at its end."""
    real = script()
    try:
        real.find_gguf()
    except real.NoModel as error:
        pytest.skip(f"no real llama.cpp here: {error}")  # a failure under CI=true (conftest.py)
    log = Path(tempfile.mkstemp(prefix="real-llamacpp-", suffix=".log")[1])
    command = [sys.executable, str(SCRIPT), "serve", "--port", "0", "--parallel", "2", "--api-key", KEY]
    with log.open("ab") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    try:
        yield first_line(proc, log).rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest_asyncio.fixture
async def backend(server: str) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(Settings(), server, api_key=KEY, name="llama.cpp")
    yield backend
    await backend.close()


async def reply(backend: OpenAIBackend, messages: list[dict[str, str]], tokens: int) -> list[Delta | Final]:
    body = {"model": MODEL, "messages": messages, "stream": True, "options": {**GREEDY, "num_predict": tokens}}
    return [item async for item in backend.chat(body)]


@pytest.mark.asyncio
async def test_probe_lists_the_model_and_reads_the_slots(backend: OpenAIBackend) -> None:
    status = await backend.probe()
    assert (status.reachable, status.error) == (True, None)
    assert status.model_names() == [MODEL]
    assert backend.reported_slots == 2  # /props total_slots: --parallel 2
    assert status.version  # /props build_info
    assert status.loaded == {MODEL: 1024}  # 2048 tokens of context shared by two slots
    assert status.own == {MODEL: {"num_ctx": 1024}}


@pytest.mark.asyncio
async def test_chat_streams_deltas_and_a_final_with_token_counts(backend: OpenAIBackend) -> None:
    items = await reply(backend, [{"role": "user", "content": "Why is the sky blue?"}], tokens=12)
    *deltas, final = items
    assert deltas
    assert all(isinstance(delta, Delta) for delta in deltas)
    assert "".join(d.content for d in deltas if isinstance(d, Delta)).strip()
    assert isinstance(final, Final)
    assert final.done_reason in ("stop", "length")
    assert final.prompt_tokens > 5
    assert 0 < final.output_tokens <= 12
    assert sum(d.lines for d in deltas if isinstance(d, Delta)) <= final.output_tokens
    assert final.total_ns >= final.eval_ns > 0


@pytest.mark.asyncio
async def test_a_raw_streaming_chat_completion_passes_through(backend: OpenAIBackend, server: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 6, "stream": True}
    response = await backend.send(
        "POST", "/v1/chat/completions", orjson.dumps(body), [("Content-Type", "application/json")]
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    text = (await response.read()).decode()
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert any(chunk["choices"] and chunk["choices"][0]["delta"].get("content") for chunk in chunks)

    keyless = OpenAIBackend(Settings(), server)  # the server wants the key that the backend adds
    try:
        refused = await keyless.send("GET", "/v1/models", b"", [])
        assert refused.status == 401
        refused.release()
        with pytest.raises(BackendError) as failed:
            await reply(keyless, [{"role": "user", "content": "Hi"}], tokens=2)
    finally:
        await keyless.close()
    assert (failed.value.kind, failed.value.message.endswith("Invalid API Key")) == ("http_401", True)


@pytest.mark.asyncio
async def test_a_last_assistant_message_is_continued(backend: OpenAIBackend) -> None:
    """llama.cpp goes on from a last assistant message (its prefill_assistant, on by default, on the Jinja template
    path; the `continue_final_message` clawdbot adds for vLLM is ignored): the reply carries on counting where the
    partial text stopped, "1, 2, 3, 4, 5, 6, 7," + " 8, 9, …". (With llama.cpp's built-in "gemma" template the turn
    was closed instead, and the model started a new one.)"""
    messages = [
        {"role": "user", "content": "Count from 1 to 20, separated by commas."},
        {"role": "assistant", "content": "1, 2, 3, 4, 5, 6, 7,"},
    ]
    items = await reply(backend, messages, tokens=12)
    text = "".join(item.content for item in items if isinstance(item, Delta))
    assert text.startswith(" 8, 9"), text
    assert isinstance(items[-1], Final)


def test_the_gguf_is_found_in_the_real_ollama_store(tmp_path: Path) -> None:
    """Where the assembled GGUF was pruned, the largest blob of Ollama's model store is the model's GGUF."""
    real = script()
    try:
        gguf = real.find_gguf()
    except real.NoModel as error:
        pytest.skip(f"no real llama.cpp here: {error}")
    blobs = tmp_path / "models" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "sha256-small").write_bytes(b'{"model_format": "gguf"}')
    (blobs / "sha256-weights").symlink_to(gguf)
    assert real.find_gguf(tmp_path) == blobs / "sha256-weights"
    (blobs / "sha256-weights").unlink()
    with pytest.raises(real.NoModel, match=r"real_ollama\.py setup"):
        real.find_gguf(tmp_path)
