"""The fleet on real model servers: a real Ollama (tests/real_ollama_support.py) and a real llama.cpp server
(tests/test_real_llamacpp.py), both serving gemma3:270m on the CPU behind one gateway configured by [[backends]]:
"ollama" (kind ollama) and "llama" (kind openai). Both list the model; a reply whose server is killed mid-way goes on
at the other kind from the text it has; the killed server, started again on its port, is taken back.

gemma3:270m is a base model, and greedy counting is what it does reliably: given "1, 2, …, 20," both servers count
"1, 2, 3, …", and both go on counting from a partial count left as the last assistant message. So a reply that moved
reads as one count, without a gap or a restart where the other server took over. The servers are this module's own
(the tests kill them), on fixed ports so that they can come back where the gateway expects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio

from chat_support import ChatApi, Socket, connect, done_of
from conftest import Server
from fleet_support import BACKEND, backends, backends_toml, start_fleet, wait_state, wait_until
from real_ollama_support import MODEL, NUM_CTX, script_module, unavailable
from test_real_llamacpp import SCRIPT, first_line
from test_real_llamacpp import script as llamacpp_script

pytestmark = pytest.mark.timeout(120)

NAMES = ("ollama", "llama")
# Both servers answer it by counting from 1 (greedy). Where the user's count ends is where the model may instead
# close the turn and start over: after "10," it did so now and then, after "20," it did not.
COUNT = ", ".join(str(n) for n in range(1, 21)) + ","
TOKENS = 240  # about six seconds of counting at 40 tokens/s: to 60 or so
BEFORE = 12  # numbers streamed before the server is killed


@dataclass
class Servers:
    """The two real servers, each on its own port; `start` and `kill` by backend name."""

    install: Any
    ports: dict[str, int]
    log: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        if name == "ollama":
            self.procs[name] = script_module().start(self.install, self.ports[name], log=self.log)
            # Loaded now, at the size the gateway sends: no reply waits for a load.
            load = {"model": MODEL, "prompt": "", "options": {"num_ctx": NUM_CTX}}
            assert httpx.post(self.url(name) + "/api/generate", json=load, timeout=60).status_code == 200
            return
        port = str(self.ports[name])
        command = [sys.executable, str(SCRIPT), "serve", "--port", port, "--parallel", "1", "--ctx", str(NUM_CTX)]
        with self.log.open("ab") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        self.procs[name] = proc
        first_line(proc, self.log)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def kill(self, name: str) -> None:
        """SIGKILL to its process group (Ollama's server and its model runner; llama.cpp is one process)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    real_ollama = script_module()
    try:
        install = real_ollama.setup(log=False)
    except (real_ollama.SetupError, OSError) as error:
        unavailable(f"{error} (python3 scripts/real_ollama.py setup)")
    llamacpp = llamacpp_script()
    try:
        llamacpp.find_gguf()
    except llamacpp.NoModel as error:
        pytest.skip(f"no real llama.cpp here: {error}")  # a failure under CI=true (conftest.py)
    log = Path(tempfile.mkstemp(prefix="real-fleet-", suffix=".log")[1])
    found = Servers(install, {name: real_ollama.free_port() for name in NAMES}, log)
    try:
        for name in NAMES:
            found.start(name)
        yield found
    finally:
        for name in NAMES:
            if found.alive(name):
                found.kill(name)


@pytest.fixture(scope="module")
def gateway(servers: Servers) -> Iterator[Server]:
    config = backends_toml(
        {"name": "ollama", "url": servers.url("ollama"), "slots": 1},  # OLLAMA_NUM_PARALLEL=1
        {"name": "llama", "kind": "openai", "url": servers.url("llama"), "slots": 1},
    )
    args = ("--num-ctx", str(NUM_CTX), "--reply-room", "256", "--health-interval", "1", "--no-model-titles")
    server = start_fleet(config, *args)
    try:
        wait_until(lambda: page_backends(server) == list(NAMES), "both backends to list the model", timeout=30)
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def revive(servers: Servers, gateway: Server) -> Iterator[None]:
    """A test that failed half-way may leave a server dead: the next one finds both up and healthy."""
    yield
    for name in NAMES:
        if not servers.alive(name):
            servers.start(name)
        with contextlib.suppress(AssertionError):
            httpx.patch(f"{gateway.url}/chat/api/admin/backends/{name}", json={"draining": False}, timeout=10)
            wait_state(gateway, name, "healthy", timeout=20)


@pytest_asyncio.fixture
async def socket(gateway: Server) -> AsyncIterator[Socket]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        yield await connect(session, gateway.url)


def page_backends(gateway: Server) -> list[str] | None:
    """The backends the chat page shows for the model (None while it is not listed)."""
    models = httpx.get(gateway.url + "/chat/api/models", timeout=10).json()["models"]
    entries = [m for m in models if m["name"] == MODEL]  # the model store is shared: other models may come and go
    assert len(entries) <= 1, entries
    return entries[0]["backends"] if entries else None


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_both_kinds_serve_the_model(gateway: Server) -> None:
    assert page_backends(gateway) == list(NAMES)  # in the order configured
    listed = [m["id"] for m in httpx.get(gateway.url + "/v1/models", timeout=10).json()["data"]]
    assert listed.count(MODEL) == 1

    # One slot each: a second stream opened while the first runs goes to the other server.
    body = {"model": MODEL, "messages": [{"role": "user", "content": COUNT}], "max_tokens": 60, "temperature": 0,
            "stream": True}  # fmt: skip
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        opened = []
        try:
            for session in ("raw-a", "raw-b"):
                request = client.build_request("POST", "/v1/chat/completions", json=body,
                                               headers={"X-Clawdbot-Session": session})  # fmt: skip
                opened.append(client.send(request, stream=True))
            assert [r.status_code for r in opened] == [200, 200]
            assert sorted(r.headers[BACKEND] for r in opened) == sorted(NAMES)
            for response in opened:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
                assert lines[-1] == "data: [DONE]"
                assert "".join(lines).count('"content"') > 1
        finally:
            for response in opened:
                response.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("first", NAMES)
async def test_a_reply_moves_to_the_other_kind_when_its_server_dies(
    first: str, servers: Servers, gateway: Server, socket: Socket
) -> None:
    second = next(name for name in NAMES if name != first)
    admin = httpx.AsyncClient(base_url=gateway.url + "/chat/api/admin", timeout=10)
    api = ChatApi(gateway.url)
    try:
        assert (await admin.patch(f"/backends/{second}", json={"draining": True})).status_code == 200  # on `first`
        conversation = api.create(model=MODEL, temperature=0, num_predict=TOKENS)
        ack = await socket.command("send", conversation_id=conversation["id"], content=COUNT)
        reply_id = ack["reply"]["id"]
        streamed: list[str] = []

        def counted(event: dict[str, Any]) -> bool:
            if event["type"] == "reply.delta" and event.get("id") == reply_id:
                streamed.append(event.get("content", ""))
            return len(numbers("".join(streamed))) >= BEFORE

        await socket.until(counted, within=60)
        assert (await admin.patch(f"/backends/{second}", json={"draining": False})).status_code == 200
        assert backends(gateway)[first]["running"] == 1
        await asyncio.to_thread(servers.kill, first)
        await socket.until(done_of(reply_id), within=60)
        stored = next(m for m in api.view(conversation["id"])["messages"] if m["id"] == reply_id)
    finally:
        await admin.aclose()
        api.close()

    events = [e for e in socket.seen if e.get("id") == reply_id or e.get("message", {}).get("id") == reply_id]
    text = "".join(e.get("content", "") for e in events if e["type"] == "reply.delta")
    assert events[-1]["message"]["status"] == stored["status"] == "done", stored
    assert stored["content"] == text
    seqs = [e["seq"] for e in events if e.get("seq") is not None]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat across the switch
    switches = [e for e in events if e["type"] == "reply.switch"]
    assert len(switches) == 1, switches
    switch = {k: switches[0][k] for k in ("from", "to", "at")}
    before = events[: events.index(switches[0])]
    at = len("".join(e.get("content", "") for e in before if e["type"] == "reply.delta"))
    assert switch == {"from": first, "to": second, "at": at}
    assert (stored["backend"], stored["switches"]) == (f"{first},{second}", [switch])
    # One count from 1, going on where the first server stopped: no restart, no gap, no number written twice.
    counted = numbers(text)[:-1]  # the last may be cut off by num_predict ("…, 6" of 65)
    assert counted == list(range(1, len(counted) + 1)), (text[:at], text[at:])
    assert len(numbers(text[:at])) >= BEFORE
    assert len(counted) > len(numbers(text[:at])) + 10, (text[:at], text[at:])  # the second server counted on
    stats = next(e for e in events if e["type"] == "reply.stats")
    assert stats["done_reason"] in ("stop", "length")

    wait_state(gateway, first, "out", timeout=5)
    assert page_backends(gateway) == [second]
    await asyncio.to_thread(servers.start, first)  # back on its port: probed, half-open, then healthy
    await asyncio.to_thread(wait_state, gateway, first, "healthy", 20)
    assert page_backends(gateway) == list(NAMES)
    assert "Traceback" not in gateway.logs()
